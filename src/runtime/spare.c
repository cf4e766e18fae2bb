/*
 * Spare workers: when a worker thread blocks, the runnable tasks go on on a
 * spare thread, so that a wrong lock makes the program slow, never stuck.
 *
 * Why.  A pz_mutex held across a suspension (a pz_blocking call inside the
 * critical section) makes every task that wants it block its worker thread
 * in the mutex's slow path.  With as many such tasks as workers, no worker
 * is left to resume the holder, which alone can unlock: the runtime hangs
 * at 0% CPU.  A task that calls a blocking system call directly (read on a
 * pipe) holds its worker the same way.  As Go's sysmon hands a blocked
 * thread's P to another thread, the monitor here starts a spare worker
 * thread that runs the runnable tasks while the blocked one cannot.
 *
 * Slots.  rt->workers has nworkers + spare_max slots.  A spare is a thread
 * on a slot of its own, [nworkers, nworkers + spare_max): its own run
 * queue, LIFO slot, timer heap, stack cache and object slots.  It does not
 * take the blocked worker's slot: the blocked thread is still inside its
 * task and touches its own slot (its run queue, as only owner) the moment
 * its call returns, which for a system call nobody can intercept.  So the
 * spare steals from the blocked worker's queue and LIFO slot, takes from
 * the injection queue, and fires the blocked worker's timers (maintenance,
 * sched.c), like any other worker.
 *
 * When.  The monitor (monitor.c, every PZ__MONITOR_PERIOD_NS while any
 * worker runs) finds a slot's thread blocked if its task has not switched
 * and either
 *   (lock) it blocks its thread in a pz_mutex or pz_rwlock wait, for at
 *          least PZ__SPARE_LOCK_NS, and the lock's holder is a task that no
 *          worker is running (suspended, or queued behind the blocked
 *          workers), or
 *   (call) its thread has sat in a system call (or blocked) for the stall
 *          threshold (pz_config_t.stall_ms, 100 ms by default) and has used
 *          less than a quarter of that time on a CPU.
 * A blocked slot without a spare gets one, if fewer than spare_max spares
 * run (pz_config_t.spare_workers, 64 by default, -1 none; no monitor, no
 * spares).  Each episode of a blocked slot (its switch count) is reported
 * once through the report sink, naming the task, the lock and its holder,
 * or the system call; so is an episode that finds every spare in use.
 *
 * Retiring.  When a covered slot's thread is no longer blocked (its task
 * switched, or its thread runs again), or the covered slot is itself a
 * spare told to retire, its spare is told to retire: RUNNING -> RETIRE,
 * then a kick if it sleeps.  A retiring spare leaves at its next
 * scheduling point (the worker loop, or every PZ__MAINTENANCE_INTERVAL
 * decisions while it switches task to task): it hands its queued tasks to
 * the injection queue, gives up "searching", and exits.  So the threads
 * running tasks go back to the configured count within one monitor period
 * and one task's run.  A spare that is blocked itself cannot leave before
 * its call returns; it is not covered once told to retire (the thread it
 * stood in for runs again).  The timers of tasks parked on a spare stay in
 * its slot's heap after it leaves: every worker fires them (idle, and
 * maintenance once spares exist), and the leaving spare wakes a sleeper
 * so that none sleeps past them.
 *
 * Invariants (each slot's plain fields have one owner at a time):
 *  - slot_state goes FREE -> RUNNING (monitor, before pthread_create) ->
 *    RETIRE (monitor) -> EXITED (the spare's last store, release) -> FREE
 *    (monitor or pz_run, after pthread_join).  Only a FREE slot gets a
 *    thread, so a slot never has two: pthread_create and pthread_join order
 *    one thread's use of the slot's plain fields (stack cache, tick, rng,
 *    timers' heap pointer) before the next one's.
 *  - Only the slot's thread pushes to its run queue or sets its LIFO slot
 *    (pz__task_ready uses the caller's own slot); an exiting spare has
 *    emptied both, and nobody pushes there until the next thread.  Thieves
 *    may take from it at any time (CAS on head), as from any queue.
 *  - nslots only grows, and every walk of the slots (stealing, timers,
 *    wait counters, running ids, the async rwlock's read slots) goes up to
 *    it, so whatever a retired spare left (timers of tasks parked on it,
 *    read holds in its object slots, counts) stays visible.  A slot is
 *    set up (zeroed, queue and heap initialised) before nslots covers it.
 *  - nthreads counts the threads in worker loops; the monitor sleeps only
 *    while all of them sleep and no spare slot has a thread, so it keeps
 *    looking while a spare runs and joins it after it exits; an idle
 *    runtime stays at 0% CPU.
 *  - The monitor is the only thread that starts, retires and joins spares
 *    while the runtime runs; pz_run joins the rest after stopping it.
 *
 * Memory ordering of nslots with the async rwlock's read slots: a reader
 * on a spare enters by a seq_cst CAS on its slot and then a seq_cst load of
 * the lock word; a revoking writer clears the word's SLOTS bit (seq_cst),
 * fences, and loads nslots (seq_cst) before walking.  If the writer's load
 * misses the spare (reads the old nslots), it precedes in the single total
 * order the monitor's seq_cst store of the new nslots, which happens before
 * the spare's thread starts and so before the reader's CAS and load: the
 * reader's load then sees SLOTS cleared and it backs out.  Either the
 * writer sees the spare's slot or the reader sees the revocation.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The monitor's view of one slot (monitor thread only). */
typedef struct watch {
    uint64_t seq;       /* the slot's switch count when last sampled */
    int64_t since;      /* when seq was first seen */
    int64_t cpu;        /* the thread's CPU time then */
    bool lock_noted;    /* this look: blocked in a lock behind a holder that does not run */
    char lock_why[320];
    uint64_t ep_seq;    /* the episode reported last (switch count) */
    bool ep_reported;
    bool ep_cap_reported;
    int spare;          /* the spare covering this slot, -1 none */
    bool blocked_now;   /* this look's verdict, and why */
    char why[400];
} watch_t;

static watch_t *watch;
static int watch_len;
static int64_t call_ns = 100 * 1000000ll;

int pz__spare_configure(const pz_config_t *c)
{
    int n = c->spare_workers;
    const char *env = getenv("PLAZA_SPARE_WORKERS");
    if (!n && env && *env) {
        n = atoi(env);
        if (n < -1 || n > 4096) {
            pz__report("PLAZA_SPARE_WORKERS=%s: not -1 (none) or a number of spare workers up to 4096", env);
            n = 0;
        }
    }
    return n < 0 ? 0 : n ? n : PZ__SPARE_DEFAULT;
}

void pz__spare_monitor_start(pz__runtime *rt, int64_t stall_ns)
{
    const char *env = getenv("PLAZA_STALL_MS");
    if (stall_ns <= 0 && env && atoi(env) > 0)
        stall_ns = (int64_t)atoi(env) * 1000000;
    call_ns = stall_ns > 0 ? stall_ns : 100 * 1000000ll;
    watch_len = rt->nworkers + rt->spare_max;
    watch = calloc((size_t)watch_len, sizeof *watch);
    if (!watch)
        watch_len = 0;
    for (int i = 0; i < watch_len; i++)
        watch[i].spare = -1;
}

void pz__spare_monitor_stop(pz__runtime *rt)
{
    (void)rt;
    free(watch);
    watch = NULL;
    watch_len = 0;
}

static bool is_spare(pz__runtime *rt, int i)
{
    return i >= rt->nworkers;
}

static int slot_running(pz__runtime *rt, uint64_t id)
{
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++)
        if (atomic_load_explicit(&rt->workers[i].running_id, memory_order_relaxed) == id)
            return i;
    return -1;
}

/* A slot whose thread may run tasks now: a configured worker, or a spare
 * that has not been told to retire. */
static bool active(pz__runtime *rt, int i)
{
    return !is_spare(rt, i) ||
           atomic_load_explicit(&rt->workers[i].slot_state, memory_order_acquire) == PZ__SLOT_RUNNING;
}

void pz__spare_lock_wait(pz__runtime *rt, pz_task_t *t, int kind, const void *obj, int64_t since, uint64_t holder,
                         int64_t now)
{
    if (!watch || now - since < PZ__SPARE_LOCK_NS || !holder || (holder & PZ__CALLER_THREAD_BIT))
        return;
    if (slot_running(rt, holder) >= 0)
        return; /* the holder runs: it will let go (or stall, the other reason) */
    int x = slot_running(rt, t->id);
    if (x < 0 || x >= watch_len || !active(rt, x))
        return;
    char what[128], who[64];
    pz__describe_wait(kind, obj, what, sizeof what);
    pz__describe_caller(holder, 0, who, sizeof who);
    watch_t *wt = &watch[x];
    wt->lock_noted = true;
    snprintf(wt->lock_why, sizeof wt->lock_why,
             "task %llu (%s) waits for %s held by %s, which no worker runs (it is suspended or queued)",
             (unsigned long long)t->id, t->name[0] ? t->name : "unnamed", what, who);
}

struct find {
    uint64_t id;
    char name[32];
    bool found;
};

static void find_name(pz_task_t *t, void *arg)
{
    struct find *f = arg;
    if (t->id == f->id) {
        snprintf(f->name, sizeof f->name, "%s", t->name[0] ? t->name : "unnamed");
        f->found = true;
    }
}

/* Samples slot x; true if its thread is blocked (see "When"), with why. */
static bool blocked(pz__runtime *rt, int x, int64_t now, char *why, size_t size)
{
    pz__worker *w = &rt->workers[x];
    watch_t *wt = &watch[x];
    uint64_t seq = atomic_load_explicit(&w->switches, memory_order_relaxed);
    uint64_t id = atomic_load_explicit(&w->running_id, memory_order_relaxed);
    bool noted = wt->lock_noted;
    wt->lock_noted = false;
    if (seq != wt->seq || !id) {
        wt->seq = seq;
        wt->since = now;
        wt->cpu = pz__worker_cpu(w);
        if (!id)
            return false;
    }
    if (noted) {
        snprintf(why, size, "%s", wt->lock_why);
        return true;
    }
    if (now - wt->since < call_ns)
        return false;
    char act[96];
    if (!pz__thread_activity(atomic_load_explicit(&w->tid, memory_order_relaxed), act, sizeof act))
        return false;
    int64_t cpu = pz__worker_cpu(w);
    if (wt->cpu < 0 || cpu < 0 || cpu - wt->cpu > (now - wt->since) / 4)
        return false; /* it computes between calls: not blocked */
    struct find f = {.id = id};
    pz__introspect_lock();
    pz__tasks_walk(find_name, &f);
    pz__introspect_unlock();
    snprintf(why, size, "task %llu (%s) has run %.0f ms without switching and its thread is %s",
             (unsigned long long)id, f.found ? f.name : "ended", (double)(now - wt->since) / 1e6, act);
    return true;
}

/* Sets up spare slot i for a new thread covering slot x (monitor). */
static void slot_prepare(pz__runtime *rt, int i, int x)
{
    pz__worker *w = &rt->workers[i];
    if (i >= pz__rt_slots(rt)) {
        /* First use: its memory has never been touched. */
        memset(w, 0, sizeof *w);
        w->index = i;
        w->rt = rt;
        pz__runq_init(&w->runq);
        pz__timers_init(&w->timers);
        w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) | 1;
    }
    PZ__ASSERT(atomic_load_explicit(&w->slot_state, memory_order_relaxed) == PZ__SLOT_FREE);
    PZ__ASSERT(pz__runq_len(&w->runq) == 0 && !atomic_load(&w->lifo));
    w->cover = x;
    w->searching = false;
    w->sleeping = false;
    w->polling = false;
    w->polled = false;
    w->lifo_streak = 0;
    w->current = NULL;
    w->after_fn = NULL;
    atomic_store_explicit(&w->running_id, 0, memory_order_relaxed);
    atomic_store_explicit(&w->sleep_word, 0, memory_order_relaxed);
    atomic_store_explicit(&w->slot_state, PZ__SLOT_RUNNING, memory_order_relaxed);
}

static int spares_running(pz__runtime *rt)
{
    int n = 0;
    for (int i = rt->nworkers, ns = pz__rt_slots(rt); i < ns; i++)
        n += atomic_load_explicit(&rt->workers[i].slot_state, memory_order_relaxed) != PZ__SLOT_FREE;
    return n;
}

static void start_spare(pz__runtime *rt, int x, const char *why)
{
    watch_t *wx = &watch[x];
    uint64_t seq = wx->seq;
    bool new_episode = !(wx->ep_seq == seq && (wx->ep_reported || wx->ep_cap_reported));
    if (new_episode) {
        wx->ep_seq = seq;
        wx->ep_reported = wx->ep_cap_reported = false;
    }
    int slots = pz__rt_slots(rt), pick = -1;
    for (int i = rt->nworkers; i < slots && pick < 0; i++)
        if (atomic_load_explicit(&rt->workers[i].slot_state, memory_order_acquire) == PZ__SLOT_FREE)
            pick = i;
    if (pick < 0 && slots < rt->nworkers + rt->spare_max)
        pick = slots; /* slots are set up in order: this one is next */
    const char *what = x < rt->nworkers ? "worker" : "spare worker";
    int shown = x < rt->nworkers ? x : x - rt->nworkers;
    if (pick < 0) {
        if (!wx->ep_cap_reported && rt->spare_max > 0) {
            wx->ep_cap_reported = true;
            pz__report("spare worker: %s %d is blocked: %s; but all %d spare workers run already "
                       "(pz_config_t.spare_workers): the runnable tasks wait until a blocked thread returns",
                       what, shown, why, rt->spare_max);
        }
        return;
    }
    /* Said before the spare runs anything, so the report comes before any
     * of its effects. */
    if (!wx->ep_reported) {
        wx->ep_reported = true;
        pz__report("spare worker: %s %d is blocked: %s; its runnable tasks go on on spare worker %d (%d of at most "
                   "%d running)",
                   what, shown, why, pick - rt->nworkers, spares_running(rt) + 1, rt->spare_max);
        if (strstr(why, "waits for"))
            pz__report("  a task must not hold a sync lock across a suspension: use an async lock for a section "
                       "that waits (docs/choosing-a-lock.md)");
    }
    slot_prepare(rt, pick, x);
    pz__worker *w = &rt->workers[pick];
    atomic_fetch_add_explicit(&rt->nthreads, 1, memory_order_relaxed);
    if (pick >= slots)
        atomic_store_explicit(&rt->nslots, pick + 1, memory_order_seq_cst); /* see the rwlock argument above */
    int e = pz__thread_create(&w->thread, NULL, pz__worker_main, w);
    if (e) {
        atomic_fetch_sub_explicit(&rt->nthreads, 1, memory_order_relaxed);
        atomic_store_explicit(&w->slot_state, PZ__SLOT_FREE, memory_order_relaxed);
        if (!wx->ep_cap_reported) {
            wx->ep_cap_reported = true;
            pz__report("spare worker: ... but no spare thread can be started for %s %d: %s", what, shown,
                       strerror(-e));
        }
        return;
    }
    wx->spare = pick;
}

static void retire(pz__runtime *rt, int s)
{
    pz__worker *w = &rt->workers[s];
    int running = PZ__SLOT_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&w->slot_state, &running, PZ__SLOT_RETIRE, memory_order_acq_rel,
                                                memory_order_relaxed))
        pz__worker_kick(w);
}

static void join_exited(pz__runtime *rt)
{
    for (int i = rt->nworkers, n = pz__rt_slots(rt); i < n; i++) {
        pz__worker *w = &rt->workers[i];
        if (atomic_load_explicit(&w->slot_state, memory_order_acquire) != PZ__SLOT_EXITED)
            continue;
        pthread_join(w->thread, NULL);
        PZ__ASSERT(pz__runq_len(&w->runq) == 0);
        if (w->cover >= 0 && w->cover < watch_len && watch[w->cover].spare == i)
            watch[w->cover].spare = -1;
        atomic_store_explicit(&w->slot_state, PZ__SLOT_FREE, memory_order_release);
    }
}

void pz__spare_check(pz__runtime *rt, int64_t now)
{
    if (!watch)
        return;
    join_exited(rt);
    int slots = pz__rt_slots(rt);
    for (int x = 0; x < slots; x++)
        watch[x].blocked_now = active(rt, x) && blocked(rt, x, now, watch[x].why, sizeof watch[x].why);
    /* Retire the spares whose slot came back, or whose slot is a spare
     * that retires itself; repeated until nothing changes (a chain of
     * spares covering spares retires in one look). */
    for (bool changed = true; changed;) {
        changed = false;
        for (int x = 0; x < slots; x++) {
            int s = watch[x].spare;
            if (s < 0 || !active(rt, s))
                continue;
            if (!active(rt, x) || !watch[x].blocked_now) {
                retire(rt, s);
                changed = true;
            }
        }
    }
    for (int x = 0; x < slots; x++) {
        /* A spare told to retire covers nothing any more, even while its
         * own thread is still blocked: if x blocks again, x gets a new one
         * (the retiring one is not covered, so threads running tasks stay
         * within the configured count plus the covering spares). */
        int s = watch[x].spare;
        if (s >= 0 && !active(rt, s))
            watch[x].spare = -1;
        if (watch[x].blocked_now && active(rt, x) && watch[x].spare < 0 && rt->spare_max > 0)
            start_spare(rt, x, watch[x].why);
    }
}

bool pz__spare_busy(pz__runtime *rt)
{
    for (int i = rt->nworkers, n = pz__rt_slots(rt); i < n; i++)
        if (atomic_load_explicit(&rt->workers[i].slot_state, memory_order_relaxed) != PZ__SLOT_FREE)
            return true;
    return false;
}

void pz__spare_leave(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    PZ__ASSERT(!w->current);
    /* Not searching any more: if it was the last searcher, another
     * sleeper takes over (as when a searcher finds work). */
    pz__spin_lock(&rt->idle_lock);
    bool was = w->searching;
    w->searching = false;
    PZ__ASSERT(!w->sleeping);
    pz__spin_unlock(&rt->idle_lock);
    if (was)
        atomic_fetch_sub(&rt->nsearching, 1);
    /* Its queued tasks go where every worker looks. */
    pz_task_t *first = NULL, *last = NULL, *t;
    size_t n = 0;
    pz_task_t *l = atomic_exchange_explicit(&w->lifo, NULL, memory_order_acq_rel);
    while ((t = l) || (t = pz__runq_pop(&w->runq))) {
        l = NULL;
        t->next = NULL;
        if (last)
            last->next = t;
        else
            first = t;
        last = t;
        n++;
    }
    /* Nobody else pushes here, so the slot stays empty (thieves only take). */
    PZ__ASSERT(pz__runq_len(&w->runq) == 0 && !atomic_load(&w->lifo));
    if (n)
        pz__inject_push(rt, first, last, n);
    /* Timers of tasks that parked here stay in this slot's heap, which
     * every worker walks (idle sleeps until the earliest of all heaps,
     * maintenance fires them once spares exist).  But a worker asleep
     * since before they were inserted sleeps with an older deadline, and
     * no owner of this heap is awake any more: wake one, which recomputes
     * its deadline (the seq_cst fence in pz__notify_work pairs with the
     * sleeper's registration before it reads the heaps). */
    bool timers = atomic_load_explicit(&w->timers.next, memory_order_acquire) != PZ_FOREVER;
    if (n || was || timers)
        pz__notify_work(rt);
    atomic_store_explicit(&w->running_id, 0, memory_order_relaxed);
}

void pz__spare_join_all(pz__runtime *rt)
{
    for (int i = rt->nworkers, n = pz__rt_slots(rt); i < n; i++) {
        pz__worker *w = &rt->workers[i];
        if (atomic_load_explicit(&w->slot_state, memory_order_acquire) == PZ__SLOT_FREE)
            continue;
        pthread_join(w->thread, NULL);
        atomic_store_explicit(&w->slot_state, PZ__SLOT_FREE, memory_order_relaxed);
    }
}
