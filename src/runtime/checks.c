/*
 * The monitor's checks (monitor.c runs them): deadlocks among plaza lock
 * waiters, a runtime whose every task is asleep with nothing to wake it,
 * and stalls (a worker that runs one task too long without switching).
 *
 * Deadlock: under the registries' lock, every task or thread that waits on
 * a lock with a holder (pz_mutex, pz_rwlock, pz_async_mutex,
 * pz_async_rwlock) becomes an edge "waiter -> holder" (the holder from the
 * held-lock records, or the lock layer's holder query).  A chain of edges
 * that comes back to where it started is a cycle.  It is reported only
 * when the same cycle, with the same waits (same start times), is seen in
 * two checks in a row, so a racy snapshot of a progressing chain (whose
 * waits keep changing) is never reported; and each cycle once, by a
 * signature of its waits.  Checks run every PZ__MONITOR_PERIOD_NS while any
 * worker runs or any thread waits, so a cycle is reported within about two
 * periods.  Limits: a reader-writer lock with several readers is followed
 * to one of them; a lock whose holder no record names (an async rwlock's
 * readers without the debug switch) ends the chain.
 *
 * All asleep: every worker idle, no task queued, no timer, nobody waiting
 * for I/O or a blocking-pool job, no plain thread in a plaza wait, and
 * tasks alive: nothing inside the process's plaza can wake them (a plain
 * thread of the program could, so this is a report, not an abort).  Seen
 * twice in a row with no park in between, then reported once until some
 * task runs again.
 *
 * Stall: each worker counts its switches; a worker whose count has not
 * moved for the stall threshold while it runs a task is stalled if its
 * thread sits in a system call (or is blocked), or has had at least 4/5 of
 * that time on a CPU (a busy machine that keeps a computing worker off its
 * CPU does not make its task a stall).  The
 * report names the task, its held plaza locks and what its thread is doing
 * (the system call from /proc/self/task/<tid>/syscall, or "running").
 */
#define _GNU_SOURCE
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_NODES 512
#define MAX_REPORTED 64

static int64_t stall_ns = 100 * 1000000ll;

void pz__monitor_configure(const pz_config_t *c)
{
    const char *env = getenv("PLAZA_STALL_MS");
    int ms = c->stall_ms;
    if (!ms && env && *env)
        ms = atoi(env);
    stall_ns = ms < 0 ? -1 : (ms ? (int64_t)ms * 1000000 : 100 * 1000000ll);
}

/* ---- the wait-for graph ---- */

typedef struct node {
    uint64_t id;        /* the waiter's caller id */
    uint64_t holder;    /* the holder's caller id, 0 unknown */
    int kind;
    const void *obj;
    int64_t since;
    int tid;            /* a thread waiter's tid */
    pz_task_t *task;    /* a task waiter */
    const pz__holds *holds;
    int next;           /* index of the holder's node, -1 none */
} node_t;

static bool lock_kind(int kind)
{
    return kind == PZ__WAIT_MUTEX || kind == PZ__WAIT_RWLOCK || kind == PZ__WAIT_ASYNC_MUTEX ||
           kind == PZ__WAIT_ASYNC_RWLOCK;
}

struct graph {
    node_t n[MAX_NODES];
    int len;
    /* All-asleep facts gathered in the same walk. */
    int tasks;
    int blocking_waits;
    int thread_waits;
    uint64_t park_sum;
};

static void add_task(pz_task_t *t, void *arg)
{
    struct graph *g = arg;
    g->tasks++;
    /* Any park moves this (the park word carries the generation). */
    g->park_sum += atomic_load_explicit(&t->park_state, memory_order_relaxed) >> PZ__PS_GEN_SHIFT;
    int kind = atomic_load_explicit(&t->wait.kind, memory_order_acquire);
    if (kind == PZ__WAIT_BLOCKING)
        g->blocking_waits++;
    if (!lock_kind(kind) || g->len == MAX_NODES)
        return;
    node_t *n = &g->n[g->len++];
    n->id = t->id;
    n->kind = kind;
    n->obj = atomic_load_explicit(&t->wait.obj, memory_order_relaxed);
    n->since = atomic_load_explicit(&t->wait.since, memory_order_relaxed);
    n->tid = 0;
    n->task = t;
    n->holds = &t->holds;
}

static void add_thread(pz__thread_rec *r, void *arg)
{
    struct graph *g = arg;
    int kind = atomic_load_explicit(&r->wait.kind, memory_order_acquire);
    if (kind == PZ__WAIT_NONE || atomic_load_explicit(&r->task, memory_order_relaxed))
        return; /* a worker blocked by its task is that task's node */
    g->thread_waits++;
    if (!lock_kind(kind) || g->len == MAX_NODES)
        return;
    node_t *n = &g->n[g->len++];
    n->id = r->caller;
    n->kind = kind;
    n->obj = atomic_load_explicit(&r->wait.obj, memory_order_relaxed);
    n->since = atomic_load_explicit(&r->wait.since, memory_order_relaxed);
    n->tid = r->tid;
    n->task = NULL;
    n->holds = &r->holds;
}

static struct graph graph; /* the monitor's own */

/* Cycles seen in the last check (signatures) and those already reported. */
static uint64_t last_seen[MAX_REPORTED];
static int last_seen_len;
static uint64_t reported[MAX_REPORTED];
static int reported_len;

static bool in_set(const uint64_t *set, int len, uint64_t v)
{
    for (int i = 0; i < len; i++)
        if (set[i] == v)
            return true;
    return false;
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h;
}

static void report_cycle(struct graph *g, const int *cyc, int len, int64_t now, void *syms)
{
    pz__report("deadlock: %d waiters wait for each other in a cycle; none can go on:", len);
    for (int i = 0; i < len; i++) {
        node_t *n = &g->n[cyc[i]];
        node_t *h = &g->n[n->next];
        char who[96], whom[96], what[128];
        if (n->task)
            snprintf(who, sizeof who, "task %llu (%s)", (unsigned long long)n->id,
                     n->task->name[0] ? n->task->name : "unnamed");
        else
            pz__describe_caller(n->id, n->tid, who, sizeof who);
        if (h->task)
            snprintf(whom, sizeof whom, "task %llu (%s)", (unsigned long long)h->id,
                     h->task->name[0] ? h->task->name : "unnamed");
        else
            pz__describe_caller(h->id, h->tid, whom, sizeof whom);
        pz__describe_wait(n->kind, n->obj, what, sizeof what);
        pz__report("  %s waits for %s held by %s (for %.3f s)", who, what, whom, (double)(now - n->since) / 1e9);
        pz__held_view v[PZ__HELD_MAX];
        unsigned nh = pz__holds_read(n->holds, v, NULL);
        for (unsigned k = 0; k < nh; k++) {
            char site[256];
            pz__arch_symbolize(syms, v[k].site, true, site, sizeof site);
            pz__report("    it holds %s %p, taken at %s", v[k].kind, v[k].lock, site);
        }
        if (n->task) {
            pz_task_t *t = n->task;
            uint64_t s = atomic_load_explicit(&t->park_state, memory_order_acquire);
#ifndef PZ_TSAN
            if (PZ__PS_STATE(s) == PZ__PS_PARKED && !atomic_load(&t->wait_blocks_thread)) {
                void *frames[12];
                int nf = pz__arch_backtrace_saved(t->ctx.sp, frames, 12);
                if (atomic_load_explicit(&t->park_state, memory_order_acquire) == s) {
                    for (int f = 0; f < nf; f++) {
                        char sym[256];
                        pz__arch_symbolize(syms, frames[f], f > 0, sym, sizeof sym);
                        pz__report("    #%d %s", f, sym);
                    }
                }
            }
#else
            (void)s;
#endif
        }
    }
}

static void check_deadlock(struct graph *g, int64_t now)
{
    /* Resolve every waiter's holder to a node. */
    for (int i = 0; i < g->len; i++) {
        node_t *n = &g->n[i];
        n->holder = pz__holder_of(n->kind, n->obj, NULL);
        n->next = -1;
    }
    for (int i = 0; i < g->len; i++)
        for (int k = 0; k < g->len && g->n[i].holder; k++)
            if (g->n[k].id == g->n[i].holder) {
                g->n[i].next = k;
                break;
            }
    uint64_t seen_now[MAX_REPORTED];
    int seen_len = 0;
    void *syms = NULL;
    for (int i = 0; i < g->len; i++) {
        /* Walk from i; a cycle through i is reported from its smallest
         * index only. */
        int cyc[MAX_NODES];
        int len = 0, cur = i;
        bool is_cycle = false;
        while (cur >= 0 && len < g->len) {
            if (cur < i)
                break;
            cyc[len++] = cur;
            cur = g->n[cur].next;
            if (cur == i) {
                is_cycle = true;
                break;
            }
        }
        if (!is_cycle || len < 2)
            continue;
        uint64_t sig = 0;
        for (int k = 0; k < len; k++)
            sig = mix(mix(mix(sig, g->n[cyc[k]].id), (uint64_t)(uintptr_t)g->n[cyc[k]].obj),
                      (uint64_t)g->n[cyc[k]].since);
        if (seen_len < MAX_REPORTED)
            seen_now[seen_len++] = sig;
        if (!in_set(last_seen, last_seen_len, sig) || in_set(reported, reported_len, sig))
            continue;
        if (!syms)
            syms = pz__arch_symbols_open();
        report_cycle(g, cyc, len, now, syms);
        pz__report("end of deadlock report");
        reported[reported_len++ % MAX_REPORTED] = sig;
        if (reported_len > MAX_REPORTED)
            reported_len = MAX_REPORTED;
    }
    memcpy(last_seen, seen_now, sizeof(uint64_t) * (size_t)seen_len);
    last_seen_len = seen_len;
    pz__arch_symbols_close(syms);
}

/* ---- all asleep ---- */

static uint64_t asleep_last_sum;
static bool asleep_armed, asleep_reported;

/* Without walking a task: the sums of the workers' counters. */
static long sum_waits(pz__runtime *rt, bool blocking)
{
    long n = 0;
    for (int i = 0, ns = pz__rt_slots(rt); i < ns; i++)
        n += atomic_load_explicit(blocking ? &rt->workers[i].blocking_waits : &rt->workers[i].lock_waits,
                                  memory_order_relaxed);
    return n;
}

static uint64_t sum_switches(pz__runtime *rt)
{
    uint64_t n = 0;
    for (int i = 0, ns = pz__rt_slots(rt); i < ns; i++)
        n += atomic_load_explicit(&rt->workers[i].switches, memory_order_relaxed);
    return n;
}

static void check_asleep(pz__runtime *rt)
{
    bool idle = atomic_load_explicit(&rt->nsleeping, memory_order_relaxed) ==
                    atomic_load_explicit(&rt->nthreads, memory_order_relaxed) &&
                atomic_load_explicit(&rt->inject_len, memory_order_relaxed) == 0;
    long tasks = atomic_load_explicit(&rt->live_tasks, memory_order_relaxed);
    bool stuck = idle && tasks > 0 && sum_waits(rt, true) == 0 && pz__thread_waits() == 0 &&
                 atomic_load_explicit(&rt->io_waiters, memory_order_relaxed) == 0 &&
                 pz__timers_earliest(rt) == PZ_FOREVER;
    if (!stuck) {
        asleep_armed = false;
        asleep_reported = false;
        return;
    }
    uint64_t sw = sum_switches(rt);
    if (asleep_armed && asleep_last_sum == sw && !asleep_reported) {
        asleep_reported = true;
        pz__report("all %ld task(s) are asleep and nothing can wake them: no runnable task, no timer, no I/O "
                   "wait, no blocking call, no thread in a plaza wait (deadlock!)",
                   tasks);
        pz__dump_to(NULL, "of the sleeping tasks");
        return;
    }
    asleep_armed = true;
    asleep_last_sum = sw;
}

static bool pz__monitor_asleep_pending(void)
{
    return asleep_armed && !asleep_reported;
}

/* ---- stalls ---- */

typedef struct stall_state {
    uint64_t seq;
    int64_t since;
    int64_t cpu;   /* the thread's CPU time at `since` */
    bool reported;
} stall_state;

int64_t pz__worker_cpu(pz__worker *w)
{
    clockid_t id;
    struct timespec ts;
    if (pthread_getcpuclockid(w->thread, &id) != 0 || clock_gettime(id, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static stall_state *stalls;
static int stalls_len;

/* What the thread tid does now: "in system call nanosleep (35)", "running
 * (not in a system call)", or "state unknown".  Returns true when it is in
 * a system call (or blocked). */
bool pz__thread_activity(int tid, char *buf, size_t size)
{
    char path[64], text[128];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        snprintf(buf, size, "state unknown");
        return false;
    }
    text[n] = '\0';
    if (!strncmp(text, "running", 7)) {
        snprintf(buf, size, "running (not in a system call)");
        return false;
    }
    long nr = strtol(text, NULL, 10);
    const char *name = pz__arch_syscall_name(nr);
    if (nr < 0)
        snprintf(buf, size, "blocked (not in a system call)");
    else if (name)
        snprintf(buf, size, "in system call %s (%ld)", name, nr);
    else if (!pz__arch_syscall_numbers_native())
        snprintf(buf, size, "in a system call (number %ld of the emulator's host)", nr);
    else
        snprintf(buf, size, "in system call %ld", nr);
    return true;
}

struct find_task {
    uint64_t id;
    pz_task_t *t;
};

static void find_task(pz_task_t *t, void *arg)
{
    struct find_task *f = arg;
    if (t->id == f->id)
        f->t = t;
}

static void check_stalls(pz__runtime *rt, int64_t now)
{
    if (stall_ns < 0)
        return;
    if (stalls_len != rt->nworkers) {
        free(stalls);
        stalls = calloc((size_t)rt->nworkers, sizeof *stalls);
        stalls_len = stalls ? rt->nworkers : 0;
    }
    for (int i = 0; i < stalls_len; i++) {
        pz__worker *w = &rt->workers[i];
        stall_state *s = &stalls[i];
        uint64_t seq = atomic_load_explicit(&w->switches, memory_order_relaxed);
        uint64_t id = atomic_load_explicit(&w->running_id, memory_order_relaxed);
        if (seq != s->seq || !id) {
            s->seq = seq;
            s->since = now;
            s->cpu = pz__worker_cpu(w);
            s->reported = false;
            continue;
        }
        if (s->reported || now - s->since < stall_ns)
            continue;
        /* A thread in a system call (or blocked) all this time is stalled;
         * one that computes is stalled once it has had most of that time
         * on a CPU: on a machine that keeps it off its CPU, wall time says
         * nothing about the task. */
        char act[96];
        bool in_call = pz__thread_activity(atomic_load_explicit(&w->tid, memory_order_relaxed), act, sizeof act);
        int64_t cpu = pz__worker_cpu(w);
        if (!in_call && s->cpu >= 0 && cpu >= 0 && cpu - s->cpu < stall_ns * 4 / 5)
            continue;
        s->reported = true;
        struct find_task f = {id, NULL};
        pz__introspect_lock();
        pz__tasks_walk(find_task, &f);
        if (!f.t) {
            pz__introspect_unlock();
            continue;
        }
        int kind = atomic_load_explicit(&f.t->wait.kind, memory_order_acquire);
        char waiting[200] = "";
        if (kind != PZ__WAIT_NONE && atomic_load(&f.t->wait_blocks_thread)) {
            char what[128];
            pz__describe_wait(kind, atomic_load_explicit(&f.t->wait.obj, memory_order_relaxed), what, sizeof what);
            snprintf(waiting, sizeof waiting, "; it blocks its thread waiting for %s", what);
        }
        pz__report("stall: task %llu (%s) has run on worker %d for %.0f ms without switching; its thread is %s%s",
                   (unsigned long long)id, f.t->name[0] ? f.t->name : "unnamed", i, (double)(now - s->since) / 1e6,
                   act, waiting);
        pz__held_view v[PZ__HELD_MAX];
        unsigned nh = pz__holds_read(&f.t->holds, v, NULL);
        void *syms = nh ? pz__arch_symbols_open() : NULL;
        for (unsigned k = 0; k < nh; k++) {
            char site[256];
            pz__arch_symbolize(syms, v[k].site, true, site, sizeof site);
            pz__report("  it holds %s %p, taken at %s: every task that wants it waits as long", v[k].kind, v[k].lock,
                       site);
        }
        pz__arch_symbols_close(syms);
        char site[256];
        void *ssyms = pz__arch_symbols_open();
        pz__arch_symbolize(ssyms, f.t->spawn_site, true, site, sizeof site);
        pz__arch_symbols_close(ssyms);
        pz__report("  spawned at %s", site);
        pz__introspect_unlock();
    }
}

/* ---- the monitor's entry ---- */

static _Atomic int busy_threads_seen;

bool pz__monitor_busy_threads(void)
{
    return atomic_load_explicit(&busy_threads_seen, memory_order_relaxed) > 0 || pz__monitor_asleep_pending();
}

void pz__monitor_check(pz__runtime *rt, int64_t now)
{
    long threads = pz__thread_waits();
    atomic_store_explicit(&busy_threads_seen, (int)threads, memory_order_relaxed);
    /* The registries are walked only when a cycle is possible: some task
     * or thread waits for a lock (with a million parked tasks a walk every
     * period would slow every spawn behind the registry's lock). */
    if (sum_waits(rt, false) > 0 || threads > 0 || last_seen_len > 0) {
        pz__introspect_lock();
        graph.len = 0;
        graph.tasks = 0;
        graph.blocking_waits = 0;
        graph.thread_waits = 0;
        graph.park_sum = 0;
        pz__tasks_walk(add_task, &graph);
        pz__thread_recs_walk(add_thread, &graph);
        check_deadlock(&graph, now);
        /* Workers blocked by their task in a sync lock: the spare
         * workers' first reason (spare.c). */
        for (int i = 0; i < graph.len; i++) {
            node_t *n = &graph.n[i];
            if (n->task && (n->kind == PZ__WAIT_MUTEX || n->kind == PZ__WAIT_RWLOCK) &&
                atomic_load_explicit(&n->task->wait_blocks_thread, memory_order_relaxed))
                pz__spare_lock_wait(rt, n->task, n->kind, n->obj, n->since, n->holder, now);
        }
        pz__introspect_unlock();
    }
    check_stalls(rt, now);
    pz__spare_check(rt, now);
    check_asleep(rt);
}
