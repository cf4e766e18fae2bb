/*
 * The live page: PLAZA_ADVISOR_HTTP=ADDR:PORT (PORT 0: any free port,
 * see pz_advisor_http_port) serves, from a task of the running runtime,
 *   /              the report as an HTML page: a table of every lock with
 *                  its verdict, advice and figures, and its hold-time
 *                  histogram drawn on a canvas by a script in the page,
 *                  then a table of the channels whose sends or receives
 *                  waited (their counts, waits and wait histogram); the
 *                  page embeds the report, so it is complete without the
 *                  script, and the script refreshes it every 2 s;
 *   /advisor.json  the JSON report.
 * The task is spawned when pz_run starts (the runtime_started hook), one
 * request per connection, a task per connection; it takes no plaza lock
 * (the report serialises on its own spin flag) and only suspends in I/O, so
 * it never appears in its own report.  Tasks still running when main
 * returns are abandoned by pz_run, this one included.
 */
#define _GNU_SOURCE
#include "plaza/advisor.h"
#include "plaza/io.h"
#include "plaza/runtime.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "advisor_internal.h"

static char *http_addr;
static _Atomic int http_port;

int pz_advisor_http_port(void)
{
    return atomic_load(&http_port);
}

static const char page_head[] =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>plaza advisor</title>\n"
    "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}"
    ".data{background:#e8f5e9}.logic{background:#e3f2fd}.logic_behind_sync,.section_too_long{background:#ffebee}"
    ".data_behind_async{background:#fff8e1}</style></head>\n<body>\n<h1>plaza advisor</h1>\n"
    "<p id=\"cost\"></p>\n<table id=\"locks\"><thead><tr><th>lock</th><th>kind</th><th>site</th><th>verdict</th>"
    "<th>advice</th><th>acquisitions</th><th>contended</th><th>hold p50/p99/max ns</th>"
    "<th>wait p50/p99/max ns</th><th>waiting share</th><th>hold histogram</th></tr></thead><tbody></tbody>"
    "</table>\n<h2>channels</h2>\n<p id=\"nochan\">no send or receive has waited</p>\n"
    "<table id=\"channels\"><thead><tr><th>channel</th><th>site</th><th>send waits</th><th>receive waits</th>"
    "<th>gave up</th><th>wait p50/p99/max ns</th><th>wait histogram</th></tr></thead><tbody></tbody></table>\n"
    "<script id=\"report\" type=\"application/json\">";

static const char page_tail[] =
    "</script>\n<script>\n"
    "function cell(tr, text, cls) { var td = document.createElement('td'); td.textContent = text;"
    " if (cls) td.className = cls; tr.appendChild(td); return td; }\n"
    "function hist(td, buckets) {\n"
    "  var c = document.createElement('canvas'); c.width = 240; c.height = 60; td.appendChild(c);\n"
    "  var g = c.getContext('2d'); if (!g || !buckets.length) return;\n"
    "  var lo = Math.log10(Math.max(1, buckets[0][0])), hi = Math.log10(Math.max(10, buckets[buckets.length-1][0]));\n"
    "  if (hi - lo < 1) hi = lo + 1; var bins = new Array(48).fill(0), top = 0;\n"
    "  buckets.forEach(function (b) { var i = Math.min(47, Math.floor((Math.log10(Math.max(1,b[0])) - lo) / (hi - lo) * 47));"
    " bins[i] += b[1]; top = Math.max(top, bins[i]); });\n"
    "  g.fillStyle = '#1565c0'; bins.forEach(function (n, i) { var h = n ? Math.max(1, 50 * n / top) : 0;"
    " g.fillRect(i * 5, 50 - h, 4, h); });\n"
    "  g.fillStyle = '#000'; g.font = '9px sans-serif'; g.fillText(Math.round(Math.pow(10, lo)) + ' ns', 0, 59);"
    " g.fillText(Math.round(Math.pow(10, hi)) + ' ns', 170, 59);\n}\n"
    "function show(r) {\n"
    "  document.getElementById('cost').textContent = 'uncontended lock+unlock here: pz_mutex ' + r.cost_ns.pz_mutex +"
    " ' ns, pz_async_mutex ' + r.cost_ns.pz_async_mutex + ' ns';\n"
    "  var body = document.querySelector('#locks tbody'); body.textContent = '';\n"
    "  r.locks.forEach(function (l) { var tr = document.createElement('tr'); tr.className = 'lock';\n"
    "    cell(tr, l.name, 'name'); cell(tr, l.kind); cell(tr, l.site); cell(tr, l.verdict, 'verdict ' + l.verdict);\n"
    "    cell(tr, l.advice); cell(tr, l.acquisitions); cell(tr, l.contended);\n"
    "    cell(tr, l.hold_ns.p50 + ' / ' + l.hold_ns.p99 + ' / ' + l.hold_ns.max);\n"
    "    cell(tr, l.wait_ns.p50 + ' / ' + l.wait_ns.p99 + ' / ' + l.wait_ns.max);\n"
    "    cell(tr, (100 * l.suspended_share).toFixed(1) + '%'); hist(cell(tr, ''), l.hold_hist); body.appendChild(tr); });\n"
    "  var chans = r.channels || [], cb = document.querySelector('#channels tbody'); cb.textContent = '';\n"
    "  document.getElementById('nochan').style.display = chans.length ? 'none' : '';\n"
    "  chans.forEach(function (c) { var tr = document.createElement('tr'); tr.className = 'chan';\n"
    "    cell(tr, c.name, 'name'); cell(tr, c.site); cell(tr, c.send_waits, 'send_waits');\n"
    "    cell(tr, c.recv_waits, 'recv_waits'); cell(tr, c.gave_up, 'gave_up');\n"
    "    cell(tr, c.wait_ns.p50 + ' / ' + c.wait_ns.p99 + ' / ' + c.wait_ns.max);\n"
    "    hist(cell(tr, ''), c.wait_hist || []); cb.appendChild(tr); });\n"
    "}\n"
    "show(JSON.parse(document.getElementById('report').textContent));\n"
    "setInterval(function () { fetch('/advisor.json').then(function (x) { return x.json(); }).then(show)"
    ".catch(function () {}); }, 2000);\n"
    "</script>\n</body></html>\n";

/* The JSON report in a malloc'd buffer, with "</" written "<\/" so that it
 * may sit inside a script element (the same JSON). */
static char *report_text(size_t *len, bool for_script)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    pz_advisor_report(f, PZ_ADVISOR_JSON);
    fclose(f);
    if (!for_script) {
        *len = n;
        return buf;
    }
    char *out = malloc(2 * n + 1);
    size_t o = 0;
    if (out) {
        for (size_t i = 0; i < n; i++) {
            if (buf[i] == '<' && i + 1 < n && buf[i + 1] == '/') {
                out[o++] = '<';
                out[o++] = '\\';
                continue;
            }
            out[o++] = buf[i];
        }
        out[o] = 0;
    }
    free(buf);
    *len = o;
    return out;
}

static void respond(int fd, const char *status, const char *type, const char *a, size_t an, const char *b,
                    size_t bn, const char *c, size_t cn)
{
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
                      "Connection: close\r\n\r\n",
                      status, type, an + bn + cn);
    int64_t deadline = pz_now() + 5 * INT64_C(1000000000);
    if (pz_write_all(fd, head, (size_t)hn, deadline) < 0)
        return;
    if (an && pz_write_all(fd, a, an, deadline) < 0)
        return;
    if (bn && pz_write_all(fd, b, bn, deadline) < 0)
        return;
    if (cn)
        pz_write_all(fd, c, cn, deadline);
}

static void serve(int fd)
{
    char req[4096];
    size_t got = 0;
    /* A browser may open a connection well before it sends on it. */
    int64_t deadline = pz_now() + 60 * INT64_C(1000000000);
    while (got < sizeof req - 1) {
        ssize_t r = pz_read(fd, req + got, sizeof req - 1 - got, deadline);
        if (r <= 0)
            return;
        got += (size_t)r;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    req[got] = 0;
    char path[256] = "";
    if (sscanf(req, "GET %255s", path) != 1) {
        respond(fd, "405 Method Not Allowed", "text/plain", "GET only\n", 9, NULL, 0, NULL, 0);
        return;
    }
    size_t n;
    if (strcmp(path, "/advisor.json") == 0) {
        char *body = report_text(&n, false);
        if (body)
            respond(fd, "200 OK", "application/json", body, n, NULL, 0, NULL, 0);
        free(body);
    } else if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0) {
        char *body = report_text(&n, true);
        if (body)
            respond(fd, "200 OK", "text/html; charset=utf-8", page_head, sizeof page_head - 1, body, n, page_tail,
                    sizeof page_tail - 1);
        free(body);
    } else {
        respond(fd, "404 Not Found", "text/plain", "not found\n", 10, NULL, 0, NULL, 0);
    }
}

static void *conn_task(void *arg)
{
    int fd = (int)(intptr_t)arg;
    serve(fd);
    pz_close(fd);
    return NULL;
}

static void *http_task(void *arg)
{
    (void)arg;
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    int lfd = pz_tcp_listen_addr(http_addr, (struct sockaddr *)&a, &len);
    if (lfd < 0) {
        fprintf(stderr, "plaza: advisor: cannot listen on %s: %s\n", http_addr, pz_strerror(lfd));
        return NULL;
    }
    int port = a.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&a)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&a)->sin_port);
    atomic_store(&http_port, port);
    for (;;) {
        int c = pz_accept(lfd, NULL, NULL, PZ_FOREVER);
        if (c == -ECANCELED)
            break;
        if (c < 0)
            continue;
        /* A task per connection: a browser opens connections it sends
         * nothing on (preconnects), which must not hold up the others. */
        pz_task_t *t = pz_spawn_with(conn_task, (void *)(intptr_t)c,
                                     &(pz_spawn_opts_t){.stack_size = 1u << 20, .name = "advisor-http-conn"});
        if (t)
            pz_detach(t);
        else
            pz_close(c);
    }
    pz_close(lfd);
    return NULL;
}

void pz__advisor_runtime_started(void)
{
    if (!http_addr)
        return;
    pz_task_t *t = pz_spawn_with(http_task, NULL, &(pz_spawn_opts_t){.stack_size = 1u << 20, .name = "advisor-http"});
    if (t)
        pz_detach(t);
    else
        fprintf(stderr, "plaza: advisor: cannot start the live page task\n");
}

void pz__advisor_http_start_from_env(void)
{
    const char *addr = getenv("PLAZA_ADVISOR_HTTP");
    if (!addr || !*addr)
        return;
    free(http_addr);
    http_addr = strdup(addr);
}
