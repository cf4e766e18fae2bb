/* peer-pthread: the plaza peer sync-lock workloads on glibc pthreads
 * (pthread_mutex_t from PTHREAD_MUTEX_INITIALIZER, pthread_rwlock_t from
 * PTHREAD_RWLOCK_INITIALIZER), plus the `work` calibration and a thread `sleep` floor.
 *
 * Usage: peer-pthread <workload|all|list> [key=value ...]
 * Prints `system,workload,param,metric,value` CSV lines on stdout; diagnostics on stderr.
 * Exits non-zero if a workload's own check (counter total) fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ helpers */

static void fail(const char *msg)
{
    fprintf(stderr, "peer-pthread: CHECK FAILED: %s\n", msg);
    exit(2);
}

static void emit(const char *workload, const char *param, const char *metric, double value)
{
    printf("pthread,%s,%s,%s,%.2f\n", workload, param, metric, value);
    fflush(stdout);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#define MAX_KV 16
struct params {
    int n;
    const char *key[MAX_KV];
    const char *val[MAX_KV];
};

static uint64_t pu(const struct params *p, const char *key, uint64_t def)
{
    for (int i = 0; i < p->n; i++) {
        if (strcmp(p->key[i], key) == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(p->val[i], &end, 10);
            if (errno || *end || *p->val[i] == '\0' || *p->val[i] == '-') {
                fprintf(stderr, "peer-pthread: %s=%s is not a non-negative integer\n", key, p->val[i]);
                exit(64);
            }
            return v;
        }
    }
    return def;
}

static uint64_t umax(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Iterations per thread: iters= if given, else `total` ops split over n threads. */
static uint64_t iters_for(const struct params *p, uint64_t total, uint64_t n)
{
    return pu(p, "iters", umax(total / umax(n, 1), 1));
}

static _Atomic uint64_t sink;

/* The busy loop run outside the lock: `work` steps of xorshift64 (13, 7, 17), the same
 * loop in every peer; the `work` workload calibrates its cost. */
static inline uint64_t spin_work(uint64_t work, uint64_t seed)
{
    uint64_t x = seed | 1;
    for (uint64_t i = 0; i < work; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

/* Per-thread stream that picks reads vs writes (same LCG in every peer). */
static inline uint64_t lcg_pct(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (*s >> 33) % 100;
}

static void atomic_max(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (v > old && !atomic_compare_exchange_weak_explicit(a, &old, v, memory_order_relaxed,
                                                              memory_order_relaxed))
        ;
}

/* Run `threads` threads of fn(arg_i) behind a barrier; the clock runs from the first
 * thread's start to the last one's end, each read by the thread itself (the main thread,
 * one of threads + 1 runnable ones when the barrier opens, may run again only much later;
 * bench/bench_sync.c measures the same way). */
struct thread_arg {
    pthread_barrier_t *barrier;
    uint64_t index;
    void *ctx;
    void (*fn)(void *ctx, uint64_t index);
    int64_t start, end;
};

static void *thread_main(void *p)
{
    struct thread_arg *a = p;
    pthread_barrier_wait(a->barrier);
    a->start = now_ns();
    a->fn(a->ctx, a->index);
    a->end = now_ns();
    return NULL;
}

static int64_t timed_threads(uint64_t threads, void (*fn)(void *, uint64_t), void *ctx)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
    pthread_t *tids = calloc(threads, sizeof *tids);
    struct thread_arg *args = calloc(threads, sizeof *args);
    if (!tids || !args)
        fail("out of memory");
    for (uint64_t i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){&barrier, i, ctx, fn, 0, 0};
        if (pthread_create(&tids[i], NULL, thread_main, &args[i]) != 0)
            fail("pthread_create");
    }
    pthread_barrier_wait(&barrier);
    int64_t first = INT64_MAX, last = 0;
    for (uint64_t i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        first = args[i].start < first ? args[i].start : first;
        last = args[i].end > last ? args[i].end : last;
    }
    int64_t d = last - first;
    pthread_barrier_destroy(&barrier);
    free(tids);
    free(args);
    return d;
}

/* ------------------------------------------------------------------ workloads */

static void w_work(const struct params *p)
{
    uint64_t work = pu(p, "work", 100);
    uint64_t iters = umax(pu(p, "iters", 1000000), 1);
    uint64_t s = 1;
    int64_t t0 = now_ns();
    for (uint64_t i = 0; i < iters; i++)
        s ^= spin_work(work, s + i);
    int64_t d = now_ns() - t0;
    atomic_fetch_add(&sink, s);
    char param[64];
    snprintf(param, sizeof param, "work=%" PRIu64, work);
    emit("work", param, "ns_per_op", (double)d / iters);
}

/* The latency histogram and percentile rule of plaza's own benchmarks, shared as they
 * are (bench/hist.h): this peer is C too. */
#include "../../hist.h"

/* The main thread sleeps `us` µs n times; each actual duration goes into the latency
 * histogram (percentiles) and into an exact sum (mean). */
static void w_sleep(const struct params *p)
{
    uint64_t n = umax(pu(p, "n", 2000), 1);
    uint64_t us = pu(p, "us", 100);
    struct hist *h = calloc(1, sizeof *h);
    if (!h)
        fail("out of memory");
    struct timespec req = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++) {
        int64_t t0 = now_ns();
        while (clock_nanosleep(CLOCK_MONOTONIC, 0, &req, NULL) == EINTR)
            ;
        uint64_t d = (uint64_t)(now_ns() - t0);
        h->count[hist_index(d)]++;
        sum += d;
    }
    if (hist_total(h) != n)
        fail("sleep: sample count mismatch");
    char param[64];
    snprintf(param, sizeof param, "n=%" PRIu64 " us=%" PRIu64, n, us);
    emit("sleep", param, "p50_us", hist_permille(h, 500) / 1000.0);
    emit("sleep", param, "p99_us", hist_permille(h, 990) / 1000.0);
    emit("sleep", param, "p999_us", hist_permille(h, 999) / 1000.0);
    emit("sleep", param, "mean_us", (double)sum / n / 1000.0);
    free(h);
}

static void *noop_thread(void *arg) { return arg; }

static void w_uncontended(const struct params *p)
{
    uint64_t iters = umax(pu(p, "iters", 10000000), 1);
    /* glibc takes a non-atomic fast path in pthread_mutex_lock while the process has
     * never had a second thread. Every program that needs a mutex has threads, so make
     * the process multi-threaded first (glibc never goes back); single=1 skips this and
     * measures the single-threaded fast path instead. */
    uint64_t single = pu(p, "single", 0);
    if (!single) {
        pthread_t t;
        if (pthread_create(&t, NULL, noop_thread, NULL) != 0)
            fail("pthread_create");
        pthread_join(t, NULL);
    }
    static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    static uint64_t counter;
    counter = 0;
    int64_t t0 = now_ns();
    for (uint64_t i = 0; i < iters; i++) {
        pthread_mutex_lock(&m);
        counter++;
        pthread_mutex_unlock(&m);
    }
    int64_t d = now_ns() - t0;
    if (counter != iters)
        fail("uncontended: counter mismatch");
    emit("uncontended", single ? "threads=1 single=1" : "threads=1", "ns_per_op", (double)d / iters);
}

struct contended_ctx {
    pthread_mutex_t m;
    uint64_t counter; /* plain data, protected by m */
    uint64_t iters, work;
    _Atomic uint64_t max_wait;
};

static void contended_thread(void *vctx, uint64_t index)
{
    struct contended_ctx *c = vctx;
    uint64_t s = index + 1, max_wait = 0;
    for (uint64_t i = 0; i < c->iters; i++) {
        if ((i & 63) == 0) {
            int64_t t0 = now_ns();
            pthread_mutex_lock(&c->m);
            uint64_t w = (uint64_t)(now_ns() - t0);
            c->counter++;
            pthread_mutex_unlock(&c->m);
            if (w > max_wait)
                max_wait = w;
        } else {
            pthread_mutex_lock(&c->m);
            c->counter++;
            pthread_mutex_unlock(&c->m);
        }
        if (c->work)
            s ^= spin_work(c->work, s + i);
    }
    atomic_max(&c->max_wait, max_wait);
    atomic_fetch_add(&sink, s);
}

static void w_contended(const struct params *p)
{
    uint64_t threads = umax(pu(p, "threads", 2), 1);
    uint64_t work = pu(p, "work", 0);
    uint64_t iters = iters_for(p, 4000000, threads);
    static struct contended_ctx c;
    c = (struct contended_ctx){.m = PTHREAD_MUTEX_INITIALIZER, .iters = iters, .work = work};
    int64_t d = timed_threads(threads, contended_thread, &c);
    pthread_mutex_lock(&c.m);
    uint64_t total = c.counter;
    pthread_mutex_unlock(&c.m);
    if (total != threads * iters)
        fail("contended: counter mismatch");
    char param[96];
    snprintf(param, sizeof param, "threads=%" PRIu64 " work=%" PRIu64, threads, work);
    emit("contended", param, "ns_per_op", (double)d / (threads * iters));
    emit("contended", param, "max_wait_us", atomic_load(&c.max_wait) / 1000.0);
}

struct quad {
    uint64_t a, b, c, d;
};

struct rw_ctx {
    pthread_rwlock_t l;
    struct quad q; /* protected by l */
    uint64_t iters, write_pct;
    _Atomic uint64_t writes;
};

static void rw_thread(void *vctx, uint64_t index)
{
    struct rw_ctx *c = vctx;
    uint64_t rng = index + 1, nw = 0, s = 0;
    for (uint64_t i = 0; i < c->iters; i++) {
        if (lcg_pct(&rng) < c->write_pct) {
            pthread_rwlock_wrlock(&c->l);
            c->q.a++;
            c->q.b++;
            c->q.c++;
            c->q.d++;
            pthread_rwlock_unlock(&c->l);
            nw++;
        } else {
            pthread_rwlock_rdlock(&c->l);
            struct quad q = c->q;
            pthread_rwlock_unlock(&c->l);
            if (q.a != q.b || q.b != q.c || q.c != q.d)
                fail("rwlock_read_mostly: torn read");
            s += q.a;
        }
    }
    atomic_fetch_add(&c->writes, nw);
    atomic_fetch_add(&sink, s);
}

static void w_rwlock_read_mostly(const struct params *p)
{
    uint64_t threads = umax(pu(p, "threads", 8), 1);
    uint64_t write_pct = pu(p, "write_pct", 1);
    uint64_t iters = iters_for(p, 4000000, threads);
    static struct rw_ctx c;
    c = (struct rw_ctx){.l = PTHREAD_RWLOCK_INITIALIZER, .iters = iters, .write_pct = write_pct};
    int64_t d = timed_threads(threads, rw_thread, &c);
    struct quad q = c.q;
    if (q.a != q.b || q.b != q.c || q.c != q.d || q.a != atomic_load(&c.writes))
        fail("rwlock_read_mostly: write count mismatch");
    char param[96];
    snprintf(param, sizeof param, "threads=%" PRIu64 " write_pct=%" PRIu64, threads, write_pct);
    emit("rwlock_read_mostly", param, "ns_per_op", (double)d / (threads * iters));
}

/* ------------------------------------------------------------------ main */

struct workload {
    const char *name;
    void (*fn)(const struct params *);
    const char *keys[6];
};

static const struct workload workloads[] = {
    {"work", w_work, {"work", "iters"}},
    {"sleep", w_sleep, {"n", "us"}},
    {"uncontended", w_uncontended, {"iters", "single"}},
    {"contended", w_contended, {"threads", "iters", "work"}},
    {"rwlock_read_mostly", w_rwlock_read_mostly, {"threads", "iters", "write_pct"}},
};
#define N_WORKLOADS (sizeof workloads / sizeof workloads[0])

/* What `all` runs: each workload once with defaults, plus the contended rows the spec
 * lists (threads=2|8|64 x work=0|100). */
static const char *const all_runs[][3] = {
    {"work"},
    {"sleep"},
    {"uncontended"},
    {"contended", "threads=2", "work=0"},
    {"contended", "threads=2", "work=100"},
    {"contended", "threads=8", "work=0"},
    {"contended", "threads=8", "work=100"},
    {"contended", "threads=64", "work=0"},
    {"contended", "threads=64", "work=100"},
    {"rwlock_read_mostly"},
};

static void usage(void)
{
    fprintf(stderr, "usage: peer-pthread <workload|all|list> [key=value ...]\nworkloads:\n");
    for (size_t i = 0; i < N_WORKLOADS; i++) {
        fprintf(stderr, "  %s", workloads[i].name);
        for (int k = 0; k < 6 && workloads[i].keys[k]; k++)
            fprintf(stderr, " [%s=N]", workloads[i].keys[k]);
        fprintf(stderr, "\n");
    }
    exit(64);
}

static void run(int argc, const char *const *argv)
{
    const struct workload *w = NULL;
    for (size_t i = 0; i < N_WORKLOADS; i++)
        if (strcmp(workloads[i].name, argv[0]) == 0)
            w = &workloads[i];
    if (!w) {
        fprintf(stderr, "peer-pthread: unknown workload '%s'\n", argv[0]);
        usage();
    }
    struct params p = {0};
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "peer-pthread: argument '%s' is not key=value\n", argv[i]);
            exit(64);
        }
        size_t klen = (size_t)(eq - argv[i]);
        const char *key = NULL;
        for (int k = 0; k < 6 && w->keys[k]; k++)
            if (strlen(w->keys[k]) == klen && strncmp(w->keys[k], argv[i], klen) == 0)
                key = w->keys[k];
        if (!key) {
            fprintf(stderr, "peer-pthread: workload %s has no parameter '%.*s'\n", w->name,
                    (int)klen, argv[i]);
            exit(64);
        }
        if (p.n == MAX_KV)
            usage();
        p.key[p.n] = key;
        p.val[p.n++] = eq + 1;
    }
    w->fn(&p);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < N_WORKLOADS; i++)
            printf("%s\n", workloads[i].name);
    } else if (strcmp(argv[1], "all") == 0) {
        if (argc > 2) {
            fprintf(stderr, "peer-pthread: 'all' takes no parameters\n");
            return 64;
        }
        for (size_t r = 0; r < sizeof all_runs / sizeof all_runs[0]; r++) {
            int n = 0;
            while (n < 3 && all_runs[r][n])
                n++;
            fprintf(stderr, "peer-pthread:");
            for (int i = 0; i < n; i++)
                fprintf(stderr, " %s", all_runs[r][i]);
            fprintf(stderr, "\n");
            run(n, all_runs[r]);
        }
    } else {
        run(argc - 1, (const char *const *)argv + 1);
    }
    return 0;
}
