/*
 * plaza's sync locks: for data critical sections, held for nanoseconds.
 *
 * They block the calling OS thread when contended (after a brief spin), and
 * that is their meaning even inside a task: the task keeps its worker while
 * it waits.  A task must never suspend (sleep, yield, join, an async lock,
 * I/O) while it holds one; plaza reports it, naming the lock and where it
 * was taken.  For a section that waits on I/O, use an async lock (async.h).
 */
#ifndef PLAZA_SYNC_H
#define PLAZA_SYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * pz_mutex: one byte; all-zero memory is an unlocked mutex; no init, no
 * destroy.  Bit 0 (PZ__MUTEX_LOCKED): held.  Bit 1 (PZ__MUTEX_PARKED): a
 * thread may be parked on it (set by a waiter, under the parking lot's
 * bucket lock, before it sleeps; cleared when the last waiter leaves).  An
 * unlock that sees only LOCKED is one CAS; one that sees PARKED wakes a
 * waiter through the parking lot.
 *
 * Fairness: unlocking lets a running thread barge in ahead of the woken
 * waiter (throughput), except that the lot asks for a direct hand-off (the
 * lock passes to the waiter still locked) when that waiter has waited about
 * 1 ms, or at random intervals of up to 1 ms.  So nobody starves.
 */
typedef struct pz_mutex {
    _Atomic uint8_t state;
} pz_mutex_t;

#define PZ_MUTEX_INIT {0}
#define PZ__MUTEX_LOCKED 1u
#define PZ__MUTEX_PARKED 2u

void pz__mutex_lock_slow(pz_mutex_t *m, int64_t deadline, int *result);
void pz__mutex_unlock_slow(pz_mutex_t *m, bool fair);
/* Bookkeeping of which sync locks the running task holds (for the report
 * of a task that suspends while holding one). */
void pz__sync_acquired(const void *lock, const char *kind);
void pz__sync_released(const void *lock);

static inline bool pz_mutex_trylock(pz_mutex_t *m)
{
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    while (!(s & PZ__MUTEX_LOCKED)) {
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                  memory_order_acquire, memory_order_relaxed)) {
            pz__sync_acquired(m, "pz_mutex");
            return true;
        }
    }
    return false;
}

static inline void pz_mutex_lock(pz_mutex_t *m)
{
    uint8_t unlocked = 0;
    if (!atomic_compare_exchange_weak_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        pz__mutex_lock_slow(m, INT64_MAX, NULL);
    pz__sync_acquired(m, "pz_mutex");
}

/* Returns 0 with the mutex held, or -ETIMEDOUT at the deadline (pz_now()
 * nanoseconds). */
static inline int pz_mutex_lock_until(pz_mutex_t *m, int64_t deadline)
{
    uint8_t unlocked = 0;
    int r = 0;
    if (!atomic_compare_exchange_weak_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        pz__mutex_lock_slow(m, deadline, &r);
    if (r == 0)
        pz__sync_acquired(m, "pz_mutex");
    return r;
}

static inline void pz_mutex_unlock(pz_mutex_t *m)
{
    uint8_t locked = PZ__MUTEX_LOCKED;
    pz__sync_released(m);
    if (!atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__mutex_unlock_slow(m, false);
}

/* Unlocks and hands the mutex straight to a waiter if there is one. */
static inline void pz_mutex_unlock_fair(pz_mutex_t *m)
{
    uint8_t locked = PZ__MUTEX_LOCKED;
    pz__sync_released(m);
    if (!atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__mutex_unlock_slow(m, true);
}

static inline bool pz_mutex_is_locked(pz_mutex_t *m)
{
    return atomic_load_explicit(&m->state, memory_order_relaxed) & PZ__MUTEX_LOCKED;
}

#ifdef __cplusplus
}
#endif
#endif
