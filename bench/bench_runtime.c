/* Runtime workloads: spawn+join, yield, sleep precision, memory per idle
 * task.  Each is timed inside the runtime, as the peers time theirs. */
#include "bench.h"
#include "hist.h"

#include <errno.h>
#include <stdatomic.h>

#include <stdio.h>
#include <stdlib.h>

/* ---- spawn_join ---- */

static void *plus_one(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

struct spawn_join {
    int n;
    double ns_per_task;
};

static void *spawn_join_main(void *arg)
{
    struct spawn_join *s = arg;
    int64_t start = pz_now();
    pz_task_t **t = malloc((size_t)s->n * sizeof *t);
    for (int i = 0; i < s->n; i++)
        t[i] = pz_spawn(plus_one, (void *)(uintptr_t)i);
    for (int i = 0; i < s->n; i++) {
        void *r;
        bench_check(pz_join(t[i], &r) == 0, "join");
        bench_check((uintptr_t)r == (uintptr_t)i + 1, "spawn_join result");
    }
    s->ns_per_task = (double)(pz_now() - start) / s->n;
    free(t);
    return NULL;
}

static void run_spawn_join(const bench_args *a)
{
    struct spawn_join s = {(int)arg_get(a, "n", 100000), 0};
    int workers = (int)arg_get(a, "workers", 2);
    run_with_workers(workers, spawn_join_main, &s);
    char param[64];
    snprintf(param, sizeof param, "n=%d workers=%d", s.n, workers);
    emit("spawn_join", param, "ns_per_task", s.ns_per_task);
}

/* ---- spawn_burst ----
 * Bursts of tasks that each suspend once (a yield) before they return, so
 * that a whole burst holds its stacks at once; each burst is joined before
 * the next is spawned.  spawn_join's tasks never suspend and reuse one
 * stack per worker; this one measures getting and giving back many. */

static void *yield_plus_one(void *arg)
{
    pz_yield();
    return (void *)((uintptr_t)arg + 1);
}

struct spawn_burst {
    int burst, rounds;
    double ns_per_task;
};

static void *spawn_burst_main(void *arg)
{
    struct spawn_burst *s = arg;
    pz_task_t **t = malloc((size_t)s->burst * sizeof *t);
    bench_check(t != NULL, "out of memory");
    int64_t start = pz_now();
    for (int r = 0; r < s->rounds; r++) {
        for (int i = 0; i < s->burst; i++)
            t[i] = pz_spawn(yield_plus_one, (void *)(uintptr_t)i);
        for (int i = 0; i < s->burst; i++) {
            void *res;
            bench_check(pz_join(t[i], &res) == 0, "join");
            bench_check((uintptr_t)res == (uintptr_t)i + 1, "spawn_burst result");
        }
    }
    s->ns_per_task = (double)(pz_now() - start) / ((double)s->burst * (double)s->rounds);
    free(t);
    return NULL;
}

static void run_spawn_burst(const bench_args *a)
{
    struct spawn_burst s = {(int)arg_get(a, "burst", 1000), (int)arg_get(a, "rounds", 100), 0};
    int workers = (int)arg_get(a, "workers", 2);
    bench_check(s.burst > 0 && s.rounds > 0, "burst and rounds above 0");
    run_with_workers(workers, spawn_burst_main, &s);
    char param[64];
    snprintf(param, sizeof param, "burst=%d rounds=%d workers=%d", s.burst, s.rounds, workers);
    emit("spawn_burst", param, "ns_per_task", s.ns_per_task);
}

/* ---- yield ---- */

struct yield_cfg {
    int tasks;
    long iters;
    double ns_per_yield;
};

static void *yielder(void *arg)
{
    long iters = *(long *)arg;
    for (long i = 0; i < iters; i++)
        pz_yield();
    return NULL;
}

static void *yield_main(void *arg)
{
    struct yield_cfg *y = arg;
    pz_task_t *t[256];
    int64_t start = pz_now();
    for (int i = 0; i < y->tasks; i++)
        t[i] = pz_spawn(yielder, &y->iters);
    for (int i = 0; i < y->tasks; i++)
        pz_join(t[i], NULL);
    y->ns_per_yield = (double)(pz_now() - start) / ((double)y->tasks * (double)y->iters);
    return NULL;
}

static void run_yield(const bench_args *a)
{
    struct yield_cfg y = {(int)arg_get(a, "tasks", 2), arg_get(a, "iters", 1000000), 0};
    int workers = (int)arg_get(a, "workers", 1);
    bench_check(y.tasks > 0 && y.tasks <= 256, "tasks in 1..256");
    run_with_workers(workers, yield_main, &y);
    char param[64];
    snprintf(param, sizeof param, "tasks=%d workers=%d", y.tasks, workers);
    emit("yield", param, "ns_per_yield", y.ns_per_yield);
}

/* ---- sleep ---- */

struct sleep_cfg {
    int n;
    long us;
    int64_t *durations;
};


static void *sleep_main(void *arg)
{
    struct sleep_cfg *s = arg;
    for (int i = 0; i < s->n; i++) {
        int64_t start = pz_now();
        pz_sleep(s->us * 1000);
        s->durations[i] = pz_now() - start;
    }
    return NULL;
}

static void run_sleep(const bench_args *a)
{
    struct sleep_cfg s = {(int)arg_get(a, "n", 2000), arg_get(a, "us", 100), NULL};
    s.durations = calloc((size_t)s.n, sizeof(int64_t));
    run_with_workers(1, sleep_main, &s);
    hist *h = calloc(1, sizeof *h);
    bench_check(h != NULL, "calloc");
    double sum = 0;
    for (int i = 0; i < s.n; i++) {
        bench_check(s.durations[i] >= s.us * 1000, "slept at least the asked time");
        sum += (double)s.durations[i];
        hist_add(h, (uint64_t)s.durations[i]);
    }
    char param[64];
    snprintf(param, sizeof param, "n=%d us=%ld", s.n, s.us);
    emit("sleep", param, "p50_us", hist_permille(h, 500) / 1000.0);
    emit("sleep", param, "p99_us", hist_permille(h, 990) / 1000.0);
    emit("sleep", param, "p999_us", hist_permille(h, 999) / 1000.0);
    emit("sleep", param, "mean_us", sum / s.n / 1000.0);
    free(h);
    free(s.durations);
}

/* ---- idle_rss ---- */

struct idle_cfg {
    int n;
    _Atomic int parked;
    double bytes_per_task;
};

static void *idle_task(void *arg)
{
    struct idle_cfg *c = arg;
    atomic_fetch_add(&c->parked, 1);
    /* Parked until cancelled at the end. */
    return (void *)(intptr_t)pz_sleep_until(PZ_FOREVER);
}

static void *idle_main(void *arg)
{
    struct idle_cfg *c = arg;
    pz_task_t **t = malloc((size_t)c->n * sizeof *t);
    for (int i = 0; i < c->n; i++)
        t[i] = NULL;
    pz_sleep(20000000);
    long before = rss_bytes();
    for (int i = 0; i < c->n; i++) {
        t[i] = pz_spawn(idle_task, c);
        bench_check(t[i] != NULL, "spawn");
    }
    while (atomic_load(&c->parked) < c->n)
        pz_sleep(1000000);
    pz_sleep(20000000);
    long after = rss_bytes();
    c->bytes_per_task = (double)(after - before) / c->n;
    for (int i = 0; i < c->n; i++)
        pz_cancel(t[i]);
    for (int i = 0; i < c->n; i++) {
        void *r;
        bench_check(pz_join(t[i], &r) == 0, "join");
        bench_check((intptr_t)r == -ECANCELED, "released by cancel");
    }
    free(t);
    return NULL;
}

static void run_idle_rss(const bench_args *a)
{
    struct idle_cfg c = {(int)arg_get(a, "n", 100000), 0, 0};
    int workers = (int)arg_get(a, "workers", 2);
    pz_config_t cfg = {.workers = workers, .stack_size = (size_t)arg_get(a, "stack_kib", 0) * 1024};
    bench_check(pz_run(&cfg, idle_main, &c, NULL) == 0, "pz_run");
    char param[64];
    snprintf(param, sizeof param, "n=%d workers=%d", c.n, workers);
    emit("idle_rss", param, "bytes_per_task", c.bytes_per_task);
}

const workload runtime_workloads[] = {
    {"spawn_join", "n workers", run_spawn_join},
    {"spawn_burst", "burst rounds workers", run_spawn_burst},
    {"yield", "tasks workers iters", run_yield},
    {"sleep", "n us", run_sleep},
    {"idle_rss", "n workers stack_kib", run_idle_rss},
    {NULL, NULL, NULL},
};
