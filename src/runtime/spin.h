/*
 * A test-and-test-and-set spin lock for the runtime's own tiny critical
 * sections (a queue splice, a heap update, a join hand-shake): a few dozen
 * instructions, never a wait or a call that can suspend.  Its waiters back
 * off with pz__backoff.
 */
#ifndef PZ_SPIN_H
#define PZ_SPIN_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "../arch/arch.h"

/*
 * The one back-off for a wait on something another thread holds for
 * nanoseconds (a spin lock below, the channel's waiter-queue lock, a ring
 * cell a sender or receiver is copying): rounds of 1, 2, 4 ... 64
 * cpu_relax, and from round PZ__BACKOFF_YIELD_AFTER on a sched_yield each
 * round, so that a holder the kernel preempted mid-section gets the CPU
 * back instead of the waiter burning its slice.  Eight rounds are about
 * 190 cpu_relax (a few microseconds): a hold that lasts longer than that
 * was preempted.  With 100 rounds (about 6 000 cpu_relax, which the
 * channel's lock had used) the weather service, two workers and its load
 * generator sharing two cores, spent 21% of its CPU spinning on one
 * descriptor's lock in pz_select while the holder waited for a core; with
 * 8 rounds, 0.9%.  Waits for a lock's
 * critical section are another matter, with policies of their own:
 * src/sync/spin_wait.h (thread-blocking locks) and src/async/spin.h
 * (task-suspending locks), each with its reasons.
 */
#define PZ__BACKOFF_YIELD_AFTER 8
#define PZ__BACKOFF_MAX_SHIFT 6

static inline void pz__backoff(unsigned *round)
{
    unsigned r = (*round)++;
    if (r >= PZ__BACKOFF_YIELD_AFTER) {
        sched_yield();
        return;
    }
    for (unsigned i = 0; i < 1u << (r < PZ__BACKOFF_MAX_SHIFT ? r : PZ__BACKOFF_MAX_SHIFT); i++)
        pz__arch_cpu_relax();
}

typedef struct pz__spin {
    _Atomic unsigned char locked;
} pz__spin;

void pz__spin_lock_slow(pz__spin *s);

static inline bool pz__spin_trylock(pz__spin *s)
{
    return !atomic_load_explicit(&s->locked, memory_order_relaxed) &&
           !atomic_exchange_explicit(&s->locked, 1, memory_order_acquire);
}

static inline void pz__spin_lock(pz__spin *s)
{
    if (!atomic_exchange_explicit(&s->locked, 1, memory_order_acquire))
        return;
    pz__spin_lock_slow(s);
}

static inline void pz__spin_unlock(pz__spin *s)
{
    atomic_store_explicit(&s->locked, 0, memory_order_release);
}

#endif
