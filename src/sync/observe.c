/*
 * The observed forms of the sync locks' acquisitions, taken instead of the
 * inline fast paths of sync.h while pz__advisor_on is set (see runtime.h);
 * the unlocks stay inline and call here only to end a timed hold.
 *
 * They are out of line on purpose: __builtin_return_address(0) here is the
 * address in the function that called pz_mutex_lock (the inline wrapper
 * lives in that function), which is the call site the advisor reports.
 * Each does what the fast path does, times the wait only when the first
 * attempt fails (an uncontended acquisition costs no clock read), and
 * reports to the hook table: acquired after a lock was taken, gave_up
 * after a wait that ended without it (deadline: the wait counts all the
 * same).  An uncontended pz_mutex acquisition finds its slot, records the
 * hold and counts it before the CAS: no call into the observer inside the
 * section.  The release hook runs after a mutex is let go (before, for
 * the rwlock), and only while the observer may time a hold of the caller
 * (pz__observer_timing in runtime.h, inline: the caller's timed-hold
 * count): an untimed release, nearly every one, costs the observer that
 * test and no call.
 */
#include "plaza/sync.h"
#include "plaza/runtime.h"

#include <errno.h>

#include "../runtime/internal.h"

static inline const pz__lock_hooks *hooks(void)
{
    return atomic_load_explicit(&pz__lock_hooks_table, memory_order_acquire);
}

/* The slot of this thread's last uncontended acquisition here, kept while
 * its pair still matches (runtime.h): a loop on one lock at one site asks
 * the hook once.  Read only by this thread, in calls that do not suspend. */
static __thread pz__observe_slot *last_slot __attribute__((tls_model("initial-exec")));

static inline pz__observe_slot *slot_for(const pz__lock_hooks *h, const void *lock, unsigned kind, const void *site)
{
    return pz__observe_slot_cached(&last_slot, h, lock, kind, site);
}

/* The running task, or NULL on a plain thread (or a worker's own loop).
 * Read straight from the thread-local: none of these paths suspends, so
 * the thread cannot change under them (sync locks block the thread). */
static inline pz_task_t *running_task(void)
{
    pz__worker *w = pz__self_tls.worker;
    return w ? w->current : NULL;
}

/* The caller's id (pz__caller_id) without a call for a task. */
static inline uint64_t caller_id(void)
{
    pz_task_t *t = running_task();
    if (t)
        return t->id;
    uint64_t id = pz__thread_id;
    return id ? id : pz__caller_id();
}

/* lock was taken by the caller at site: its held-lock record, without a
 * call for a task. */
static inline void held_take(const void *lock, const char *kind, const void *site)
{
    pz_task_t *t = running_task();
    pz__holds *h = t ? &t->holds : pz__self_tls.holds;
    if (h)
        pz__held_push(h, lock, kind, site);
    else
        pz__held_acquired_at(lock, kind, site);
}

/* The caller's observation record (pz__observer_self) without a call for
 * a task. */
static inline pz__observer *observer(void)
{
    pz_task_t *t = running_task();
    return t ? &t->observer : &pz__self_tls.observer;
}

static void report_acquired(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->acquired(lock, kind, site, wait_ns, flags, caller_id());
}

static void report_gave_up(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags,
                           int err)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->gave_up(lock, kind, site, wait_ns, flags, err);
}

static void report_released(const void *lock, unsigned kind, unsigned flags)
{
    if (__builtin_expect(observer()->timed_holds == 0, 1))
        return;
    const pz__lock_hooks *h = hooks();
    if (h)
        h->released(lock, kind, flags, caller_id());
}

/* The contended half of pz__mutex_lock_observed, apart so that the
 * uncontended half saves no register before its CAS. */
static __attribute__((noinline)) void mutex_lock_contended(pz_mutex_t *m, int64_t deadline, int *result,
                                                           const void *site)
{
    int64_t t0 = pz_now();
    int r = 0;
    pz__mutex_lock_slow(m, deadline, &r);
    int64_t waited = pz_now() - t0;
    if (result)
        *result = r;
    if (r == 0) {
        held_take(m, "pz_mutex", site);
        report_acquired(m, PZ__LOCK_MUTEX, site, waited, 0);
    } else {
        report_gave_up(m, PZ__LOCK_MUTEX, site, waited, 0, r);
    }
}

/* The rare ends of an uncontended acquisition: the owner changed, or the
 * countdown reached 0 (this hold is to be timed). */
static __attribute__((noinline)) void lock_observed_rare(const pz__lock_hooks *h, pz__observe_slot *sl,
                                                         uint64_t self, bool owner_changed)
{
    if (owner_changed)
        h->owner_changed(sl, self);
    if (--sl->countdown == 0)
        h->sample(sl, self, 0);
}

/* An acquisition whose slot or held-lock record is not at hand (the first
 * at a site, a plain thread's first hold, a full table): the same steps
 * through the calls. */
static __attribute__((noinline)) void lock_observed_lookup(pz_mutex_t *m, int64_t deadline, int *result,
                                                           const void *site)
{
    const pz__lock_hooks *h = hooks();
    pz__observe_slot *sl = slot_for(h, m, PZ__LOCK_MUTEX, site);
    uint8_t unlocked = 0;
    if (!atomic_compare_exchange_strong_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED, memory_order_acquire,
                                                 memory_order_relaxed)) {
        mutex_lock_contended(m, deadline, result, site);
        return;
    }
    if (result)
        *result = 0;
    held_take(m, "pz_mutex", site);
    if (sl)
        pz__observe_uncontended(h, sl, caller_id(), 0);
}

/* The uncontended half: the slot is found (the thread's last one), the
 * hold recorded in the caller's held-lock record and the acquisition
 * counted in the slot before the CAS (undone if it fails), so that the
 * critical section holds only the owner check and the countdown
 * (pz__observe_uncontended's, in two halves): no call into the observer,
 * no lookup, few moves.  Every call from here is a tail call, so that the
 * common path saves no register. */
__attribute__((noinline)) void pz__mutex_lock_observed(pz_mutex_t *m, int64_t deadline, int *result)
{
    const void *site = __builtin_return_address(0);
    const pz__lock_hooks *h = hooks();
    pz__observe_slot *sl = last_slot;
    pz_task_t *t = running_task();
    pz__holds *held = t ? &t->holds : pz__self_tls.holds;
    if (__builtin_expect(!h || !sl || sl->lock != m || sl->site != site || !held, 0)) {
        lock_observed_lookup(m, deadline, result, site);
        return;
    }
    pz__held_push(held, m, "pz_mutex", site);
    atomic_store_explicit(&sl->acquisitions, atomic_load_explicit(&sl->acquisitions, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    uint8_t unlocked = 0;
    if (__builtin_expect(atomic_compare_exchange_strong_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED,
                                                                 memory_order_acquire, memory_order_relaxed),
                         1)) {
        if (result)
            *result = 0;
        uint64_t self = t ? t->id : caller_id();
        bool changed = atomic_load_explicit(sl->last_owner, memory_order_relaxed) != self;
        if (__builtin_expect(changed || sl->countdown == 1, 0)) {
            lock_observed_rare(h, sl, self, changed);
            return;
        }
        sl->countdown--;
        return;
    }
    /* Taken: the hold and the count pushed above were this attempt's (the
     * contended half records its own). */
    atomic_store_explicit(&held->depth, atomic_load_explicit(&held->depth, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    atomic_store_explicit(&sl->acquisitions, atomic_load_explicit(&sl->acquisitions, memory_order_relaxed) - 1,
                          memory_order_relaxed);
    mutex_lock_contended(m, deadline, result, site);
}

__attribute__((noinline)) bool pz__mutex_trylock_observed(pz_mutex_t *m)
{
    const void *site = __builtin_return_address(0);
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    while (!(s & PZ__MUTEX_LOCKED)) {
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                  memory_order_acquire, memory_order_relaxed)) {
            held_take(m, "pz_mutex", site);
            report_acquired(m, PZ__LOCK_MUTEX, site, -1, 0);
            return true;
        }
    }
    return false;
}

/* After the unlock (sync.h), while the observer may time a hold of the
 * caller: a timed hold's end is recorded after the mutex is free, outside
 * the critical section. */
void pz__mutex_released_observed(pz_mutex_t *m)
{
    report_released(m, PZ__LOCK_MUTEX, 0);
}

static bool rw_fast(pz_rwlock_t *rw, int mode)
{
    uintptr_t unlocked = 0;
    switch (mode) {
    case PZ__RW_MODE_WRITE:
        return atomic_compare_exchange_strong_explicit(&rw->state, &unlocked, PZ__RW_WRITER, memory_order_acquire,
                                                       memory_order_relaxed);
    case PZ__RW_MODE_UPGRADABLE:
        return pz__rwlock_upgradable_fast(rw);
    default:
        return pz__rwlock_read_fast(rw);
    }
}

static unsigned rw_flags(int mode)
{
    return mode == PZ__RW_MODE_WRITE ? 0 : PZ__LOCK_SHARED;
}

__attribute__((noinline)) int pz__rwlock_lock_observed(pz_rwlock_t *rw, int mode, int64_t deadline)
{
    const void *site = __builtin_return_address(0);
    int64_t t0 = 0, waited = -1;
    int r = 0;
    if (!rw_fast(rw, mode)) {
        t0 = pz_now();
        r = pz__rwlock_lock_slow(rw, mode, deadline);
        waited = pz_now() - t0;
    }
    if (r == 0) {
        held_take(rw, "pz_rwlock", site);
        report_acquired(rw, PZ__LOCK_RWLOCK, site, waited, rw_flags(mode));
    } else {
        report_gave_up(rw, PZ__LOCK_RWLOCK, site, waited, rw_flags(mode), r);
    }
    return r;
}

__attribute__((noinline)) bool pz__rwlock_try_observed(pz_rwlock_t *rw, int mode)
{
    const void *site = __builtin_return_address(0);
    if (!rw_fast(rw, mode) && !pz__rwlock_try_slow(rw, mode))
        return false;
    held_take(rw, "pz_rwlock", site);
    report_acquired(rw, PZ__LOCK_RWLOCK, site, -1, rw_flags(mode));
    return true;
}

void pz__rwlock_released_observed(pz_rwlock_t *rw, int mode)
{
    report_released(rw, PZ__LOCK_RWLOCK, rw_flags(mode));
}
