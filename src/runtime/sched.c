/*
 * The scheduler: worker threads, context switches, finding work, idling.
 *
 * Every worker runs a loop on its thread's own stack (the scheduler
 * context).  Tasks switch directly to the next runnable task when one is at
 * hand, and to the scheduler context only when the worker has nothing local
 * to run; the loop then looks further (injection queue, timers, other
 * workers) and finally sleeps on a futex.
 *
 * Release after switch: a context that switches away leaves an action in
 * w->after_fn, and the context that resumes runs it first (pz__resume).  So
 * "put me back on the run queue", "I am parked, let go of the lock" and "I
 * have exited, free my stack" all happen only once the task is off its
 * stack, and no other worker can ever resume a task that is still running.
 *
 * Which task runs next, and how long a woken task can wait (next_local).
 * Every scheduling decision, whether a task switching away or the worker
 * loop makes it, does this in order:
 *   1. fires this worker's expired timers (one load while its heap is
 *      empty, one clock read while it is not);
 *   2. takes the head of the runtime's wake list, unless the last
 *      PZ__WAKE_STREAK_MAX decisions all did;
 *   3. takes the LIFO slot (at most PZ__LIFO_STREAK_MAX times in a row),
 *      then the head of the local queue;
 *   4. with nothing local, the wake list even past its streak.
 * Every PZ__MAINTENANCE_INTERVAL-th decision first also fires the other
 * workers' expired timers and takes one task of the injection queue's
 * ordinary list (local-queue overflow), so neither starves.
 * The wake list holds every task woken by an event: its timer expired, its
 * blocking-pool job finished, or a thread that is not a worker woke it.
 * The bound: a task woken that way, with k tasks ahead of it in the wake
 * list, runs within (k + 1) * (PZ__WAKE_STREAK_MAX + 1) / PZ__WAKE_STREAK_MAX
 * decisions of any one worker (rounded up), however many tasks wait in the
 * run queues; a timer's task enters the list at its worker's first decision
 * after the deadline (or the 61st of another worker, if its own is stuck in
 * one task).  In time, that is so many decisions times the longest a task
 * runs without suspending, which the cooperative budget and pz_yield keep
 * short.  Go checks its timers and its run-next slot on every round and
 * tokio its LIFO slot; a list of its own keeps these tasks off the tail of
 * a run queue 256 tasks long (plus its overflow) without reordering tasks
 * that merely yielded.  The streak limit keeps a flood of wake-ups from
 * starving the run queues: they get at least one decision in
 * PZ__WAKE_STREAK_MAX + 1.
 *
 * Wake-ups: a worker that makes work runnable calls pz__notify_work, which
 * wakes one sleeping worker only if no worker is already searching for
 * work.  A woken worker is "searching" until it finds a task or goes back to
 * sleep; when the last searcher finds work it wakes the next sleeper if it
 * sees more work (leave_searching), so parallelism ramps up one worker at
 * a time instead of in a herd.  A wake-up goes to a worker sleeping on its
 * futex before the one in the poller (wake_one_sleeper).  Tasks
 * a worker's poll of the reactor wakes go to its own queue without that
 * wake-up; once the poll is done it wakes a sleeper only if it has more
 * than one task to run (more_than_one_runnable), since a worker woken for
 * the one task the poller runs itself finds nothing.  So a lone ready
 * connection costs no thread wake-up.  While the worker that polled runs
 * that task, nobody waits in the poller (the other workers sleep on their
 * futex); readiness that comes meanwhile is seen when that worker comes
 * back to its loop (at the latest PZ__MAINTENANCE_INTERVAL decisions
 * later): with other tasks to run it polls without waiting, and finding
 * readiness wakes a sleeper (poll_io), which becomes the poller if there
 * is nothing for it to take: under load a second worker serves
 * connections in parallel, at low load none is woken.  With nothing else
 * to run it waits in the poller at once (find_work says why).
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"
#include "../arch/arch_signal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef PZ_ASAN
#include <sanitizer/asan_interface.h>
#endif
#ifdef PZ_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* How often (in scheduling decisions) a busy worker looks at the injection
 * queue and its timers, so neither starves behind local work. */
#define PZ__MAINTENANCE_INTERVAL 61
/* How many times in a row the LIFO slot may be preferred to the queue. */
#define PZ__LIFO_STREAK_MAX 3
/* How many times in a row the wake list may be preferred to the rest. */
#define PZ__WAKE_STREAK_MAX 4

static inline void ctx_switch(pz__ctx *from, pz__ctx *to, bool from_dies)
{
#ifdef PZ_ASAN
    __sanitizer_start_switch_fiber(from_dies ? NULL : &from->asan_fake, to->stack_lo, to->stack_size);
#else
    (void)from_dies;
#endif
#ifdef PZ_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
    pz__arch_switch(&from->sp, to->sp);
#ifdef PZ_ASAN
    __sanitizer_finish_switch_fiber(from->asan_fake, NULL, NULL);
#endif
}

/* ---- making tasks runnable ---- */

/* Wakes one sleeper, preferring one that sleeps on its futex to the one
 * in the poller (only one worker polls at a time, so at most one sleeper
 * is polling): a worker taken out of the poller leaves nobody there, and
 * readiness that comes while it runs the new work waits until a worker
 * comes back to its loop; a futex sleeper leaves the poller in place, and
 * its wake-up is one system call instead of an eventfd write and a return
 * through epoll.  (The weather service on SQLite: every finished
 * blocking-pool job used to take the polling worker out of epoll, which
 * then woke the other worker to poll in its place.) */
static void wake_one_sleeper(pz__runtime *rt)
{
    pz__worker *target = NULL;
    pz__spin_lock(&rt->idle_lock);
    if (rt->nsleepers > 0 && atomic_load(&rt->nsearching) == 0) {
        int k = rt->nsleepers - 1;
        if (k > 0 && rt->workers[rt->sleepers[k]].polling)
            k--;
        target = &rt->workers[rt->sleepers[k]];
        rt->sleepers[k] = rt->sleepers[--rt->nsleepers];
        target->sleeping = false;
        target->searching = true;
        atomic_fetch_sub(&rt->nsleeping, 1);
        atomic_fetch_add(&rt->nsearching, 1);
        atomic_store(&target->sleep_word, 1);
    }
    bool polling = target && target->polling;
    pz__spin_unlock(&rt->idle_lock);
    if (polling)
        pz__waker_signal(rt->waker); /* it sleeps in the poller */
    else if (target)
        pz__futex_wake(&target->sleep_word, 1);
}

/* For a worker that has just put work on its own queue.  No fence: if a
 * sleeper registers at this very moment and neither side sees the other,
 * the work is not stranded, because this worker is awake and runs its own
 * queue; only the extra parallelism comes later, at the next wake-up. */
static inline void notify_work_local(pz__runtime *rt)
{
    if (atomic_load_explicit(&rt->nsleeping, memory_order_relaxed) > 0 &&
        atomic_load_explicit(&rt->nsearching, memory_order_relaxed) == 0)
        wake_one_sleeper(rt);
}

void pz__notify_work(pz__runtime *rt)
{
    /* Pairs with the sleeper's seq_cst increment of nsleeping followed by
     * its re-check of the queues: either it sees our work or we see it. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&rt->nsearching, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&rt->nsleeping, memory_order_relaxed) > 0)
        wake_one_sleeper(rt);
}

/* Pushes t on w's local queue, moving half of a full queue to the
 * injection queue. */
static void push_local(pz__worker *w, pz_task_t *t)
{
    /* Only a slot's own thread pushes to its queue (runq.c; spare.c). */
    PZ__ASSERT(w == pz__current_worker());
    while (!pz__runq_push(&w->runq, t)) {
        pz_task_t *batch[PZ__RUNQ_CAP / 2 + 1];
        size_t n = pz__runq_take_half(&w->runq, batch);
        if (n == 0)
            continue;
        batch[n++] = t;
        for (size_t i = 0; i + 1 < n; i++)
            batch[i]->next = batch[i + 1];
        pz__inject_push(w->rt, batch[0], batch[n - 1], n);
        return;
    }
}

void pz__task_ready(pz_task_t *t, bool lifo)
{
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
    pz__worker *w = pz__current_worker();
    if (w && w->rt == rt) {
        if (lifo && !w->waking_io) {
            /* The task woken last runs next (it is likely to use what its
             * waker just produced); a task it displaces goes to the queue,
             * where other workers can take it, so they are told. */
            pz_task_t *prev = atomic_exchange_explicit(&w->lifo, t, memory_order_acq_rel);
            if (!prev)
                return;
            t = prev;
        }
        push_local(w, t);
        /* Woken by this worker's poll: the poll's caller decides, once,
         * whether another worker is needed (more_than_one_runnable). */
        if (!w->waking_io)
            notify_work_local(rt);
    } else {
        pz__task_ready_woken(t, t, 1);
    }
}

void pz__task_ready_woken(pz_task_t *first, pz_task_t *last, size_t n)
{
    /* From a plain thread (one of the blocking pool, or any thread that
     * unlocks an async lock) the runtime can end as soon as the tasks are
     * on the wake list: a worker runs them, the main task returns, and
     * pz_run frees the runtime while this thread still reads it in
     * pz__notify_work (ThreadSanitizer caught that read in
     * test_runtime_pinned_while_walked).  The pin keeps the runtime until
     * this thread is done with it (pz__rt_pin; on a worker it is free).  No
     * runtime any more: the tasks were abandoned with it, as pz_run says
     * of tasks still running when main returns. */
    pz__runtime *rt = pz__rt_pin();
    if (!rt)
        return;
    pz__wake_push(rt, first, last, n);
    /* A sleeping worker will not look at the wake list unless woken, so
     * this side pays for the fence. */
    pz__notify_work(rt);
    pz__rt_unpin(rt);
}

/* ---- finding work ---- */

/* Fires heap tm's expired timers from w, which is awake and takes the
 * first task they wake from the wake list at its next decision, ahead of
 * its run queues (next_local).  So one expired timer wakes nobody: a
 * worker woken for it would find nothing to take.  (An idle runtime whose
 * lock waiters re-park every 1 ms woke its futex sleeper for each one; the
 * sleeper found the task taken and slept again, a system call on each side
 * and a context switch per timer.)  Two or more wake one sleeper, which
 * takes the next and hands on the search as usual (leave_searching). */
static void fire_timers(pz__worker *w, pz__timers *tm, int64_t now, bool try_only)
{
    if (pz__timers_fire(w->rt, tm, now, try_only) > 1)
        notify_work_local(w->rt);
}

/* This worker's expired timers: on every decision, so cheap while none is
 * armed (one load) and while the earliest is far off (a read of the coarse
 * clock, pz__deadline_near). */
static inline void fire_own_timers(pz__worker *w)
{
    int64_t next = atomic_load_explicit(&w->timers.next, memory_order_relaxed);
    if (!pz__deadline_near(next))
        return;
    int64_t now = pz__clock_now();
    if (next <= now)
        fire_timers(w, &w->timers, now, false);
}

/* The other workers' expired timers, in case one of them runs a long task;
 * a heap whose lock is taken is left to whoever holds it. */
static void maintenance(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    int64_t now = 0;
    /* Every slot that has ever had a thread: once a spare has run, a
     * blocked worker's heap and a retired spare's have no owner that looks
     * at them. */
    for (int i = 0, slots = pz__rt_slots(rt); i < slots; i++) {
        pz__timers *tm = &rt->workers[i].timers;
        if (i == w->index || atomic_load_explicit(&tm->next, memory_order_relaxed) == PZ_FOREVER)
            continue;
        if (!now)
            now = pz__clock_now();
        fire_timers(w, tm, now, true);
    }
}

/* A spare told to retire (spare.c) leaves at its next scheduling point. */
static inline bool retiring(pz__worker *w)
{
    return __builtin_expect(atomic_load_explicit(&w->slot_state, memory_order_relaxed) == PZ__SLOT_RETIRE, 0);
}

static inline bool io_waiting(pz__runtime *rt)
{
    return atomic_load_explicit(&rt->io_waiters, memory_order_relaxed) > 0;
}

/* This worker, holding the driver, takes ready descriptors from the poller
 * and wakes their waiters into its own run queue, first come first served:
 * no more events than the queue has room for (the rest stay queued in the
 * kernel, in readiness order, for the next poll, rather than overflowing
 * into the injection queue, which is looked at only every 61 decisions),
 * and at the tail rather than in the LIFO slot, which is for a task woken
 * by the task running now.  Under a thousand busy connections the LIFO
 * slot and the overflow let some connections wait tens of milliseconds. */
static int worker_poll(pz__worker *w, int64_t deadline)
{
    uint32_t room = PZ__RUNQ_CAP - pz__runq_len(&w->runq);
    if (room == 0)
        return 0;
    w->waking_io = true;
    int n = pz__driver_poll(w->rt, deadline, room < 64 ? (int)room : 64);
    w->waking_io = false;
    return n;
}

/* Whether this worker has more runnable tasks than the one it runs next,
 * i.e. whether a second worker would find something to take.  The tasks a
 * poll wakes go to the polling worker's queue without waking anyone
 * (pz__task_ready); the poll's caller asks this once afterwards.  A single
 * ready connection is served by the worker that saw it: waking another
 * worker for it costs a futex wake-up (or an eventfd write and a trip
 * through the poller) and a context switch on each side, only for the
 * woken worker to find nothing and sleep again.  tokio makes the same
 * choice after its driver returns. */
static inline bool more_than_one_runnable(pz__worker *w)
{
    return pz__runq_len(&w->runq) + (atomic_load_explicit(&w->lifo, memory_order_relaxed) != NULL) > 1;
}

/* While tasks wait for I/O, a busy worker looks at the poller now and then
 * (without waiting), unless an idle worker is already in it.  Only from the
 * worker loop: a task that is switching away may still hold a parking-lot
 * bucket lock (it lets go in its after-switch action), and waking I/O
 * waiters takes bucket locks. */
static bool poll_io(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    if (io_waiting(rt) && !atomic_load_explicit(&rt->driver_busy, memory_order_relaxed) &&
        !atomic_exchange_explicit(&rt->driver_busy, true, memory_order_acquire)) {
        int n = worker_poll(w, 0);
        atomic_store_explicit(&rt->driver_busy, false, memory_order_release);
        /* Readiness that came while this worker ran tasks: more is likely
         * coming than one worker keeps up with, and a sleeper woken now
         * that finds nothing to take goes to wait in the poller, where it
         * serves the next event while this worker runs.  (An idle
         * worker's poll asks more_than_one_runnable instead.) */
        if (n > 0)
            notify_work_local(rt);
        return true;
    }
    return false;
}

/* The next task: cheap, called on every switch.  The order and the bound
 * it gives are at the top of this file. */
static pz_task_t *next_local(pz__worker *w)
{
    pz_task_t *t;
    pz__runtime *rt = w->rt;
    if (++w->tick % PZ__MAINTENANCE_INTERVAL == 0) {
        maintenance(w);
        /* Go through the worker loop, which polls for I/O (and where a
         * retiring spare leaves). */
        if (!w->in_loop && (io_waiting(rt) || retiring(w)))
            return NULL;
        if ((t = pz__inject_pop(rt, w)))
            return t;
    }
    fire_own_timers(w);
    if (atomic_load_explicit(&rt->wake_len, memory_order_relaxed)) {
        if (w->wake_streak < PZ__WAKE_STREAK_MAX && (t = pz__wake_pop(rt))) {
            w->wake_streak++;
            return t;
        }
        w->wake_streak = 0;
    }
    if (w->lifo_streak < PZ__LIFO_STREAK_MAX) {
        if (atomic_load_explicit(&w->lifo, memory_order_relaxed) &&
            (t = atomic_exchange_explicit(&w->lifo, NULL, memory_order_acq_rel))) {
            w->lifo_streak++;
            return t;
        }
    }
    w->lifo_streak = 0;
    if ((t = pz__runq_pop(&w->runq)))
        return t;
    if (atomic_load_explicit(&w->lifo, memory_order_relaxed) &&
        (t = atomic_exchange_explicit(&w->lifo, NULL, memory_order_acq_rel)))
        return t;
    return pz__wake_pop(rt);
}

static uint64_t next_random(pz__worker *w)
{
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->rng = x;
}

static pz_task_t *steal(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    int n = pz__rt_slots(rt);
    int start = (int)(next_random(w) % (uint64_t)n);
    for (int i = 0; i < n; i++) {
        pz__worker *v = &rt->workers[(start + i) % n];
        if (v == w)
            continue;
        pz_task_t *t = pz__runq_steal(&v->runq, &w->runq);
        if (t)
            return t;
        /* A victim busy in one long task would hold its LIFO task forever. */
        if (atomic_load_explicit(&v->lifo, memory_order_relaxed) &&
            (t = atomic_exchange_explicit(&v->lifo, NULL, memory_order_acq_rel)))
            return t;
    }
    return NULL;
}

/* Whether this worker has something to run at hand: its own queue or LIFO
 * slot, or the injection queue (inject_len counts the wake list too).
 * Relaxed loads: its callers only choose whether to poll or spin on. */
static inline bool work_at_hand(pz__worker *w)
{
    return pz__runq_len(&w->runq) > 0 || atomic_load_explicit(&w->lifo, memory_order_relaxed) ||
           atomic_load_explicit(&w->rt->inject_len, memory_order_relaxed) > 0;
}

/* Whether the worker loop polls the poller without waiting before it
 * searches: when this worker has something else to run (work_at_hand), so
 * that readiness that came meanwhile is not left behind that work; and
 * when some other worker is awake, i.e. under load, where a worker that
 * has run dry usually finds readiness at once, and waiting for it in the
 * poller (idle) would first list it among the sleepers, which the busy
 * workers would then spend wake-ups on.  Otherwise (nothing to run here,
 * every other worker asleep: a request reaching an idle service) it does
 * not: if the search finds nothing, the worker goes on to wait in the
 * poller, whose wait returns at once with whatever is ready, so one system
 * call does what two did.  Only a choice of system calls rests on this
 * (hence relaxed loads): whichever way a stale answer goes, the readiness
 * is taken by this worker's poll, by its wait in the poller, or by the
 * worker that holds the poller. */
static inline bool poll_first(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    return work_at_hand(w) || atomic_load_explicit(&rt->nsleeping, memory_order_relaxed) + 1 <
                                  atomic_load_explicit(&rt->nthreads, memory_order_relaxed);
}

/* The worker loop's search.  It polls without waiting only as poll_first
 * says, and not right after coming back from a wait in the poller
 * (w->polled): that wait has just taken what was ready, and the task it
 * woke should not wait behind a second epoll call.  A worker that goes
 * idle between two requests thus makes one epoll call per request instead
 * of three. */
static pz_task_t *find_work(pz__worker *w)
{
    pz_task_t *t;
    if (w->polled)
        w->polled = false;
    else if (poll_first(w))
        poll_io(w);
    if ((t = next_local(w)))
        return t;
    if ((t = pz__inject_pop(w->rt, w)))
        return t;
    maintenance(w);
    if ((t = next_local(w)))
        return t;
    return steal(w);
}

/* Every load here is seq_cst: leave_searching and idle rely on it (their
 * comments say how). */
static bool work_visible(pz__runtime *rt)
{
    if (atomic_load(&rt->inject_len) > 0)
        return true;
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++)
        if (pz__runq_len(&rt->workers[i].runq) > 0 || atomic_load(&rt->workers[i].lifo))
            return true;
    return false;
}

/* Tasks wait for I/O and no worker holds the poller: a sleeper woken now
 * would find nothing to take and so go to wait in the poller. */
static inline bool poller_unwatched(pz__runtime *rt)
{
    return io_waiting(rt) && !atomic_load_explicit(&rt->driver_busy, memory_order_relaxed);
}

static void leave_searching(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    pz__spin_lock(&rt->idle_lock);
    bool was = w->searching;
    w->searching = false;
    pz__spin_unlock(&rt->idle_lock);
    /* The last searcher to find work hands the search on to a sleeper if
     * there is more work to take.  While a searcher exists, a producer
     * does not wake anyone (pz__notify_work, notify_work_local): the
     * searcher is to find its work.  So the last one must look again after
     * it stops counting, and it wakes a sleeper only if it sees work
     * (a queue, a LIFO slot, the injection queue or wake list), or if
     * tasks wait for I/O and nobody holds the poller (the sleeper then
     * goes to wait there, so that readiness is not left until this worker
     * comes back to its loop: under load, echo over 64 connections wants
     * it), not "in case": at low load that wake found nothing every time
     * (the weather service woke its polling worker once per finished
     * blocking-pool job, only for it to go back to the poller).
     *
     * No work waits behind this worker's task while a sleeper could take
     * it (liveness never depended on this wake: this worker gets to such
     * work once its task switches).  A producer on another thread (or one readying
     * a task from outside this worker) pushes, then issues a seq_cst fence,
     * then reads nsearching (pz__notify_work).  This side decrements
     * nsearching with a seq_cst read-modify-write, then reads the queues
     * with seq_cst loads (work_visible).  In the single total order of
     * seq_cst operations and fences, either the producer's fence comes
     * before our decrement, and then our loads, which follow it, see its
     * push; or it comes after, and then its read of nsearching sees our
     * decrement (0, unless another searcher is still searching, which then
     * takes over the duty) and it wakes a sleeper itself.  (The same pairing
     * as a sleeper's registration against pz__notify_work in idle.)  A
     * worker that pushes to its own queue without the fence
     * (notify_work_local) is awake and runs its queue itself; only the
     * parallelism can come later, as before. */
    if (was && atomic_fetch_sub(&rt->nsearching, 1) == 1 && (work_visible(rt) || poller_unwatched(rt)))
        pz__notify_work(rt);
}

/* Takes w out of the sleepers' list if it is in it.  Under rt->idle_lock. */
static void leave_sleepers(pz__runtime *rt, pz__worker *w)
{
    if (!w->sleeping)
        return;
    for (int i = 0; i < rt->nsleepers; i++) {
        if (rt->sleepers[i] == w->index) {
            rt->sleepers[i] = rt->sleepers[--rt->nsleepers];
            break;
        }
    }
    w->sleeping = false;
    atomic_fetch_sub(&rt->nsleeping, 1);
}

/* How late after the earliest timer deadline a sleeper that is not the
 * timer watcher wakes, in case the watcher has been woken for work and is
 * then stuck in one long task (an awake worker fires its own timers at
 * every decision and the others' every PZ__MAINTENANCE_INTERVAL decisions,
 * so normally they have fired long before).  Long, because while short
 * timers keep coming (lock waiters re-parking every 1 ms) a backup sleeper
 * wakes once per backup for nothing: at 2 ms, on the logic workload, each
 * idle worker woke about 850 times a second, 0.16 wake-ups per section. */
#define PZ__TIMER_BACKUP_NS (10 * INT64_C(1000000))

/* The deadline of w's sleep, which has just registered as a sleeper.
 * Under rt->idle_lock.
 *
 * One sleeper, the watcher, wakes at the earliest timer deadline of all
 * heaps; the others sleep PZ__TIMER_BACKUP_NS longer.  When every sleeper
 * woke at that deadline, an idle runtime woke all its workers for every
 * timer: a poller and a futex sleeper both returned, one of them found the
 * task and the other went back to sleep (with lock waiters re-parking every
 * 1 ms, a futex wake-up and a context switch per section of the logic
 * workload).
 *
 * Why no timer is left behind.  The heaps change only while some worker is
 * awake: a task parks on the worker that runs it, and a worker fires at
 * its decisions and on its way to sleep.  Take the last worker to register
 * while the others sleep: every insert came before the registration of the
 * worker that made it, so this one's earliest (read under the idle lock,
 * which orders it after their registrations) sees them all.  Either a
 * watcher is registered whose deadline is no later, and it still sleeps
 * (a watcher leaves the role under this lock when it stops sleeping), or
 * this one becomes the watcher with that deadline.  A watcher woken for
 * work is awake, and fires every heap at its decisions (the backup bounds
 * the case in which it is stuck in one task). */
static int64_t sleep_deadline(pz__runtime *rt, pz__worker *w)
{
    int64_t earliest = pz__timers_earliest(rt);
    if (earliest == PZ_FOREVER)
        return PZ_FOREVER;
    if (rt->watcher >= 0 && rt->watcher != w->index && rt->watch_until <= earliest)
        return earliest > PZ_FOREVER - PZ__TIMER_BACKUP_NS ? PZ_FOREVER : earliest + PZ__TIMER_BACKUP_NS;
    rt->watcher = w->index;
    rt->watch_until = earliest;
    return earliest;
}

/* The idle spin (pz_config_t.idle_spin_us; 20 us unless configured): a
 * worker that has run out of tasks while tasks wait for I/O polls the
 * poller without waiting, for up to idle_spin_ns, before it goes to sleep;
 * true if that found work here or the runtime is shutting down (the worker
 * loop then runs the work, or leaves).  What it saves is the wake-up of a
 * sleeping worker, which on a VM includes waking a halted vCPU: a 64-byte
 * echo with another process on the other core went from about 80 to 8 us
 * a round trip (docs/runtime.md).  What it costs is the spin's CPU time,
 * which a process sharing the cores (a database server that must run to
 * answer the worker's query) no longer has.
 *
 * So the spin is gated by what it earns: idle_spin_paid is a moving
 * average of the spins that found work (each spin moves it an eighth of
 * the way to all or nothing).  While it is under half, a worker spins at
 * one idle moment in PZ__IDLE_SPIN_PROBE only (its own count, no shared
 * write), to notice when spins start to pay again.  A partner that answers
 * within the spin keeps it on; one that cannot answer until the spinner
 * lets go of the core, or that answers later than the spin lasts, turns it
 * off after a few spins, and then it costs one spin in 16 idle moments (at
 * 20 us, 1.25 us per idle moment on average).  The average is approximate:
 * it is written only by the one worker in the spin (nidle_spinning), and
 * read by the others without ordering, which only moves the gate by a
 * spin.
 *
 * One worker spins at a time, as Go lets at most half its processors spin:
 * a second spinner would only poll the same poller.  A spare (standing in
 * for a blocked worker) does not spin.  While it spins the worker is not a
 * sleeper, so work made meanwhile may wake another worker for it; the
 * spinner sees it too (inject_len) and takes it if it gets there first,
 * which costs nothing but that wake-up (and counts as a spin that did not
 * pay, if the other worker got there first). */
static bool idle_spin(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    /* A worker waiting in the poller takes the next event itself: a spin
     * could not poll, and would only wait beside it. */
    if (rt->idle_spin_ns <= 0 || w->index >= rt->nworkers || !io_waiting(rt) ||
        atomic_load_explicit(&rt->driver_busy, memory_order_relaxed))
        return false;
    if (atomic_load_explicit(&rt->idle_spin_paid, memory_order_relaxed) < PZ__IDLE_SPIN_GATE &&
        ++w->idle_spin_skips % PZ__IDLE_SPIN_PROBE != 0)
        return false;
    int none = 0;
    if (!atomic_compare_exchange_strong_explicit(&rt->nidle_spinning, &none, 1, memory_order_relaxed,
                                                 memory_order_relaxed))
        return false;
    bool found = false, polled = false;
    int64_t until = pz__clock_now() + rt->idle_spin_ns;
    do {
        polled |= poll_io(w);
        if (work_at_hand(w) || atomic_load_explicit(&rt->shutdown, memory_order_relaxed)) {
            found = true;
            break;
        }
        for (int i = 0; i < 8; i++)
            pz__arch_cpu_relax();
    } while (pz__clock_now() < until);
    /* A spin that never got to poll (another worker went to wait in the
     * poller meanwhile) says nothing of what spins earn. */
    if (found || polled) {
        int paid = atomic_load_explicit(&rt->idle_spin_paid, memory_order_relaxed);
        paid += ((found ? PZ__IDLE_SPIN_ONE : 0) - paid) / 8;
        atomic_store_explicit(&rt->idle_spin_paid, paid, memory_order_relaxed);
    }
    atomic_store_explicit(&rt->nidle_spinning, 0, memory_order_relaxed);
    return found;
}

static void idle(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    if (idle_spin(w))
        return;

    /* A busy worker may not get to its timers for a while: fire theirs. */
    int64_t now = pz__clock_now();
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++)
        if (i != w->index)
            fire_timers(w, &rt->workers[i].timers, now, true);
    if (pz__runq_len(&w->runq) > 0 || retiring(w))
        return;

    pz__spin_lock(&rt->idle_lock);
    if (w->searching) {
        w->searching = false;
        atomic_fetch_sub(&rt->nsearching, 1);
    }
    atomic_store(&w->sleep_word, 0);
    rt->sleepers[rt->nsleepers++] = w->index;
    w->sleeping = true;
    atomic_fetch_add(&rt->nsleeping, 1);
    int64_t deadline = sleep_deadline(rt, w);
    pz__spin_unlock(&rt->idle_lock);

    /* A retiring spare's kick (under the idle lock) either came before
     * its registration, and then its RETIRE is seen here, or finds it in
     * the sleeper list and wakes it. */
    bool drove = false;
    if (!work_visible(rt) && !atomic_load(&rt->shutdown) && !retiring(w)) {
        if (atomic_load(&rt->io_waiters) > 0 && !atomic_exchange(&rt->driver_busy, true)) {
            /* Sleep in the poller: I/O readiness or the waker ends it.
             * It stops "polling" and leaves the sleepers' list in one hold
             * of the idle lock below, and only then lets go of the driver. */
            drove = true;
            pz__spin_lock(&rt->idle_lock);
            w->polling = true;
            bool notified = atomic_load(&w->sleep_word) != 0;
            pz__spin_unlock(&rt->idle_lock);
            if (!notified && !atomic_load(&rt->shutdown)) {
                worker_poll(w, deadline == PZ_FOREVER ? -1 : deadline);
                w->polled = true;
            }
        } else {
            while (atomic_load(&w->sleep_word) == 0 && !atomic_load(&rt->shutdown)) {
                int r = pz__futex_wait(&w->sleep_word, 0, deadline == PZ_FOREVER ? -1 : deadline);
                if (r == -ETIMEDOUT)
                    break;
            }
        }
    }

    pz__spin_lock(&rt->idle_lock);
    w->polling = false;
    leave_sleepers(rt, w);
    if (rt->watcher == w->index)
        rt->watcher = -1;
    pz__spin_unlock(&rt->idle_lock);
    if (drove)
        atomic_store(&rt->driver_busy, false);
    pz__monitor_poke(); /* the monitor sleeps while every worker does */
    /* Out of the sleepers' list first, so that this does not pick w. */
    if (more_than_one_runnable(w))
        notify_work_local(rt);
}

/* ---- switching ---- */

static void task_entry(void *arg);

/* Gives t a stack on its first run.  Returns false if none can be had. */
static bool prepare_run(pz__worker *w, pz_task_t *t)
{
    if (t->stack_map_size)
        return true;
    int err = pz__stack_acquire(w, t);
    if (err < 0) {
        /* Said once per runtime: a burst can fail by the thousand, and each
         * joiner learns it from pz_join's result. */
        if (!atomic_exchange_explicit(&w->rt->stack_failure_reported, true, memory_order_relaxed))
            pz__report("cannot map a %zu-byte stack for task %llu (%s): %s; it ends without running and "
                       "its pz_join (pz_run, for main) returns %d (further failures of this runtime are not reported)",
                       t->stack_size, (unsigned long long)t->id, t->name[0] ? t->name : "unnamed", strerror(-err),
                       err);
        t->start_error = err;
        return false;
    }
    t->ctx.sp = pz__arch_context_init(t->ctx.stack_lo, (char *)t->ctx.stack_lo + t->ctx.stack_size, task_entry, t);
#ifdef PZ_TSAN
    t->ctx.tsan_fiber = __tsan_create_fiber(0);
#endif
    return true;
}

/* Picks the next task w can run now, dropping tasks that cannot get a
 * stack; NULL means "go to the scheduler loop". */
static pz_task_t *next_runnable(pz__worker *w, pz_task_t *t)
{
    while (t && !prepare_run(w, t)) {
        t->result = NULL;
        if (t == w->rt->main_task) {
            /* pz_run waits for main: it must hear that main never ran. */
            w->rt->main_error = t->start_error;
            atomic_store(&w->rt->main_done, 1);
            pz__futex_wake(&w->rt->main_done, 1);
        }
        pz__task_finish(w, t);
        t = next_local(w);
    }
    return t;
}

static void switch_from_task(pz__worker *w, pz_task_t *self, bool dies)
{
    pz_task_t *next = next_runnable(w, next_local(w));
    w->current = next;
    w->coop_spent = 0;
    atomic_store_explicit(&w->running_id, next ? next->id : 0, memory_order_relaxed);
    atomic_store_explicit(&w->switches, atomic_load_explicit(&w->switches, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    ctx_switch(&self->ctx, next ? &next->ctx : &w->sched_ctx, dies);
}

__attribute__((noinline)) void pz__resume(void)
{
    pz__worker *w = pz__current_worker();
    void (*fn)(pz__worker *, void *) = w->after_fn;
    if (fn) {
        w->after_fn = NULL;
        fn(w, w->after_arg);
    }
    pz_task_t *t = w->current;
    if (t)
        errno = t->saved_errno;
}

static inline void suspend_on(pz__worker *w, void (*after)(pz__worker *, void *), void *arg)
{
    pz_task_t *self = w->current;
    /* The advisor's "time suspended so far" (src/runtime/observe.c), kept
     * only while it times a hold of this task (no clock read otherwise).  It
     * starts before the report of a suspension inside a sync lock, which is
     * part of suspending: symbolising that report's stack takes far longer
     * than the critical section's own work, and counted as work it would
     * hide that the section mostly waits. */
    int64_t parked_at =
        atomic_load_explicit(&pz__observe_sw.on, memory_order_relaxed) && self->observer.timed_holds ? pz__clock_now() : 0;
    if (atomic_load_explicit(&self->holds.depth, memory_order_relaxed))
        pz__held_at_suspend(self);
    self->saved_errno = errno;
    w->after_fn = after;
    w->after_arg = arg;
    switch_from_task(w, self, false);
    /* Possibly on another worker now: pz__resume reads it afresh. */
    pz__resume();
    if (parked_at)
        self->observer.suspended_ns += pz__clock_now() - parked_at;
}

void pz__suspend(void (*after)(pz__worker *, void *), void *arg)
{
    suspend_on(pz__current_worker(), after, arg);
}

static void exit_after(pz__worker *w, void *arg)
{
    pz_task_t *t = arg;
    pz__stack_release(w->rt, w, t);
#ifdef PZ_TSAN
    __tsan_destroy_fiber(t->ctx.tsan_fiber);
    t->ctx.tsan_fiber = NULL;
#endif
    pz__task_finish(w, t);
}

_Noreturn void pz__task_exit_switch(pz_task_t *t)
{
    pz__worker *w = pz__current_worker();
    w->after_fn = exit_after;
    w->after_arg = t;
    switch_from_task(w, t, true);
    abort(); /* a finished task is never resumed */
}

static void task_entry(void *arg)
{
#ifdef PZ_ASAN
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
    pz__resume();
    pz_task_t *t = arg;
    t->result = t->fn(t->arg);
    pz__task_end(t);
    if (atomic_load_explicit(&t->holds.depth, memory_order_relaxed))
        pz__held_at_exit(t);
    pz__task_unregister(t); /* reports stop reading its stack now */
    pz__task_exit_switch(t);
}

static void yield_after(pz__worker *w, void *arg)
{
    push_local(w, arg);
    notify_work_local(w->rt);
}

void pz_yield(void)
{
    pz__worker *w = pz__current_worker();
    if (!w || !w->current) {
        sched_yield();
        return;
    }
    if (++w->tick % PZ__MAINTENANCE_INTERVAL == 0)
        maintenance(w);
    /* Nothing else to run here or in the injection queue (either list),
     * even once this worker's expired timers have fired: carry on (unless
     * this is a spare told to retire: the task moves to another worker).
     * (With something else to run, the switch's decision fires them.) */
    if (pz__runq_len(&w->runq) == 0 && !atomic_load_explicit(&w->lifo, memory_order_relaxed) && !retiring(w)) {
        fire_own_timers(w);
        if (atomic_load_explicit(&w->rt->inject_len, memory_order_relaxed) == 0)
            return;
    }
    suspend_on(w, yield_after, w->current);
}

/* The cooperative budget.  Tasks are never preempted, so a task whose
 * waits all succeed without suspending (a lock it keeps winning, a socket
 * that always has data) would keep its worker from the tasks queued behind
 * it, including ones whose timers have fired.  Primitives call this on
 * their slow paths; after PZ__COOP_BUDGET calls since the task was last
 * switched in, it yields (which returns at once if nothing else is
 * runnable here). */

/* The running task's budget is spent: a fresh one, and the yield. */
static void coop_yield(pz__worker *w)
{
    w->coop_spent = 0;
    pz_yield();
}

static void coop_step(pz__worker *w)
{
    if (w && w->current && ++w->coop_spent >= PZ__COOP_BUDGET)
        coop_yield(w);
}

void pz__coop_tick(void)
{
    coop_step(pz__current_worker());
}

void pz__coop_tick_release(void)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current && !atomic_load_explicit(&w->current->holds.depth, memory_order_relaxed))
        coop_step(w);
}

void pz__coop_yield_spent(void)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current)
        coop_yield(w);
}

bool pz__task_id_running(uint64_t id)
{
    pz__runtime *rt = pz__rt_pin();
    bool running = false;
    for (int i = 0, n = rt ? pz__rt_slots(rt) : 0; i < n && !running; i++)
        running = atomic_load_explicit(&rt->workers[i].running_id, memory_order_relaxed) == id;
    pz__rt_unpin(rt);
    return running;
}

/* ---- workers ---- */

void *pz__worker_main(void *arg)
{
    pz__worker *w = arg;
    pz__runtime *rt = w->rt;
    char name[24];
    bool spare = w->index >= rt->nworkers;
    if (spare)
        snprintf(name, sizeof name, "plaza-s%d", (w->index - rt->nworkers) & 0xffff);
    else
        snprintf(name, sizeof name, "plaza-w%d", w->index & 0xffff);
    name[15] = '\0'; /* a thread name has at most 15 bytes */
    pz__thread_set_name(name);
    atomic_store_explicit(&w->tid, (int)syscall(SYS_gettid), memory_order_relaxed);
    pz__thread_precise_timers();
    pz__set_current_worker(w);
    pz__altstack_setup(w);
    pz__thread_stack_bounds(&w->sched_ctx.stack_lo, &w->sched_ctx.stack_size);
#ifdef PZ_TSAN
    w->sched_ctx.tsan_fiber = __tsan_get_current_fiber();
#endif
    /* A spare's slot was given to this thread alone (spare.c). */
    PZ__ASSERT(!spare || atomic_load_explicit(&w->slot_state, memory_order_acquire) == PZ__SLOT_RUNNING ||
               atomic_load_explicit(&w->slot_state, memory_order_acquire) == PZ__SLOT_RETIRE);
    /* No task runs before every worker exists: if one cannot be started,
     * pz_run fails having run nothing. */
    while (atomic_load_explicit(&rt->start_gate, memory_order_acquire) == 0)
        pz__futex_wait(&rt->start_gate, 0, -1);
    for (;;) {
        pz__resume();
        if (atomic_load_explicit(&rt->shutdown, memory_order_acquire))
            break;
        if (spare && retiring(w))
            break;
        w->in_loop = true;
        pz_task_t *t = next_runnable(w, find_work(w));
        w->in_loop = false;
        if (t) {
            if (w->searching)
                leave_searching(w);
            w->current = t;
            w->coop_spent = 0;
            atomic_store_explicit(&w->running_id, t->id, memory_order_relaxed);
            atomic_store_explicit(&w->switches, atomic_load_explicit(&w->switches, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            ctx_switch(&w->sched_ctx, &t->ctx, false);
            continue;
        }
        idle(w);
    }
    if (spare)
        pz__spare_leave(w);
    pz__altstack_teardown(w);
    pz__set_current_worker(NULL);
    if (spare) {
        /* The last touch of the slot: the monitor (or pz_run) joins this
         * thread and only then may give the slot to another. */
        atomic_fetch_sub_explicit(&rt->nthreads, 1, memory_order_relaxed);
        atomic_store_explicit(&w->slot_state, PZ__SLOT_EXITED, memory_order_release);
    }
    return NULL;
}

void pz__worker_kick(pz__worker *w)
{
    pz__runtime *rt = w->rt;
    pz__spin_lock(&rt->idle_lock);
    leave_sleepers(rt, w);
    atomic_store(&w->sleep_word, 1);
    bool polling = w->polling;
    pz__spin_unlock(&rt->idle_lock);
    if (polling)
        pz__waker_signal(rt->waker);
    else
        pz__futex_wake(&w->sleep_word, 1);
}

int pz_worker_index(void)
{
    pz__worker *w = pz__current_worker();
    return w ? w->index : -1;
}
