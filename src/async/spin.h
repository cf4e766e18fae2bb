/*
 * The spin phase shared by the async locks' slow paths (pz_async_mutex,
 * pz_async_rwlock): a waiter spins only while the holder that keeps it out
 * may be running on another worker, in rounds of 2, 4, ... 1024 cpu_relax,
 * PZ__ASYNC_SPIN_ROUNDS rounds (about 20 us in all on x86).  Long rounds
 * measured best: while one task backs off, the task on the other worker
 * runs the lock uncontended, and every look at the lock word takes its
 * line away from that worker (async_contended, 64 tasks on 2 workers: 31
 * ns/op with rounds capped at 256, 40-50 capped at 32-64 cpu_relax, 130
 * with 1 us of spinning in all; capped at 1024 rather than 256, a median of
 * 26.7 against 29.4 ns/op in 12 alternating runs of each, 30.5 against 33.0
 * at 1024 tasks, with the longest wait, the work=100 rows and the rwlock
 * unchanged).  A policy of its own, not src/sync/spin_wait.h's: a task
 * never yields its thread to the kernel (that would stall every task of
 * its worker); it spins in long rounds and then suspends.
 */
#ifndef PZ_ASYNC_SPIN_H
#define PZ_ASYNC_SPIN_H

#include <stdbool.h>

#include "../runtime/internal.h"

#define PZ__ASYNC_SPIN_ROUNDS 10
#define PZ__ASYNC_SPIN_MAX_SHIFT 10

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
