/* Async-primitive workloads: pz_async_mutex uncontended and contended from
 * tasks, pz_async_rwlock, pz_semaphore, pz_chan ping-pong and MPMC.  Same
 * loops, parameters and metrics as the peers (bench/peers/README.md). */
#define _GNU_SOURCE
#include "bench.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

static _Atomic uint64_t sink;

static long iters_for(const bench_args *a, long total, long n)
{
    long d = total / (n > 0 ? n : 1);
    return arg_get(a, "iters", d > 0 ? d : 1);
}

static void atomic_max_u64(_Atomic uint64_t *m, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(m, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak_explicit(m, &cur, v, memory_order_relaxed, memory_order_relaxed))
        ;
}

/* Spawns n tasks running fn(ctx, index), joins them, returns the elapsed
 * nanoseconds (measured inside the runtime, after it has started). */
struct fan {
    long n;
    void (*fn)(void *, long);
    void *ctx;
    int64_t elapsed;
};

struct fan_arg {
    struct fan *f;
    long index;
};

static void *fan_task(void *arg)
{
    struct fan_arg *a = arg;
    a->f->fn(a->f->ctx, a->index);
    return NULL;
}

static void *fan_main(void *arg)
{
    struct fan *f = arg;
    struct fan_arg *args = calloc((size_t)f->n, sizeof *args);
    pz_task_t **t = calloc((size_t)f->n, sizeof *t);
    bench_check(args && t, "out of memory");
    int64_t t0 = pz_now();
    for (long i = 0; i < f->n; i++) {
        args[i] = (struct fan_arg){f, i};
        t[i] = pz_spawn(fan_task, &args[i]);
    }
    for (long i = 0; i < f->n; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join");
    f->elapsed = pz_now() - t0;
    free(args);
    free(t);
    return NULL;
}

static int64_t fan_out(int workers, long n, void (*fn)(void *, long), void *ctx)
{
    struct fan f = {n, fn, ctx, 0};
    run_with_workers(workers, fan_main, &f);
    return f.elapsed;
}

/* ---- async_uncontended ---- */

struct unc {
    long iters;
    int64_t elapsed;
};

static void *unc_main(void *arg)
{
    struct unc *u = arg;
    static pz_async_mutex_t m;
    uint64_t counter = 0;
    int64_t t0 = pz_now();
    for (long i = 0; i < u->iters; i++) {
        pz_async_mutex_lock(&m);
        counter++;
        pz_async_mutex_unlock(&m);
    }
    u->elapsed = pz_now() - t0;
    bench_check(counter == (uint64_t)u->iters, "async_uncontended: counter mismatch");
    return NULL;
}

static void run_uncontended(const bench_args *a)
{
    struct unc u = {arg_get(a, "iters", 5000000), 0};
    run_with_workers(1, unc_main, &u);
    emit("async_uncontended", "tasks=1", "ns_per_op", (double)u.elapsed / (double)u.iters);
}

/* ---- async_contended ---- */

struct contended {
    pz_async_mutex_t m;
    uint64_t counter; /* plain data under m */
    long iters, work;
    _Atomic uint64_t max_wait;
};

static void contended_loop(void *ctx, long index)
{
    struct contended *c = ctx;
    /* Read once: they share the lock's cache line (bench_sync.c's
     * contended_loop says why). */
    const long iters = c->iters, work = c->work;
    uint64_t s = (uint64_t)index + 1, max_wait = 0;
    for (long i = 0; i < iters; i++) {
        if ((i & 63) == 0) {
            int64_t t0 = pz_now();
            pz_async_mutex_lock(&c->m);
            uint64_t w = (uint64_t)(pz_now() - t0);
            c->counter++;
            pz_async_mutex_unlock(&c->m);
            if (w > max_wait)
                max_wait = w;
        } else {
            pz_async_mutex_lock(&c->m);
            c->counter++;
            pz_async_mutex_unlock(&c->m);
        }
        if (work)
            s ^= bench_work(s + (uint64_t)i, work);
    }
    atomic_max_u64(&c->max_wait, max_wait);
    atomic_fetch_add(&sink, s);
}

static void contended_row(const bench_args *a, long tasks, int workers, long work)
{
    static struct contended c;
    c = (struct contended){.iters = iters_for(a, 2000000, tasks), .work = work};
    int64_t d = fan_out(workers, tasks, contended_loop, &c);
    bench_check(c.counter == (uint64_t)(tasks * c.iters), "async_contended: counter mismatch");
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d work=%ld", tasks, workers, work);
    emit("async_contended", param, "ns_per_op", (double)d / ((double)tasks * (double)c.iters));
    emit("async_contended", param, "max_wait_us", (double)atomic_load(&c.max_wait) / 1000.0);
}

static void run_contended(const bench_args *a)
{
    int workers = (int)arg_get(a, "workers", 2);
    if (a->n == 0) {
        /* The data-critical grid, as tasks_contended: 2, 64 and 1024 tasks
         * on 2 workers, with and without work outside the lock. */
        static const long grid[] = {2, 64, 1024};
        for (size_t i = 0; i < sizeof grid / sizeof grid[0]; i++) {
            contended_row(a, grid[i], workers, 0);
            contended_row(a, grid[i], workers, 100);
        }
        return;
    }
    contended_row(a, arg_get(a, "tasks", 64), workers, arg_get(a, "work", 0));
}

/* ---- async_rwlock ---- */

struct quad {
    uint64_t a, b, c, d;
};

struct rw_ctx {
    pz_async_rwlock_t l;
    struct quad q; /* under l */
    long iters, write_pct;
    _Atomic uint64_t writes;
};

static unsigned lcg_pct(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)((*s >> 33) % 100);
}

static void rw_loop(void *ctx, long index)
{
    struct rw_ctx *c = ctx;
    const long iters = c->iters, write_pct = c->write_pct; /* read once, as in contended_loop */
    uint64_t rng = (uint64_t)index + 1, nw = 0, s = 0;
    for (long i = 0; i < iters; i++) {
        if (lcg_pct(&rng) < (unsigned)write_pct) {
            pz_async_rwlock_write(&c->l);
            c->q.a++;
            c->q.b++;
            c->q.c++;
            c->q.d++;
            pz_async_rwlock_write_unlock(&c->l);
            nw++;
        } else {
            pz_async_rwlock_read(&c->l);
            struct quad q = c->q;
            pz_async_rwlock_read_unlock(&c->l);
            bench_check(q.a == q.b && q.b == q.c && q.c == q.d, "async_rwlock: torn read");
            s += q.a;
        }
    }
    atomic_fetch_add(&c->writes, nw);
    atomic_fetch_add(&sink, s);
}

static void run_rwlock(const bench_args *a)
{
    long tasks = arg_get(a, "tasks", 64), pct = arg_get(a, "write_pct", 10);
    int workers = (int)arg_get(a, "workers", 2);
    static struct rw_ctx c;
    c = (struct rw_ctx){.iters = iters_for(a, 2000000, tasks), .write_pct = pct};
    int64_t d = fan_out(workers, tasks, rw_loop, &c);
    bench_check(c.q.a == atomic_load(&c.writes), "async_rwlock: write count mismatch");
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d write_pct=%ld", tasks, workers, pct);
    emit("async_rwlock", param, "ns_per_op", (double)d / ((double)tasks * (double)c.iters));
}

/* ---- semaphore ---- */

struct sem_ctx {
    pz_semaphore_t s;
    long iters;
    _Atomic uint64_t acquired;
};

static void sem_loop(void *ctx, long index)
{
    (void)index;
    struct sem_ctx *c = ctx;
    /* Read once: iters shares the semaphore's cache line, and a load of it
     * per iteration would pay for the other worker's writes to the word
     * (the Go peer's loop bound is a local too). */
    const long iters = c->iters;
    uint64_t n = 0;
    for (long i = 0; i < iters; i++) {
        if (pz_semaphore_acquire(&c->s, 1) == 0) {
            n++;
            pz_semaphore_release(&c->s, 1);
        }
    }
    atomic_fetch_add(&c->acquired, n);
}

static void run_semaphore(const bench_args *a)
{
    long tasks = arg_get(a, "tasks", 64), permits = arg_get(a, "permits", 4);
    int workers = (int)arg_get(a, "workers", 2);
    static struct sem_ctx c;
    c = (struct sem_ctx){.iters = iters_for(a, 2000000, tasks)};
    pz_semaphore_init(&c.s, (uint64_t)permits);
    int64_t d = fan_out(workers, tasks, sem_loop, &c);
    bench_check(atomic_load(&c.acquired) == (uint64_t)(tasks * c.iters), "semaphore: acquisitions mismatch");
    bench_check(pz_semaphore_available(&c.s) == (uint64_t)permits, "semaphore: permits not back");
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d permits=%ld", tasks, workers, permits);
    emit("semaphore", param, "ns_per_op", (double)d / ((double)tasks * (double)c.iters));
}

/* ---- chan_pingpong ---- */

struct pp {
    pz_chan_t to, back;
    uint64_t buf_to[PZ_CHAN_BUFFER_SIZE(sizeof(uint64_t), 1) / 8], buf_back[PZ_CHAN_BUFFER_SIZE(sizeof(uint64_t), 1) / 8];
    long iters;
    int64_t elapsed;
};

static void *pp_echo(void *arg)
{
    struct pp *p = arg;
    uint64_t v;
    for (long i = 0; i < p->iters; i++) {
        bench_check(pz_chan_recv(&p->to, &v) == 0, "chan_pingpong: recv");
        v++;
        bench_check(pz_chan_send(&p->back, &v) == 0, "chan_pingpong: send");
    }
    return NULL;
}

static void *pp_main(void *arg)
{
    struct pp *p = arg;
    bench_check(pz_chan_init(&p->to, sizeof(uint64_t), 1, p->buf_to, sizeof p->buf_to) == 0, "chan_pingpong: init");
    bench_check(pz_chan_init(&p->back, sizeof(uint64_t), 1, p->buf_back, sizeof p->buf_back) == 0,
                "chan_pingpong: init");
    int64_t t0 = pz_now();
    pz_task_t *t = pz_spawn(pp_echo, p);
    uint64_t v = 0;
    for (long i = 0; i < p->iters; i++) {
        uint64_t sent = v;
        bench_check(pz_chan_send(&p->to, &v) == 0, "chan_pingpong: send");
        bench_check(pz_chan_recv(&p->back, &v) == 0, "chan_pingpong: recv");
        bench_check(v == sent + 1, "chan_pingpong: bad reply");
    }
    bench_check(pz_join(t, NULL) == 0, "join");
    p->elapsed = pz_now() - t0;
    return NULL;
}

static void run_pingpong(const bench_args *a)
{
    int workers = (int)arg_get(a, "workers", 1);
    static struct pp p;
    p = (struct pp){.iters = arg_get(a, "iters", 300000)};
    run_with_workers(workers, pp_main, &p);
    char param[64];
    snprintf(param, sizeof param, "workers=%d", workers);
    emit("chan_pingpong", param, "ns_per_roundtrip", (double)p.elapsed / (double)p.iters);
}

/* ---- chan_mpmc ---- */

struct mpmc {
    pz_chan_t *ch;
    long producers, consumers, items;
    _Atomic uint64_t count, sum;
    _Atomic long producers_left;
};

static void mpmc_role(void *ctx, long index)
{
    struct mpmc *m = ctx;
    if (index < m->producers) {
        for (long v = index + 1; v <= m->items; v += m->producers) {
            uint64_t x = (uint64_t)v;
            bench_check(pz_chan_send(m->ch, &x) == 0, "chan_mpmc: send");
        }
        if (atomic_fetch_sub(&m->producers_left, 1) == 1)
            pz_chan_close(m->ch);
        return;
    }
    uint64_t n = 0, s = 0, x;
    while (pz_chan_recv(m->ch, &x) == 0) {
        n++;
        s += x;
    }
    atomic_fetch_add(&m->count, n);
    atomic_fetch_add(&m->sum, s);
}

static void mpmc_row(long producers, long consumers, int workers, long cap, long items)
{
    static struct mpmc m;
    m = (struct mpmc){.producers = producers, .consumers = consumers, .items = items};
    atomic_store(&m.producers_left, producers);
    m.ch = pz_chan_create(sizeof(uint64_t), (size_t)cap);
    bench_check(m.ch != NULL, "chan_mpmc: create");
    int64_t d = fan_out(workers, producers + consumers, mpmc_role, &m);
    bench_check(atomic_load(&m.count) == (uint64_t)items, "chan_mpmc: count mismatch");
    bench_check(atomic_load(&m.sum) == (uint64_t)items * (uint64_t)(items + 1) / 2, "chan_mpmc: sum mismatch");
    pz_chan_destroy(m.ch);
    char param[128];
    snprintf(param, sizeof param, "producers=%ld consumers=%ld workers=%d cap=%ld", producers, consumers, workers,
             cap);
    emit("chan_mpmc", param, "ns_per_item", (double)d / (double)items);
}

static void run_mpmc(const bench_args *a)
{
    long producers = arg_get(a, "producers", 4), cap = arg_get(a, "cap", 1024);
    long items = arg_get(a, "items", 1000000);
    int workers = (int)arg_get(a, "workers", 2);
    if (a->n == 0) {
        mpmc_row(producers, 4, workers, cap, items);
        mpmc_row(producers, 1, workers, cap, items);
        return;
    }
    mpmc_row(producers, arg_get(a, "consumers", 4), workers, cap, items);
}

const workload async_workloads[] = {
    {"async_uncontended", "iters", run_uncontended},
    {"async_contended", "tasks workers iters work", run_contended},
    {"async_rwlock", "tasks workers iters write_pct", run_rwlock},
    {"semaphore", "tasks workers permits iters", run_semaphore},
    {"chan_pingpong", "iters workers", run_pingpong},
    {"chan_mpmc", "producers consumers workers cap items", run_mpmc},
    {NULL, NULL, NULL},
};
