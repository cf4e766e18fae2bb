/*
 * The spin phase shared by the sync locks' slow paths: a holder of a data
 * critical section lets go within nanoseconds, so a waiter first spins with
 * growing rounds (4, 32, 128 cpu_relax between looks at the word; why these,
 * src/sync/mutex.c and rwlock.c), then yields the CPU a few times, and only
 * then parks, which costs microseconds.  A policy of its own, not
 * the runtime's pz__backoff (which never gives up): this one ends in a park
 * after a bounded number of rounds, and its short spin keeps a thread from
 * taking the line of the lock word from a holder on the other core.
 */
#ifndef PZ_SYNC_SPIN_WAIT_H
#define PZ_SYNC_SPIN_WAIT_H

#include <sched.h>
#include <stdbool.h>

#include "../arch/arch.h"
#include "off_cpu_note.h"

#define PZ__SPIN_LIMIT 10

/* One more round of spinning; false once the waiter should park.  The
 * first three rounds spin 4, 32 and 128 cpu_relax, the rest up to
 * PZ__SPIN_LIMIT yield the CPU. */
static inline bool pz__spin_wait(int *count)
{
    static const unsigned short rounds[] = {4, 32, 128};
    enum { N = sizeof rounds / sizeof rounds[0] };
    if (*count >= PZ__SPIN_LIMIT)
        return false;
    (*count)++;
    if (*count <= N) {
        for (unsigned i = 0; i < rounds[*count - 1]; i++)
            pz__arch_cpu_relax();
    } else {
        pz__sync_note_off_cpu();
        sched_yield();
    }
    return true;
}

#endif
