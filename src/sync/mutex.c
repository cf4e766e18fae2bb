/*
 * pz_mutex slow paths.  The lock word is described in sync.h.
 *
 * Lock: spin while nobody is parked (a holder of a data critical section
 * lets go within nanoseconds; sleeping would cost microseconds), with
 * exponential back-off of cpu_relax, then a few sched_yield; then set PARKED
 * and park in the lot, validating under the bucket lock that the word is
 * still LOCKED|PARKED so an unlock in between cannot be missed.
 *
 * Unlock with PARKED set: the lot wakes the first waiter and, under the
 * bucket lock, the callback decides: a fair hand-off keeps LOCKED set and
 * gives the waiter the TOKEN_HANDOFF (it returns owning the lock); otherwise
 * the word becomes 0, or PARKED if more waiters remain, and the woken waiter
 * competes for the lock again.
 */
#define _GNU_SOURCE
#include "plaza/sync.h"
#include "plaza/park.h"

#include <sched.h>

#include "../runtime/internal.h"
#include "spin_wait.h"

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF PZ__MUTEX_TOKEN_HANDOFF

static bool still_locked_and_parked(void *ctx)
{
    pz_mutex_t *m = ctx;
    return atomic_load_explicit(&m->state, memory_order_relaxed) == (PZ__MUTEX_LOCKED | PZ__MUTEX_PARKED);
}

static void mutex_timed_out(void *ctx, bool was_last)
{
    pz_mutex_t *m = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&m->state, (uint8_t)~PZ__MUTEX_PARKED, memory_order_relaxed);
}

void pz__mutex_lock_slow(pz_mutex_t *m, int64_t deadline, int *result)
{
    int spins = 0;
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        if (!(s & PZ__MUTEX_LOCKED)) {
            if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                      memory_order_acquire, memory_order_relaxed))
                return;
            continue;
        }
        if (!(s & PZ__MUTEX_PARKED) && pz__spin_wait(&spins)) {
            s = atomic_load_explicit(&m->state, memory_order_relaxed);
            continue;
        }
        if (!(s & PZ__MUTEX_PARKED)) {
            if (!atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_PARKED),
                                                       memory_order_relaxed, memory_order_relaxed))
                continue;
        }
        uintptr_t token = TOKEN_NORMAL;
        pz__wait_note(PZ__WAIT_MUTEX, m);
        const pz_park_opts_t opts = {.validate = still_locked_and_parked, .timed_out = mutex_timed_out,
                                     .ctx = m, .flags = PZ_PARK_THREAD};
        int r = pz_park(m, deadline, &opts, &token);
        if (r == 0 && token == TOKEN_HANDOFF)
            return; /* the unlocker left LOCKED set for us */
        if (r == -ETIMEDOUT) {
            if (result)
                *result = -ETIMEDOUT;
            return;
        }
        spins = 0;
        s = atomic_load_explicit(&m->state, memory_order_relaxed);
    }
}

struct unlock_ctx {
    pz_mutex_t *m;
    bool force_fair;
};

static uintptr_t unlock_decide(pz_unpark_result_t r, void *arg)
{
    struct unlock_ctx *c = arg;
    if (r.unparked && (c->force_fair || r.be_fair)) {
        if (!r.have_more)
            atomic_store_explicit(&c->m->state, PZ__MUTEX_LOCKED, memory_order_relaxed);
        return TOKEN_HANDOFF;
    }
    atomic_store_explicit(&c->m->state, r.have_more ? PZ__MUTEX_PARKED : 0, memory_order_release);
    return TOKEN_NORMAL;
}

void pz__mutex_unlock_slow(pz_mutex_t *m, bool fair)
{
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    if (!(s & PZ__MUTEX_LOCKED)) {
        pz__report("pz_mutex_unlock: mutex %p is not locked; ignored", (void *)m);
        return;
    }
    /* Only LOCKED (a racing waiter just cleared PARKED): a plain unlock. */
    if (s == PZ__MUTEX_LOCKED) {
        uint8_t locked = PZ__MUTEX_LOCKED;
        if (atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release,
                                                    memory_order_relaxed))
            return;
    }
    struct unlock_ctx c = {m, fair};
    pz_unpark_one(m, unlock_decide, &c);
}
