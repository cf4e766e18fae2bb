/*
 * plaza's async primitives: for logic critical sections, held across I/O.
 *
 * Every wait suspends the calling task (its worker runs other tasks in the
 * meantime) or, called from a thread that is not running a task, blocks
 * that thread.  Every wait has an _until(deadline) form (absolute pz_now()
 * nanoseconds, PZ_FOREVER for none) and returns -ECANCELED when the task is
 * cancelled.  A deadline already past, 0 or negative included, means "do
 * not wait": the call succeeds if it can at once, else returns -ETIMEDOUT
 * at once, from a task and from a plain thread alike.  Errors are negative
 * errno values.  Waiter state lives on the waiter's own stack: no wait
 * allocates.
 *
 * Cancel policy, the same for every primitive: a wait that ends by deadline
 * or cancel leaves its queue and has taken nothing.  If ownership, permits,
 * a notification or an item reached the waiter at the very instant it gave
 * up, it keeps what it received and the call returns success (0, or
 * PZ_BARRIER_LEADER); the cancel is seen by the task's next wait.  So
 * nothing handed to a waiter is ever lost, and nothing is handed twice.
 *
 * Bad input.  Every call that is not inline here returns -EINVAL for a
 * NULL object (or NULL item of pz_chan_send/recv), false from a try_ call,
 * 0 from a query (pz_semaphore_available, pz_notify_epoch, pz_chan_len,
 * pz_async_rwlock_readers), and does nothing from a void call.  The inline
 * pz_async_mutex calls (lock, lock_until, trylock, unlock, is_locked,
 * holder) do not check: they are one CAS or store each, and a NULL test
 * there would cost every lock a branch, so a NULL mutex faults at once,
 * at the caller's line.  Sizes are unsigned: pz_chan_init refuses an item
 * size of 0 or over SIZE_MAX/2, a capacity or buffer that does not fit
 * (-EINVAL; pz_chan_create returns NULL); pz_semaphore calls refuse counts
 * over PZ_SEMAPHORE_MAX_PERMITS.  Deadlines: see above; any int64_t is
 * valid.  No async call takes flags.  Uninitialised objects: all-zero
 * memory is a valid, unlocked pz_async_mutex and pz_async_rwlock, a
 * pz_semaphore with no permits and a pz_notify with no permit stored; an
 * all-zero pz_barrier (count 0) and pz_chan (item size 0) are refused with
 * -EINVAL; memory that is neither zero nor initialised by the calls here
 * cannot be told from a live object and is undefined behaviour.
 *
 * docs/async.md describes each word encoding and the fairness choices.
 */
#ifndef PLAZA_ASYNC_H
#define PLAZA_ASYNC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * pz_async_mutex: a lock word, a waiter word, the queue head's age and a
 * holder word; all-zero memory is an unlocked mutex.
 *
 * state (64 bits):
 *   bit 0 LOCKED    held.
 *   bits 4..63      the holder's id while LOCKED (0 for an instant after a
 *                   hand-off, until the new holder writes it): a task's
 *                   pz_task_id, or for a plain thread PZ__AMUTEX_THREAD_BIT
 *                   | a per-thread number.  The whole word is 0 while
 *                   unlocked.  Only the holder changes a locked word, and
 *                   only when it is 0 may anyone else (by CAS).
 *
 * waiters (32 bits):
 *   bit 0 PARKED    a waiter may be parked on the mutex's address; set by a
 *                   waiter (checked again under the lot's bucket lock),
 *                   cleared under the bucket lock when the last one leaves.
 *   bit 1 FENCED    an asymmetric fence has run since CONTENDED was set:
 *                   every unlock that did not see CONTENDED is visible.
 *                   Never cleared.
 *   bit 2 WOKEN     a would-be owner is active outside the queue: a waiter
 *                   woken by an unlock, or a task spinning on the word.  An
 *                   unlock that sees it releases the word and wakes nobody,
 *                   since that task will take the lock.  Whoever set it
 *                   clears it when it takes the lock or parks.
 *   bit 4 CONTENDED somebody has found the mutex held (set at the lock's
 *                   slow path, or with the first PARKED).  Set with the
 *                   first bit ever set and never cleared, so the word is 0
 *                   exactly until then.
 *
 * head_since (32 bits): when the wait of the first waiter in the lot's
 *                   queue began, as pz_now() >> PZ__AMUTEX_SINCE_SHIFT
 *                   (about microseconds, modulo 2^32), or 0 while nobody is
 *                   queued, or 1 (unknown: the head was just served or a
 *                   waiter left, so look).  Written only under the lot's
 *                   bucket lock; read by an unlock that finds WOKEN set
 *                   with a waiter parked, to tell whether the head has
 *                   waited PZ__AMUTEX_FAIR_NS (src/async/mutex.c).
 *
 * holder (64 bits): a copy of the holder's id (as in state, shifted), kept
 * while the mutex is quiet (its waiter word is 0), else 0.  Only the
 * holder writes it: its id just after taking the lock, if it then sees the
 * waiter word 0, and 0 before it releases.  So it is always 0 or the id of
 * whoever holds the lock now, and a caller that finds its own id there
 * holds the lock: what a caller that does not hold it last wrote there is
 * 0, and every later write is another holder's.  It exists so that the
 * quiet unlock can check ownership without loading the lock word: a load
 * right after the locking CAS of the same address waits for the locked
 * store to reach the cache (about 2 ns per lock and unlock on x86), where
 * a load of another word is served at once.  A contended mutex does not
 * write it: a second store to a line other cores are fighting over can
 * cost a cache miss inside the section.
 *
 * Lock is one CAS of state 0 -> id|LOCKED (and, while quiet, a store of
 * the holder word).  Unlock, while the waiter word is 0, is no
 * read-modify-write at all: it checks that the holder word holds its own
 * id (so an unlock by anyone else is reported), stores 0 there and into
 * state, and loads the waiter word again.  The first caller to find the
 * mutex held sets CONTENDED; the first waiter to park runs an asymmetric
 * fence (membarrier) before it checks the lock word under the bucket
 * lock, so either that check sees the store of 0 or the unlock's second
 * load sees the waiter and wakes someone: no wake-up is lost.  From then
 * on the waiter word is never 0, so unlocks release by exchange (an
 * ordinary Dekker pair with the waiters' CAS; inline while nobody is
 * parked, else the slow path) and no waiter fences again: a fence
 * interrupts every other core of the process, and fencing at every park
 * made the cores slower to release, so more tasks parked (300 000 parks
 * where 1 800 sufficed, in the fairness test).  Where the kernel has no
 * membarrier, pz__async_unlock_by_store stays false and unlock is always
 * an exchange.
 *
 * Fairness: running tasks barge (and spin briefly while the holder runs on
 * another worker) ahead of parked waiters, which is what makes the lock
 * fast, and every waiter still gets it.  A waiter's wait begins when it
 * first gives up spinning; once it has waited PZ__AMUTEX_FAIR_NS it is
 * long-waiting: it no longer spins, its park is never refused (it takes a
 * free word or queues), and an unlock that takes it from the head of the
 * queue hands it the lock.  The unlock decides, by the head's age: no timer
 * runs for it.  An unlock that finds WOKEN set (a running task will take
 * the lock) normally wakes nobody, but not once head_since says the head
 * has waited that long: so tasks that keep spinning and re-locking cannot
 * keep a parked waiter from being served.  A long-waiting waiter gets the
 * lock after at most as many hand-offs as there are waiters queued ahead
 * of it, once those have waited as long (they queued before it, so that is
 * at most PZ__AMUTEX_FAIR_NS after it queued).  models/mutex.pml's progress check is of a
 * waiter without deadline while two others lock and unlock for ever
 * (models/mutex.md), and tests/test_lock_progress_stress.c forces it.
 * Before it has waited that long a waiter can lose to bargers; the lot's
 * be_fair hands over early now and then.
 * ------------------------------------------------------------------------ */
typedef struct pz_async_mutex {
    _Atomic uint64_t state;
    _Atomic uint32_t waiters;
    _Atomic uint32_t head_since;
    _Atomic uint64_t holder;
} pz_async_mutex_t;

#define PZ_ASYNC_MUTEX_INIT {0, 0, 0, 0}
#define PZ__AMUTEX_LOCKED 1u
#define PZ__AMUTEX_OWNER_SHIFT 4
#define PZ__AMUTEX_THREAD_BIT PZ__CALLER_THREAD_BIT
#define PZ__AMUTEX_PARKED 1u
#define PZ__AMUTEX_FENCED 2u
#define PZ__AMUTEX_WOKEN 4u
#define PZ__AMUTEX_CONTENDED 16u
/* A waiter that has waited this long is handed the lock by the unlock that
 * takes it from the queue (see Fairness above). */
#define PZ__AMUTEX_FAIR_NS 1000000
#define PZ__AMUTEX_SINCE_SHIFT 10
#define PZ__AMUTEX_HEAD_NONE 0u
#define PZ__AMUTEX_HEAD_UNKNOWN 1u

/* True once the process has asymmetric fences: unlock may then release
 * with a plain store (see above). */
extern _Atomic bool pz__async_unlock_by_store;

/* The caller's id (the runtime's pz__caller_id), shifted into place (see
 * above).  pz__caller_id is declared const although it reads thread-local
 * state: within one activation of a function the caller is always the
 * same task (a task that moves to another worker keeps its id) or the same
 * plain thread, so the compiler may compute it once per function, and out
 * of a loop.  What it must not do is keep a thread-local address across a
 * switch, and as the call is out of line, it cannot. */
static inline uint64_t pz__async_self_bits(void)
{
    return pz__caller_id() << PZ__AMUTEX_OWNER_SHIFT;
}
int pz__async_mutex_lock_slow(pz_async_mutex_t *m, uint64_t self, int64_t deadline);
int pz__async_mutex_unlock_slow(pz_async_mutex_t *m, uint64_t self);
int pz__async_mutex_wake_released(pz_async_mutex_t *m);
/* After a release by exchange that found PARKED in the waiter word (f):
 * serves the head if it should be (a parked waiter and no woken one on its
 * way, or a head that has waited long), as the slow path's release does. */
void pz__async_mutex_released_look(pz_async_mutex_t *m, uint32_t f);
/* Turns the plain-store unlock off for good (a fence failed); waiters on
 * mutexes that never fenced poll from then on.  Called by the lock's slow
 * path; tests call it to check the fallback. */
void pz__async_mutex_fences_failed(void);
/* The observed forms (src/async/observe.c), taken while the advisor is on
 * (runtime.h).  site: the lock call's address (PZ__HERE), or NULL for
 * their own return address. */
int pz__async_mutex_lock_observed(pz_async_mutex_t *m, uint64_t self, int64_t deadline, const void *site);
int pz__async_mutex_taken_observed(pz_async_mutex_t *m, uint64_t self, const void *site);
bool pz__async_mutex_trylock_observed(pz_async_mutex_t *m);
void pz__async_mutex_released_observed(pz_async_mutex_t *m, uint64_t self);
#define PZ__ASYNC_OBSERVED() __builtin_expect(atomic_load_explicit(&pz__observe_sw.on, memory_order_relaxed), 0)

/* One attempt to take a free mutex.  The waiter word is read after the
 * CAS, when the line is ours: a load before it would fetch the line shared
 * and the CAS fetch it again. */
static inline bool pz__async_mutex_take(pz_async_mutex_t *m, uint64_t self)
{
    uint64_t unlocked = 0;
    if (!atomic_compare_exchange_weak_explicit(&m->state, &unlocked, self | PZ__AMUTEX_LOCKED, memory_order_acquire,
                                               memory_order_relaxed))
        return false;
    if (atomic_load_explicit(&m->waiters, memory_order_relaxed) == 0)
        atomic_store_explicit(&m->holder, self, memory_order_relaxed);
    return true;
}

/* The observed lock: the mutex taken first, as off, then, inline while
 * the thread's last slot is this (lock, site)'s and the hold is not to be
 * timed, the acquisition counted and the owner probe read (after the
 * take: a waiter may suspend and resume on another thread, whose slots
 * are not this one's; and work before the take widens the gap between a
 * task's unlock and its next lock, sync.h); everything else goes out of
 * line (src/async/observe.c). */
PZ__INLINE int pz__async_mutex_lock_observing(pz_async_mutex_t *m, uint64_t self, int64_t deadline,
                                                 const void *site)
{
    if (__builtin_expect(!pz__async_mutex_take(m, self), 0))
        return pz__async_mutex_lock_observed(m, self, deadline, site);
    pz__observe_slot *sl = pz__observe_caller().last;
    uint64_t countdown;
    if (__builtin_expect(!site || !pz__observe_hit(sl, m, site, &countdown) || pz__debug_holds(), 0))
        return pz__async_mutex_taken_observed(m, self, site);
    pz__observe_take(sl, countdown);
    pz__observe_owner_inline(sl, self);
    return 0;
}

/* Returns true with the mutex held, false if it is held by anyone (or
 * being handed to a waiter). */
PZ__INLINE bool pz_async_mutex_trylock(pz_async_mutex_t *m)
{
    if (PZ__ASYNC_OBSERVED())
        return pz__async_mutex_trylock_observed(m);
    while (atomic_load_explicit(&m->state, memory_order_relaxed) == 0) {
        if (pz__async_mutex_take(m, pz__async_self_bits())) {
            if (pz__debug_holds())
                pz__held_acquired(m, "pz_async_mutex");
            return true;
        }
    }
    return false;
}

/* Returns 0 with the mutex held, -ETIMEDOUT at the deadline or -ECANCELED. */
PZ__INLINE int pz_async_mutex_lock_until(pz_async_mutex_t *m, int64_t deadline)
{
    /* self first: a const call made on every path is hoisted out of a
     * caller's loop, one made after the branch is not. */
    uint64_t self = pz__async_self_bits();
    if (PZ__ASYNC_OBSERVED())
        return pz__async_mutex_lock_observing(m, self, deadline, PZ__HERE());
    int r = 0;
    if (!pz__async_mutex_take(m, self))
        r = pz__async_mutex_lock_slow(m, self, deadline);
    if (r == 0 && pz__debug_holds())
        pz__held_acquired(m, "pz_async_mutex");
    return r;
}

/* Returns 0 with the mutex held, or -ECANCELED. */
PZ__INLINE int pz_async_mutex_lock(pz_async_mutex_t *m)
{
    return pz_async_mutex_lock_until(m, INT64_MAX);
}

/* Returns 0, or -EPERM (reported on stderr, and nothing changes) if the
 * caller does not hold the mutex.  When tasks wait for the mutex, a task
 * that keeps releasing and retaking it yields now and then (the cooperative
 * budget), as Go's Unlock yields to a starving waiter; never while the
 * task holds a thread-blocking lock. */
PZ__INLINE int pz__async_mutex_unlock_plain(pz_async_mutex_t *m, uint64_t self)
{
    uint64_t holder = atomic_load_explicit(&m->holder, memory_order_relaxed);
    uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
    if (holder == self && f == 0 && atomic_load_explicit(&pz__async_unlock_by_store, memory_order_relaxed)) {
        atomic_store_explicit(&m->holder, 0, memory_order_relaxed);
        atomic_store_explicit(&m->state, 0, memory_order_release);
        /* The hardware half of this Dekker pair is the waiter's fence.
         * Anything in the waiter word now (even without PARKED: a waiter
         * may have come and timed out, and the next one skip the fence)
         * goes through the bucket lock, which orders this store before any
         * later waiter's check. */
        atomic_signal_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&m->waiters, memory_order_relaxed) == 0)
            return 0;
        return pz__async_mutex_wake_released(m);
    }
    /* Contended, and nobody parked: what the slow path would do, inline
     * (a data section taken in a loop by tasks on two workers releases
     * this way nearly every time: `bench-plaza async_contended workers=2
     * work=0` with tasks=2, 64 and 1024 went from 11.6, 19.8 and 15.2 to
     * 7.8, 11.1 and 10.5 ns, medians of 9-11 alternating runs on a 2-vCPU
     * AMD EPYC VM, when this and the budget's step came inline).  Ours if
     * the word holds our id (nobody else changes a held word; the holder
     * word is 0 when the waiter word was not at our take, else the slow
     * path clears it).  Released by exchange, then the waiter word looked
     * at again: the Dekker pair of the slow path's release. */
    if (!(f & PZ__AMUTEX_PARKED) && holder == 0 &&
        atomic_load_explicit(&m->state, memory_order_relaxed) == (self | PZ__AMUTEX_LOCKED)) {
        atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
        f = atomic_load_explicit(&m->waiters, memory_order_seq_cst);
        if (__builtin_expect(f & PZ__AMUTEX_PARKED, 0))
            pz__async_mutex_released_look(m, f);
        if (f)
            pz__coop_release_step();
        return 0;
    }
    return pz__async_mutex_unlock_slow(m, self);
}

PZ__INLINE int pz_async_mutex_unlock(pz_async_mutex_t *m)
{
    uint64_t self = pz__async_self_bits();
    if (pz__debug_holds())
        pz__held_forget(m);
    if (PZ__OBSERVE_TIMING()) /* 0 while off: sync.h's PZ__RELEASE_OBSERVED */
        pz__async_mutex_released_observed(m, self);
    return pz__async_mutex_unlock_plain(m, self);
}

static inline bool pz_async_mutex_is_locked(pz_async_mutex_t *m)
{
    return atomic_load_explicit(&m->state, memory_order_relaxed) & PZ__AMUTEX_LOCKED;
}

/* The pz_task_id of the task holding the mutex, or PZ__AMUTEX_THREAD_BIT |
 * n for the n-th plain thread that has used an async mutex as its holder
 * thread; 0 if the mutex is free (or at the instant it changes hands).  A
 * snapshot, for reports and diagnostics. */
static inline uint64_t pz_async_mutex_holder(pz_async_mutex_t *m)
{
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    return (s & PZ__AMUTEX_LOCKED) ? s >> PZ__AMUTEX_OWNER_SHIFT : 0;
}

/* ------------------------------------------------------------------------
 * pz_async_rwlock: one word, plus read slots kept by the workers; all-zero
 * memory is an unlocked lock.
 *
 *   bit 0 PARKED      waiters (readers, writers, upgradable readers) may be
 *                     parked on the lock's address.  Set by a waiter (and
 *                     checked under the bucket lock), cleared under it when
 *                     the queue empties.
 *   bit 1 UPG_PARKED  the upgradable holder waits on address + 1 for the
 *                     other readers to leave; new readers wait meanwhile.
 *   bit 2 UPGRADABLE  an upgradable reader holds the lock (also counted as
 *                     one reader).
 *   bit 3 WRITER      a writer holds the lock.
 *   bit 4 WOKEN       a woken waiter (or a spinning one) is on its way: a
 *                     release that sees it wakes nobody.
 *   bit 5 STARVING    a waiter has waited 1 ms: strict queue order, every
 *                     release grants the lock to the queue's head (and the
 *                     readers behind it), nobody else enters.
 *   bit 6 SLOTS       readers running on a worker may hold the lock through
 *                     a read slot of their worker (the address of the lock
 *                     in a per-worker cache line) instead of in this word;
 *                     a writer clears it and moves those holds here first.
 *   bits 7..9         the sharing score: how many more writers may find the
 *                     slots empty before readers stop opening them.
 *   bit 10 REVOKING   the slots have just been closed and their holds are
 *                     being moved into the word: no writer enters, no
 *                     upgrade completes meanwhile.
 *   bits 11..26       waiting writers: writers kept out by readers that
 *                     have neither entered nor given up.  While any waits,
 *                     new readers stay out (no writer starves).
 *   bits 27..         the number of readers counted in the word.
 *
 * SLOTS and the score are hints: a lock whose word has only those bits set
 * and no read slot holding it is free with nobody waiting.
 *
 * Running tasks enter ahead of parked waiters while the queue is young
 * (see src/async/rwlock.c for the protocol and why no waiter is left
 * behind).  A waiter that has been trying for 1 ms and finds the lock held
 * when it parks again switches the lock to queue order (STARVING) until
 * the queue empties or a waiter is served within 1 ms of its first park.
 * That makes long waits rare, not impossible: no bound holds for one
 * waiter's wait while others keep taking the lock (src/async/rwlock.c,
 * "Progress", gives the two ways a waiter can keep losing).
 *
 * writer: a hint, not part of the lock: the pz_task_id of the writer while
 * one holds the lock (UINT64_MAX for a plain thread, 0 when not yet
 * written), so that a waiter spins only while the writer is running.
 *
 * parked_writers: how many writers are parked on the lock's address and
 * not yet picked by a dispatch; changed only under the lot's bucket lock,
 * so a dispatch that must wake a writer and finds none parked stops at
 * once instead of walking the parked readers.
 * ------------------------------------------------------------------------ */
#define PZ__ARW_PARKED 1u
#define PZ__ARW_UPG_PARKED 2u
#define PZ__ARW_UPGRADABLE 4u
#define PZ__ARW_WRITER 8u
#define PZ__ARW_WOKEN 16u
#define PZ__ARW_STARVING 32u
#define PZ__ARW_SLOTS 64u
#define PZ__ARW_SHARE_SHIFT 7
#define PZ__ARW_SHARE_MASK (7u << PZ__ARW_SHARE_SHIFT)
#define PZ__ARW_REVOKING 1024u
#define PZ__ARW_WW_SHIFT 11
#define PZ__ARW_READER_SHIFT 27
/* The bits that say nothing of holders or waiters. */
#define PZ__ARW_HINTS (PZ__ARW_SLOTS | PZ__ARW_SHARE_MASK)

typedef struct pz_async_rwlock {
    _Atomic uintptr_t state;
    _Atomic uint64_t writer;
    _Atomic uint32_t parked_writers;
} pz_async_rwlock_t;

#define PZ_ASYNC_RWLOCK_INIT {0, 0, 0}

/* Every unlock and downgrade (and the slow path of every lock) counts one
 * step of the cooperative budget, so a task that keeps taking the lock
 * without ever waiting yields now and then; never while it holds a
 * thread-blocking lock. */
int pz_async_rwlock_read(pz_async_rwlock_t *l);
int pz_async_rwlock_read_until(pz_async_rwlock_t *l, int64_t deadline);
bool pz_async_rwlock_try_read(pz_async_rwlock_t *l);
/* Returns 0, or -EPERM (reported on stderr, nothing changes) when no read
 * hold is left to release.  What it cannot tell: whether the caller is the
 * one holding.  Read holds are counted, not named: the word keeps a count
 * and each worker's read slots keep holds that any reader may leave by
 * (a reader that moved to another worker leaves by whichever hold it
 * finds, see docs/async.md), so while anyone holds the lock for reading,
 * an unlock by a task or thread that holds nothing takes one of their
 * holds and returns 0, and a writer may then enter while that reader is
 * still inside.  Naming holders would cost a store to per-task state on
 * every read lock and unlock, which the read fast path (one slot in the
 * worker's own cache line) exists to avoid.  Balance read locks and
 * unlocks in the same task or thread. */
int pz_async_rwlock_read_unlock(pz_async_rwlock_t *l);
/* How many readers hold the lock (in the word and in read slots), the
 * upgradable reader included.  A snapshot, for reports, diagnostics and
 * tests. */
uint64_t pz_async_rwlock_readers(pz_async_rwlock_t *l);

int pz_async_rwlock_write(pz_async_rwlock_t *l);
int pz_async_rwlock_write_until(pz_async_rwlock_t *l, int64_t deadline);
bool pz_async_rwlock_try_write(pz_async_rwlock_t *l);
/* Returns 0, or -EPERM (reported, nothing changes) if the lock is not held
 * for writing, or is held for writing by another task (or by a plain
 * thread while a task calls, or the other way round).  Plain threads are
 * not told apart from each other.  The same for both downgrades. */
int pz_async_rwlock_write_unlock(pz_async_rwlock_t *l);

/* An upgradable read shares the lock with plain readers but excludes
 * writers and other upgradable readers, so it can become a write lock
 * without letting go. */
int pz_async_rwlock_upgradable_read(pz_async_rwlock_t *l);
int pz_async_rwlock_upgradable_read_until(pz_async_rwlock_t *l, int64_t deadline);
bool pz_async_rwlock_try_upgradable_read(pz_async_rwlock_t *l);
int pz_async_rwlock_upgradable_unlock(pz_async_rwlock_t *l);

/* Upgradable read -> write, waiting for the other readers to leave.  On
 * -ETIMEDOUT or -ECANCELED the caller still holds its upgradable read. */
int pz_async_rwlock_upgrade(pz_async_rwlock_t *l);
int pz_async_rwlock_upgrade_until(pz_async_rwlock_t *l, int64_t deadline);
bool pz_async_rwlock_try_upgrade(pz_async_rwlock_t *l);
/* Write -> read, write -> upgradable read, upgradable read -> read: never
 * wait, and let the waiters that can now enter in. */
int pz_async_rwlock_downgrade(pz_async_rwlock_t *l);
int pz_async_rwlock_downgrade_to_upgradable(pz_async_rwlock_t *l);
int pz_async_rwlock_upgradable_downgrade(pz_async_rwlock_t *l);

/* ------------------------------------------------------------------------
 * pz_semaphore: one word; all-zero memory is a semaphore with no permits.
 *
 *   bit 0 WAITERS  acquirers are parked on the semaphore's address; while it
 *                  is set every acquire queues (FIFO), so a large request at
 *                  the head is never overtaken by small ones.  Set and
 *                  cleared under the bucket lock.
 *   bit 1 CLOSED   pz_semaphore_close was called.
 *   bits 2..       the permits available.
 * ------------------------------------------------------------------------ */
typedef struct pz_semaphore {
    _Atomic uint64_t state;
} pz_semaphore_t;

#define PZ__SEM_WAITERS 1u
#define PZ__SEM_CLOSED 2u
#define PZ__SEM_SHIFT 2
#define PZ_SEMAPHORE_MAX_PERMITS (UINT64_MAX >> PZ__SEM_SHIFT)
#define PZ_SEMAPHORE_INIT(permits) {(uint64_t)(permits) << PZ__SEM_SHIFT}

void pz_semaphore_init(pz_semaphore_t *s, uint64_t permits);
/* Returns 0 with n permits taken, -EPIPE once closed, -ETIMEDOUT,
 * -ECANCELED, or -EINVAL if n exceeds PZ_SEMAPHORE_MAX_PERMITS. */
int pz_semaphore_acquire(pz_semaphore_t *s, uint64_t n);
int pz_semaphore_acquire_until(pz_semaphore_t *s, uint64_t n, int64_t deadline);
/* 0, -EAGAIN (not enough permits, or others wait first) or -EPIPE. */
int pz_semaphore_try_acquire(pz_semaphore_t *s, uint64_t n);
/* Adds n permits and wakes the waiters they satisfy, in order.  Returns 0,
 * or -EOVERFLOW (nothing added) past PZ_SEMAPHORE_MAX_PERMITS. */
int pz_semaphore_release(pz_semaphore_t *s, uint64_t n);
/* Fails every waiter and every later acquire with -EPIPE.  Releases still
 * count. */
void pz_semaphore_close(pz_semaphore_t *s);
uint64_t pz_semaphore_available(pz_semaphore_t *s);

/* ------------------------------------------------------------------------
 * pz_notify: one word; all-zero memory is a notify with no permit.
 *
 *   bit 0 PERMIT   a notify_one found nobody waiting and left a permit; the
 *                  next wait consumes it and returns at once.
 *   bit 1 WAITERS  tasks may be parked on the address (bucket lock).
 *   bits 2..       the epoch: notify_all adds one.
 *
 * Registration without lost wake-ups: take the epoch, check the condition,
 * and wait since that epoch; a notify_all after the snapshot makes the wait
 * return at once, and a notify_one leaves its permit:
 *
 *     uint64_t e = pz_notify_epoch(n);
 *     while (!condition()) {
 *         if ((r = pz_notify_wait_since(n, e, deadline)) < 0) break;
 *         e = pz_notify_epoch(n);
 *     }
 * ------------------------------------------------------------------------ */
typedef struct pz_notify {
    _Atomic uint64_t state;
} pz_notify_t;

#define PZ_NOTIFY_INIT {0}

/* Wakes one waiter, or stores one permit (at most one) if nobody waits. */
void pz_notify_one(pz_notify_t *n);
/* Wakes every current waiter and every pz_notify_wait_since whose epoch it
 * makes stale; stores no permit. */
void pz_notify_all(pz_notify_t *n);
uint64_t pz_notify_epoch(pz_notify_t *n);
/* 0 when notified (or a permit or a newer epoch was there), -ETIMEDOUT,
 * -ECANCELED. */
int pz_notify_wait(pz_notify_t *n);
int pz_notify_wait_until(pz_notify_t *n, int64_t deadline);
int pz_notify_wait_since(pz_notify_t *n, uint64_t epoch, int64_t deadline);

/* ------------------------------------------------------------------------
 * pz_barrier: one word after init: bits 0-31 the tasks arrived in this
 * generation, bits 32-63 the generation.  Waiters park on the address; the
 * last arrival (the leader) starts the next generation and wakes them.
 * A waiter that times out or is cancelled before the generation completes
 * takes its arrival back.
 * ------------------------------------------------------------------------ */
typedef struct pz_barrier {
    _Atomic uint64_t state;
    uint32_t count;
} pz_barrier_t;

#define PZ_BARRIER_LEADER 1
#define PZ_BARRIER_INIT(n) {0, (n)}

/* n >= 1; returns -EINVAL otherwise. */
int pz_barrier_init(pz_barrier_t *b, uint32_t n);
/* PZ_BARRIER_LEADER for exactly one caller per generation, 0 for the
 * others, or -ETIMEDOUT / -ECANCELED. */
int pz_barrier_wait(pz_barrier_t *b);
int pz_barrier_wait_until(pz_barrier_t *b, int64_t deadline);

/* ------------------------------------------------------------------------
 * pz_chan: a bounded multi-producer multi-consumer channel of items of a
 * fixed size, copied in and out.  Capacity 0 is a rendezvous: a send
 * completes only when a receiver takes the item.  After close, sends fail
 * with -EPIPE and receives drain the buffer, then return -EPIPE.  Items
 * leave in the order their sends completed.
 *
 * A buffered channel is a ring of cells, each an 8-byte stamp and the item
 * (src/async/chan.c).  Senders claim cells by a CAS of tail and receivers
 * by a CAS of head, which live on different cache lines, so a sender and a
 * receiver on different workers do not fight over one line (a lock shared
 * by both ends spent 80% of a 4-producer, 1-consumer benchmark spinning).
 * Only a send that finds the ring full, a receive that finds it empty, and
 * close take the channel's spin lock: it guards the FIFO queues of waiting
 * senders and receivers (nodes on the waiters' stacks).  An operation that
 * changes the ring while the other side waits serves the queues: it moves
 * the first waiting sender's item into the ring and the oldest item out to
 * the first waiting receiver, until neither can move.  Each waiter parks
 * on its own node.  Queued waiters have no priority over operations that
 * find the ring ready.  A rendezvous channel has no ring: every
 * operation takes the lock and pairs a sender with a receiver directly.
 * ------------------------------------------------------------------------ */
typedef struct pz__chan_waiter pz__chan_waiter;

typedef struct pz_chan {
    /* Written by senders: lap | index of the next cell to fill, and
     * PZ__CHAN_CLOSED once closed. */
    _Atomic uint64_t tail;
    char tail_line[56];
    /* Written by receivers: lap | index of the next cell to empty. */
    _Atomic uint64_t head;
    char head_line[56];
    /* Read by every operation, written when waiters come and go. */
    _Atomic uint32_t waiting; /* PZ__CHAN_SENDERS_WAIT | PZ__CHAN_RECEIVERS_WAIT */
    _Atomic unsigned char lock;
    bool owns_buffer;
    size_t item_size, cell_size, capacity;
    uint64_t one_lap; /* a power of two above capacity */
    unsigned char *cells;
    pz__chan_waiter *senders, *senders_tail;
    pz__chan_waiter *receivers, *receivers_tail;
} pz_chan_t;

#define PZ__CHAN_CLOSED (1ull << 63)
#define PZ__CHAN_SENDERS_WAIT 1u
#define PZ__CHAN_RECEIVERS_WAIT 2u

/* The bytes of buffer pz_chan_init needs: per item an 8-byte stamp and
 * the item rounded up to 8 bytes. */
#define PZ_CHAN_BUFFER_SIZE(item_size, capacity) ((capacity) * (8 + (((size_t)(item_size) + 7) & ~(size_t)7)))

/* buffer holds buffer_size >= PZ_CHAN_BUFFER_SIZE(item_size, capacity)
 * bytes, 8-byte aligned, and must outlive the channel (both ignored when
 * capacity is 0).  -EINVAL for item_size 0, or a missing, short or
 * misaligned buffer. */
int pz_chan_init(pz_chan_t *ch, size_t item_size, size_t capacity, void *buffer, size_t buffer_size);
/* Allocates the channel and its buffer; NULL if out of memory or invalid. */
pz_chan_t *pz_chan_create(size_t item_size, size_t capacity);
/* Frees a channel from pz_chan_create.  Nobody may be using it. */
void pz_chan_destroy(pz_chan_t *ch);

/* 0, -EPIPE (closed), -ETIMEDOUT, -ECANCELED; the _try forms -EAGAIN. */
int pz_chan_send(pz_chan_t *ch, const void *item);
int pz_chan_send_until(pz_chan_t *ch, const void *item, int64_t deadline);
int pz_chan_try_send(pz_chan_t *ch, const void *item);
int pz_chan_recv(pz_chan_t *ch, void *item);
int pz_chan_recv_until(pz_chan_t *ch, void *item, int64_t deadline);
int pz_chan_try_recv(pz_chan_t *ch, void *item);
/* Wakes every waiter: senders get -EPIPE; receivers get what is left in
 * the buffer, one item each, then -EPIPE.  A send either completed before
 * the close (its item will be received) or fails.  Closing twice does
 * nothing more. */
void pz_chan_close(pz_chan_t *ch);
/* Items in the buffer now. */
size_t pz_chan_len(pz_chan_t *ch);

#ifdef __cplusplus
}
#endif
#endif
