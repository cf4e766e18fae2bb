/*
 * The spin phase shared by the sync locks' slow paths: a holder of a data
 * critical section lets go within nanoseconds, so a waiter first spins with
 * exponential back-off (2, 4, 8 cpu_relax), then yields the CPU a few times,
 * and only then parks, which costs microseconds.  A policy of its own, not
 * the runtime's pz__backoff (which never gives up): this one ends in a park
 * after a bounded number of rounds, and its short spin keeps a thread from
 * taking the line of the lock word from a holder on the other core.
 */
#ifndef PZ_SYNC_SPIN_WAIT_H
#define PZ_SYNC_SPIN_WAIT_H

#include <sched.h>
#include <stdbool.h>

#include "../arch/arch.h"

#define PZ__SPIN_LIMIT 10

/* One more round of spinning; false once the waiter should park.  The
 * first n rounds spin rounds[i] cpu_relax each, the rest up to
 * PZ__SPIN_LIMIT yield the CPU.  A lock may pass rounds of its own
 * (src/sync/mutex.c says why pz_mutex's are longer). */
static inline bool pz__spin_wait_rounds(int *count, const unsigned short *rounds, int n)
{
    if (*count >= PZ__SPIN_LIMIT)
        return false;
    (*count)++;
    if (*count <= n) {
        for (unsigned i = 0; i < rounds[*count - 1]; i++)
            pz__arch_cpu_relax();
    } else {
        sched_yield();
    }
    return true;
}

/* The shared rounds: 2, 4 and 8 cpu_relax. */
static inline bool pz__spin_wait(int *count)
{
    static const unsigned short rounds[] = {2, 4, 8};
    return pz__spin_wait_rounds(count, rounds, 3);
}

#endif
