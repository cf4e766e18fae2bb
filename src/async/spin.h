/*
 * The spin phase shared by the async locks' slow paths (pz_async_mutex,
 * pz_async_rwlock): a waiter spins only while the holder that keeps it out
 * may be running on another worker, in long rounds of cpu_relax between
 * looks at the lock word, and then suspends.  Long rounds measured best:
 * while one task backs off, the task on the other worker runs the lock
 * uncontended, and every look at the lock word takes its line away from
 * that worker.  A policy of its own, not src/sync/spin_wait.h's: a task
 * never yields its thread to the kernel (that would stall every task of
 * its worker).
 *
 * The rwlock spins in rounds of 2, 4, ... 1024 cpu_relax,
 * PZ__ASYNC_SPIN_ROUNDS rounds (about 20 us in all on x86; capped at 1024
 * rather than 256: a median of 26.7 against 29.4 ns/op in 12 alternating
 * runs of async_contended, 64 tasks on 2 workers, when the mutex spun so
 * too).
 *
 * The mutex spins in rounds of 4, 32, 128, 512 and 1024 cpu_relax, then
 * 1024 again (PZ__AMUTEX_SPIN_ROUNDS rounds, about 2 700 in all).  In the
 * rwlock's rounds its waiters lost their time in the short early ones: on
 * a data section taken in a loop (async_contended, work=0) a waiter that
 * looked again after 2, 4, 8 ... cpu_relax found the word free in the few
 * instructions between the holder's unlock and its next lock, took it,
 * and the lock changed workers once every ~40 sections (about 50 000
 * slow-path acquisitions in 2 million), each change moving the line and
 * starting the other side's spin afresh.  Long rounds from the second on,
 * as the sync mutex's (4, 32, 128), let the holder's worker run on.  On
 * the 2-vCPU Xeon (model 167), seven alternating runs of each build,
 * medians, ns/op: 2, 64 and 1024 tasks 28.1, 31.5 and 32.6 -> 18.7, 19.4
 * and 20.0 (pz_mutex: ~19); with work=100 114.0, 111.7 and 113.1 ->
 * 110.8, 110.0 and 111.3; wrong_lock kind=data_behind_async 28.6 -> 18.6;
 * the logic rows unchanged.  A shorter total (rounds of 2 ... 64) parked
 * so often that the rows took 60-110 ns.  The first round stays short, as
 * the sync mutex's does, so that a waiter that comes as the section ends
 * takes the lock at once.
 */
#ifndef PZ_ASYNC_SPIN_H
#define PZ_ASYNC_SPIN_H

#include <stdbool.h>

#include "../runtime/internal.h"

#define PZ__ASYNC_SPIN_ROUNDS 10
#define PZ__ASYNC_SPIN_MAX_SHIFT 10

#define PZ__AMUTEX_SPIN_ROUNDS 6

/* How many of its `rounds` the caller may spin: none for a task of a
 * one-worker runtime (the holder is then suspended, and spinning would
 * only delay it). */
static inline int pz__async_spin_rounds(int rounds)
{
    return (!pz__current_task() || pz_worker_count() > 1) ? rounds : 0;
}

/* Round `round` (from 1) of the back-off. */
static inline void pz__async_backoff(int round)
{
    int shift = round < PZ__ASYNC_SPIN_MAX_SHIFT ? round : PZ__ASYNC_SPIN_MAX_SHIFT;
    for (int i = 0; i < (1 << shift); i++)
        pz__arch_cpu_relax();
}

/* Round `round` (from 1) of the mutex's spin: the back-off's rounds 2, 5,
 * 7, 9, then 10 (PZ__ASYNC_SPIN_MAX_SHIFT) from the fifth on. */
static inline void pz__async_mutex_spin(int round)
{
    static const unsigned char shift[] = {2, 5, 7, 9};
    enum { N = sizeof shift / sizeof shift[0] };
    pz__async_backoff(round <= N ? shift[round - 1] : PZ__ASYNC_SPIN_MAX_SHIFT);
}

#endif
