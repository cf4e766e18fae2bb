/*
 * plaza-weather load: an open-loop load generator for the weather protocol
 * (any implementation of it: plaza's, the Rust and Go peers).
 *
 * Open loop: the total rate (POST + GET) is split evenly over the
 * connections; connection i sends its k-th request at the instant
 * start + (k + i/N) * N/rate, whatever happened to the ones before, and a
 * request's latency runs from that scheduled instant to the last byte of
 * its response.  A connection that falls behind (HTTP/1.1 answers one
 * request at a time) sends late, and the lateness counts in the latency:
 * a stalled server cannot hide its stall by slowing the generator down
 * (no coordinated omission).  Which request comes next is decided by an
 * accumulator per connection, so the POST/GET mix is exact over time.
 *
 * Latencies go to the log-linear histogram of the benchmarks
 * (bench/hist.h, one per endpoint per connection, merged at the end).
 * Responses are parsed with libhttp-parser (chunked bodies included), so
 * any conforming server can be measured.
 */
#define _GNU_SOURCE
#include "weather.h"
#include "../../bench/hist.h"

#include <plaza.h>

#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

typedef struct acked {
    uint16_t city;
    int16_t tenths; /* temperature in tenths of a degree */
    int64_t time_ms;
} acked;

typedef struct conn_state {
    const wx_load_opts *o;
    int index;
    int64_t start, end, interval; /* ns */
    hist h[WX_EP_COUNT];
    uint64_t sent[WX_EP_COUNT], status[WX_EP_COUNT][6];
    uint64_t late, unsent;
    acked *acks;
    size_t nacks, acks_cap;
    uint64_t rng;
} conn_state;

typedef struct resp {
    int status;
    bool done;
} resp;

static int on_message_complete(http_parser *hp)
{
    resp *r = hp->data;
    r->status = hp->status_code;
    r->done = true;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings resp_settings = {.on_message_complete = on_message_complete};

static uint64_t next_rand(conn_state *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

/* Reads one response; returns its status, or a negative error. */
static int read_response(int fd, char *buf, size_t cap, int64_t deadline)
{
    http_parser hp;
    resp r = {0};
    http_parser_init(&hp, HTTP_RESPONSE);
    hp.data = &r;
    while (!r.done) {
        ssize_t n = pz_read(fd, buf, cap, deadline);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0)
            return (int)n;
        http_parser_execute(&hp, &resp_settings, buf, (size_t)n);
        if (!r.done && HTTP_PARSER_ERRNO(&hp) != HPE_OK)
            return -EPROTO;
        /* The server answers one request at a time: nothing follows. */
    }
    return r.status;
}

static void *load_conn(void *arg)
{
    conn_state *c = arg;
    const wx_load_opts *o = c->o;
    size_t cap = 128 + (size_t)o->batch * 96;
    struct pending {
        int city;
        int tenths;
    } *pend = NULL;
    char *req = malloc(cap + 256), *body = malloc(cap), *in = malloc(65536);
    if (!req || !body || !in)
        goto out;
    double total = o->post_rate + o->get_rate;
    double post_frac = total > 0 ? o->post_rate / total : 0;
    double acc = (double)c->index / o->connections; /* staggers the POSTs across connections */
    int fd = -1;
    pend = calloc((size_t)o->batch, sizeof *pend);
    if (!pend)
        goto out;
    int64_t now_ms0 = wx_wall_ms(), now0 = pz_now();
    for (int64_t k = 0;; k++) {
        int64_t at = c->start + k * c->interval + (c->interval * c->index) / o->connections;
        if (at >= c->end)
            break;
        if (pz_now() < at && pz_sleep_until(at) < 0)
            break;
        if (pz_now() >= c->end) {
            /* Behind schedule at the end: what was due and never sent is
             * reported, not silently dropped. */
            for (int64_t kk = k; c->start + kk * c->interval + (c->interval * c->index) / o->connections < c->end;
                 kk++)
                c->unsent++;
            break;
        }
        if (pz_now() - at > WX_MS)
            c->late++;
        acc += post_frac;
        int ep = acc >= 1.0 ? WX_EP_POST : WX_EP_GET;
        if (ep == WX_EP_POST)
            acc -= 1.0;
        if (fd < 0) {
            int64_t dial_until = pz_now() + 5 * WX_SECOND;
            fd = pz_tcp_dial(o->target, dial_until < c->end ? dial_until : c->end);
            if (fd < 0) {
                c->sent[ep]++;
                c->status[ep][0]++;
                hist_add(&c->h[ep], (uint64_t)(pz_now() - at));
                continue;
            }
        }
        int len;
        if (ep == WX_EP_POST) {
            int64_t ms = now_ms0 + (pz_now() - now0) / WX_MS;
            size_t bl = (size_t)snprintf(body, cap, "{\"readings\":[");
            for (int b = 0; b < o->batch; b++) {
                pend[b].city = (int)(next_rand(c) % (uint64_t)o->cities);
                pend[b].tenths = (int)(next_rand(c) % 451) - 100; /* -10.0 .. 35.0 */
                bl += (size_t)snprintf(body + bl, cap - bl, "%s{\"city\":\"%s%02d\",\"temperature\":%s%d.%d,\"time\":%lld}",
                                       b ? "," : "", o->city_prefix, pend[b].city, pend[b].tenths < 0 ? "-" : "",
                                       abs(pend[b].tenths) / 10, abs(pend[b].tenths) % 10, (long long)ms);
            }
            bl += (size_t)snprintf(body + bl, cap - bl, "]}");
            len = snprintf(req, cap + 256,
                           "POST /readings HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zu\r\n\r\n%s",
                           o->target, bl, body);
            c->sent[ep]++;
            int64_t deadline = c->end + (int64_t)((o->grace_s > 0 ? o->grace_s : 10) * 1e9);
            int st = pz_write_all(fd, req, (size_t)len, deadline) < 0 ? -EPIPE : read_response(fd, in, 65536, deadline);
            hist_add(&c->h[ep], (uint64_t)(pz_now() - at));
            if (st < 0) {
                c->status[ep][0]++;
                pz_close(fd);
                fd = -1;
                continue;
            }
            c->status[ep][st / 100 < 6 ? st / 100 : 5]++;
            if (st == 200 && o->acked_path) {
                if (c->nacks + (size_t)o->batch > c->acks_cap) {
                    size_t ncap = c->acks_cap ? 2 * c->acks_cap : 4096;
                    while (ncap < c->nacks + (size_t)o->batch)
                        ncap *= 2;
                    acked *a = realloc(c->acks, ncap * sizeof *a);
                    if (!a)
                        goto out;
                    c->acks = a;
                    c->acks_cap = ncap;
                }
                for (int b = 0; b < o->batch; b++)
                    c->acks[c->nacks++] = (acked){(uint16_t)pend[b].city, (int16_t)pend[b].tenths, ms};
            } else if (st == 200) {
                c->nacks += (size_t)o->batch;
            }
        } else {
            len = snprintf(req, cap + 256, "GET /weather/%s%02d HTTP/1.1\r\nHost: %s\r\n\r\n", o->city_prefix,
                           (int)(next_rand(c) % (uint64_t)o->cities), o->target);
            c->sent[ep]++;
            int64_t deadline = c->end + (int64_t)((o->grace_s > 0 ? o->grace_s : 10) * 1e9);
            int st = pz_write_all(fd, req, (size_t)len, deadline) < 0 ? -EPIPE : read_response(fd, in, 65536, deadline);
            hist_add(&c->h[ep], (uint64_t)(pz_now() - at));
            if (st < 0) {
                c->status[ep][0]++;
                pz_close(fd);
                fd = -1;
                continue;
            }
            c->status[ep][st / 100 < 6 ? st / 100 : 5]++;
        }
    }
    if (fd >= 0)
        pz_close(fd);
out:
    free(pend);
    free(req);
    free(body);
    free(in);
    return NULL;
}

int wx_load_run(const wx_load_opts *o, wx_load_result *res)
{
    memset(res, 0, sizeof *res);
    double total = o->post_rate + o->get_rate;
    if (o->connections < 1 || total <= 0 || o->duration_s <= 0 || o->batch < 1 || o->batch > 1000 ||
        o->cities < 1)
        return -EINVAL;
    /* One connection first: a target that does not answer (or does not
     * parse) is one error, not one per scheduled request. */
    int probe = pz_tcp_dial(o->target, pz_now() + 5 * WX_SECOND);
    if (probe < 0)
        return probe;
    pz_close(probe);
    conn_state *cs = calloc((size_t)o->connections, sizeof *cs);
    pz_task_t **tasks = calloc((size_t)o->connections, sizeof *tasks);
    if (!cs || !tasks) {
        free(cs);
        free(tasks);
        return -ENOMEM;
    }
    int64_t start = pz_now() + 50 * WX_MS; /* time to start every task */
    int64_t end = start + (int64_t)(o->duration_s * 1e9);
    int64_t interval = (int64_t)(1e9 * o->connections / total);
    for (int i = 0; i < o->connections; i++) {
        cs[i] = (conn_state){.o = o, .index = i, .start = start, .end = end, .interval = interval,
                             .rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1)};
        tasks[i] = pz_spawn_with(load_conn, &cs[i], &(pz_spawn_opts_t){.stack_size = 64 * 1024, .name = "load"});
    }
    for (int i = 0; i < o->connections; i++)
        if (tasks[i])
            pz_join(tasks[i], NULL);
    res->elapsed_s = (double)(pz_now() - start) / 1e9;
    double dur = o->duration_s;
    hist *merged = calloc(WX_EP_COUNT, sizeof *merged);
    FILE *af = o->acked_path ? fopen(o->acked_path, "w") : NULL;
    if (o->acked_path && !af)
        fprintf(stderr, "plaza-weather: load: cannot write %s\n", o->acked_path);
    for (int i = 0; i < o->connections; i++) {
        for (int e = 0; e < WX_EP_COUNT; e++) {
            if (merged)
                hist_merge(&merged[e], &cs[i].h[e]);
            res->ep[e].sent += cs[i].sent[e];
            for (int k = 0; k < 6; k++)
                res->ep[e].status[k] += cs[i].status[e][k];
        }
        res->late_sends += cs[i].late;
        res->unsent += cs[i].unsent;
        res->acked_readings += cs[i].nacks;
        if (af)
            for (size_t k = 0; k < cs[i].nacks; k++) {
                acked *a = &cs[i].acks[k];
                fprintf(af, "%s%02d %lld %s%d.%d\n", o->city_prefix, a->city, (long long)a->time_ms,
                        a->tenths < 0 ? "-" : "", abs(a->tenths) / 10, abs(a->tenths) % 10);
            }
        free(cs[i].acks);
    }
    if (af)
        fclose(af);
    for (int e = 0; e < WX_EP_COUNT && merged; e++) {
        res->ep[e].ok = res->ep[e].status[2];
        res->ep[e].rps = (double)(res->ep[e].sent - res->ep[e].status[0]) / dur;
        res->ep[e].p50_us = hist_permille(&merged[e], 500) / 1e3;
        res->ep[e].p99_us = hist_permille(&merged[e], 990) / 1e3;
        res->ep[e].p999_us = hist_permille(&merged[e], 999) / 1e3;
        res->ep[e].max_us = hist_permille(&merged[e], 1000) / 1e3;
    }
    free(merged);
    free(cs);
    free(tasks);
    return 0;
}

static const char *const ep_label[WX_EP_COUNT] = {"POST /readings", "GET /weather"};
static const char *const ep_key[WX_EP_COUNT] = {"post_readings", "get_weather"};

void wx_load_print(FILE *f, const wx_load_opts *o, const wx_load_result *r, bool json)
{
    if (json) {
        fprintf(f, "{\"target\":\"%s\",\"connections\":%d,\"duration_s\":%g,\"post_rate\":%g,\"get_rate\":%g,"
                   "\"batch\":%d,\"late_sends\":%llu,\"unsent\":%llu,\"acked_readings\":%llu",
                o->target, o->connections, o->duration_s, o->post_rate, o->get_rate, o->batch,
                (unsigned long long)r->late_sends, (unsigned long long)r->unsent, (unsigned long long)r->acked_readings);
        for (int e = 0; e < WX_EP_COUNT; e++)
            fprintf(f,
                    ",\"%s\":{\"requests\":%llu,\"rps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
                    "\"max_us\":%.1f,\"status\":{\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu,"
                    "\"conn_errors\":%llu}}",
                    ep_key[e], (unsigned long long)r->ep[e].sent, r->ep[e].rps, r->ep[e].p50_us, r->ep[e].p99_us,
                    r->ep[e].p999_us, r->ep[e].max_us, (unsigned long long)r->ep[e].status[2],
                    (unsigned long long)r->ep[e].status[3], (unsigned long long)r->ep[e].status[4],
                    (unsigned long long)r->ep[e].status[5], (unsigned long long)r->ep[e].status[0]);
        fprintf(f, "}\n");
        return;
    }
    fprintf(f, "%-15s %9s %9s %9s %9s %9s %9s  %s\n", "endpoint", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
            "requests", "errors");
    for (int e = 0; e < WX_EP_COUNT; e++) {
        const wx_ep_result *x = &r->ep[e];
        fprintf(f, "%-15s %9.0f %9.3f %9.3f %9.3f %9.3f %9llu  4xx %llu, 5xx %llu, connection %llu\n", ep_label[e],
                x->rps, x->p50_us / 1e3, x->p99_us / 1e3, x->p999_us / 1e3, x->max_us / 1e3,
                (unsigned long long)x->sent, (unsigned long long)x->status[4], (unsigned long long)x->status[5],
                (unsigned long long)x->status[0]);
    }
    fprintf(f, "acknowledged readings: %llu; requests sent over 1 ms after their instant: %llu; due but never sent "
               "(the connection was still waiting at the end): %llu\n",
            (unsigned long long)r->acked_readings, (unsigned long long)r->late_sends, (unsigned long long)r->unsent);
}

typedef struct load_main_arg {
    wx_load_opts o;
    int result;
} load_main_arg;

static void *load_task(void *arg)
{
    load_main_arg *a = arg;
    wx_load_result r;
    int e = wx_load_run(&a->o, &r);
    if (e < 0) {
        fprintf(stderr, "plaza-weather: load: %s: %s\n", a->o.target, pz_strerror(e));
        a->result = 1;
        return NULL;
    }
    if (!a->o.json)
        printf("target %s, %d connections, %g s, POST %g/s (batch %d), GET %g/s\n", a->o.target, a->o.connections,
               a->o.duration_s, a->o.post_rate, a->o.batch, a->o.get_rate);
    wx_load_print(stdout, &a->o, &r, a->o.json);
    a->result = (r.ep[0].sent + r.ep[1].sent) > 0 && r.ep[0].status[0] + r.ep[1].status[0] == r.ep[0].sent + r.ep[1].sent
                    ? 1 /* nothing got through */
                    : 0;
    return NULL;
}

int wx_load_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"target", required_argument, 0, 't'},  {"connections", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 'd'}, {"post-rate", required_argument, 0, 'p'},
        {"get-rate", required_argument, 0, 'g'}, {"batch", required_argument, 0, 'b'},
        {"workers", required_argument, 0, 'w'},  {"json", no_argument, 0, 'j'},
        {"acked", required_argument, 0, 'a'},    {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    load_main_arg a = {.o = {.target = "127.0.0.1:8080", .connections = 32, .duration_s = 10, .post_rate = 2000,
                             .get_rate = 8000, .batch = 10, .workers = 2, .city_prefix = "city", .cities = 64},
                       .result = 1};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 't': a.o.target = optarg; break;
        case 'c': a.o.connections = atoi(optarg); break;
        case 'd': a.o.duration_s = atof(optarg); break;
        case 'p': a.o.post_rate = atof(optarg); break;
        case 'g': a.o.get_rate = atof(optarg); break;
        case 'b': a.o.batch = atoi(optarg); break;
        case 'w': a.o.workers = atoi(optarg); break;
        case 'j': a.o.json = true; break;
        case 'a': a.o.acked_path = optarg; break;
        case 'h':
        default:
            fprintf(c == 'h' ? stdout : stderr,
                    "usage: plaza-weather load --target HOST:PORT [--connections 32] [--duration 10]\n"
                    "                          [--post-rate 2000] [--get-rate 8000] [--batch 10] [--workers 2]\n"
                    "                          [--json] [--acked FILE]\n");
            return c == 'h' ? 0 : 2;
        }
    }
    if (a.o.connections < 1 || a.o.connections > 100000 || a.o.duration_s <= 0 || a.o.post_rate < 0 ||
        a.o.get_rate < 0 || a.o.post_rate + a.o.get_rate <= 0 || a.o.batch < 1 || a.o.batch > 1000 ||
        a.o.workers < 1) {
        fprintf(stderr, "plaza-weather: load: bad options (connections >= 1, duration > 0, a rate > 0, "
                        "batch 1..1000)\n");
        return 2;
    }
    pz_config_t cfg = {.workers = a.o.workers};
    int r = pz_run(&cfg, load_task, &a, NULL);
    if (r < 0) {
        fprintf(stderr, "plaza-weather: cannot start the runtime: %s\n", pz_strerror(r));
        return 1;
    }
    return a.result;
}
