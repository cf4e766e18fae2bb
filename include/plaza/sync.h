/*
 * plaza's sync locks: for data critical sections, held for nanoseconds.
 *
 * They block the calling OS thread when contended (after a brief spin), and
 * that is their meaning even inside a task: the task keeps its worker while
 * it waits.  A task must never suspend (sleep, yield, join, an async lock,
 * I/O) while it holds one; plaza reports it, naming the lock and where it
 * was taken.  For a section that waits on I/O, use an async lock (async.h).
 *
 * An unlock by a caller that does not hold the lock is reported and
 * ignored when plaza can tell: always for a task that holds no sync lock,
 * and for any thread or task with PLAZA_SYNC_CHECK=1 in the environment
 * (docs/sync.md).  The locks take no NULL pointer: passing NULL to any
 * call here faults, like a NULL pthread_mutex_t *.
 */
#ifndef PLAZA_SYNC_H
#define PLAZA_SYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime.h"

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
 * waiter (throughput), except that the lock passes to the waiter directly
 * (still locked) when it has waited PZ__MUTEX_FAIR_NS (1 ms) since it
 * began to wait in this lock call (when its first spin ended, before it
 * first parked), or when a random interval of up to 1 ms
 * has run out since the parking lot's last such hand-off.  That bounds one
 * waiter's wait, whatever the other threads do: once it has waited 1 ms
 * (measured with the kernel's coarse clock, so up to one clock tick more:
 * 4 ms at HZ=250) it is not refused a free lock and not woken without the
 * lock: from then on (if it was parked) or from its next look at the lock
 * (if it was running), other threads take the lock at most once for each
 * waiter queued ahead of it.  The bound is in turns: each turn lasts as
 * long as its holder keeps the lock.  models/sync_mutex.pml checks that a waiter
 * gets the lock while two other threads lock and unlock for ever;
 * src/sync/mutex.c gives the argument.  pz_mutex_unlock_fair always hands
 * over.
 */
typedef struct pz_mutex {
    _Atomic uint8_t state;
} pz_mutex_t;

#define PZ_MUTEX_INIT {0}
#define PZ__MUTEX_LOCKED 1u
#define PZ__MUTEX_PARKED 2u
/* The unpark token that tells a waiter on a mutex it now owns it (the
 * unlocker left LOCKED set for it).  Shared with pz_condvar, whose waiters
 * are requeued onto the mutex and may be handed it directly. */
#define PZ__MUTEX_TOKEN_HANDOFF 1u
/* A waiter that has waited this long (since its first spin ended) gets the
 * lock at its next turn (src/sync/mutex.c). */
#define PZ__MUTEX_FAIR_NS 1000000

void pz__mutex_lock_slow(pz_mutex_t *m, int64_t deadline, int *result);
void pz__mutex_unlock_slow(pz_mutex_t *m, bool fair);
/* Which sync locks the caller holds: pz__held_take and pz__held_give, the
 * runtime's held-lock record written inline (plaza/runtime.h; a task that
 * suspends while its depth is not 0 is reported; src/runtime/held.c says
 * which wrong unlocks are caught). */
/* The observed forms (src/sync/observe.c), taken while the advisor is on.
 * site: the lock call's address (PZ__HERE), or NULL for their own return
 * address. */
void pz__mutex_lock_observed(pz_mutex_t *m, int64_t deadline, int *result, const void *site);
void pz__mutex_taken_observed(pz_mutex_t *m, const void *site);
bool pz__mutex_trylock_observed(pz_mutex_t *m);
void pz__mutex_released_observed(pz_mutex_t *m);
#define PZ__OBSERVED() __builtin_expect(atomic_load_explicit(&pz__observe_sw.on, memory_order_relaxed), 0)
/* A release is reported only if the observer is timing some hold
 * (PZ__OBSERVE_TIMING, a count that is 0 while the advisor is off and
 * stays 0 unless a timed hold is in progress); the observed form checks
 * the caller's own.  The unlocks test that count alone, not the switch
 * too: off, that is the one load and branch the switch would cost; on,
 * it saves one. */
#define PZ__RELEASE_OBSERVED() PZ__OBSERVE_TIMING()

/* The observed lock: the lock's CAS first, as off, then, inline while
 * the thread's last slot is this (lock, site)'s and the hold is not to be
 * timed (nearly always), the acquisition counted (the countdown), the
 * held-lock record pushed and the owner probe read, a few loads and stores
 * to the thread's own lines.  They come after the CAS: before it, they
 * widened the gap between a thread's unlock and its next lock, in which a
 * spinning waiter on the other core takes the lock, and the lock changed
 * cores more often (tasks_contended work=0, docs/advisor.md).  Every other
 * case (a failed CAS, a new pair, a hold to time, not x86-64) goes out of
 * line to src/sync/observe.c. */
PZ__INLINE void pz__mutex_lock_observing(pz_mutex_t *m, int64_t deadline, int *result, const void *site)
{
    uint8_t unlocked = 0;
    if (__builtin_expect(!atomic_compare_exchange_strong_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED,
                                                                  memory_order_acquire, memory_order_relaxed),
                         0)) {
        pz__mutex_lock_observed(m, deadline, result, site);
        return;
    }
    if (result)
        *result = 0;
    pz__observe_caller_t c = pz__observe_caller();
    uint64_t countdown;
    if (__builtin_expect(!c.holds || !pz__observe_hit(c.last, m, site, &countdown), 0)) {
        pz__mutex_taken_observed(m, site);
        return;
    }
    pz__observe_take(c.last, countdown);
    pz__held_push(c.holds, m, "pz_mutex", site);
    pz__observe_owner_inline_holds(c.last, c.holds);
}

PZ__INLINE bool pz_mutex_trylock(pz_mutex_t *m)
{
    if (PZ__OBSERVED())
        return pz__mutex_trylock_observed(m);
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    while (!(s & PZ__MUTEX_LOCKED)) {
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                  memory_order_acquire, memory_order_relaxed)) {
            pz__held_take(m, "pz_mutex");
            return true;
        }
    }
    return false;
}

PZ__INLINE void pz_mutex_lock(pz_mutex_t *m)
{
    if (PZ__OBSERVED()) {
        pz__mutex_lock_observing(m, INT64_MAX, NULL, PZ__HERE());
        return;
    }
    uint8_t unlocked = 0;
    if (!atomic_compare_exchange_weak_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        pz__mutex_lock_slow(m, INT64_MAX, NULL);
    pz__held_take(m, "pz_mutex");
}

/* Returns 0 with the mutex held, or -ETIMEDOUT at the deadline (pz_now()
 * nanoseconds). */
PZ__INLINE int pz_mutex_lock_until(pz_mutex_t *m, int64_t deadline)
{
    uint8_t unlocked = 0;
    int r = 0;
    if (PZ__OBSERVED()) {
        pz__mutex_lock_observing(m, deadline, &r, PZ__HERE());
        return r;
    }
    if (!atomic_compare_exchange_weak_explicit(&m->state, &unlocked, PZ__MUTEX_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        pz__mutex_lock_slow(m, deadline, &r);
    if (r == 0)
        pz__held_take(m, "pz_mutex");
    return r;
}

PZ__INLINE void pz_mutex_unlock(pz_mutex_t *m)
{
    uint8_t locked = PZ__MUTEX_LOCKED;
    if (!pz__held_give(m, "pz_mutex_unlock"))
        return;
    if (!atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__mutex_unlock_slow(m, false);
    if (PZ__RELEASE_OBSERVED())
        pz__mutex_released_observed(m);
}

/* Unlocks and hands the mutex straight to a waiter if there is one. */
PZ__INLINE void pz_mutex_unlock_fair(pz_mutex_t *m)
{
    uint8_t locked = PZ__MUTEX_LOCKED;
    if (!pz__held_give(m, "pz_mutex_unlock_fair"))
        return;
    if (!atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__mutex_unlock_slow(m, true);
    if (PZ__RELEASE_OBSERVED())
        pz__mutex_released_observed(m);
}

static inline bool pz_mutex_is_locked(pz_mutex_t *m)
{
    return atomic_load_explicit(&m->state, memory_order_relaxed) & PZ__MUTEX_LOCKED;
}

/*
 * pz_rwlock: one word; all-zero memory is an unlocked lock; no destroy.
 *
 * Word encoding (uintptr_t):
 *   bit 0 PZ__RW_PARKED         a thread may be parked on the lock's address
 *                               (readers, writers and upgradable readers
 *                               waiting to acquire).  Set by a waiter before
 *                               it parks (validated under the bucket lock),
 *                               cleared under the bucket lock when the last
 *                               such waiter leaves.
 *   bit 1 PZ__RW_WRITER_PARKED  the thread holding WRITER is parked on the
 *                               lock's address + 1, waiting for the readers
 *                               to leave; the last reader out wakes it.
 *   bit 2 PZ__RW_UPGRADABLE     an upgradable reader holds the lock (it also
 *                               counts as one reader).
 *   bit 3 PZ__RW_WRITER         a writer holds the lock, or has claimed it
 *                               and waits for the readers to leave.
 *   bit 4 PZ__RW_WRITING        the writer holding WRITER is inside: no
 *                               reader was left when it entered.
 *   bit 5 PZ__RW_SLOTS          read slots are open: a plain reader may
 *                               hold the lock through a slot of its
 *                               thread's line instead of the count (never
 *                               with WRITER; src/sync/rwlock.c, "read
 *                               slots").
 *   bit 6 PZ__RW_REVOKING       the thread that has just claimed WRITER
 *                               (and cleared SLOTS) is moving the slots'
 *                               read holds into the count.
 *   bits 7-9 the sharing score (PZ__RW_SHARE_MASK): 7 when readers were
 *            last seen sharing the lock (two counted at once, or a hold
 *            found in a slot by a revocation), one less at each
 *            revocation that found the slots empty.  While it is above 0
 *            a reader entering by the count opens the slots even alone,
 *            so that the slots a writer closed open again at the first
 *            read after it, not only when two readers next meet in the
 *            count (src/sync/rwlock.c, "The sharing score").
 *   bits 10.. the readers counted in the word (upgradable one included),
 *            plus readers passing through: a read lock adds ONE_READER
 *            with one fetch-and-add and, if WRITER was set, takes it away
 *            again before it waits (src/sync/rwlock.c).  So while no slot
 *            holds the lock the count is never less than the readers
 *            inside, but may be more, and a writer inside is told by
 *            WRITING, never by a count of zero.
 *
 * Writers do not starve: a writer sets WRITER as soon as no other writer
 * or upgradable reader holds the lock, even while readers hold it, and
 * from then on no new reader gets in; it then waits for the readers
 * already inside to leave.  Unlocking a write lock with waiters wakes, in
 * queue order, every reader up to the first writer (and at most one
 * upgradable reader), or that first writer alone; as with pz_mutex the
 * woken threads compete with running ones, except that about every
 * millisecond (or when a woken waiter has waited 1 ms) the lock is handed
 * to them directly.
 *
 * The recursive-read deadlock: a thread that holds a read lock and takes
 * it again with pz_rwlock_read blocks for ever if a writer has arrived in
 * between (the writer waits for the first read lock to go, the second read
 * waits for the writer).  A thread that must re-enter uses
 * pz_rwlock_read_recursive, which gets in past a waiting writer whenever
 * readers are still inside (and so can delay that writer without bound).
 *
 * Called from a task these block the worker thread (PZ_PARK_THREAD): they
 * are for data critical sections.  A task must not suspend while holding
 * one (reported, as for pz_mutex).  Unlocking a lock in a mode it is not
 * held in is reported ("plaza: ...") and ignored.
 */
typedef struct pz_rwlock {
    _Atomic uintptr_t state;
} pz_rwlock_t;

#define PZ_RWLOCK_INIT {0}
#define PZ__RW_PARKED ((uintptr_t)1)
#define PZ__RW_WRITER_PARKED ((uintptr_t)2)
#define PZ__RW_UPGRADABLE ((uintptr_t)4)
#define PZ__RW_WRITER ((uintptr_t)8)
#define PZ__RW_WRITING ((uintptr_t)16)
#define PZ__RW_SLOTS ((uintptr_t)32)
#define PZ__RW_REVOKING ((uintptr_t)64)
#define PZ__RW_SHARE_SHIFT 7
#define PZ__RW_SHARE_ONE ((uintptr_t)1 << PZ__RW_SHARE_SHIFT)
#define PZ__RW_SHARE_MASK ((uintptr_t)7 << PZ__RW_SHARE_SHIFT)
#define PZ__RW_ONE_READER ((uintptr_t)1024)
#define PZ__RW_READERS (~(uintptr_t)1023)
/* The bits an unlocked lock may keep: hints for the next readers. */
#define PZ__RW_HINTS (PZ__RW_SLOTS | PZ__RW_SHARE_MASK)
/* The word of a write lock taken at once, with nobody else about. */
#define PZ__RW_WRITE_LOCKED (PZ__RW_WRITER | PZ__RW_WRITING)

/* Slow paths (src/sync/rwlock.c).  mode: one of the PZ__RW_MODE_*. */
#define PZ__RW_MODE_READ 0
#define PZ__RW_MODE_READ_RECURSIVE 1
#define PZ__RW_MODE_UPGRADABLE 2
#define PZ__RW_MODE_WRITE 3
int pz__rwlock_lock_slow(pz_rwlock_t *rw, int mode, int64_t deadline);
bool pz__rwlock_try_slow(pz_rwlock_t *rw, int mode);
void pz__rwlock_read_back_out(pz_rwlock_t *rw);
bool pz__rwlock_read_slot(pz_rwlock_t *rw);
void pz__rwlock_open_slots(pz_rwlock_t *rw);
void pz__rwlock_read_unlock_slots(pz_rwlock_t *rw);
bool pz__rwlock_try_upgrade_slots(pz_rwlock_t *rw);
void pz__rwlock_read_unlocked_slow(pz_rwlock_t *rw, uintptr_t before);
void pz__rwlock_write_unlock_slow(pz_rwlock_t *rw, bool fair);
void pz__rwlock_upgradable_unlock_slow(pz_rwlock_t *rw);
int pz__rwlock_upgrade_slow(pz_rwlock_t *rw, int64_t deadline);
/* The observed forms (src/sync/observe.c), taken while the advisor is on
 * (site as for pz__mutex_lock_observed). */
int pz__rwlock_lock_observed(pz_rwlock_t *rw, int mode, int64_t deadline, const void *site);
int pz__rwlock_taken_observed(pz_rwlock_t *rw, int mode, const void *site);
bool pz__rwlock_try_observed(pz_rwlock_t *rw, int mode);
void pz__rwlock_released_observed(pz_rwlock_t *rw, int mode);
static inline bool pz__rwlock_read_fast(pz_rwlock_t *rw);
static inline bool pz__rwlock_upgradable_fast(pz_rwlock_t *rw);

/* The observed lock in mode (a constant at each call), inline as
 * pz__mutex_lock_observing: the take first, then the count; shared holds
 * have no owner to check. */
PZ__INLINE int pz__rwlock_lock_observing(pz_rwlock_t *rw, int mode, int64_t deadline, const void *site)
{
    uintptr_t unlocked = 0;
    bool taken = mode == PZ__RW_MODE_WRITE
                     ? atomic_compare_exchange_strong_explicit(&rw->state, &unlocked, PZ__RW_WRITE_LOCKED,
                                                               memory_order_acquire, memory_order_relaxed)
                 : mode == PZ__RW_MODE_UPGRADABLE ? pz__rwlock_upgradable_fast(rw)
                                                  : pz__rwlock_read_fast(rw);
    if (__builtin_expect(!taken, 0))
        return pz__rwlock_lock_observed(rw, mode, deadline, site);
    pz__observe_caller_t c = pz__observe_caller();
    uint64_t countdown;
    if (__builtin_expect(!c.holds || !pz__observe_hit(c.last, rw, site, &countdown), 0))
        return pz__rwlock_taken_observed(rw, mode, site);
    pz__observe_take(c.last, countdown);
    pz__held_push(c.holds, rw, "pz_rwlock", site);
    if (mode == PZ__RW_MODE_WRITE)
        pz__observe_owner_inline_holds(c.last, c.holds);
    return 0;
}

/* A read lock.  With the read slots open (readers were seen sharing the
 * lock), through a slot of the thread's own cache line: the word is only
 * read, so its line stays shared between the cores instead of moving at
 * every lock and unlock.  Otherwise one fetch-and-add, which takes the
 * word's line once where a load and a compare-and-swap take it twice (and
 * the swap fails whenever another reader came or went in between); a
 * reader that finds another one counted there, or the sharing score above
 * 0, opens the slots.  A reader
 * that finds WRITER has added itself where it may not enter: it takes
 * itself away again, waking the writer if it was the last (as a read
 * unlock does), and returns false for the slow path to wait. */
static inline bool pz__rwlock_read_fast(pz_rwlock_t *rw)
{
    if (__builtin_expect(atomic_load_explicit(&rw->state, memory_order_relaxed) & PZ__RW_SLOTS, 0) &&
        pz__rwlock_read_slot(rw))
        return true;
    uintptr_t s = atomic_fetch_add_explicit(&rw->state, PZ__RW_ONE_READER, memory_order_acquire);
    if (__builtin_expect(!(s & PZ__RW_WRITER), 1)) {
        if (__builtin_expect((s & (PZ__RW_READERS | PZ__RW_SHARE_MASK)) && !(s & PZ__RW_SLOTS), 0))
            pz__rwlock_open_slots(rw);
        return true;
    }
    pz__rwlock_read_back_out(rw);
    return false;
}

/* Read lock: shared with other readers and one upgradable reader. */
PZ__INLINE void pz_rwlock_read(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED()) {
        pz__rwlock_lock_observing(rw, PZ__RW_MODE_READ, INT64_MAX, PZ__HERE());
        return;
    }
    if (!pz__rwlock_read_fast(rw))
        pz__rwlock_lock_slow(rw, PZ__RW_MODE_READ, INT64_MAX);
    pz__held_take(rw, "pz_rwlock");
}

/* Returns 0 holding a read lock, or -ETIMEDOUT at the deadline. */
PZ__INLINE int pz_rwlock_read_until(pz_rwlock_t *rw, int64_t deadline)
{
    if (PZ__OBSERVED())
        return pz__rwlock_lock_observing(rw, PZ__RW_MODE_READ, deadline, PZ__HERE());
    int r = 0;
    if (!pz__rwlock_read_fast(rw))
        r = pz__rwlock_lock_slow(rw, PZ__RW_MODE_READ, deadline);
    if (r == 0)
        pz__held_take(rw, "pz_rwlock");
    return r;
}

PZ__INLINE bool pz_rwlock_try_read(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED())
        return pz__rwlock_try_observed(rw, PZ__RW_MODE_READ);
    if (!pz__rwlock_read_fast(rw) && !pz__rwlock_try_slow(rw, PZ__RW_MODE_READ))
        return false;
    pz__held_take(rw, "pz_rwlock");
    return true;
}

/* A read lock that ignores waiting writers (see the recursive-read
 * deadlock above): it waits only while a writer actually holds the lock. */
PZ__INLINE void pz_rwlock_read_recursive(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED()) {
        pz__rwlock_lock_observing(rw, PZ__RW_MODE_READ_RECURSIVE, INT64_MAX, PZ__HERE());
        return;
    }
    if (!pz__rwlock_read_fast(rw))
        pz__rwlock_lock_slow(rw, PZ__RW_MODE_READ_RECURSIVE, INT64_MAX);
    pz__held_take(rw, "pz_rwlock");
}

PZ__INLINE int pz_rwlock_read_recursive_until(pz_rwlock_t *rw, int64_t deadline)
{
    if (PZ__OBSERVED())
        return pz__rwlock_lock_observing(rw, PZ__RW_MODE_READ_RECURSIVE, deadline, PZ__HERE());
    int r = 0;
    if (!pz__rwlock_read_fast(rw))
        r = pz__rwlock_lock_slow(rw, PZ__RW_MODE_READ_RECURSIVE, deadline);
    if (r == 0)
        pz__held_take(rw, "pz_rwlock");
    return r;
}

PZ__INLINE void pz_rwlock_read_unlock(pz_rwlock_t *rw)
{
    if (!pz__held_give(rw, "pz_rwlock_read_unlock"))
        return;
    if (PZ__RELEASE_OBSERVED())
        pz__rwlock_released_observed(rw, PZ__RW_MODE_READ);
    /* Read slots open, or being revoked: the hold may be in a slot. */
    if (__builtin_expect(atomic_load_explicit(&rw->state, memory_order_relaxed) & (PZ__RW_SLOTS | PZ__RW_REVOKING),
                         0)) {
        pz__rwlock_read_unlock_slots(rw);
        return;
    }
    /* One fetch-and-subtract.  Done when another reader stays, or when we
     * were the last and no writer is parked waiting for us; otherwise the
     * slow path, given the word as it was, wakes that writer, or puts the
     * reader back and reports an unlock with no plain reader inside. */
    uintptr_t s = atomic_fetch_sub_explicit(&rw->state, PZ__RW_ONE_READER, memory_order_release);
    uintptr_t r = s & PZ__RW_READERS;
    if (__builtin_expect(r > PZ__RW_ONE_READER ||
                             (r == PZ__RW_ONE_READER && !(s & (PZ__RW_UPGRADABLE | PZ__RW_WRITER_PARKED))),
                         1))
        return;
    pz__rwlock_read_unlocked_slow(rw, s);
}

/* Write lock: exclusive. */
PZ__INLINE void pz_rwlock_write(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED()) {
        pz__rwlock_lock_observing(rw, PZ__RW_MODE_WRITE, INT64_MAX, PZ__HERE());
        return;
    }
    uintptr_t unlocked = 0;
    if (!atomic_compare_exchange_weak_explicit(&rw->state, &unlocked, PZ__RW_WRITE_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        pz__rwlock_lock_slow(rw, PZ__RW_MODE_WRITE, INT64_MAX);
    pz__held_take(rw, "pz_rwlock");
}

PZ__INLINE int pz_rwlock_write_until(pz_rwlock_t *rw, int64_t deadline)
{
    if (PZ__OBSERVED())
        return pz__rwlock_lock_observing(rw, PZ__RW_MODE_WRITE, deadline, PZ__HERE());
    uintptr_t unlocked = 0;
    int r = 0;
    if (!atomic_compare_exchange_weak_explicit(&rw->state, &unlocked, PZ__RW_WRITE_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        r = pz__rwlock_lock_slow(rw, PZ__RW_MODE_WRITE, deadline);
    if (r == 0)
        pz__held_take(rw, "pz_rwlock");
    return r;
}

PZ__INLINE bool pz_rwlock_try_write(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED())
        return pz__rwlock_try_observed(rw, PZ__RW_MODE_WRITE);
    uintptr_t unlocked = 0;
    if (!atomic_compare_exchange_strong_explicit(&rw->state, &unlocked, PZ__RW_WRITE_LOCKED, memory_order_acquire,
                                                 memory_order_relaxed) &&
        !pz__rwlock_try_slow(rw, PZ__RW_MODE_WRITE))
        return false;
    pz__held_take(rw, "pz_rwlock");
    return true;
}

PZ__INLINE void pz_rwlock_write_unlock(pz_rwlock_t *rw)
{
    if (PZ__RELEASE_OBSERVED())
        pz__rwlock_released_observed(rw, PZ__RW_MODE_WRITE);
    uintptr_t locked = PZ__RW_WRITE_LOCKED;
    if (!pz__held_give(rw, "pz_rwlock_write_unlock"))
        return;
    if (!atomic_compare_exchange_strong_explicit(&rw->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__rwlock_write_unlock_slow(rw, false);
}

/* Unlocks and hands the lock straight to the waiters it wakes, if any. */
PZ__INLINE void pz_rwlock_write_unlock_fair(pz_rwlock_t *rw)
{
    if (PZ__RELEASE_OBSERVED())
        pz__rwlock_released_observed(rw, PZ__RW_MODE_WRITE);
    uintptr_t locked = PZ__RW_WRITE_LOCKED;
    if (!pz__held_give(rw, "pz_rwlock_write_unlock_fair"))
        return;
    if (!atomic_compare_exchange_strong_explicit(&rw->state, &locked, 0, memory_order_release, memory_order_relaxed))
        pz__rwlock_write_unlock_slow(rw, true);
}

/* Write lock to read lock, atomically: no writer gets in between.  Wakes
 * the readers waiting for the write lock to go. */
void pz_rwlock_downgrade(pz_rwlock_t *rw);

/*
 * Upgradable read lock: shared with plain readers, exclusive with writers
 * and other upgradable readers, so at most one thread at a time may later
 * upgrade it to a write lock without releasing it in between.
 */
static inline bool pz__rwlock_upgradable_fast(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    return !(s & (PZ__RW_WRITER | PZ__RW_UPGRADABLE)) &&
           atomic_compare_exchange_weak_explicit(&rw->state, &s, s + (PZ__RW_ONE_READER | PZ__RW_UPGRADABLE),
                                                 memory_order_acquire, memory_order_relaxed);
}

PZ__INLINE void pz_rwlock_upgradable(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED()) {
        pz__rwlock_lock_observing(rw, PZ__RW_MODE_UPGRADABLE, INT64_MAX, PZ__HERE());
        return;
    }
    if (!pz__rwlock_upgradable_fast(rw))
        pz__rwlock_lock_slow(rw, PZ__RW_MODE_UPGRADABLE, INT64_MAX);
    pz__held_take(rw, "pz_rwlock");
}

PZ__INLINE int pz_rwlock_upgradable_until(pz_rwlock_t *rw, int64_t deadline)
{
    if (PZ__OBSERVED())
        return pz__rwlock_lock_observing(rw, PZ__RW_MODE_UPGRADABLE, deadline, PZ__HERE());
    int r = 0;
    if (!pz__rwlock_upgradable_fast(rw))
        r = pz__rwlock_lock_slow(rw, PZ__RW_MODE_UPGRADABLE, deadline);
    if (r == 0)
        pz__held_take(rw, "pz_rwlock");
    return r;
}

PZ__INLINE bool pz_rwlock_try_upgradable(pz_rwlock_t *rw)
{
    if (PZ__OBSERVED())
        return pz__rwlock_try_observed(rw, PZ__RW_MODE_UPGRADABLE);
    if (!pz__rwlock_upgradable_fast(rw) && !pz__rwlock_try_slow(rw, PZ__RW_MODE_UPGRADABLE))
        return false;
    pz__held_take(rw, "pz_rwlock");
    return true;
}

PZ__INLINE void pz_rwlock_upgradable_unlock(pz_rwlock_t *rw)
{
    if (PZ__RELEASE_OBSERVED())
        pz__rwlock_released_observed(rw, PZ__RW_MODE_UPGRADABLE);
    uintptr_t held = PZ__RW_ONE_READER | PZ__RW_UPGRADABLE;
    if (!pz__held_give(rw, "pz_rwlock_upgradable_unlock"))
        return;
    if (!atomic_compare_exchange_strong_explicit(&rw->state, &held, 0, memory_order_release, memory_order_relaxed))
        pz__rwlock_upgradable_unlock_slow(rw);
}

/* Upgradable read lock to write lock: waits for the other readers to
 * leave (no new reader gets in meanwhile).  The _until form returns
 * -ETIMEDOUT still holding the upgradable read lock. */
static inline void pz_rwlock_upgrade(pz_rwlock_t *rw)
{
    pz__rwlock_upgrade_slow(rw, INT64_MAX);
}

static inline int pz_rwlock_upgrade_until(pz_rwlock_t *rw, int64_t deadline)
{
    return pz__rwlock_upgrade_slow(rw, deadline);
}

/* Upgrades only if no other reader holds the lock; never waits. */
static inline bool pz_rwlock_try_upgrade(pz_rwlock_t *rw)
{
    uintptr_t s = atomic_load_explicit(&rw->state, memory_order_relaxed);
    for (;;) {
        /* Readers in slots are not in the count: revoke them first. */
        if (s & PZ__RW_SLOTS)
            return pz__rwlock_try_upgrade_slots(rw);
        if (!(s & PZ__RW_UPGRADABLE) || (s & PZ__RW_READERS) != PZ__RW_ONE_READER)
            return false;
        uintptr_t n = (s & ~(PZ__RW_READERS | PZ__RW_UPGRADABLE)) | PZ__RW_WRITE_LOCKED;
        if (atomic_compare_exchange_weak_explicit(&rw->state, &s, n, memory_order_acquire, memory_order_relaxed))
            return true;
    }
}

/* Upgradable read lock to plain read lock (another thread may then take
 * the upgradable lock or, once the readers are gone, the write lock). */
void pz_rwlock_upgradable_downgrade(pz_rwlock_t *rw);

/* Write lock to upgradable read lock, atomically. */
void pz_rwlock_downgrade_to_upgradable(pz_rwlock_t *rw);

/*
 * pz_condvar: a condition variable for pz_mutex; all-zero memory is valid;
 * no destroy.
 *
 * Word: the mutex its current waiters wait with (NULL when none wait), set
 * by a waiter under the parking lot's bucket lock and cleared when the
 * last waiter leaves.  A wait with another mutex while waiters use the
 * first one is misuse: reported, and the wait returns -EINVAL at once.
 *
 * No spurious wake-ups: pz_condvar_wait returns 0 only after a notify that
 * targeted this waiter (notify_one picks the longest waiter; notify_all
 * targets every waiter present when it runs).  A caller should still
 * re-check its predicate in a loop, because another thread may have taken
 * the mutex and changed the state between the notify and the return.
 *
 * notify_all wakes one waiter and moves the rest onto the mutex's queue
 * (pz_requeue): each is woken in turn as the mutex is unlocked, instead of
 * all waking at once to fight over it.  Every wait returns with the mutex
 * held, whatever its result.
 */
typedef struct pz_condvar {
    _Atomic(pz_mutex_t *) mutex;
    /* Bumped by every notify_all under the bucket locks, so that a waiter
     * whose deadline passes can tell whether it had been moved. */
    _Atomic uint32_t epoch;
} pz_condvar_t;

#define PZ_CONDVAR_INIT {NULL, 0}

/* Unlocks m, waits for a notify, relocks m.  0, or -EINVAL on misuse. */
int pz_condvar_wait(pz_condvar_t *cv, pz_mutex_t *m);
/* As pz_condvar_wait, or -ETIMEDOUT once the deadline passed without a
 * notify targeting this waiter; the deadline bounds the wait for the
 * notify, not the re-acquisition of m afterwards. */
int pz_condvar_wait_until(pz_condvar_t *cv, pz_mutex_t *m, int64_t deadline);
/* Wake one waiter / every waiter; return whether any was waiting. */
bool pz_condvar_notify_one(pz_condvar_t *cv);
bool pz_condvar_notify_all(pz_condvar_t *cv);

/*
 * pz_once: runs a function exactly once; all-zero memory (PZ_ONCE_INIT) is
 * a once that has not run.  Concurrent callers block (the thread) until
 * the one running fn returns, and then see everything fn wrote.  A call
 * from inside fn on the same once would wait for itself: it is reported
 * and returns at once, without fn's effect complete.
 * A NULL fn is reported and nothing runs (the once stays unrun).
 */
typedef struct pz_once {
    _Atomic uint32_t state;
    _Atomic(const void *) owner; /* who runs fn, while it runs */
} pz_once_t;

#define PZ_ONCE_INIT {0, NULL}
#define PZ__ONCE_DONE 1u

void pz__once_slow(pz_once_t *o, void (*fn)(void *), void *arg);

static inline void pz_once(pz_once_t *o, void (*fn)(void *), void *arg)
{
    if (!(atomic_load_explicit(&o->state, memory_order_acquire) & PZ__ONCE_DONE))
        pz__once_slow(o, fn, arg);
}

#ifdef __cplusplus
}
#endif
#endif
