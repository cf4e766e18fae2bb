/*
 * The observed forms of the async mutex, taken instead of the inline fast
 * paths of async.h while pz__advisor_on is set (see runtime.h and
 * src/sync/observe.c, which does the same for the sync locks): out of line
 * so that __builtin_return_address(0) is the caller's call site; the wait
 * is timed only when the first attempt fails, and reported with gave_up
 * when it ends without the mutex (deadline or cancel).  The release hook
 * runs before the unlock (which may yield), only while the observer times
 * a hold of the caller, and only when the caller holds the mutex (an
 * unlock by a non-holder is reported by the unlock itself).
 *
 * pz__async_observe_* are the same reports for the async locks whose calls
 * are out of line (rwlock.c, semaphore.c, chan.c): they call them with
 * their caller's address, each behind one test of pz__advisor_on.
 */
#include "plaza/async.h"
#include "plaza/runtime.h"

#include "observe.h"

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

/* The contended half, apart: its slot lookup is its own (the slow path
 * may suspend, and the task resume on another thread). */
static __attribute__((noinline)) int lock_contended(pz_async_mutex_t *m, uint64_t self, int64_t deadline,
                                                    const void *site)
{
    int64_t t0 = pz_now();
    int r = pz__async_mutex_lock_slow(m, self, deadline);
    int64_t waited = pz_now() - t0;
    if (r == 0 && pz__debug_holds())
        pz__held_acquired_at(m, "pz_async_mutex", site);
    const pz__lock_hooks *h = hooks();
    if (h) {
        if (r == 0)
            h->acquired(m, PZ__LOCK_ASYNC_MUTEX, site, waited, 0, self);
        else
            h->gave_up(m, PZ__LOCK_ASYNC_MUTEX, site, waited, 0, r);
    }
    return r;
}

/* The uncontended half: the slot is found before the lock is taken and
 * the acquisition counted in it inline (runtime.h), so the critical
 * section holds no call into the observer. */
__attribute__((noinline)) int pz__async_mutex_lock_observed(pz_async_mutex_t *m, uint64_t self, int64_t deadline)
{
    const void *site = __builtin_return_address(0);
    const pz__lock_hooks *h = hooks();
    pz__observe_slot *sl = slot_for(h, m, PZ__LOCK_ASYNC_MUTEX, site);
    if (__builtin_expect(pz__async_mutex_take(m, self), 1)) {
        if (pz__debug_holds())
            pz__held_acquired_at(m, "pz_async_mutex", site);
        if (sl)
            pz__observe_uncontended(h, sl, self, 0);
        return 0;
    }
    return lock_contended(m, self, deadline, site);
}

__attribute__((noinline)) bool pz__async_mutex_trylock_observed(pz_async_mutex_t *m)
{
    const void *site = __builtin_return_address(0);
    uint64_t self = pz__async_self_bits();
    while (atomic_load_explicit(&m->state, memory_order_relaxed) == 0) {
        if (pz__async_mutex_take(m, self)) {
            if (pz__debug_holds())
                pz__held_acquired_at(m, "pz_async_mutex", site);
            const pz__lock_hooks *h = hooks();
            if (h)
                h->acquired(m, PZ__LOCK_ASYNC_MUTEX, site, -1, 0, self);
            return true;
        }
    }
    return false;
}

/* The release report, then the whole unlock.  The report comes first
 * because the unlock may yield (the cooperative budget): a hold's end
 * measured after it would count that yield as waiting.  Whether the
 * observer may time a hold of the caller is read inline here
 * (pz__observer_timing): no call for an untimed release. */
int pz__async_mutex_unlock_observed(pz_async_mutex_t *m, uint64_t self)
{
    if (__builtin_expect(pz__observer_timing(), 0)) {
        const pz__lock_hooks *h = hooks();
        if (h && pz_async_mutex_holder(m) == self >> PZ__AMUTEX_OWNER_SHIFT)
            h->released(m, PZ__LOCK_ASYNC_MUTEX, 0, self);
    }
    return pz__async_mutex_unlock_plain(m, self);
}

void pz__async_observe_acquired(const void *lock, unsigned kind, const void *site, int64_t waited, unsigned flags)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->acquired(lock, kind, site, waited, flags, pz__caller_id());
}

void pz__async_observe_gave_up(const void *lock, unsigned kind, const void *site, int64_t waited, unsigned flags,
                               int err)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->gave_up(lock, kind, site, waited, flags, err);
}

void pz__async_observe_released(const void *lock, unsigned kind, unsigned flags)
{
    if (__builtin_expect(!pz__observer_timing(), 1))
        return;
    const pz__lock_hooks *h = hooks();
    if (h)
        h->released(lock, kind, flags, pz__caller_id());
}
