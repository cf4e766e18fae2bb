/*
 * The out-of-line half of the async mutex's observed acquisition (the
 * advisor on, see runtime.h and src/sync/observe.c, which does the same
 * for the sync locks): the inline half in async.h counts an uncontended
 * acquisition itself while the thread's last slot is its (lock, site)'s
 * and the hold is not to be timed, and comes here for the rest.  site is
 * the address the inline half took in the lock call, or NULL, and then
 * this function's return address is the site.  The wait is timed only
 * when the first attempt fails, and reported with gave_up when it ends
 * without the mutex (deadline or cancel).  The release hook runs before
 * the unlock (which may yield), only while the observer times a hold of
 * the caller, and only when the caller holds the mutex (an unlock by a
 * non-holder is reported by the unlock itself).
 *
 * pz__async_observe_* are the same reports for the async locks whose calls
 * are out of line (rwlock.c, semaphore.c, chan.c): they call them with
 * their caller's address, each behind one test of pz__observe_sw.on.
 */
#include "plaza/async.h"
#include "plaza/runtime.h"

#include "observe.h"

static inline const pz__lock_hooks *hooks(void)
{
    return atomic_load_explicit(&pz__observe_sw.hooks, memory_order_acquire);
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

/* The inline half's take failed: the wait, timed (site NULL: this call's
 * return address is the site). */
__attribute__((noinline)) int pz__async_mutex_lock_observed(pz_async_mutex_t *m, uint64_t self, int64_t deadline,
                                                            const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    return lock_contended(m, self, deadline, site);
}

/* The inline half took the mutex and left the rest to this one: the slot
 * looked up (and kept as the thread's last), the acquisition counted, the
 * hold timed when the countdown runs out.  Nothing here suspends, so the
 * thread's slots are the holder's. */
__attribute__((noinline)) int pz__async_mutex_taken_observed(pz_async_mutex_t *m, uint64_t self, const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    const pz__lock_hooks *h = hooks();
    pz__observe_slot *sl = pz__observe_slot_for(h, m, PZ__LOCK_ASYNC_MUTEX, site, 0);
    if (pz__debug_holds())
        pz__held_acquired_at(m, "pz_async_mutex", site);
    if (sl)
        pz__observe_count(sl, self, 0);
    return 0;
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

/* The release report, before the unlock (async.h), while the observer
 * times some hold (PZ__OBSERVE_TIMING, inline there): here if one of the
 * caller's.  It comes first because the unlock may yield (the cooperative
 * budget): a hold's end measured after it would count that yield as
 * waiting. */
void pz__async_mutex_released_observed(pz_async_mutex_t *m, uint64_t self)
{
    if (pz__observer_self()->timed_holds == 0)
        return;
    const pz__lock_hooks *h = hooks();
    if (h && pz_async_mutex_holder(m) == self >> PZ__AMUTEX_OWNER_SHIFT)
        h->released(m, PZ__LOCK_ASYNC_MUTEX, 0, self);
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
    if (__builtin_expect(!PZ__OBSERVE_TIMING(), 1) || pz__observer_self()->timed_holds == 0)
        return;
    const pz__lock_hooks *h = hooks();
    if (h)
        h->released(lock, kind, flags, pz__caller_id());
}
