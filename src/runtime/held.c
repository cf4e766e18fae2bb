/*
 * Which plaza locks each task (or plain thread) holds: a record the lock
 * layers write through pz__held_acquired / pz__held_released, kept here in
 * the runtime so that the scheduler can report a task that suspends while
 * it holds a sync lock without calling up into the sync layer.  The sync
 * locks' fast paths write it inline on x86-64 (pz__held_take and
 * pz__held_give in plaza/runtime.h: a push, and a pop of the last lock
 * taken) and come here for everything else: a plain thread's first hold
 * (which registers its record, then found inline through pz__self_tls),
 * an unlock of another lock than the last taken, the checks below.
 *
 * A task's record lives in its task struct and moves with it between
 * workers; a plain thread's lives in a thread-local.  Both are written only
 * by their owner (the running task, the thread) and read by others only for
 * reports, racily: a report is a snapshot.  depth counts every hold; the
 * first PZ__HELD_MAX of them are kept with their lock, kind and site.
 *
 * The holder check: an unlock by a caller that does not hold the lock
 * would let a third party in while the holder is still inside.  Two checks
 * refuse it (the unlock is reported and ignored):
 * - always, for tasks: a task that unlocks while it holds no lock at all
 *   (depth 0) cannot be the holder.  Free: the record is kept anyway.
 * - with PLAZA_SYNC_CHECK=1 in the environment (read once), for threads
 *   and tasks: an unlock of a lock not among the caller's kept entries is
 *   refused, unless the caller holds more than PZ__HELD_MAX locks (then
 *   the deeper ones are not known and it is let through).  Off, it costs
 *   one predictable branch.
 *
 * Suspending with a sync lock held: on an M:N runtime that can deadlock
 * (the task that would unlock may need the very worker the lock's waiter is
 * blocking), and it always blocks every task that wants the lock for as
 * long as the holder sleeps.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <execinfo.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int check_mode = -1; /* -1: not read yet; 0 off; 1 on */

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
}

/* What the inline paths of plaza/runtime.h need of the runtime's structs. */
const pz__self_layout_t pz__self_layout = {
    .worker_current = offsetof(pz__worker, current),
    .task_holds = offsetof(struct pz_task, holds),
    .worker_coop_spent = offsetof(pz__worker, coop_spent),
};

static pz__holds *holds_of_caller(void)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current)
        return &w->current->holds;
    if (w)
        return NULL; /* a worker's own loop takes no plaza locks */
    pz__holds *h = &pz__thread_rec_self()->holds;
    h->caller = pz__caller_id();
    pz__self_tls.holds = h; /* from now on the inline paths find it */
    return h;
}

static inline void held_acquired(const void *lock, const char *kind, const void *site)
{
    pz__holds *h = holds_of_caller();
    if (!h)
        return;
    unsigned d = atomic_load_explicit(&h->depth, memory_order_relaxed);
    if (d < PZ__HELD_MAX) {
        pz__held *e = &h->rec[d];
        atomic_store_explicit(&e->lock, lock, memory_order_relaxed);
        atomic_store_explicit(&e->kind, kind, memory_order_relaxed);
        atomic_store_explicit(&e->site, (void *)site, memory_order_relaxed);
    }
    atomic_store_explicit(&h->depth, d + 1, memory_order_relaxed);
}

void pz__held_acquired(const void *lock, const char *kind)
{
    held_acquired(lock, kind, __builtin_return_address(0));
}

void pz__held_acquired_at(const void *lock, const char *kind, const void *site)
{
    held_acquired(lock, kind, site);
}

/* Removes lock from h; false if it is not among the kept entries. */
static bool drop(pz__holds *h, const void *lock, unsigned d)
{
    unsigned n = d < PZ__HELD_MAX ? d : PZ__HELD_MAX;
    /* Locks are usually released in reverse order: search from the top and
     * close the gap, so the kept entries stay the oldest holds in order. */
    for (unsigned i = n; i-- > 0;) {
        if (atomic_load_explicit(&h->rec[i].lock, memory_order_relaxed) == lock) {
            for (unsigned k = i; k + 1 < n; k++) {
                pz__held *to = &h->rec[k], *from = &h->rec[k + 1];
                atomic_store_explicit(&to->lock, atomic_load_explicit(&from->lock, memory_order_relaxed),
                                      memory_order_relaxed);
                atomic_store_explicit(&to->kind, atomic_load_explicit(&from->kind, memory_order_relaxed),
                                      memory_order_relaxed);
                atomic_store_explicit(&to->site, atomic_load_explicit(&from->site, memory_order_relaxed),
                                      memory_order_relaxed);
            }
            atomic_store_explicit(&h->depth, d - 1, memory_order_relaxed);
            return true;
        }
    }
    return false;
}

bool pz__held_released(const void *lock, const char *what)
{
    pz__worker *w = pz__current_worker();
    pz_task_t *t = w ? w->current : NULL;
    pz__holds *h = holds_of_caller();
    if (!h)
        return true;
    unsigned d = atomic_load_explicit(&h->depth, memory_order_relaxed);
    if (t && !d) {
        pz__report("%s: %p is not held by task %llu (%s), which holds no sync lock; ignored", what, lock,
                   (unsigned long long)t->id, t->name[0] ? t->name : "unnamed");
        return false;
    }
    if (d && drop(h, lock, d))
        return true;
    if (__builtin_expect(checking(), 0) && d <= PZ__HELD_MAX) {
        pz__report("%s: %p is not held by the calling %s (PLAZA_SYNC_CHECK); ignored", what, lock,
                   t ? "task" : "thread");
        return false;
    }
    /* One of the uncounted deep holds (or, unchecked, a lock the caller
     * may not hold: counted down all the same, as before the check). */
    if (d)
        atomic_store_explicit(&h->depth, d - 1, memory_order_relaxed);
    return true;
}

void pz__held_forget(const void *lock)
{
    pz__holds *h = holds_of_caller();
    if (!h)
        return;
    unsigned d = atomic_load_explicit(&h->depth, memory_order_relaxed);
    if (d && !drop(h, lock, d) && d > PZ__HELD_MAX)
        atomic_store_explicit(&h->depth, d - 1, memory_order_relaxed);
}

static _Atomic int reports_left = 16;

struct suspend_report {
    pz_task_t *t;
    const pz__held_view *last;
    unsigned depth;
    void *frames[8];
    int nframes;
};

/* The report's symbol lookups, on a stack of their own (libdw needs more
 * than a task's). */
static void report_suspend(void *arg)
{
    struct suspend_report *r = arg;
    pz_task_t *t = r->t;
    pz__report("task %llu (%s) suspends while holding %u sync lock(s), last %s %p; a task must not suspend inside "
               "a sync lock's critical section (it blocks every waiter's worker and can deadlock the runtime): use an "
               "async lock for a section that waits",
               (unsigned long long)t->id, t->name[0] ? t->name : "unnamed", r->depth, r->last->kind, r->last->lock);
    void *syms = pz__arch_symbols_open();
    char sym[256];
    pz__arch_symbolize(syms, r->last->site, true, sym, sizeof sym);
    pz__report("  the lock was taken at %s", sym);
    /* Frame 0 is pz__held_at_suspend, frame 1 the switch that reported it. */
    for (int i = 2; i < r->nframes; i++) {
        pz__arch_symbolize(syms, r->frames[i], true, sym, sizeof sym);
        pz__report("  %s %s", i == 2 ? "the task suspends at" : "  called from", sym);
    }
    pz__arch_symbols_close(syms);
}

void pz__held_at_suspend(pz_task_t *t)
{
    if (atomic_fetch_sub(&reports_left, 1) <= 0)
        return;
    pz__held_view v[PZ__HELD_MAX];
    struct suspend_report r = {.t = t};
    unsigned n = pz__holds_read(&t->holds, v, &r.depth);
    r.last = &v[n - 1];
    r.nframes = backtrace(r.frames, 8);
    pz__arch_run_on_own_stack(report_suspend, &r);
}

struct exit_report {
    pz_task_t *t;
    pz__held_view v[PZ__HELD_MAX];
    unsigned n, depth;
};

static void report_exit(void *arg)
{
    struct exit_report *r = arg;
    pz__report("task %llu (%s) ended while holding %u plaza lock(s); nobody can unlock them now, and every task "
               "that waits for one waits for ever",
               (unsigned long long)r->t->id, r->t->name[0] ? r->t->name : "unnamed", r->depth);
    void *syms = pz__arch_symbols_open();
    for (unsigned i = 0; i < r->n; i++) {
        char sym[256];
        pz__arch_symbolize(syms, r->v[i].site, true, sym, sizeof sym);
        pz__report("  %s %p, taken at %s", r->v[i].kind, r->v[i].lock, sym);
    }
    pz__arch_symbols_close(syms);
}

void pz__held_at_exit(pz_task_t *t)
{
    struct exit_report r = {.t = t};
    r.n = pz__holds_read(&t->holds, r.v, &r.depth);
    if (!r.depth)
        return;
    /* On the ending task's stack: the symbol lookups go to one of their own. */
    pz__arch_run_on_own_stack(report_exit, &r);
}
