/*
 * The spin phase shared by the async locks' slow paths (pz_async_mutex,
 * pz_async_rwlock): a waiter spins only while the holder that keeps it out
 * may be running on another worker, in rounds of 2, 4, ... 256 cpu_relax
 * and then 256 a round, PZ__ASYNC_SPIN_ROUNDS rounds (about 10 us in all on
 * x86).  Long rounds measured best: while one task backs off, the task on
 * the other worker runs the lock uncontended (async_contended, 64 tasks on
 * 2 workers: 31 ns/op with these, 40-50 with rounds capped at 32-64
 * cpu_relax, 130 with 1 us of spinning in all).
 */
#ifndef PZ_ASYNC_SPIN_H
#define PZ_ASYNC_SPIN_H

#include <stdbool.h>

#include "../runtime/internal.h"

#define PZ__ASYNC_SPIN_ROUNDS 10
#define PZ__ASYNC_SPIN_MAX_SHIFT 8

/* How many rounds the caller may spin: none for a task of a one-worker
 * runtime (the holder is then suspended, and spinning would only delay
 * it). */
static inline int pz__async_spin_rounds(void)
{
    return (!pz__current_task() || pz_worker_count() > 1) ? PZ__ASYNC_SPIN_ROUNDS : 0;
}

/* Round `round` (from 1) of the back-off. */
static inline void pz__async_backoff(int round)
{
    int shift = round < PZ__ASYNC_SPIN_MAX_SHIFT ? round : PZ__ASYNC_SPIN_MAX_SHIFT;
    for (int i = 0; i < (1 << shift); i++)
        pz__arch_cpu_relax();
}

#endif
