/* Scheduling under overload: how long a task that was woken by an event
 * waits for a worker while many other tasks are runnable.
 *
 *   ticker            one task sleeps until an absolute deadline every
 *                     period_us (2 ms) beside `tasks` tasks that compute
 *                     (`work` xorshift steps) and yield, on `workers`
 *                     workers.  Lateness = when the ticker runs - its
 *                     deadline: p50, p99, max.  A ticker that falls behind
 *                     sleeps until deadlines already past, so a backlog
 *                     shows as lateness, as it would in a service.
 *   blocking_section  `holders` tasks take one pz_async_mutex in turn and
 *                     hold it across a blocking call of block_ms (20 ms,
 *                     nanosleep on the blocking pool: pz_blocking), beside
 *                     `clients` tasks that compute and yield.  Hold time
 *                     (lock acquired to unlock) p50, p99, max against its
 *                     floor of block_ms, and sections per second.
 *
 * The same programs are in bench/peers/tokio (tokio::time::sleep_until,
 * tokio::sync::Mutex + spawn_blocking) and bench/peers/go (time.Sleep,
 * sync.Mutex + a blocking nanosleep system call).  The computing tasks'
 * iterations per second are reported too, so a scheduler that served the
 * woken task by starving the others would show it. */
#define _GNU_SOURCE
#include "bench.h"
#include "hist.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MS INT64_C(1000000)

/* The computing tasks of both workloads. */
struct busy {
    long work;
    _Atomic bool stop;
    _Atomic uint64_t ops;
};

static void *busy_task(void *arg)
{
    struct busy *b = arg;
    uint64_t x = (uint64_t)(uintptr_t)&x, n = 0;
    while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        x ^= bench_work(x + n, b->work);
        pz_yield();
        n++;
    }
    atomic_fetch_add(&b->ops, n);
    __asm__ volatile("" : : "r"(x));
    return NULL;
}

static pz_task_t **spawn_busy(struct busy *b, long n)
{
    pz_task_t **t = calloc((size_t)n, sizeof *t);
    bench_check(t != NULL, "out of memory");
    for (long i = 0; i < n; i++) {
        t[i] = pz_spawn(busy_task, b);
        bench_check(t[i] != NULL, "spawn");
    }
    return t;
}

static void join_busy(struct busy *b, pz_task_t **t, long n)
{
    atomic_store(&b->stop, true);
    for (long i = 0; i < n; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join");
    free(t);
}

/* ---- ticker ---- */

struct ticker {
    long tasks, seconds;
    int64_t period;
    struct busy busy;
    hist *late;
    uint64_t ticks;
    double busy_ops_per_s;
};

static void *ticker_task(void *arg)
{
    struct ticker *k = arg;
    int64_t start = pz_now();
    int64_t deadline = start + k->period, end = start + k->seconds * 1000 * MS;
    while (deadline <= end) {
        bench_check(pz_sleep_until(deadline) == 0, "ticker sleep");
        int64_t now = pz_now();
        bench_check(now >= deadline, "woke before its deadline");
        hist_add(k->late, (uint64_t)(now - deadline));
        k->ticks++;
        deadline += k->period;
    }
    return NULL;
}

static void *ticker_main(void *arg)
{
    struct ticker *k = arg;
    pz_task_t **busy = spawn_busy(&k->busy, k->tasks);
    int64_t t0 = pz_now();
    pz_task_t *tk = pz_spawn(ticker_task, k);
    bench_check(tk != NULL && pz_join(tk, NULL) == 0, "ticker");
    join_busy(&k->busy, busy, k->tasks);
    k->busy_ops_per_s = (double)atomic_load(&k->busy.ops) * 1e9 / (double)(pz_now() - t0);
    return NULL;
}

static void run_ticker(const bench_args *a)
{
    struct ticker k = {.tasks = arg_get(a, "tasks", 1000), .seconds = arg_get(a, "seconds", 2),
                       .period = arg_get(a, "period_us", 2000) * 1000};
    k.busy.work = arg_get(a, "work", 1000);
    int workers = (int)arg_get(a, "workers", 2);
    bench_check(k.tasks >= 0 && k.seconds > 0 && k.period > 0 && workers > 0, "ticker parameters");
    k.late = calloc(1, sizeof *k.late);
    bench_check(k.late != NULL, "out of memory");
    run_with_workers(workers, ticker_main, &k);
    bench_check(k.ticks == hist_total(k.late) && k.ticks > 0, "tick count");
    char param[96];
    snprintf(param, sizeof param, "tasks=%ld workers=%d work=%ld period_us=%lld", k.tasks, workers, k.busy.work,
             (long long)(k.period / 1000));
    emit("ticker", param, "late_p50_us", hist_permille(k.late, 500) / 1000.0);
    emit("ticker", param, "late_p99_us", hist_permille(k.late, 990) / 1000.0);
    emit("ticker", param, "late_max_us", hist_permille(k.late, 1000) / 1000.0);
    emit("ticker", param, "busy_ops_per_s", k.busy_ops_per_s);
    free(k.late);
}

/* ---- blocking_section ---- */

struct section {
    long clients, holders, seconds;
    int64_t block;
    struct busy busy;
    pz_async_mutex_t lock;
    hist *holds;       /* written under the lock */
    uint64_t sections; /* written under the lock */
    int64_t deadline;
    double sections_per_s, client_ops_per_s;
};

/* The blocking call: runs on a pool thread, which it blocks. */
static void *block_call(void *arg)
{
    int64_t ns = *(int64_t *)arg;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0)
        ;
    return arg;
}

static void *holder_task(void *arg)
{
    struct section *s = arg;
    while (pz_now() < s->deadline) {
        bench_check(pz_async_mutex_lock(&s->lock) == 0, "async lock");
        int64_t got = pz_now();
        void *r = NULL;
        bench_check(pz_blocking(block_call, &s->block, &r) == 0 && r == &s->block, "pz_blocking");
        int64_t held = pz_now() - got;
        bench_check(held >= s->block, "held at least the blocking call");
        hist_add(s->holds, (uint64_t)held);
        s->sections++;
        pz_async_mutex_unlock(&s->lock);
    }
    return NULL;
}

static void *section_main(void *arg)
{
    struct section *s = arg;
    pz_task_t **busy = spawn_busy(&s->busy, s->clients);
    int64_t t0 = pz_now();
    s->deadline = t0 + s->seconds * 1000 * MS;
    pz_task_t **h = calloc((size_t)s->holders, sizeof *h);
    bench_check(h != NULL, "out of memory");
    for (long i = 0; i < s->holders; i++)
        bench_check((h[i] = pz_spawn(holder_task, s)) != NULL, "spawn");
    for (long i = 0; i < s->holders; i++)
        bench_check(pz_join(h[i], NULL) == 0, "join");
    int64_t elapsed = pz_now() - t0;
    join_busy(&s->busy, busy, s->clients);
    s->sections_per_s = (double)s->sections * 1e9 / (double)elapsed;
    s->client_ops_per_s = (double)atomic_load(&s->busy.ops) * 1e9 / (double)(pz_now() - t0);
    free(h);
    return NULL;
}

static void run_blocking_section(const bench_args *a)
{
    struct section s = {.clients = arg_get(a, "clients", 1000), .holders = arg_get(a, "holders", 4),
                        .seconds = arg_get(a, "seconds", 2), .block = arg_get(a, "block_ms", 20) * MS};
    s.busy.work = arg_get(a, "work", 1000);
    int workers = (int)arg_get(a, "workers", 2);
    bench_check(s.clients >= 0 && s.holders > 0 && s.seconds > 0 && s.block > 0 && workers > 0,
                "blocking_section parameters");
    s.holds = calloc(1, sizeof *s.holds);
    bench_check(s.holds != NULL, "out of memory");
    run_with_workers(workers, section_main, &s);
    bench_check(s.sections == hist_total(s.holds) && s.sections > 0, "section count");
    char param[112];
    snprintf(param, sizeof param, "clients=%ld holders=%ld workers=%d work=%ld block_ms=%lld", s.clients,
             s.holders, workers, s.busy.work, (long long)(s.block / MS));
    emit("blocking_section", param, "hold_p50_us", hist_permille(s.holds, 500) / 1000.0);
    emit("blocking_section", param, "hold_p99_us", hist_permille(s.holds, 990) / 1000.0);
    emit("blocking_section", param, "hold_max_us", hist_permille(s.holds, 1000) / 1000.0);
    emit("blocking_section", param, "sections_per_s", s.sections_per_s);
    emit("blocking_section", param, "client_ops_per_s", s.client_ops_per_s);
    free(s.holds);
}

const workload overload_workloads[] = {
    {"ticker", "tasks workers work period_us seconds", run_ticker},
    {"blocking_section", "clients holders workers work block_ms seconds", run_blocking_section},
    {NULL, NULL, NULL},
};
