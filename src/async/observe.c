/*
 * The observed forms of the async mutex, taken instead of the inline fast
 * paths of async.h while pz__advisor_on is set (see runtime.h and
 * src/sync/observe.c, which does the same for the sync locks): out of line
 * so that __builtin_return_address(0) is the caller's call site; the wait
 * is timed only when the first attempt fails.  The release hook runs
 * before the unlock, while the caller holds the mutex, and only when it
 * does (an unlock by a non-holder is reported by the unlock itself).
 */
#include "plaza/async.h"
#include "plaza/runtime.h"

static inline const pz__lock_hooks *hooks(void)
{
    return atomic_load_explicit(&pz__lock_hooks_table, memory_order_acquire);
}

__attribute__((noinline)) int pz__async_mutex_lock_observed(pz_async_mutex_t *m, int64_t deadline)
{
    const void *site = __builtin_return_address(0);
    uint64_t self = pz__async_self_bits();
    int64_t t0 = 0;
    int r = 0;
    if (!pz__async_mutex_take(m, self)) {
        t0 = pz_now();
        r = pz__async_mutex_lock_slow(m, self, deadline);
    }
    if (r == 0 && pz__debug_holds())
        pz__held_acquired(m, "pz_async_mutex");
    const pz__lock_hooks *h = hooks();
    if (r == 0 && h)
        h->acquired(m, PZ__LOCK_ASYNC_MUTEX, site, t0 ? pz_now() - t0 : -1, 0);
    return r;
}

__attribute__((noinline)) bool pz__async_mutex_trylock_observed(pz_async_mutex_t *m)
{
    const void *site = __builtin_return_address(0);
    while (atomic_load_explicit(&m->state, memory_order_relaxed) == 0) {
        if (pz__async_mutex_take(m, pz__async_self_bits())) {
            if (pz__debug_holds())
                pz__held_acquired(m, "pz_async_mutex");
            const pz__lock_hooks *h = hooks();
            if (h)
                h->acquired(m, PZ__LOCK_ASYNC_MUTEX, site, -1, 0);
            return true;
        }
    }
    return false;
}

void pz__async_mutex_released_observed(pz_async_mutex_t *m)
{
    const pz__lock_hooks *h = hooks();
    if (h && pz_async_mutex_holder(m) == pz__async_self_bits() >> PZ__AMUTEX_OWNER_SHIFT)
        h->released(m, PZ__LOCK_ASYNC_MUTEX, 0);
}
