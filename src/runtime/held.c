/*
 * Which plaza locks each task (or plain thread) holds: a record the lock
 * layers write through pz__held_acquired / pz__held_released, kept here in
 * the runtime so that the scheduler can report a task that suspends while
 * it holds a sync lock without calling up into the sync layer.
 *
 * A task's record lives in its task struct and moves with it between
 * workers; a plain thread's lives in a thread-local.  Both are written only
 * by their owner (the running task, the thread) and read by others only for
 * reports, racily: a report is a snapshot.  depth counts every hold; the
 * first PZ__HELD_MAX of them are kept with their lock, kind and site.
 *
 * Suspending with a sync lock held: on an M:N runtime that can deadlock
 * (the task that would unlock may need the very worker the lock's waiter is
 * blocking), and it always blocks every task that wants the lock for as
 * long as the holder sleeps.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <execinfo.h>
#include <stdio.h>
#include <unistd.h>

static __thread pz__holds thread_holds __attribute__((tls_model("initial-exec")));

static pz__holds *holds_of_caller(void)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current)
        return &w->current->holds;
    if (w)
        return NULL; /* a worker's own loop takes no plaza locks */
    return &thread_holds;
}

void pz__held_acquired(const void *lock, const char *kind)
{
    pz__holds *h = holds_of_caller();
    if (!h)
        return;
    if (h->depth < PZ__HELD_MAX) {
        pz__held *e = &h->rec[h->depth];
        e->lock = lock;
        e->kind = kind;
        e->site = __builtin_return_address(0);
    }
    h->depth++;
}

void pz__held_released(const void *lock)
{
    pz__holds *h = holds_of_caller();
    if (!h || !h->depth)
        return;
    unsigned n = h->depth < PZ__HELD_MAX ? h->depth : PZ__HELD_MAX;
    /* Locks are usually released in reverse order: search from the top and
     * close the gap, so the kept entries stay the oldest holds in order. */
    for (unsigned i = n; i-- > 0;) {
        if (h->rec[i].lock == lock) {
            for (unsigned k = i; k + 1 < n; k++)
                h->rec[k] = h->rec[k + 1];
            break;
        }
    }
    h->depth--;
}

static _Atomic int reports_left = 16;

void pz__held_at_suspend(pz_task_t *t)
{
    if (atomic_fetch_sub(&reports_left, 1) <= 0)
        return;
    const pz__held *last = &t->holds.rec[(t->holds.depth < PZ__HELD_MAX ? t->holds.depth : PZ__HELD_MAX) - 1];
    fprintf(stderr,
            "plaza: task %llu (%s) suspends while holding %u sync lock(s), last %s %p; a task must not "
            "suspend inside a sync lock's critical section (it blocks every waiter's worker and can deadlock "
            "the runtime): use an async lock for a section that waits\n",
            (unsigned long long)t->id, t->name[0] ? t->name : "unnamed", t->holds.depth, last->kind, last->lock);
    fprintf(stderr, "plaza:   the lock was taken at: ");
    fflush(stderr);
    void *site = last->site;
    backtrace_symbols_fd(&site, 1, STDERR_FILENO);
    fprintf(stderr, "plaza:   the task suspends at:\n");
    fflush(stderr);
    void *frames[8];
    int n = backtrace(frames, 8);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
}
