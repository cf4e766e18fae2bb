/*
 * The out-of-line halves of the sync locks' observed acquisitions (the
 * advisor on, see runtime.h).  The inline halves in sync.h handle the
 * common case themselves: the thread's last slot (pz__self_tls.observe_last)
 * is this (lock, site)'s and the hold is not to be timed; they count the
 * acquisition in the slot's countdown and push the held-lock record before
 * the lock's atomic operation, check the owner after it, and call here for
 * everything else: the first acquisition at a pair (or after another pair
 * took the thread's last slot), a hold to time (the countdown ran out), a
 * first attempt that failed, a plain thread's first hold, an architecture
 * where the inline paths do not know the caller.
 *
 * site is the address the inline path took in the public lock call (the
 * advisor reports its line); NULL where it cannot, and then the return
 * address here is the site (the inline wrapper lives in the user's
 * function).  A wait is timed only when the first attempt fails (an
 * uncontended acquisition costs no clock read), and then only if it yields
 * or parks or is one of the sampled spins (wait_begin below), and reported to the hook
 * table: acquired after a lock was taken, gave_up after a wait that ended
 * without it (deadline: the wait counts all the same).  The release hook
 * runs after a mutex is let go (before, for the rwlock), and only while
 * the observer times some hold (PZ__OBSERVE_TIMING in runtime.h, inline)
 * and one of the caller's: an untimed release, nearly every one, costs the
 * observer one load and no call.
 */
#include "plaza/sync.h"
#include "plaza/runtime.h"

#include <errno.h>

#include "../runtime/internal.h"
#include "off_cpu_note.h"

static inline const pz__lock_hooks *hooks(void)
{
    return atomic_load_explicit(&pz__observe_sw.hooks, memory_order_acquire);
}

/* The running task, or NULL on a plain thread (or a worker's own loop).
 * Read straight from the thread-local: none of these paths suspends, so
 * the thread cannot change under them (sync locks block the thread). */
static inline pz_task_t *running_task(void)
{
    pz__worker *w = pz__self_tls.worker;
    return w ? w->current : NULL;
}

/* The caller's id (pz__caller_id) without a call for a task. */
static inline uint64_t caller_id(void)
{
    pz_task_t *t = running_task();
    if (t)
        return t->id;
    uint64_t id = pz__thread_id;
    return id ? id : pz__caller_id();
}

/* lock was taken by the caller at site: its held-lock record, without a
 * call for a task. */
static inline void held_take(const void *lock, const char *kind, const void *site)
{
    pz_task_t *t = running_task();
    pz__holds *h = t ? &t->holds : pz__self_tls.holds;
    if (h)
        pz__held_push(h, lock, kind, site);
    else
        pz__held_acquired_at(lock, kind, site);
}

/* The caller's observation record (pz__observer_self) without a call for
 * a task. */
static inline pz__observer *observer(void)
{
    pz_task_t *t = running_task();
    return t ? &t->observer : &pz__self_tls.observer;
}

static void report_acquired(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->acquired(lock, kind, site, wait_ns, flags, caller_id());
}

static void report_gave_up(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags,
                           int err)
{
    const pz__lock_hooks *h = hooks();
    if (h)
        h->gave_up(lock, kind, site, wait_ns, flags, err);
}

static void report_released(const void *lock, unsigned kind, unsigned flags)
{
    if (__builtin_expect(observer()->timed_holds == 0, 1))
        return;
    const pz__lock_hooks *h = hooks();
    if (h)
        h->released(lock, kind, flags, caller_id());
}

__thread struct pz__sync_off_cpu_note pz__sync_off_cpu_note __attribute__((tls_model("initial-exec")));

/* Timing a wait: every wait that gives up its CPU (yields in the spin, or
 * parks), and one in PZ__WAIT_SAMPLE_GAP of those that end in the
 * pause-spin before that, chosen at random (runtime.h says why).  A
 * pause-spin lasts nanoseconds to microseconds, and its clock read at the
 * end comes inside the critical section: at 64 tasks taking one pz_mutex
 * with no work between (tasks_contended work=0, 2.4% of the acquisitions
 * contended), the two reads per contended acquisition were about half of
 * the advisor's cost, 9% on the row against 5% without them.  The figures
 * stay unbiased: a timed pause-spin wait counts PZ__WAIT_SAMPLE_GAP times
 * in the sums and the histogram, one that left the CPU once (a sampled
 * one too, so that each of those weighs the same), and the count of
 * contended acquisitions is exact.  An unsampled wait that left the CPU is
 * timed from its first yield or park (src/sync/off_cpu_note.h), missing
 * its pause-spin, microseconds at most.  The longest wait is a wait that
 * left the CPU or a sampled spin, so a pause-spin wait longer than every
 * other can be missed: it is short by construction (the pause rounds come
 * to a few microseconds, unless the kernel preempts the waiter in them). */
struct wait_timer {
    int64_t t0;  /* pz_now() at the failed first attempt if timed, else 0 */
    bool timed;  /* timed from t0 even if it ends in the pause-spin */
    bool drawn;  /* timed as one of PZ__WAIT_SAMPLE_GAP (else always timed) */
};

static __thread uint32_t wait_rng __attribute__((tls_model("initial-exec")));

/* always: time this wait whatever it does, with weight 1 (a call with a
 * deadline: its wait may end by giving up, in the spin or out of it, and
 * such calls are not the short data sections the sampling is for). */
static inline struct wait_timer wait_begin(bool always)
{
    struct wait_timer w = {0, true, false};
    if (!always) {
        uint32_t x = wait_rng;
        if (__builtin_expect(x == 0, 0))
            x = (uint32_t)(uintptr_t)&x | 1u; /* a seed that differs between threads */
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        wait_rng = x;
        w.timed = w.drawn = (x & (PZ__WAIT_SAMPLE_GAP - 1)) == 0;
    }
    if (w.timed)
        w.t0 = pz_now();
    pz__sync_off_cpu_note = (struct pz__sync_off_cpu_note){true, 0};
    return w;
}

/* The wait's time for the report (0 if untimed) and the flag saying how
 * it counts (none: once). */
static inline int64_t wait_end(struct wait_timer w, unsigned *flags)
{
    int64_t off_cpu_at = pz__sync_off_cpu_note.at;
    pz__sync_off_cpu_note.want = false;
    if (off_cpu_at)
        return pz_now() - (w.timed ? w.t0 : off_cpu_at);
    if (w.timed) {
        if (w.drawn)
            *flags |= PZ__LOCK_WAIT_SAMPLED;
        return pz_now() - w.t0;
    }
    *flags |= PZ__LOCK_WAIT_UNTIMED;
    return 0;
}

/* The end of a contended acquisition's wait, r its result: the held-lock
 * record and the report (flags: the lock's own, PZ__LOCK_SHARED or 0). */
static void wait_done(const void *lock, unsigned kind, const char *what, const void *site, struct wait_timer w,
                      unsigned flags, int r)
{
    int64_t waited = wait_end(w, &flags);
    if (r == 0) {
        held_take(lock, what, site);
        report_acquired(lock, kind, site, waited, flags);
    } else {
        report_gave_up(lock, kind, site, waited, flags, r);
    }
}

/* The contended half of pz__mutex_lock_observed, apart so that the
 * uncontended half saves no register before its CAS. */
static __attribute__((noinline)) void mutex_lock_contended(pz_mutex_t *m, int64_t deadline, int *result,
                                                           const void *site)
{
    struct wait_timer w = wait_begin(deadline != PZ_FOREVER);
    int r = 0;
    pz__mutex_lock_slow(m, deadline, &r);
    if (result)
        *result = r;
    wait_done(m, PZ__LOCK_MUTEX, "pz_mutex", site, w, 0, r);
}

/* The inline path's CAS failed: the wait, timed (site NULL: this call's
 * return address is the site, as for the others). */
__attribute__((noinline)) void pz__mutex_lock_observed(pz_mutex_t *m, int64_t deadline, int *result,
                                                       const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    mutex_lock_contended(m, deadline, result, site);
}

/* The inline path took the lock but left the rest to this one: the slot
 * looked up (and kept as the thread's last), the acquisition counted, and
 * the hold timed when the countdown runs out. */
__attribute__((noinline)) void pz__mutex_taken_observed(pz_mutex_t *m, const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    const pz__lock_hooks *h = hooks();
    uint64_t self = caller_id(); /* first: a plain thread's id is then known inline */
    pz__observe_slot *sl = pz__observe_slot_for(h, m, PZ__LOCK_MUTEX, site, 0);
    held_take(m, "pz_mutex", site);
    if (sl)
        pz__observe_count(sl, self, 0);
}

__attribute__((noinline)) bool pz__mutex_trylock_observed(pz_mutex_t *m)
{
    const void *site = __builtin_return_address(0);
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    while (!(s & PZ__MUTEX_LOCKED)) {
        if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                  memory_order_acquire, memory_order_relaxed)) {
            held_take(m, "pz_mutex", site);
            report_acquired(m, PZ__LOCK_MUTEX, site, -1, 0);
            return true;
        }
    }
    return false;
}

/* After the unlock (sync.h), while the observer may time a hold of the
 * caller: a timed hold's end is recorded after the mutex is free, outside
 * the critical section. */
void pz__mutex_released_observed(pz_mutex_t *m)
{
    report_released(m, PZ__LOCK_MUTEX, 0);
}

static bool rw_fast(pz_rwlock_t *rw, int mode)
{
    uintptr_t unlocked = 0;
    switch (mode) {
    case PZ__RW_MODE_WRITE:
        return atomic_compare_exchange_strong_explicit(&rw->state, &unlocked, PZ__RW_WRITE_LOCKED, memory_order_acquire,
                                                       memory_order_relaxed);
    case PZ__RW_MODE_UPGRADABLE:
        return pz__rwlock_upgradable_fast(rw);
    default:
        return pz__rwlock_read_fast(rw);
    }
}

static unsigned rw_flags(int mode)
{
    return mode == PZ__RW_MODE_WRITE ? 0 : PZ__LOCK_SHARED;
}

/* The contended half of the rwlock's observed acquisition. */
static __attribute__((noinline)) int rwlock_lock_contended(pz_rwlock_t *rw, int mode, int64_t deadline,
                                                           const void *site)
{
    struct wait_timer w = wait_begin(deadline != PZ_FOREVER);
    int r = pz__rwlock_lock_slow(rw, mode, deadline);
    wait_done(rw, PZ__LOCK_RWLOCK, "pz_rwlock", site, w, rw_flags(mode), r);
    return r;
}

/* As pz__mutex_lock_observed and pz__mutex_taken_observed, for the rwlock
 * in mode: the inline path's take failed (the wait), or it took the lock
 * and left the count here. */
__attribute__((noinline)) int pz__rwlock_lock_observed(pz_rwlock_t *rw, int mode, int64_t deadline, const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    return rwlock_lock_contended(rw, mode, deadline, site);
}

__attribute__((noinline)) int pz__rwlock_taken_observed(pz_rwlock_t *rw, int mode, const void *site)
{
    if (!site)
        site = __builtin_return_address(0);
    const pz__lock_hooks *h = hooks();
    uint64_t self = caller_id();
    pz__observe_slot *sl = pz__observe_slot_for(h, rw, PZ__LOCK_RWLOCK, site, rw_flags(mode));
    held_take(rw, "pz_rwlock", site);
    if (sl)
        pz__observe_count(sl, self, rw_flags(mode));
    return 0;
}

__attribute__((noinline)) bool pz__rwlock_try_observed(pz_rwlock_t *rw, int mode)
{
    const void *site = __builtin_return_address(0);
    if (!rw_fast(rw, mode) && !pz__rwlock_try_slow(rw, mode))
        return false;
    held_take(rw, "pz_rwlock", site);
    report_acquired(rw, PZ__LOCK_RWLOCK, site, -1, rw_flags(mode));
    return true;
}

void pz__rwlock_released_observed(pz_rwlock_t *rw, int mode)
{
    report_released(rw, PZ__LOCK_RWLOCK, rw_flags(mode));
}
