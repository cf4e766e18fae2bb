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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../runtime/internal.h"

/* ---- the holder check ----
 *
 * An unlock by a caller that does not hold the lock would let a third
 * party in while the holder is still inside.  Two checks refuse it (the
 * unlock is reported and ignored):
 * - always, for tasks: a task that unlocks while it holds no sync lock at
 *   all (w->sync_depth is 0) cannot be the holder.  Free: the count is
 *   kept anyway, in this out-of-line call every lock and unlock makes.
 * - with PLAZA_SYNC_CHECK=1 in the environment (read once), for threads
 *   and tasks: each thread keeps the addresses of the sync locks it holds
 *   (up to 32; beyond that it stops checking) and an unlock of an address
 *   not among them is refused.  Off, it costs one predictable branch here.
 *   A task that suspends while holding a sync lock (reported) leaves its
 *   entries on the thread it ran on: later reports about it may be wrong.
 */

#define PZ__HELD_MAX 32

static _Atomic int check_mode = -1; /* -1: not read yet; 0 off; 1 on */
static _Thread_local const void *held_locks[PZ__HELD_MAX];
static _Thread_local int held_n;
static _Thread_local bool held_overflow;

static bool checking(void)
{
    int m = atomic_load_explicit(&check_mode, memory_order_relaxed);
    if (__builtin_expect(m < 0, 0)) {
        const char *e = getenv("PLAZA_SYNC_CHECK");
        m = e && e[0] && strcmp(e, "0") != 0;
        atomic_store_explicit(&check_mode, m, memory_order_relaxed);
    }
    return m;
}

void pz__sync_check_set(int on)
{
    atomic_store_explicit(&check_mode, on ? 1 : 0, memory_order_relaxed);
    held_n = 0;
    held_overflow = false;
}

void pz__sync_acquired(const void *lock, const char *kind)
{
    if (__builtin_expect(checking(), 0)) {
        if (held_n < PZ__HELD_MAX)
            held_locks[held_n++] = lock;
        else
            held_overflow = true;
    }
    pz__worker *w = pz__current_worker();
    if (!w || !w->current)
        return;
    w->sync_depth++;
    w->sync_lock = lock;
    w->sync_kind = kind;
    w->sync_site = __builtin_return_address(0);
}

static bool thread_holds(const void *lock)
{
    for (int i = held_n - 1; i >= 0; i--) {
        if (held_locks[i] == lock) {
            held_locks[i] = held_locks[--held_n];
            return true;
        }
    }
    return held_overflow;
}

bool pz__sync_released(const void *lock, const char *what)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current) {
        if (!w->sync_depth) {
            pz_task_t *t = w->current;
            pz__report("%s: %p is not held by task %llu (%s), which holds no sync lock; ignored", what, lock,
                       (unsigned long long)t->id, t->name[0] ? t->name : "unnamed");
            return false;
        }
        w->sync_depth--;
    }
    if (__builtin_expect(checking(), 0) && !thread_holds(lock)) {
        if (w && w->current)
            w->sync_depth++; /* nothing was released */
        pz__report("%s: %p is not held by the calling %s (PLAZA_SYNC_CHECK); ignored", what, lock,
                   w && w->current ? "task" : "thread");
        return false;
    }
    return true;
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
