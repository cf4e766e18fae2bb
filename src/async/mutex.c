/*
 * pz_async_mutex slow paths.  The word is described in include/plaza/async.h.
 *
 * Lock: a task that finds the mutex held spins a few rounds (with back-off)
 * when the holder may be running on another worker, even if waiters are
 * parked: a data-sized section is over within nanoseconds and suspending
 * costs far more.  While it spins with waiters parked it owns WOKEN, so the
 * unlock it is waiting for releases the word without waking anybody (a
 * wake-up that would only find the lock taken again and re-park is the
 * expensive part of a contended async lock).  Then it sets PARKED, drops
 * WOKEN, and parks in the lot, which suspends the task (or blocks a plain
 * thread).  The lot's validate callback checks under the bucket lock that
 * the word is still LOCKED|PARKED, so an unlock in between cannot be
 * missed: an unlocker that sees PARKED goes through the same bucket lock.
 *
 * Unlock with PARKED set and WOKEN clear: the lot picks the first waiter
 * and, under the bucket lock, unlock_decide chooses.  A fair hand-off (the
 * lot's be_fair, or STARVING) keeps LOCKED set and gives the waiter
 * TOKEN_HANDOFF: it returns owning the lock and writes its id into the
 * word.  Otherwise the word is released with WOKEN set, and the woken
 * waiter competes with running tasks, owning WOKEN until it takes the lock
 * or parks again.  So at most one woken waiter is on its way at a time,
 * and unlocks while it is on its way cost one CAS.
 *
 * WOKEN can have two owners for a moment (a spinner sets it just before an
 * unlocker, which saw it clear, wakes a waiter); either clearing it early
 * only lets a later unlock wake one waiter more than needed.  It is never
 * left set with no owner, because every way out of the lock slow path
 * (taking the lock, parking) clears it first, so a parked waiter is never
 * forgotten.
 *
 * Cancel-safety: the lot wakes a waiter with a token or lets it time out
 * having left the queue, never both.  A waiter that received TOKEN_HANDOFF
 * owns the lock and returns 0 even if its deadline or a cancel came at the
 * same instant; one that timed out received nothing and leaves nothing
 * behind (if it was the last waiter, it clears PARKED and STARVING under
 * the bucket lock).
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include <stdio.h>

#include "../runtime/internal.h"
#include "spin.h"

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1
/* A waiter trying this long turns on starvation mode. */
#define STARVE_NS 1000000

#define LOCKED PZ__AMUTEX_LOCKED
#define PARKED PZ__AMUTEX_PARKED
#define WOKEN PZ__AMUTEX_WOKEN
#define STARVING PZ__AMUTEX_STARVING
#define FLAGS ((uint64_t)PZ__AMUTEX_FLAGS)

static bool still_locked_and_parked(void *ctx)
{
    pz_async_mutex_t *m = ctx;
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    return (s & (LOCKED | PARKED)) == (LOCKED | PARKED);
}

static void mutex_timed_out(void *ctx, bool was_last)
{
    pz_async_mutex_t *m = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&m->state, ~(uint64_t)(PARKED | STARVING), memory_order_relaxed);
}

/* Whether the holder recorded in s may be running now, so that spinning
 * can see it let go soon.  A task holder suspended in the section (a
 * logic critical section waiting for I/O) will not let go soon: park at
 * once.  A thread holder is assumed to run; so is nobody (a word without
 * a holder id is being handed to a woken waiter: do not spin on that). */
static bool holder_may_run(uint64_t s)
{
    uint64_t id = s >> PZ__AMUTEX_OWNER_SHIFT;
    if (!id)
        return false;
    if (id & PZ__AMUTEX_THREAD_BIT)
        return true;
    return pz__task_id_running(id);
}

int pz__async_mutex_lock_slow(pz_async_mutex_t *m, uint64_t self, int64_t deadline)
{
    /* A task that keeps winning the lock here never suspends; the budget
     * makes it let the tasks queued behind it run now and then. */
    pz__coop_tick();
    const int spin_rounds = pz__async_spin_rounds();
    int spins = 0;
    bool woken = false; /* this caller owns WOKEN */
    int64_t first_park = 0;
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        /* Barge in while the lock is free, except in starvation mode,
         * where it passes only by hand-off (and is never seen free). */
        if (!(s & (LOCKED | STARVING))) {
            uint64_t want = (s | self | LOCKED) & ~(uint64_t)(woken ? WOKEN : 0);
            if (atomic_compare_exchange_weak_explicit(&m->state, &s, want, memory_order_acquire,
                                                      memory_order_relaxed))
                return 0;
            continue;
        }
        if (!(s & STARVING) && spins < spin_rounds && holder_may_run(s)) {
            if (!woken && (s & PARKED) && !(s & WOKEN)) {
                if (!atomic_compare_exchange_weak_explicit(&m->state, &s, s | WOKEN, memory_order_relaxed,
                                                           memory_order_relaxed))
                    continue;
                woken = true;
            }
            pz__async_backoff(++spins);
            s = atomic_load_explicit(&m->state, memory_order_relaxed);
            continue;
        }
        /* Park, giving up WOKEN.  A waiter that was woken and lost the
         * lock parks again at the tail of the queue; once it has been
         * trying for STARVE_NS it turns on starvation mode, so that it
         * cannot lose again: from then on every unlock hands over in queue
         * order. */
        uint64_t want = (s | PARKED) & ~(uint64_t)(woken ? WOKEN : 0);
        if (first_park && pz__clock_now() - first_park >= STARVE_NS)
            want |= STARVING;
        if (want != s &&
            !atomic_compare_exchange_weak_explicit(&m->state, &s, want, memory_order_relaxed, memory_order_relaxed))
            continue;
        woken = false;
        if (!first_park)
            first_park = pz__clock_now();
        uintptr_t token = TOKEN_NORMAL;
        int r = pz_park(m, still_locked_and_parked, NULL, mutex_timed_out, m, 0, deadline, 0, &token);
        if (r == 0 && token == TOKEN_HANDOFF) {
            /* The unlocker left LOCKED set for us with no holder id; its
             * section happens before our wake (the lot's bucket lock and
             * the task wake order it).  A waiter served quickly ends
             * starvation mode. */
            uint64_t clear = pz__clock_now() - first_park < STARVE_NS ? STARVING : 0;
            s = atomic_load_explicit(&m->state, memory_order_relaxed);
            while (!atomic_compare_exchange_weak_explicit(&m->state, &s, (s | self) & ~clear, memory_order_acquire,
                                                          memory_order_relaxed))
                ;
            return 0;
        }
        if (r == 0) {
            /* Woken without the lock: the unlocker set WOKEN for us. */
            woken = true;
        } else if (r == -ETIMEDOUT || r == -ECANCELED) {
            return r;
        } else if (deadline != PZ_FOREVER && pz_now() >= deadline) {
            return -ETIMEDOUT; /* -EAGAIN: the word changed before we slept */
        }
        spins = 0;
        s = atomic_load_explicit(&m->state, memory_order_relaxed);
    }
}

/* Under the bucket lock, with r telling whom the lot took. */
static uintptr_t unlock_decide(pz_unpark_result_t r, void *arg)
{
    pz_async_mutex_t *m = arg;
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        uint64_t want;
        uintptr_t token;
        if (r.unparked && (r.be_fair || (s & STARVING))) {
            /* Hand-off: LOCKED stays set, the holder id is cleared for the
             * woken waiter to write.  Starvation mode lasts while others
             * wait. */
            want = LOCKED | (s & WOKEN) | (r.have_more ? PARKED | (s & STARVING) : 0);
            token = TOKEN_HANDOFF;
        } else {
            want = (s & WOKEN) | (r.have_more ? PARKED : 0) | (r.unparked ? WOKEN : 0);
            token = TOKEN_NORMAL;
        }
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, want, memory_order_release, memory_order_relaxed))
            return token;
    }
}

static int unlock_misuse(pz_async_mutex_t *m, uint64_t s, uint64_t self)
{
    char who[48], holder[48];
    uint64_t me = self >> PZ__AMUTEX_OWNER_SHIFT, owner = s >> PZ__AMUTEX_OWNER_SHIFT;
    if (me & PZ__AMUTEX_THREAD_BIT)
        snprintf(who, sizeof who, "thread #%llu", (unsigned long long)(me & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(who, sizeof who, "task %llu", (unsigned long long)me);
    if (!(s & LOCKED))
        snprintf(holder, sizeof holder, "nobody (it is not locked)");
    else if (!owner)
        snprintf(holder, sizeof holder, "a waiter it is being handed to");
    else if (owner & PZ__AMUTEX_THREAD_BIT)
        snprintf(holder, sizeof holder, "thread #%llu", (unsigned long long)(owner & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(holder, sizeof holder, "task %llu", (unsigned long long)owner);
    pz__report("pz_async_mutex_unlock: async mutex %p is held by %s, not by the unlocking %s; ignored", (void *)m,
               holder, who);
    return -EPERM;
}

int pz__async_mutex_unlock_slow(pz_async_mutex_t *m, uint64_t self)
{
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        if (!(s & LOCKED) || (s & ~FLAGS) != self)
            return unlock_misuse(m, s, self);
        if ((s & STARVING) || (s & (PARKED | WOKEN)) == PARKED)
            break;
        /* Nobody parked, or a woken waiter or spinner is on its way and
         * will take the lock: release without waking anyone. */
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, s & (PARKED | WOKEN), memory_order_release,
                                                  memory_order_relaxed))
            return 0;
    }
    pz_unpark_one(m, unlock_decide, m);
    return 0;
}
