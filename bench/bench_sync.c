/* Sync-lock workloads: pz_mutex uncontended, contended from OS threads and
 * from tasks, pz_rwlock read-mostly.  Same loops, parameters and metrics as
 * the peers (bench/peers/README.md); with no keys (from `all`) each runs
 * the rows the peers' `all` runs. */
#define _GNU_SOURCE
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic uint64_t sink;

static void atomic_max_u64(_Atomic uint64_t *m, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(m, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(m, &cur, v, memory_order_relaxed, memory_order_relaxed))
        ;
}

static long iters_for(const bench_args *a, long total, long n)
{
    long d = total / (n > 0 ? n : 1);
    return arg_get(a, "iters", d > 0 ? d : 1);
}

/* Starts `threads` threads running fn(ctx, index) behind a barrier and
 * returns the nanoseconds from the first thread's start to the last one's
 * end, each read by the thread itself.  Not from the main thread's return
 * from the barrier: with 64 threads on 2 cores the main thread is one of
 * 65 runnable threads when the barrier opens and may run again only after
 * the others have had their time slices, so a clock it starts then missed
 * up to half of a contended row's work (and more of one whose waiters
 * sleep, which leaves the main thread a core sooner). */
struct thread_arg {
    pthread_barrier_t *barrier;
    long index;
    void *ctx;
    void (*fn)(void *, long);
    int64_t start, end;
};

static void *thread_main(void *arg)
{
    struct thread_arg *t = arg;
    pthread_barrier_wait(t->barrier);
    t->start = pz_now();
    t->fn(t->ctx, t->index);
    t->end = pz_now();
    return NULL;
}

static int64_t timed_threads(long threads, void (*fn)(void *, long), void *ctx)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    struct thread_arg *args = calloc((size_t)threads, sizeof *args);
    bench_check(tids && args, "out of memory");
    for (long i = 0; i < threads; i++) {
        args[i] = (struct thread_arg){&barrier, i, ctx, fn, 0, 0};
        bench_check(pthread_create(&tids[i], NULL, thread_main, &args[i]) == 0, "pthread_create");
    }
    pthread_barrier_wait(&barrier);
    int64_t first = INT64_MAX, last = 0;
    for (long i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        first = args[i].start < first ? args[i].start : first;
        last = args[i].end > last ? args[i].end : last;
    }
    pthread_barrier_destroy(&barrier);
    free(tids);
    free(args);
    return last - first;
}

/* ---- uncontended ---- */

static void *noop_thread(void *arg)
{
    return arg;
}

static void run_uncontended(const bench_args *a)
{
    long iters = arg_get(a, "iters", 10000000);
    /* Like the pthread peer: a process that needs a mutex has threads. */
    pthread_t t;
    bench_check(pthread_create(&t, NULL, noop_thread, NULL) == 0, "pthread_create");
    pthread_join(t, NULL);
    static pz_mutex_t m;
    static uint64_t counter;
    counter = 0;
    int64_t t0 = pz_now();
    for (long i = 0; i < iters; i++) {
        pz_mutex_lock(&m);
        counter++;
        pz_mutex_unlock(&m);
    }
    int64_t d = pz_now() - t0;
    bench_check(counter == (uint64_t)iters, "uncontended: counter mismatch");
    emit("uncontended", "threads=1", "ns_per_op", (double)d / (double)iters);
}

/* ---- contended (threads) and tasks_contended (tasks) ---- */

struct contended {
    pz_mutex_t m;
    uint64_t counter; /* plain data under m */
    long iters, work;
    _Atomic uint64_t max_wait;
};

static void contended_loop(struct contended *c, long index)
{
    /* The loop's bounds are read once: they share the lock word's cache
     * line, and a load of them per iteration would pay for the other
     * core's writes to the word (the peers' loops keep them in locals). */
    const long iters = c->iters, work = c->work;
    uint64_t s = (uint64_t)index + 1, max_wait = 0;
    for (long i = 0; i < iters; i++) {
        if ((i & 63) == 0) {
            int64_t t0 = pz_now();
            pz_mutex_lock(&c->m);
            uint64_t w = (uint64_t)(pz_now() - t0);
            c->counter++;
            pz_mutex_unlock(&c->m);
            if (w > max_wait)
                max_wait = w;
        } else {
            pz_mutex_lock(&c->m);
            c->counter++;
            pz_mutex_unlock(&c->m);
        }
        if (work)
            s ^= bench_work(s + (uint64_t)i, work);
    }
    atomic_max_u64(&c->max_wait, max_wait);
    atomic_fetch_add(&sink, s);
}

static void contended_thread(void *ctx, long index)
{
    contended_loop(ctx, index);
}

static void contended_row(long threads, long work, long iters)
{
    static struct contended c;
    c = (struct contended){.iters = iters, .work = work};
    int64_t d = timed_threads(threads, contended_thread, &c);
    bench_check(c.counter == (uint64_t)(threads * iters), "contended: counter mismatch");
    char param[96];
    snprintf(param, sizeof param, "threads=%ld work=%ld", threads, work);
    emit("contended", param, "ns_per_op", (double)d / ((double)threads * (double)iters));
    emit("contended", param, "max_wait_us", (double)atomic_load(&c.max_wait) / 1000.0);
}

static void run_contended(const bench_args *a)
{
    if (a->n == 0) {
        static const long threads[] = {2, 8, 64};
        for (int t = 0; t < 3; t++)
            for (long work = 0; work <= 100; work += 100)
                contended_row(threads[t], work, iters_for(a, 4000000, threads[t]));
        return;
    }
    long threads = arg_get(a, "threads", 2);
    contended_row(threads, arg_get(a, "work", 0), iters_for(a, 4000000, threads));
}

struct tasks_cfg {
    struct contended *c;
    long tasks;
    int64_t elapsed;
};

struct task_arg {
    struct contended *c;
    long index;
};

static void *contended_task(void *arg)
{
    struct task_arg *t = arg;
    contended_loop(t->c, t->index);
    return NULL;
}

static void *tasks_contended_main(void *arg)
{
    struct tasks_cfg *cfg = arg;
    struct task_arg *args = calloc((size_t)cfg->tasks, sizeof *args);
    pz_task_t **t = calloc((size_t)cfg->tasks, sizeof *t);
    bench_check(args && t, "out of memory");
    int64_t t0 = pz_now();
    for (long i = 0; i < cfg->tasks; i++) {
        args[i] = (struct task_arg){cfg->c, i};
        t[i] = pz_spawn(contended_task, &args[i]);
    }
    for (long i = 0; i < cfg->tasks; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join");
    cfg->elapsed = pz_now() - t0;
    free(args);
    free(t);
    return NULL;
}

static void tasks_contended_row(long tasks, int workers, long work, long iters)
{
    static struct contended c;
    c = (struct contended){.iters = iters, .work = work};
    struct tasks_cfg cfg = {&c, tasks, 0};
    run_with_workers(workers, tasks_contended_main, &cfg);
    bench_check(c.counter == (uint64_t)(tasks * iters), "tasks_contended: counter mismatch");
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d work=%ld", tasks, workers, work);
    emit("tasks_contended", param, "ns_per_op", (double)cfg.elapsed / ((double)tasks * (double)iters));
    emit("tasks_contended", param, "max_wait_us", (double)atomic_load(&c.max_wait) / 1000.0);
}

static void run_tasks_contended(const bench_args *a)
{
    long tasks = arg_get(a, "tasks", 64);
    int workers = (int)arg_get(a, "workers", 2);
    if (a->n == 0) {
        /* The data-critical grid: 2, 64 and 1024 tasks on 2 workers, with
         * and without work outside the lock; the same total of sections
         * per row. */
        static const long grid[] = {2, 64, 1024};
        for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++) {
            tasks_contended_row(grid[i], workers, 0, iters_for(a, 4000000, grid[i]));
            tasks_contended_row(grid[i], workers, 100, iters_for(a, 4000000, grid[i]));
        }
        return;
    }
    tasks_contended_row(tasks, workers, arg_get(a, "work", 0), iters_for(a, 4000000, tasks));
}

/* ---- rwlock_read_mostly ---- */

struct quad {
    uint64_t a, b, c, d;
};

struct rw_ctx {
    pz_rwlock_t l;
    struct quad q; /* under l */
    long iters, write_pct;
    _Atomic uint64_t writes;
};

static unsigned lcg_pct(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((*s >> 33) % 100);
}

static void rw_thread(void *ctx, long index)
{
    struct rw_ctx *c = ctx;
    const long iters = c->iters, write_pct = c->write_pct; /* as in contended_loop */
    uint64_t rng = (uint64_t)index + 1, nw = 0, s = 0;
    for (long i = 0; i < iters; i++) {
        if (lcg_pct(&rng) < (unsigned)write_pct) {
            pz_rwlock_write(&c->l);
            c->q.a++;
            c->q.b++;
            c->q.c++;
            c->q.d++;
            pz_rwlock_write_unlock(&c->l);
            nw++;
        } else {
            pz_rwlock_read(&c->l);
            struct quad q = c->q;
            pz_rwlock_read_unlock(&c->l);
            bench_check(q.a == q.b && q.b == q.c && q.c == q.d, "rwlock_read_mostly: torn read");
            s += q.a;
        }
    }
    atomic_fetch_add(&c->writes, nw);
    atomic_fetch_add(&sink, s);
}

static void run_rwlock_read_mostly(const bench_args *a)
{
    long threads = arg_get(a, "threads", 8);
    long write_pct = arg_get(a, "write_pct", 1);
    long iters = iters_for(a, 4000000, threads);
    static struct rw_ctx c;
    c = (struct rw_ctx){.iters = iters, .write_pct = write_pct};
    int64_t d = timed_threads(threads, rw_thread, &c);
    struct quad q = c.q;
    bench_check(q.a == q.b && q.b == q.c && q.c == q.d && q.a == atomic_load(&c.writes),
                "rwlock_read_mostly: write count mismatch");
    char param[96];
    snprintf(param, sizeof param, "threads=%ld write_pct=%ld", threads, write_pct);
    emit("rwlock_read_mostly", param, "ns_per_op", (double)d / ((double)threads * (double)iters));
}

const workload sync_workloads[] = {
    {"uncontended", "iters", run_uncontended},
    {"contended", "threads iters work", run_contended},
    {"tasks_contended", "tasks workers iters work", run_tasks_contended},
    {"rwlock_read_mostly", "threads iters write_pct", run_rwlock_read_mostly},
    {NULL, NULL, NULL},
};
