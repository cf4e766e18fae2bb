/*
 * Timers: each worker has a binary min-heap of the tasks that parked on it
 * with a deadline, under a spin lock.  A task inserts into the heap of the
 * worker it parks on and records which one, so it can take itself out again
 * from wherever it resumes.
 *
 * Invariant: a timer is claimed (pz__task_claim with its generation) only
 * while the heap lock is held, and a task that resumes for another reason
 * takes its entry out under the same lock before its park returns.  So once
 * pz__park_commit returns, no timer will touch the task again.
 *
 * The heap has nanosecond deadlines.  Its worker checks it at every
 * scheduling decision (one load while it is empty, a clock read while it
 * is not), other workers every PZ__MAINTENANCE_INTERVAL decisions and on
 * every idle wake-up (in case its worker is stuck in one long task); one
 * idle worker, the timer watcher, sleeps exactly until the earliest
 * deadline of all heaps, and the others later (sched.c, idle).  Expired
 * tasks go to the runtime's wake list, which every decision looks at
 * first (sched.c).
 */
#include "internal.h"

#include <stdlib.h>

void pz__timers_init(pz__timers *tm)
{
    tm->heap = NULL;
    tm->len = tm->cap = 0;
    atomic_init(&tm->next, PZ_FOREVER);
}

void pz__timers_destroy(pz__timers *tm)
{
    free(tm->heap);
    tm->heap = NULL;
    tm->len = tm->cap = 0;
}

static inline void place(pz__timers *tm, size_t i, pz__timer_entry e)
{
    tm->heap[i] = e;
    e.task->timer_index = (int)i;
}

static void sift_up(pz__timers *tm, size_t i)
{
    pz__timer_entry e = tm->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (tm->heap[parent].deadline <= e.deadline)
            break;
        place(tm, i, tm->heap[parent]);
        i = parent;
    }
    place(tm, i, e);
}

static void sift_down(pz__timers *tm, size_t i)
{
    pz__timer_entry e = tm->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= tm->len)
            break;
        if (child + 1 < tm->len && tm->heap[child + 1].deadline < tm->heap[child].deadline)
            child++;
        if (e.deadline <= tm->heap[child].deadline)
            break;
        place(tm, i, tm->heap[child]);
        i = child;
    }
    place(tm, i, e);
}

static void remove_at(pz__timers *tm, size_t i)
{
    tm->heap[i].task->timer_index = -1;
    tm->len--;
    if (i < tm->len) {
        /* The last entry fills the hole, and may belong above or below it:
         * one comparison with the parent says which way to sift. */
        pz__timer_entry last = tm->heap[tm->len];
        tm->heap[i] = last;
        if (i > 0 && tm->heap[(i - 1) / 2].deadline > last.deadline)
            sift_up(tm, i);
        else
            sift_down(tm, i);
    }
}

static void publish_next(pz__timers *tm)
{
    atomic_store_explicit(&tm->next, tm->len ? tm->heap[0].deadline : PZ_FOREVER, memory_order_release);
}

void pz__timer_insert(pz__worker *w, pz_task_t *t, int64_t deadline, uint64_t gen)
{
    pz__timers *tm = &w->timers;
    t->timer_gen = gen;
    t->timer_worker = w->index;
    pz__spin_lock(&tm->lock);
    if (tm->len == tm->cap) {
        /* Growth is the only allocation on a wait path, and amortised: the
         * heap doubles and never shrinks while the runtime runs. */
        size_t cap = tm->cap ? tm->cap * 2 : 256;
        pz__timer_entry *heap = realloc(tm->heap, cap * sizeof *heap);
        if (!heap) {
            pz__spin_unlock(&tm->lock);
            pz__report("out of memory for a timer; task %llu wakes at once", (unsigned long long)t->id);
            pz__task_claim(t, gen, PZ__WAKE_TIMEOUT);
            return;
        }
        tm->heap = heap;
        tm->cap = cap;
    }
    tm->heap[tm->len] = (pz__timer_entry){deadline, t};
    sift_up(tm, tm->len++);
    publish_next(tm);
    pz__spin_unlock(&tm->lock);
}

void pz__timer_remove(pz__runtime *rt, pz_task_t *t)
{
    pz__timers *tm = &rt->workers[t->timer_worker].timers;
    pz__spin_lock(&tm->lock);
    if (t->timer_index >= 0) {
        remove_at(tm, (size_t)t->timer_index);
        publish_next(tm);
    }
    pz__spin_unlock(&tm->lock);
}


int pz__timers_fire(pz__runtime *rt, pz__timers *tm, int64_t now, bool try_only)
{
    if (atomic_load_explicit(&tm->next, memory_order_acquire) > now)
        return 0;
    if (try_only) {
        if (!pz__spin_trylock(&tm->lock))
            return 0;
    } else {
        pz__spin_lock(&tm->lock);
    }
    /* Expired tasks are made runnable in deadline order (appended at the
     * list's tail): two timers that expire together run in that order. */
    pz_task_t *ready = NULL, *last = NULL;
    int n = 0;
    while (tm->len && tm->heap[0].deadline <= now) {
        pz_task_t *t = tm->heap[0].task;
        remove_at(tm, 0);
        if (pz__task_claim(t, t->timer_gen, PZ__WAKE_TIMEOUT) == PZ__CLAIM_WON_READY) {
            t->next = NULL;
            if (last)
                last->next = t;
            else
                ready = t;
            last = t;
            n++;
        }
    }
    publish_next(tm);
    pz__spin_unlock(&tm->lock);
    /* To the wake list, in one splice: they run ahead of the run queues
     * (the policy and its bound are in sched.c).  No wake-up here: the
     * caller is a worker that is awake and looks at the wake list at its
     * next decision; sched.c's fire_timers decides whether another worker
     * is needed. */
    if (ready)
        pz__wake_push(rt, ready, last, (size_t)n);
    return n;
}

int64_t pz__timers_earliest(pz__runtime *rt)
{
    int64_t earliest = PZ_FOREVER;
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++) {
        int64_t d = atomic_load_explicit(&rt->workers[i].timers.next, memory_order_acquire);
        if (d < earliest)
            earliest = d;
    }
    return earliest;
}
