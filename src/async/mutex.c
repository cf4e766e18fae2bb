/*
 * pz_async_mutex slow paths and owner ids.  The words are described in
 * include/plaza/async.h.
 *
 * Lock: while nobody is parked, retry a few times with a short cpu_relax
 * back-off (a holder that runs on another worker often lets go within
 * nanoseconds, and suspending costs far more); then set PARKED and park in
 * the lot, which suspends the task (or blocks a plain thread).  The lot's
 * validate callback checks under the bucket lock that the word is still
 * LOCKED|PARKED, so an unlock in between cannot be missed: an unlocker that
 * sees PARKED goes through the same bucket lock.
 *
 * Unlock with PARKED set: the lot picks the first waiter and, under the
 * bucket lock, unlock_decide chooses.  A fair hand-off (the lot's be_fair)
 * keeps LOCKED set and gives the waiter TOKEN_HANDOFF: it returns owning
 * the lock.  Otherwise the word becomes 0 (or PARKED if more waiters
 * remain), and the woken waiter competes again with running tasks.
 *
 * Cancel-safety: the lot wakes a waiter with a token or lets it time out
 * having left the queue, never both.  A waiter that received TOKEN_HANDOFF
 * owns the lock and returns 0 even if its deadline or a cancel came at the
 * same instant; one that timed out received nothing and leaves nothing
 * behind (if it was the last waiter, it clears PARKED under the bucket
 * lock).
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include <stdio.h>

#include "../runtime/internal.h"

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1
#define SPIN_LIMIT 4
/* A waiter trying this long turns on starvation mode. */
#define STARVE_NS 1000000

static _Atomic uint64_t next_thread_id = 1;
static __thread uint64_t thread_id;

uint64_t pz__async_self_id(void)
{
    pz_task_t *t = pz__current_task();
    if (t)
        return t->id;
    if (!thread_id)
        thread_id = PZ__AMUTEX_THREAD_BIT | atomic_fetch_add_explicit(&next_thread_id, 1, memory_order_relaxed);
    return thread_id;
}

static bool still_locked_and_parked(void *ctx)
{
    pz_async_mutex_t *m = ctx;
    uintptr_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    return (s & (PZ__AMUTEX_LOCKED | PZ__AMUTEX_PARKED)) == (PZ__AMUTEX_LOCKED | PZ__AMUTEX_PARKED);
}

static void mutex_timed_out(void *ctx, bool was_last)
{
    pz_async_mutex_t *m = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&m->state, ~(uintptr_t)(PZ__AMUTEX_PARKED | PZ__AMUTEX_STARVING),
                                  memory_order_relaxed);
}

int pz__async_mutex_lock_slow(pz_async_mutex_t *m, int64_t deadline)
{
    int spins = 0;
    int64_t first_park = 0;
    uintptr_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        /* Barge in while the lock is free, except in starvation mode,
         * where it passes only by hand-off (and is never seen free). */
        if (!(s & (PZ__AMUTEX_LOCKED | PZ__AMUTEX_STARVING))) {
            if (atomic_compare_exchange_weak_explicit(&m->state, &s, s | PZ__AMUTEX_LOCKED, memory_order_acquire,
                                                      memory_order_relaxed))
                break;
            continue;
        }
        if (!(s & (PZ__AMUTEX_PARKED | PZ__AMUTEX_STARVING)) && spins < SPIN_LIMIT) {
            spins++;
            for (int i = 0; i < (2 << spins); i++)
                pz__arch_cpu_relax();
            s = atomic_load_explicit(&m->state, memory_order_relaxed);
            continue;
        }
        /* A waiter that was woken and lost the lock to a running task
         * parks again at the tail of the queue.  Once it has been trying
         * for STARVE_NS it turns on starvation mode, so that it cannot
         * lose again: from then on every unlock hands over in queue
         * order. */
        uintptr_t want = s | PZ__AMUTEX_PARKED;
        if (first_park && pz_now() - first_park >= STARVE_NS)
            want |= PZ__AMUTEX_STARVING;
        if (want != s &&
            !atomic_compare_exchange_weak_explicit(&m->state, &s, want, memory_order_relaxed, memory_order_relaxed))
            continue;
        if (!first_park)
            first_park = pz_now();
        uintptr_t token = TOKEN_NORMAL;
        int r = pz_park(m, still_locked_and_parked, NULL, mutex_timed_out, m, 0, deadline, 0, &token);
        if (r == 0 && token == TOKEN_HANDOFF) {
            /* The unlocker left LOCKED set for us; its section happens
             * before our wake (the lot's bucket lock and the task wake
             * order it).  A waiter served quickly ends starvation mode. */
            if (pz_now() - first_park < STARVE_NS)
                atomic_fetch_and_explicit(&m->state, ~(uintptr_t)PZ__AMUTEX_STARVING, memory_order_relaxed);
            break;
        }
        if (r == -ETIMEDOUT || r == -ECANCELED)
            return r;
        if (r == -EAGAIN && deadline != PZ_FOREVER && pz_now() >= deadline)
            return -ETIMEDOUT;
        spins = 0;
        s = atomic_load_explicit(&m->state, memory_order_relaxed);
    }
    atomic_store_explicit(&m->owner, pz__async_self_id(), memory_order_relaxed);
    return 0;
}

static uintptr_t unlock_decide(pz_unpark_result_t r, void *arg)
{
    pz_async_mutex_t *m = arg;
    uintptr_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    if (r.unparked && (r.be_fair || (s & PZ__AMUTEX_STARVING))) {
        /* Hand-off: LOCKED stays set for the woken waiter. */
        if (!r.have_more)
            atomic_store_explicit(&m->state, PZ__AMUTEX_LOCKED, memory_order_relaxed);
        return TOKEN_HANDOFF;
    }
    /* Nobody holds the lock now; the word changes only under the bucket
     * lock while PARKED is set, so a plain store is enough. */
    atomic_store_explicit(&m->state, r.have_more ? PZ__AMUTEX_PARKED : 0, memory_order_release);
    return TOKEN_NORMAL;
}

void pz__async_mutex_unlock_slow(pz_async_mutex_t *m)
{
    /* Only LOCKED now (the last waiter just left and cleared PARKED). */
    uintptr_t locked = PZ__AMUTEX_LOCKED;
    if (atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release, memory_order_relaxed))
        return;
    pz_unpark_one(m, unlock_decide, m);
}

int pz__async_mutex_unlock_misuse(pz_async_mutex_t *m, uint64_t self)
{
    uint64_t owner = atomic_load_explicit(&m->owner, memory_order_relaxed);
    bool locked = atomic_load_explicit(&m->state, memory_order_relaxed) & PZ__AMUTEX_LOCKED;
    char who[48], holder[48];
    if (self & PZ__AMUTEX_THREAD_BIT)
        snprintf(who, sizeof who, "thread #%llu", (unsigned long long)(self & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(who, sizeof who, "task %llu", (unsigned long long)self);
    if (!locked || !owner)
        snprintf(holder, sizeof holder, "%s", locked ? "nobody yet" : "nobody (it is not locked)");
    else if (owner & PZ__AMUTEX_THREAD_BIT)
        snprintf(holder, sizeof holder, "thread #%llu", (unsigned long long)(owner & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(holder, sizeof holder, "task %llu", (unsigned long long)owner);
    pz__report("pz_async_mutex_unlock: async mutex %p is held by %s, not by the unlocking %s; ignored", (void *)m,
               holder, who);
    return -EPERM;
}
