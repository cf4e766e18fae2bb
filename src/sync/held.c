/*
 * Which sync locks the running task holds, so that a task that suspends
 * while holding one is reported: on an M:N runtime that can deadlock (the
 * task that would unlock may need the very worker the lock holder's waiter
 * is blocking), and it always blocks every task that wants the lock for as
 * long as the holder sleeps.
 *
 * The count lives in the worker, not in a thread-local, and is touched only
 * through pz__current_worker(), so nothing is cached across a switch.  A
 * plain thread (no worker) keeps no count: it cannot suspend a task.
 */
#define _GNU_SOURCE
#include "plaza/sync.h"

#include <execinfo.h>
#include <stdio.h>
#include <unistd.h>

#include "../runtime/internal.h"

void pz__sync_acquired(const void *lock, const char *kind)
{
    pz__worker *w = pz__current_worker();
    if (!w || !w->current)
        return;
    w->sync_depth++;
    w->sync_lock = lock;
    w->sync_kind = kind;
    w->sync_site = __builtin_return_address(0);
}

void pz__sync_released(const void *lock)
{
    (void)lock;
    pz__worker *w = pz__current_worker();
    if (w && w->sync_depth)
        w->sync_depth--;
}

static _Atomic int reports_left = 16;

void pz__sync_held_at_suspend(pz__worker *w)
{
    pz_task_t *t = w->current;
    if (atomic_fetch_sub(&reports_left, 1) > 0) {
        fprintf(stderr,
                "plaza: task %llu (%s) suspends while holding %u sync lock(s), last %s %p; a task must not "
                "suspend inside a sync lock's critical section (it blocks every waiter's worker and can deadlock "
                "the runtime): use an async lock for a section that waits\n",
                (unsigned long long)t->id, t->name[0] ? t->name : "unnamed", w->sync_depth, w->sync_kind,
                w->sync_lock);
        fprintf(stderr, "plaza:   the lock was taken at: ");
        fflush(stderr);
        void *site = w->sync_site;
        backtrace_symbols_fd(&site, 1, STDERR_FILENO);
        fprintf(stderr, "plaza:   the task suspends at:\n");
        fflush(stderr);
        void *frames[8];
        int n = backtrace(frames, 8);
        backtrace_symbols_fd(frames, n, STDERR_FILENO);
    }
    t->sync_depth += w->sync_depth;
    w->sync_depth = 0;
}
