/*
 * plaza-weather demo: the service's point in about 25 seconds.
 *
 * Starts `plaza-weather serve` as a child process (its latency is then
 * measured across a real process boundary, as a client would see it) on a
 * fresh SQLite file in a temporary directory, with every database round
 * trip of the forecast made 2 ms longer (as for a database across a
 * network), drives it with the open-loop load generator for 8 s, reads the
 * service's own lock measurements from /metrics, stops it with SIGTERM,
 * checks that it exited 0 and that every acknowledged reading is in the
 * database.  Then the same with --wrong-locks, and both side by side.
 * Exits 0 only if both runs stopped cleanly and lost nothing.
 *
 * Also `plaza-weather verify --db PATH --acked FILE`: the check alone
 * (the tests use it after kill -9).
 */
#define _GNU_SOURCE
#include "weather.h"

#include <plaza.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

extern char **environ;

/* ---- verify: every acknowledged reading is stored ---- */

typedef struct verify_arg {
    const char *db, *acked;
    long long acked_n, missing, rows;
    int result;
    char err[512];
} verify_arg;

static void *verify_blocking(void *p)
{
    verify_arg *v = p;
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *q = NULL;
    FILE *f = fopen(v->acked, "r");
    v->result = -1;
    if (!f) {
        snprintf(v->err, sizeof v->err, "cannot read %s", v->acked);
        return NULL;
    }
    if (sqlite3_open_v2(v->db, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        sqlite3_exec(db,
                     "PRAGMA busy_timeout=5000; CREATE TEMP TABLE acked(city TEXT, time INTEGER, temperature REAL);"
                     "BEGIN",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO acked VALUES (?, ?, ?)", -1, &ins, NULL) != SQLITE_OK) {
        snprintf(v->err, sizeof v->err, "%s: %s", v->db, db ? sqlite3_errmsg(db) : "cannot open");
        goto out;
    }
    char city[64];
    long long t;
    double temp;
    while (fscanf(f, "%63s %lld %lf", city, &t, &temp) == 3) {
        sqlite3_bind_text(ins, 1, city, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, t);
        sqlite3_bind_double(ins, 3, temp);
        sqlite3_step(ins);
        sqlite3_reset(ins);
        v->acked_n++;
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    /* A reading acknowledged k times must be stored at least k times
     * (the generator may post equal readings). */
    const char *sql = "SELECT (SELECT count(*) FROM readings),"
                      " coalesce(sum(a.n - (SELECT count(*) FROM readings r WHERE r.city = a.city AND"
                      " r.time = a.time AND abs(r.temperature - a.temperature) < 1e-9)), 0)"
                      " FROM (SELECT city, time, temperature, count(*) AS n FROM acked GROUP BY 1, 2, 3) a"
                      " WHERE a.n > (SELECT count(*) FROM readings r WHERE r.city = a.city AND r.time = a.time"
                      " AND abs(r.temperature - a.temperature) < 1e-9)";
    if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK || sqlite3_step(q) != SQLITE_ROW) {
        snprintf(v->err, sizeof v->err, "%s: %s", v->db, sqlite3_errmsg(db));
        goto out;
    }
    v->missing = sqlite3_column_int64(q, 1);
    sqlite3_finalize(q);
    q = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM readings", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        v->rows = sqlite3_column_int64(q, 0);
    v->result = 0;
out:
    sqlite3_finalize(ins);
    sqlite3_finalize(q);
    sqlite3_close(db);
    fclose(f);
    return NULL;
}

static int verify(verify_arg *v)
{
    pz_blocking(verify_blocking, v, NULL);
    return v->result;
}

int wx_verify_main(int argc, char **argv)
{
    verify_arg v = {0};
    static const struct option longopts[] = {
        {"db", required_argument, 0, 'd'}, {"acked", required_argument, 0, 'a'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'd')
            v.db = optarg;
        else if (c == 'a')
            v.acked = optarg;
        else
            return 2;
    }
    if (!v.db || !v.acked) {
        fprintf(stderr, "usage: plaza-weather verify --db PATH --acked FILE\n");
        return 2;
    }
    verify_blocking(&v);
    if (v.result < 0) {
        fprintf(stderr, "plaza-weather: verify: %s\n", v.err);
        return 1;
    }
    printf("acknowledged %lld, missing %lld, rows %lld\n", v.acked_n, v.missing, v.rows);
    return v.missing == 0 ? 0 : 1;
}

/* ---- the demo ---- */

typedef struct child {
    pid_t pid;
    char addr[64];
} child;

/* Starts `serve` and reads its "listening on HOST:PORT" line. */
static int start_server(const char *dir, const char *db, bool wrong, child *c)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -errno;
    char log[4096];
    snprintf(log, sizeof log, "%s/serve%s.log", dir, wrong ? "-wrong" : "");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], STDOUT_FILENO);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *args[] = {"plaza-weather", "serve", "--listen", "127.0.0.1:0", "--db", (char *)db, "--workers", "2",
                    "--db-delay-ms", "2", wrong ? "--wrong-locks" : NULL, NULL};
    /* The lock advisor watches the service and writes its verdicts at
     * exit (unless the caller set PLAZA_ADVISOR to something else). */
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    char **env = calloc(nenv + 2, sizeof *env);
    if (!env) {
        posix_spawn_file_actions_destroy(&fa);
        close(pfd[0]);
        close(pfd[1]);
        return -ENOMEM;
    }
    memcpy(env, environ, nenv * sizeof *env);
    char advisor[4200];
    snprintf(advisor, sizeof advisor, "PLAZA_ADVISOR=json:%s/advisor%s.json", dir, wrong ? "-wrong" : "");
    if (!getenv("PLAZA_ADVISOR"))
        env[nenv] = advisor;
    int r = posix_spawn(&c->pid, "/proc/self/exe", &fa, NULL, args, env);
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (r != 0) {
        close(pfd[0]);
        return -r;
    }
    char line[512];
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t n = pz_read(pfd[0], line + got, sizeof line - 1 - got, pz_now() + 30 * WX_SECOND);
        if (n <= 0)
            break;
        got += (size_t)n;
        line[got] = 0;
        if (strchr(line, '\n'))
            break;
    }
    line[got] = 0;
    pz_close(pfd[0]);
    const char *p = strstr(line, "listening on ");
    if (!p || sscanf(p + 13, "%63s", c->addr) != 1) {
        fprintf(stderr, "plaza-weather demo: the service did not start (see %s)\n", log);
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        return -EIO;
    }
    return 0;
}

static void *waitpid_blocking(void *p)
{
    child *c = p;
    int st = 0;
    while (waitpid(c->pid, &st, 0) < 0 && errno == EINTR) {
    }
    return (void *)(intptr_t)st;
}

/* GET /metrics with Connection: close; the parsed body or NULL. */
static json_t *get_metrics(const char *addr)
{
    int fd = pz_tcp_dial(addr, pz_now() + 5 * WX_SECOND);
    if (fd < 0)
        return NULL;
    char req[256];
    int n = snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr);
    size_t cap = 1 << 16, got = 0;
    char *buf = malloc(cap);
    json_t *j = NULL;
    if (buf && pz_write_all(fd, req, (size_t)n, pz_now() + 5 * WX_SECOND) == n) {
        ssize_t k;
        while (got < cap - 1 && (k = pz_read(fd, buf + got, cap - 1 - got, pz_now() + 5 * WX_SECOND)) > 0)
            got += (size_t)k;
        buf[got] = 0;
        char *body = strstr(buf, "\r\n\r\n");
        if (body)
            j = json_loads(body + 4, 0, NULL);
    }
    free(buf);
    pz_close(fd);
    return j;
}

typedef struct run_result {
    wx_load_result load;
    json_t *metrics;
    int exit_status;
    long long acked, missing, rows;
    int sync_reports;  /* plaza's reports of a task suspending inside a sync lock */
    int spare_reports; /* and of a worker blocked, its tasks moved to a spare worker */
    bool ok;
} run_result;

static int count_reports(const char *log, const char *what)
{
    FILE *f = fopen(log, "r");
    int n = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, what))
            n++;
    if (f)
        fclose(f);
    return n;
}

static int one_run(const char *dir, bool wrong, const wx_load_opts *base, run_result *rr)
{
    char db[4096], acked[4096], log[4096];
    snprintf(db, sizeof db, "%s/weather%s.db", dir, wrong ? "-wrong" : "");
    snprintf(acked, sizeof acked, "%s/acked%s.txt", dir, wrong ? "-wrong" : "");
    snprintf(log, sizeof log, "%s/serve%s.log", dir, wrong ? "-wrong" : "");
    child c;
    printf("\n== %s: plaza-weather serve --workers 2%s (database round trip +2 ms)\n",
           wrong ? "wrong locks" : "right locks", wrong ? " --wrong-locks" : "");
    fflush(stdout);
    if (start_server(dir, db, wrong, &c) < 0)
        return -1;
    wx_load_opts o = *base;
    o.target = c.addr;
    o.acked_path = acked;
    if (wx_load_run(&o, &rr->load) < 0)
        return -1;
    wx_load_print(stdout, &o, &rr->load, false);
    rr->metrics = get_metrics(c.addr);
    kill(c.pid, SIGTERM);
    void *st;
    pz_blocking(waitpid_blocking, &c, &st);
    int status = (int)(intptr_t)st;
    rr->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    verify_arg v = {.db = db, .acked = acked};
    int vr = verify(&v);
    rr->acked = v.acked_n;
    rr->missing = v.missing;
    rr->rows = v.rows;
    rr->sync_reports = count_reports(log, "suspends while holding");
    rr->spare_reports = count_reports(log, "spare worker: ");
    rr->ok = rr->exit_status == 0 && vr == 0 && v.missing == 0;
    printf("SIGTERM: exit status %d; acknowledged readings %lld, missing from the database %lld (%lld rows, %d "
           "seeded)%s\n",
           rr->exit_status, v.acked_n, v.missing, v.rows, 64 * 32, vr < 0 ? v.err : "");
    return 0;
}

static double jnum(json_t *m, const char *a, const char *b, const char *c, const char *d)
{
    json_t *x = json_object_get(m, a);
    if (b)
        x = json_object_get(x, b);
    if (c)
        x = json_object_get(x, c);
    if (d)
        x = json_object_get(x, d);
    return json_number_value(x);
}

static void print_locks(const run_result *r, const char *label)
{
    json_t *m = r->metrics;
    if (!m) {
        printf("%-12s (no /metrics answer)\n", label);
        return;
    }
    const char *roles[2] = {"current", "forecast"};
    for (int i = 0; i < 2; i++) {
        json_t *l = json_object_get(json_object_get(m, "locks"), roles[i]);
        printf("%-12s %-9s %-15s %10.0f %9.1f %9.1f %9.1f %9.1f %8.0f\n", label, roles[i],
               json_string_value(json_object_get(l, "kind")), jnum(l, "acquisitions", NULL, NULL, NULL),
               jnum(l, "wait", "p99_us", NULL, NULL), jnum(l, "wait", "max_us", NULL, NULL) / 1e3,
               jnum(l, "hold", "p99_us", NULL, NULL), jnum(l, "hold", "max_us", NULL, NULL) / 1e3,
               jnum(l, "timeouts", NULL, NULL, NULL));
    }
}

/* The advisor's verdicts on the service's locks, read from the JSON it
 * wrote at exit: one line per lock role (the part of a lock's name before
 * '/': every city has its own current and forecast lock), with how many of
 * its locks got each verdict and the largest hold p99 among them. */
static void print_verdicts(const char *dir, bool wrong, const char *label)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/advisor%s.json", dir, wrong ? "-wrong" : "");
    json_t *j = json_load_file(path, 0, NULL);
    json_t *locks = json_object_get(j, "locks");
    if (!json_is_array(locks)) {
        printf("%-6s (no advisor report in %s)\n", label, path);
        json_decref(j);
        return;
    }
    const char *roles[] = {"current", "forecast", "metrics"};
    for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++) {
        size_t len = strlen(roles[r]);
        const char *verdicts[8];
        int counts[8] = {0}, nv = 0, nlocks = 0;
        double acq = 0, hold_p99 = 0, share = 0;
        const char *kind = "?", *advice = "";
        size_t i;
        json_t *l;
        json_array_foreach(locks, i, l)
        {
            const char *name = json_string_value(json_object_get(l, "name"));
            if (!name || strncmp(name, roles[r], len) != 0 || name[len] != '/')
                continue;
            const char *v = json_string_value(json_object_get(l, "verdict"));
            if (!v)
                continue;
            int k = 0;
            while (k < nv && strcmp(verdicts[k], v) != 0)
                k++;
            if (k == nv && nv < 8)
                verdicts[nv++] = v;
            if (k < 8)
                counts[k]++;
            nlocks++;
            kind = json_string_value(json_object_get(l, "kind"));
            acq += json_number_value(json_object_get(l, "acquisitions"));
            double p99 = json_number_value(json_object_get(json_object_get(l, "hold_ns"), "p99"));
            if (p99 > hold_p99)
                hold_p99 = p99;
            double sh = json_number_value(json_object_get(l, "suspended_share"));
            if (sh > share)
                share = sh;
            if (counts[k] == 1 && k == 0)
                advice = json_string_value(json_object_get(l, "advice"));
        }
        if (!nlocks)
            continue;
        char vs[256] = "";
        for (int k = 0; k < nv; k++) {
            size_t used = strlen(vs);
            snprintf(vs + used, sizeof vs - used, "%s%s x%d", k ? ", " : "", verdicts[k], counts[k]);
        }
        printf("%-6s %-9s %-15s %6d %10.0f %12.1f %9.0f%%  %s\n", label, roles[r], kind ? kind : "?", nlocks, acq,
               hold_p99 / 1e3, share * 100, vs);
        if (advice && *advice)
            printf("%-6s %-9s advice: %s\n", "", "", advice);
    }
    json_decref(j);
}

typedef struct demo_arg {
    int result;
} demo_arg;

static void *demo_task(void *arg)
{
    demo_arg *d = arg;
    char dir[] = "/tmp/plaza-weather-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("plaza-weather demo: mkdtemp");
        d->result = 1;
        return NULL;
    }
    printf("plaza-weather demo: the weather service on plaza, a fresh SQLite database in %s\n", dir);
    printf("load: open loop, 32 connections, 8 s, POST 500/s (10 readings each), GET 4000/s, latency from each "
           "request's scheduled instant\n");
    wx_load_opts base = {.connections = 32, .duration_s = 8, .post_rate = 500, .get_rate = 4000, .batch = 10,
                         .grace_s = 2, .city_prefix = "city", .cities = 64};
    run_result right = {0}, wrong = {0};
    int r1 = one_run(dir, false, &base, &right);
    int r2 = r1 == 0 ? one_run(dir, true, &base, &wrong) : -1;

    if (r1 == 0 && r2 == 0) {
        printf("\n== side by side (latency in ms, from the scheduled instant)\n");
        printf("%-15s %12s %12s %12s %12s\n", "", "right p50", "right p99", "wrong p50", "wrong p99");
        const char *names[WX_EP_COUNT] = {"POST /readings", "GET /weather"};
        for (int e = 0; e < WX_EP_COUNT; e++)
            printf("%-15s %12.3f %12.3f %12.3f %12.3f\n", names[e], right.load.ep[e].p50_us / 1e3,
                   right.load.ep[e].p99_us / 1e3, wrong.load.ep[e].p50_us / 1e3, wrong.load.ep[e].p99_us / 1e3);
        printf("%-15s %12.0f %12s %12.0f %12s\n", "GET req/s", right.load.ep[1].rps, "", wrong.load.ep[1].rps, "");
        printf("%-15s %12llu %12s %12llu %12s\n", "never sent", (unsigned long long)right.load.unsent, "",
               (unsigned long long)wrong.load.unsent, "");
        printf("\n== the service's own lock measurements (from its /metrics; wait and hold in us, max in ms)\n");
        printf("%-12s %-9s %-15s %10s %9s %9s %9s %9s %8s\n", "run", "role", "lock", "taken", "wait p99", "wait max",
               "hold p99", "hold max", "timeouts");
        print_locks(&right, "right");
        print_locks(&wrong, "wrong");
        printf("plaza's reports of a task suspending while holding a sync lock: right %d, wrong %d; of a worker\n"
               "blocked behind such a holder, its tasks moved to a spare worker: right %d, wrong %d (see %s/serve-wrong.log)\n",
               right.sync_reports, wrong.sync_reports, right.spare_reports, wrong.spare_reports, dir);
        printf("\n== the lock advisor's verdicts (PLAZA_ADVISOR in each service; docs/advisor.md)\n");
        printf("%-6s %-9s %-15s %6s %10s %12s %10s  %s\n", "run", "role", "lock", "locks", "taken", "hold p99 us",
               "waiting", "verdicts");
        print_verdicts(dir, false, "right");
        print_verdicts(dir, true, "wrong");
        printf("\nright: current is a data section (a copy: pz_mutex), forecast a logic section (held across the\n"
               "database: pz_async_mutex, waiters suspend and the workers serve other requests).\n"
               "wrong: a task holds a pz_mutex across the database call; whoever wants it blocks a whole worker.\n"
               "With both workers blocked, the runtime moves the runnable tasks (the holder among them) to spare\n"
               "worker threads: the service stays up, slowly, and plaza says why.\n");
    }
    json_decref(right.metrics);
    json_decref(wrong.metrics);
    bool ok = r1 == 0 && r2 == 0 && right.ok && wrong.ok;
    if (ok) {
        /* The databases and the acknowledgement lists go; the services'
         * logs stay for a look at plaza's reports. */
        const char *files[] = {"weather.db", "weather.db-wal", "weather.db-shm", "acked.txt",
                               "weather-wrong.db", "weather-wrong.db-wal", "weather-wrong.db-shm", "acked-wrong.txt"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", dir, files[i]);
            unlink(p);
        }
    }
    printf("\nplaza-weather demo: %s\n", ok ? "both services stopped cleanly; every acknowledged reading is stored"
                                             : "FAILED (see above)");
    d->result = ok ? 0 : 1;
    return NULL;
}

int wx_demo_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    demo_arg d = {1};
    pz_config_t cfg = {.workers = 2};
    int r = pz_run(&cfg, demo_task, &d, NULL);
    if (r < 0) {
        fprintf(stderr, "plaza-weather demo: cannot start the runtime: %s\n", pz_strerror(r));
        return 1;
    }
    return d.result;
}
