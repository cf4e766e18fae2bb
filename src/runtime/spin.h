/*
 * A test-and-test-and-set spin lock for the runtime's own tiny critical
 * sections (a queue splice, a heap update, a join hand-shake): a few dozen
 * instructions, never a wait or a call that can suspend.  It falls back to
 * sched_yield so a holder preempted by the kernel gets the CPU back.
 */
#ifndef PZ_SPIN_H
#define PZ_SPIN_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

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
