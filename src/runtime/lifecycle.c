/*
 * The runtime's life: pz_run builds the runtime, publishes it, starts the
 * workers and the main task, waits for main to return, stops the workers,
 * frees what is left and unpublishes it.  Also the pins that let a plain
 * thread walk the workers of the running runtime safely.
 *
 * One runtime at a time: runtime_claimed is taken before pz__rt is
 * published and given back after the runtime is freed.  pz__rt is non-NULL
 * exactly while the workers may be walked; retire clears it first and then
 * waits until no plain thread holds a pin (a Dekker pair, see pz__rt_pin).
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"
#include "../arch/arch_signal.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Atomic(pz__runtime *) pz__rt;
bool pz__debug;

/* Plain threads inside a pinned walk of the runtime. */
static _Atomic long rt_pins;

pz__runtime *pz__rt_pin(void)
{
    pz__worker *w = pz__current_worker();
    if (w)
        return w->rt;
    /* Count, then look: a Dekker pair with pz_run, which clears pz__rt
     * and then waits for the count, both in seq_cst.  Either we see NULL,
     * or pz_run sees us and keeps the runtime until we leave. */
    atomic_fetch_add_explicit(&rt_pins, 1, memory_order_seq_cst);
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_seq_cst);
    if (!rt)
        atomic_fetch_sub_explicit(&rt_pins, 1, memory_order_release);
    return rt;
}

void pz__rt_unpin(pz__runtime *rt)
{
    if (rt && !pz__current_worker())
        atomic_fetch_sub_explicit(&rt_pins, 1, memory_order_release);
}

/* One runtime at a time: claimed before pz__rt is published, released
 * after it is freed. */
static _Atomic bool runtime_claimed;

static void runtime_destroy(pz__runtime *rt);

/* Unpublishes rt, waits for the plain threads still walking it, frees it,
 * and lets the next pz_run start. */
static void retire(pz__runtime *rt)
{
    atomic_store_explicit(&pz__rt, NULL, memory_order_seq_cst);
    while (atomic_load_explicit(&rt_pins, memory_order_seq_cst) != 0)
        sched_yield();
    runtime_destroy(rt);
    atomic_store(&runtime_claimed, false);
}

struct main_call {
    pz_fn fn;
    void *arg;
    void *result;
    pz__runtime *rt;
};

static void *main_task(void *arg)
{
    struct main_call *m = arg;
    m->result = m->fn(m->arg);
    pz__task_end(pz__current_task()); /* main's groups and task-locals, before the runtime stops */
    pz__main_exit_hooks_run();
    atomic_store(&m->rt->main_done, 1);
    pz__futex_wake(&m->rt->main_done, 1);
    return NULL;
}

static void free_task_list(pz_task_t *t)
{
    while (t) {
        pz_task_t *next = t->next;
        pz__task_free(t);
        t = next;
    }
}

/* After the workers stopped: frees the tasks that were still queued or
 * sleeping.  Tasks parked elsewhere are abandoned.
 *
 * The timer heaps go first, and free only tasks in a plain sleep (a park
 * without a callback, not yet claimed).  A task whose timer is still in a
 * heap may also be queued already (woken by an unpark; it removes its own
 * timer when it runs): the queues free it.  And a task that waits with a
 * deadline in the parking lot, a channel or the reactor has a node on its
 * stack linked into a queue that outlives this runtime: freeing its stack
 * would leave that queue pointing at unmapped memory, so it is abandoned
 * like the other parked tasks. */
static void drain(pz__runtime *rt)
{
    int slots = pz__rt_slots(rt);
    for (int i = 0; i < slots; i++) {
        pz__timers *tm = &rt->workers[i].timers;
        for (size_t k = 0; k < tm->len; k++) {
            pz_task_t *t = tm->heap[k].task;
            t->timer_index = -1;
            uint64_t st = atomic_load_explicit(&t->park_state, memory_order_acquire);
            if (PZ__PS_STATE(st) != PZ__PS_WOKEN && !t->park_cb)
                pz__task_free(t);
        }
        tm->len = 0;
    }
    free_task_list(rt->inject_head);
    rt->inject_head = rt->inject_tail = NULL;
    free_task_list(rt->wake_head);
    rt->wake_head = rt->wake_tail = NULL;
    for (int i = 0; i < slots; i++) {
        pz__worker *w = &rt->workers[i];
        pz_task_t *t;
        while ((t = pz__runq_pop(&w->runq)))
            pz__task_free(t);
        if ((t = atomic_exchange(&w->lifo, NULL)))
            pz__task_free(t);
    }
}

static void runtime_destroy(pz__runtime *rt)
{
    pz__driver_destroy(rt);
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++)
        pz__timers_destroy(&rt->workers[i].timers);
    pz__stacks_destroy(rt);
    free(rt->sleepers);
    free(rt->workers);
    free(rt);
}

static void stop_workers(pz__runtime *rt, int started)
{
    atomic_store(&rt->shutdown, true);
    pz__spin_lock(&rt->idle_lock);
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++) {
        atomic_store(&rt->workers[i].sleep_word, 1);
        pz__futex_wake(&rt->workers[i].sleep_word, 1);
    }
    pz__spin_unlock(&rt->idle_lock);
    pz__waker_signal(rt->waker);
    for (int i = 0; i < started; i++)
        pthread_join(rt->workers[i].thread, NULL);
    pz__spare_join_all(rt); /* the monitor has stopped: no spare starts now */
}

/*
 * fork: only the forking thread exists in the child, so a runtime of the
 * parent (its workers, its tasks) does not.  The child forgets it: the
 * runtime is unpublished and unclaimed (its memory is left alone, since
 * the forking thread may be running on one of its task stacks), the
 * forking thread is no worker any more, and the blocking pool forgets its
 * threads.  The child may then start a runtime of its own with pz_run.
 */
static void after_fork_child(void)
{
    atomic_store_explicit(&pz__rt, NULL, memory_order_relaxed);
    atomic_store_explicit(&rt_pins, 0, memory_order_relaxed);
    atomic_store_explicit(&runtime_claimed, false, memory_order_relaxed);
    pz__set_current_worker(NULL);
    pz__blocking_after_fork();
    pz__introspect_after_fork();
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, after_fork_child);
}

int pz_run(const pz_config_t *cfg, pz_fn main, void *arg, void **result)
{
    pthread_once(&atfork_once, atfork_register);
    pz_config_t c = cfg ? *cfg : (pz_config_t){0};
    if (!main) {
        pz__report("pz_run: main is NULL");
        return -EINVAL;
    }
    /* Every field with a meaning for -1 (off) takes nothing lower. */
    if (c.workers < 0 || c.workers > 4096 || c.stack_size > PZ__MAX_STACK || c.blocking_threads_max < 0 ||
        c.spare_workers < -1 || c.spare_workers > 4096 || c.monitor < -1 || c.stall_ms < -1 || c.dump_signal < 0 ||
        c.dump_signal >= NSIG || c.idle_spin_us < -1 || c.idle_spin_us > PZ__IDLE_SPIN_MAX_US) {
        pz__report("pz_run: invalid configuration (workers %d, stack_size %zu, blocking_threads_max %d, "
                   "spare_workers %d, monitor %d, stall_ms %d, dump_signal %d, idle_spin_us %d)",
                   c.workers, c.stack_size, c.blocking_threads_max, c.spare_workers, c.monitor, c.stall_ms,
                   c.dump_signal, c.idle_spin_us);
        return -EINVAL;
    }
    if (!c.idle_spin_us) {
        const char *env = getenv("PLAZA_IDLE_SPIN_US");
        if (env && *env) {
            char *end;
            long v = strtol(env, &end, 10);
            if (*end || v < -1 || v > PZ__IDLE_SPIN_MAX_US)
                pz__report("PLAZA_IDLE_SPIN_US=%s: not -1 (no spin) or a number of microseconds up to %d; "
                           "the default",
                           env, PZ__IDLE_SPIN_MAX_US);
            else
                c.idle_spin_us = (int)v;
        }
    }
    bool unclaimed = false;
    if (!atomic_compare_exchange_strong(&runtime_claimed, &unclaimed, true)) {
        pz__report("pz_run: a runtime is already running in this process");
        return -EBUSY;
    }
    pz__runtime *rt = calloc(1, sizeof *rt);
    if (!rt) {
        atomic_store(&runtime_claimed, false);
        return -ENOMEM;
    }
    size_t page = pz__page_size();
    rt->nworkers = c.workers ? c.workers : pz__cpu_count();
    int spin_us = c.idle_spin_us ? c.idle_spin_us : PZ__IDLE_SPIN_DEFAULT_US;
    rt->idle_spin_ns = spin_us < 0 ? 0 : (int64_t)spin_us * 1000;
    /* Spins are taken to pay until some do not. */
    atomic_init(&rt->idle_spin_paid, PZ__IDLE_SPIN_ONE);
    rt->spare_max = c.monitor < 0 ? 0 : pz__spare_configure(&c);
    atomic_init(&rt->nslots, rt->nworkers);
    atomic_init(&rt->nthreads, rt->nworkers);
    size_t ss = c.stack_size ? c.stack_size : PZ__DEFAULT_STACK;
    if (ss < PZ__MIN_STACK)
        ss = PZ__MIN_STACK;
    rt->stack_size = (ss + page - 1) / page * page;
    rt->guard_size = c.no_guard_pages ? 0 : page;
    rt->guard_kind = pz__stack_guard_kind();
    pz__blocking_configure(c.blocking_threads_max);
    const char *dbg = getenv("PLAZA_DEBUG");
    pz__debug = c.debug || (dbg && *dbg && strcmp(dbg, "0") != 0);

    /* The spare slots are set up by the monitor when first used: until
     * then their pages are never touched. */
    size_t nslots = (size_t)rt->nworkers + (size_t)rt->spare_max;
    rt->workers = aligned_alloc(PZ__CACHELINE, sizeof(pz__worker) * nslots);
    rt->sleepers = calloc(nslots, sizeof(int));
    if (!rt->workers || !rt->sleepers) {
        free(rt->workers);
        free(rt->sleepers);
        free(rt);
        atomic_store(&runtime_claimed, false);
        return -ENOMEM;
    }
    memset(rt->workers, 0, sizeof(pz__worker) * (size_t)rt->nworkers);
    rt->watcher = -1;
    for (int i = 0; i < rt->nworkers; i++) {
        pz__worker *w = &rt->workers[i];
        w->index = i;
        w->rt = rt;
        pz__runq_init(&w->runq);
        pz__timers_init(&w->timers);
        w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) | 1;
    }
    /* Published once its workers can be walked (lock slow paths on other
     * threads read them through pz__rt). */
    atomic_store_explicit(&pz__rt, rt, memory_order_release);
    pz__overflow_handler_install();
    int rerr = pz__driver_init(rt);
    if (rerr < 0) {
        pz__report("pz_run: cannot create the I/O poller: %s", strerror(-rerr));
        retire(rt);
        return rerr;
    }

    struct main_call m = {main, arg, NULL, rt};
    pz_task_t *mt = pz_spawn_with(main_task, &m, &(pz_spawn_opts_t){.name = "main"});
    if (!mt) {
        retire(rt);
        return -ENOMEM;
    }
    rt->main_task = pz__task_peek(mt); /* the struct, as next_runnable compares it (mt is a tagged handle) */
    pz_detach(mt);
    if (atomic_load_explicit(&pz__observe_sw.on, memory_order_acquire)) {
        const pz__lock_hooks *h = atomic_load_explicit(&pz__observe_sw.hooks, memory_order_acquire);
        if (h && h->runtime_started)
            h->runtime_started();
    }

    int started = 0, err = 0;
    /* Workers start with every asynchronous signal blocked (inherited from
     * this thread for the moment): signals go to pz_run's thread or to
     * signalfd readers, never to a task's stack (src/runtime/sigmask.c). */
    sigset_t run_mask;
    pz__sig_block_async(&run_mask);
    for (; started < rt->nworkers; started++) {
        int e = pz__thread_create(&rt->workers[started].thread, NULL, pz__worker_main, &rt->workers[started]);
        if (e) {
            pz__report("pz_run: cannot start worker thread %d: %s", started, strerror(-e));
            err = e;
            break;
        }
    }
    if (!err)
        pz__monitor_start(rt, &c); /* with the asynchronous signals blocked too */
    pz__sig_setmask(&run_mask);
    if (err)
        atomic_store(&rt->shutdown, true);
    atomic_store_explicit(&rt->start_gate, 1, memory_order_release);
    pz__futex_wake(&rt->start_gate, INT32_MAX);
    if (!err) {
        while (atomic_load(&rt->main_done) == 0) {
            pz__sigmask_runner_sync();
            pz__futex_wait(&rt->main_done, 0, -1);
        }
    }
    pz__sigmask_runner_restore();
    pz__monitor_stop();
    int rt_main_error = rt->main_error;
    stop_workers(rt, started);
    pz__blocking_shutdown();
    drain(rt);
    retire(rt);
    if (!err)
        err = rt_main_error;
    if (err)
        return err;
    if (result)
        *result = m.result;
    return 0;
}

int pz_worker_count(void)
{
    pz__runtime *rt = atomic_load(&pz__rt);
    return rt ? rt->nworkers : 0;
}

