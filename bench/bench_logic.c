/* Logic critical sections: a lock held across a round trip to a database
 * (bin/dbserver, bench/dbserver.c, on 127.0.0.1:db_port), the case async
 * locks exist for, and what the wrong lock costs.
 *
 *   logic       tasks share one pz_async_mutex; each section is one round
 *               trip on the task's own connection.  How close does it come
 *               to one section per round trip?
 *   bystanders  the same sections beside tasks that only compute and yield:
 *               with lock=async they keep running; with lock=sync (pz_mutex
 *               around blocking read/write, the mistake) every worker ends up
 *               blocked and they starve.
 *   wrong_lock  kind=data_behind_async: counter++ behind pz_async_mutex
 *               (compare with tasks_contended work=0, the same section behind
 *               pz_mutex); kind=logic_behind_sync: bystanders lock=sync.
 *
 * The workloads that talk to the server need db_port=N; `all` has no keys,
 * so it skips them with a note (bench/run.py starts the server and runs
 * them).  The same workloads, names and output are in bench/peers/. */
#define _GNU_SOURCE
#include "bench.h"
#include "hist.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DB_MSG 16

/* bench_main stores a key=value argument as a pointer to the key with the
 * '=' overwritten by a NUL and a number parsed from the rest, so the text
 * of the value is the string right after the key.  lock= and kind= are
 * words, hence this reader; it is only valid for arguments from the
 * command line, which is the only place bench_args come from. */
static const char *arg_word(const bench_args *a, const char *key, const char *def)
{
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->keys[i], key) == 0)
            return a->keys[i] + strlen(a->keys[i]) + 1;
    return def;
}

static int db_port(const bench_args *a, const char *name)
{
    long port = arg_get(a, "db_port", -1);
    if (port < 0) {
        fprintf(stderr, "bench-plaza: %s needs db_port=N (a running bin/dbserver); skipped\n", name);
        return -1;
    }
    if (port == 0 || port > 65535) {
        fprintf(stderr, "bench-plaza: db_port=%ld is not a TCP port\n", port);
        exit(64);
    }
    return (int)port;
}

/* ---- the round trip, both ways ---- */

static void db_request(unsigned char req[DB_MSG], uint64_t seq)
{
    memset(req, 0, DB_MSG);
    memcpy(req, &seq, sizeof seq);
}

/* Suspends the task while it waits; the worker runs other tasks. */
static void trip_async(int fd, uint64_t seq)
{
    unsigned char req[DB_MSG], resp[DB_MSG];
    db_request(req, seq);
    int64_t deadline = pz_now() + 10 * INT64_C(1000000000);
    bench_check(pz_write_all(fd, req, DB_MSG, deadline) == DB_MSG, "db write");
    size_t got = 0;
    while (got < DB_MSG) {
        ssize_t r = pz_read(fd, resp + got, DB_MSG - got, deadline);
        bench_check(r > 0, "db read");
        got += (size_t)r;
    }
    bench_check(memcmp(req, resp, DB_MSG) == 0, "db reply mismatch");
}

/* Plain read/write on a blocking socket: the worker thread itself waits in
 * read() for the whole delay.  This is what the sync-lock rows measure. */
static void trip_blocking(int fd, uint64_t seq)
{
    unsigned char req[DB_MSG], resp[DB_MSG];
    db_request(req, seq);
    size_t put = 0, got = 0;
    while (put < DB_MSG) {
        ssize_t r = send(fd, req + put, DB_MSG - put, MSG_NOSIGNAL);
        bench_check(r > 0 || errno == EINTR, "db send");
        if (r > 0)
            put += (size_t)r;
    }
    while (got < DB_MSG) {
        ssize_t r = read(fd, resp + got, DB_MSG - got);
        bench_check(r > 0 || (r < 0 && errno == EINTR), "db read");
        if (r > 0)
            got += (size_t)r;
    }
    bench_check(memcmp(req, resp, DB_MSG) == 0, "db reply mismatch");
}

static int dial_async(int port)
{
    char hp[32];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    int fd = pz_tcp_dial(hp, pz_now() + 5 * INT64_C(1000000000));
    bench_check(fd >= 0, "connect to dbserver");
    return fd;
}

static int dial_blocking(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bench_check(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect to dbserver");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Mean time of one unlocked round trip, in ns: this task alone, after 10
 * warm-up trips, at most 500 trips or 200 ms. */
static double probe_rtt(int port)
{
    int fd = dial_async(port);
    for (uint64_t i = 0; i < 10; i++)
        trip_async(fd, i);
    int64_t t0 = pz_now();
    long n = 0;
    while (n < 500 && pz_now() - t0 < 200 * INT64_C(1000000))
        trip_async(fd, (uint64_t)n++);
    double rtt = (double)(pz_now() - t0) / (double)n;
    pz_close(fd);
    return rtt;
}

/* ---- the shared run: section tasks, optionally bystanders ---- */

struct run {
    int port;
    bool sync; /* pz_mutex + blocking I/O instead of pz_async_mutex + pz_ I/O */
    long tasks, bystanders, seconds;
    bool probe;

    pz_async_mutex_t am;
    pz_mutex_t sm;
    uint64_t held; /* sections counted under the lock */

    int *fds;
    hist *hists;
    uint64_t *ops;
    int64_t t0, deadline, elapsed;
    _Atomic uint64_t sections;
    double rtt_ns;
};

struct slot {
    struct run *r;
    long i;
};

static void *section_task(void *arg)
{
    struct slot *s = arg;
    struct run *r = s->r;
    int fd = r->fds[s->i];
    uint64_t n = 0;
    while (pz_now() < r->deadline) {
        if (r->sync) {
            pz_mutex_lock(&r->sm);
            trip_blocking(fd, r->held);
            r->held++;
            pz_mutex_unlock(&r->sm);
        } else {
            bench_check(pz_async_mutex_lock(&r->am) == 0, "async lock");
            trip_async(fd, r->held);
            r->held++;
            pz_async_mutex_unlock(&r->am);
        }
        n++;
    }
    atomic_fetch_add(&r->sections, n);
    return NULL;
}

/* Computes, yields, and records how long each loop took, counted from the
 * end of the previous one (the first from the start of the run), so time
 * spent waiting for a free worker is in the figure. */
static void *bystander_task(void *arg)
{
    struct slot *s = arg;
    struct run *r = s->r;
    hist *h = &r->hists[s->i];
    int64_t prev = r->t0;
    uint64_t x = (uint64_t)s->i + 1, n = 0;
    for (;;) {
        x ^= bench_work(x + n, 100);
        pz_yield();
        int64_t now = pz_now();
        hist_add(h, (uint64_t)(now - prev));
        prev = now;
        n++;
        if (now >= r->deadline)
            break;
    }
    r->ops[s->i] = n;
    __asm__ volatile("" : : "r"(x));
    return NULL;
}

static void *run_main(void *arg)
{
    struct run *r = arg;
    if (r->probe)
        r->rtt_ns = probe_rtt(r->port);
    for (long i = 0; i < r->tasks; i++)
        r->fds[i] = r->sync ? dial_blocking(r->port) : dial_async(r->port);
    long total = r->tasks + r->bystanders;
    struct slot *slots = calloc((size_t)total, sizeof *slots);
    pz_task_t **t = calloc((size_t)total, sizeof *t);
    bench_check(slots && t, "out of memory");
    r->t0 = pz_now();
    r->deadline = r->t0 + r->seconds * INT64_C(1000000000);
    for (long i = 0; i < total; i++) {
        bool section = i < r->tasks;
        slots[i] = (struct slot){r, section ? i : i - r->tasks};
        t[i] = pz_spawn(section ? section_task : bystander_task, &slots[i]);
        bench_check(t[i] != NULL, "spawn");
    }
    for (long i = 0; i < total; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join");
    r->elapsed = pz_now() - r->t0;
    for (long i = 0; i < r->tasks; i++) {
        if (r->sync)
            close(r->fds[i]);
        else
            pz_close(r->fds[i]);
    }
    free(slots);
    free(t);
    return NULL;
}

struct result {
    double sections_per_s, rtt_ns, bystander_ops_per_s, bystander_p50_us, bystander_p99_us, bystander_p999_us;
};

static struct result run_sections(int port, bool sync, long tasks, long bystanders, int workers, long seconds,
                                  bool probe)
{
    struct run *r = calloc(1, sizeof *r);
    bench_check(r != NULL, "out of memory");
    r->port = port;
    r->sync = sync;
    r->tasks = tasks;
    r->bystanders = bystanders;
    r->seconds = seconds;
    r->probe = probe;
    r->fds = calloc((size_t)tasks, sizeof *r->fds);
    r->hists = calloc((size_t)(bystanders ? bystanders : 1), sizeof *r->hists);
    r->ops = calloc((size_t)(bystanders ? bystanders : 1), sizeof *r->ops);
    bench_check(r->fds && r->hists && r->ops, "out of memory");
    run_with_workers(workers, run_main, r);

    uint64_t sections = atomic_load(&r->sections), ops = 0;
    bench_check(sections == r->held, "section count mismatch");
    hist *all = calloc(1, sizeof *all);
    bench_check(all != NULL, "out of memory");
    for (long b = 0; b < bystanders; b++) {
        hist_merge(all, &r->hists[b]);
        ops += r->ops[b];
    }
    bench_check(hist_total(all) == ops, "bystander iteration count mismatch");
    double secs = (double)r->elapsed / 1e9;
    struct result res = {
        .sections_per_s = (double)sections / secs,
        .rtt_ns = r->rtt_ns,
        .bystander_ops_per_s = (double)ops / secs,
        .bystander_p50_us = hist_permille(all, 500) / 1000.0,
        .bystander_p99_us = hist_permille(all, 990) / 1000.0,
        .bystander_p999_us = hist_permille(all, 999) / 1000.0,
    };
    free(all);
    free(r->fds);
    free(r->hists);
    free(r->ops);
    free(r);
    return res;
}

/* ---- logic ---- */

static void run_logic(const bench_args *a)
{
    int port = db_port(a, "logic");
    if (port < 0)
        return;
    long tasks = arg_get(a, "tasks", 64), delay_us = arg_get(a, "delay_us", 0);
    int workers = (int)arg_get(a, "workers", 2);
    long seconds = arg_get(a, "seconds", 2);
    struct result res = run_sections(port, false, tasks > 0 ? tasks : 1, 0, workers, seconds > 0 ? seconds : 1, true);
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d delay_us=%ld", tasks, workers, delay_us);
    emit("logic", param, "sections_per_s", res.sections_per_s);
    emit("logic", param, "utilisation", res.sections_per_s * res.rtt_ns / 1e9);
    emit("logic", param, "rtt_us", res.rtt_ns / 1000.0);
}

/* ---- bystanders, and wrong_lock kind=logic_behind_sync ---- */

static void bystanders_rows(const char *name, const char *kind, const bench_args *a, bool sync)
{
    int port = db_port(a, name);
    if (port < 0)
        return;
    long tasks = arg_get(a, "tasks", 64), bystanders = arg_get(a, "bystanders", 64);
    long delay_us = arg_get(a, "delay_us", 1000), seconds = arg_get(a, "seconds", 2);
    int workers = (int)arg_get(a, "workers", 2);
    tasks = tasks > 0 ? tasks : 1;
    bystanders = bystanders > 0 ? bystanders : 1;
    struct result res = run_sections(port, sync, tasks, bystanders, workers, seconds > 0 ? seconds : 1, false);
    char param[160];
    snprintf(param, sizeof param, "%s tasks=%ld bystanders=%ld workers=%d delay_us=%ld", kind, tasks, bystanders,
             workers, delay_us);
    emit(name, param, "bystander_ops_per_s", res.bystander_ops_per_s);
    emit(name, param, "bystander_p50_us", res.bystander_p50_us);
    emit(name, param, "bystander_p99_us", res.bystander_p99_us);
    emit(name, param, "bystander_p999_us", res.bystander_p999_us);
    emit(name, param, "sections_per_s", res.sections_per_s);
}

static void run_bystanders(const bench_args *a)
{
    const char *lock = arg_word(a, "lock", "async");
    bool sync = strcmp(lock, "sync") == 0;
    if (!sync && strcmp(lock, "async") != 0) {
        fprintf(stderr, "bench-plaza: lock=%s: expected sync or async\n", lock);
        exit(64);
    }
    bystanders_rows("bystanders", sync ? "lock=sync" : "lock=async", a, sync);
}

/* ---- wrong_lock kind=data_behind_async ---- */

struct data_async {
    pz_async_mutex_t m;
    uint64_t counter;
    long tasks, iters;
    int64_t elapsed;
};

static void *data_async_task(void *arg)
{
    struct data_async *d = arg;
    const long iters = d->iters; /* read once: it shares the lock's cache line */
    for (long i = 0; i < iters; i++) {
        bench_check(pz_async_mutex_lock(&d->m) == 0, "async lock");
        d->counter++;
        pz_async_mutex_unlock(&d->m);
    }
    return NULL;
}

static void *data_async_main(void *arg)
{
    struct data_async *d = arg;
    pz_task_t **t = calloc((size_t)d->tasks, sizeof *t);
    bench_check(t != NULL, "out of memory");
    int64_t t0 = pz_now();
    for (long i = 0; i < d->tasks; i++)
        t[i] = pz_spawn(data_async_task, d);
    for (long i = 0; i < d->tasks; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join");
    d->elapsed = pz_now() - t0;
    free(t);
    return NULL;
}

static void run_wrong_lock(const bench_args *a)
{
    const char *kind = arg_word(a, "kind", "data_behind_async");
    if (strcmp(kind, "logic_behind_sync") == 0) {
        bystanders_rows("wrong_lock", "kind=logic_behind_sync", a, true);
        return;
    }
    if (strcmp(kind, "data_behind_async") != 0) {
        fprintf(stderr, "bench-plaza: kind=%s: expected data_behind_async or logic_behind_sync\n", kind);
        exit(64);
    }
    static struct data_async d;
    long tasks = arg_get(a, "tasks", 64);
    d = (struct data_async){.tasks = tasks > 0 ? tasks : 1};
    d.iters = arg_get(a, "iters", 2000000 / d.tasks);
    int workers = (int)arg_get(a, "workers", 2);
    run_with_workers(workers, data_async_main, &d);
    bench_check(d.counter == (uint64_t)(d.tasks * d.iters), "wrong_lock: counter mismatch");
    char param[96];
    snprintf(param, sizeof param, "kind=data_behind_async tasks=%ld workers=%d", d.tasks, workers);
    emit("wrong_lock", param, "ns_per_op", (double)d.elapsed / ((double)d.tasks * (double)d.iters));
}

const workload logic_workloads[] = {
    {"logic", "db_port tasks workers delay_us seconds", run_logic},
    {"bystanders", "db_port lock tasks bystanders workers delay_us seconds", run_bystanders},
    {"wrong_lock", "kind db_port tasks bystanders workers iters delay_us seconds", run_wrong_lock},
    {NULL, NULL, NULL},
};
