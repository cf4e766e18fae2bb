/*
 * pz_async_rwlock.  The word is described in include/plaza/async.h.
 *
 * Entry rules (fast path, and again under the bucket lock in validate):
 *   read        no WRITER, nobody queued (PARKED), no upgrade pending
 *   write       the word is 0
 *   upgradable  as read, and no UPGRADABLE holder
 * A caller that cannot enter sets PARKED and parks on the lock's address
 * with its park token pointing at its wait record.  While PARKED is set
 * nobody enters without queueing, so readers cannot starve a writer and
 * the queue is served in order.
 *
 * Dispatch (every unlock or downgrade that finds PARKED, and every waiter
 * that gave up): pz_unpark_filter walks the queue under the bucket lock
 * and grants the lock directly: the first waiter if it can enter now given
 * the holders, then the readers (and at most one upgradable reader) that
 * follow it, up to the first writer or waiter that cannot enter.  The
 * callback adds the granted holders to the word and sets PARKED to
 * whether anyone remains queued.  While PARKED is set new holders appear
 * only through dispatch, and existing readers only leave, so a grant
 * decided from a fresh load of the word cannot become wrong: a reader that
 * leaves afterwards runs its own dispatch.
 *
 * The filter marks each granted waiter's record before the lot claims it.
 * A waiter whose claim is lost (deadline or cancel at that instant) finds
 * the mark in its timed_out callback, under the same bucket lock, and
 * keeps the lock it was granted (returns 0): the word counted it already.
 *
 * Before any of that, a caller that finds the lock taken while nobody is
 * queued spins (see spin_enter): a data-sized section is over within
 * nanoseconds, and queueing costs a park and a wake-up per waiter, which
 * made 64 tasks on 2 workers (10% writes) cost 130-250 ns/op.
 *
 * Upgrade: the upgradable holder waits for the other readers on address +
 * 1, having set UPG_PARKED (by CAS on the word, so with the reader count
 * it saw); the reader that brings the count down to 1 wakes it.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include "../runtime/internal.h"

#define PARKED ((uintptr_t)1)
#define UPG_PARKED ((uintptr_t)2)
#define UPGRADABLE ((uintptr_t)4)
#define WRITER ((uintptr_t)8)
#define READER ((uintptr_t)16)
#define READERS(s) ((s) >> 4)

#define TOKEN_GRANTED 1

enum kind { K_READ, K_WRITE, K_UPG };

struct rw_wait {
    pz_async_rwlock_t *l;
    int kind;
    int result;   /* validate's verdict: 0 entered, 1 parked */
    bool granted; /* set by a dispatch under the bucket lock */
};

/* The word after entering as kind, or 0 if kind may not enter from s. */
static uintptr_t enter(int kind, uintptr_t s)
{
    switch (kind) {
    case K_READ:
        return (s & (WRITER | PARKED | UPG_PARKED)) ? 0 : s + READER;
    case K_WRITE:
        return s == 0 ? WRITER : 0;
    default:
        return (s & (WRITER | PARKED | UPG_PARKED | UPGRADABLE)) ? 0 : s + READER + UPGRADABLE;
    }
}

static bool try_enter(pz_async_rwlock_t *l, int kind)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = enter(kind, s);
        if (!n)
            return false;
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_acquire, memory_order_relaxed))
            return true;
    }
}

struct dispatch {
    pz_async_rwlock_t *l;
    uintptr_t readers; /* readers granted (the upgradable one included) */
    bool upgradable, writer, stop;
};

static pz_filter_op_t rw_filter(uintptr_t park_token, void *ctx)
{
    struct dispatch *d = ctx;
    struct rw_wait *w = (struct rw_wait *)park_token;
    /* Granted by an earlier dispatch whose claim it lost: it is leaving
     * holding the lock and must not be counted twice. */
    if (w->granted)
        return PZ_FILTER_SKIP;
    if (d->stop || d->writer)
        return PZ_FILTER_STOP;
    uintptr_t s = atomic_load_explicit(&d->l->state, memory_order_relaxed);
    bool ok;
    switch (w->kind) {
    case K_WRITE:
        ok = !d->readers && !(s & (WRITER | UPGRADABLE | UPG_PARKED)) && READERS(s) == 0;
        break;
    case K_READ:
        ok = !(s & (WRITER | UPG_PARKED));
        break;
    default:
        ok = !(s & (WRITER | UPG_PARKED | UPGRADABLE)) && !d->upgradable;
        break;
    }
    if (!ok) {
        d->stop = true; /* in order: nobody passes a waiter that must wait */
        return PZ_FILTER_STOP;
    }
    w->granted = true;
    if (w->kind == K_WRITE) {
        d->writer = true;
    } else {
        d->readers++;
        if (w->kind == K_UPG)
            d->upgradable = true;
    }
    return PZ_FILTER_UNPARK;
}

static uintptr_t rw_dispatch_done(pz_unpark_result_t r, void *ctx)
{
    struct dispatch *d = ctx;
    uintptr_t s = atomic_load_explicit(&d->l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = s + d->readers * READER + (d->upgradable ? UPGRADABLE : 0) + (d->writer ? WRITER : 0);
        n = r.have_more ? (n | PARKED) : (n & ~PARKED);
        if (atomic_compare_exchange_weak_explicit(&d->l->state, &s, n, memory_order_release, memory_order_relaxed))
            return TOKEN_GRANTED;
    }
}

static void dispatch(pz_async_rwlock_t *l)
{
    struct dispatch d = {l, 0, false, false, false};
    pz_unpark_filter(l, rw_filter, rw_dispatch_done, &d);
}

static bool rw_validate(void *ctx)
{
    struct rw_wait *w = ctx;
    uintptr_t s = atomic_load_explicit(&w->l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = enter(w->kind, s);
        if (n) {
            if (atomic_compare_exchange_weak_explicit(&w->l->state, &s, n, memory_order_acquire,
                                                      memory_order_relaxed)) {
                w->result = 0;
                return false;
            }
            continue;
        }
        if ((s & PARKED) ||
            atomic_compare_exchange_weak_explicit(&w->l->state, &s, s | PARKED, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            w->result = 1;
            return true;
        }
    }
}

static void rw_timed_out(void *ctx, bool was_last)
{
    struct rw_wait *w = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&w->l->state, ~PARKED, memory_order_relaxed);
}

static int acquire_slow(pz_async_rwlock_t *l, int kind, int64_t deadline)
{
    for (;;) {
        struct rw_wait w = {l, kind, 1, false};
        uintptr_t token = 0;
        int r = pz_park(l, rw_validate, NULL, rw_timed_out, &w, (uintptr_t)&w, deadline, 0, &token);
        if (r == -EAGAIN && w.result == 0)
            return 0;
        if (r == -EAGAIN)
            continue;
        if (r == 0 || w.granted) {
            /* Granted by a dispatch (if our claim was lost at that instant
             * we keep the grant: the word already counts us). */
            return 0;
        }
        /* We may have been the waiter that held back the ones behind. */
        if (atomic_load_explicit(&l->state, memory_order_relaxed) & PARKED)
            dispatch(l);
        return r;
    }
}

/* Spin rounds: while readers hold the lock (their number says nothing of
 * whether they run) a short spin of 2, 4, ... 64 cpu_relax; while a writer
 * that is running holds it, up to READ_SPIN_ROUNDS rounds of up to 256, as
 * pz_async_mutex does.  Never once anyone is queued (PARKED): from then on
 * the queue order decides, so that no writer starves. */
#define SHORT_SPIN_ROUNDS 6
#define LONG_SPIN_ROUNDS 10
#define SPIN_MAX_SHIFT 8

static void note_writer(pz_async_rwlock_t *l)
{
    pz_task_t *t = pz__current_task();
    atomic_store_explicit(&l->writer, t ? t->id : UINT64_MAX, memory_order_relaxed);
}

static bool writer_may_run(pz_async_rwlock_t *l)
{
    uint64_t id = atomic_load_explicit(&l->writer, memory_order_relaxed);
    if (id == UINT64_MAX)
        return true;
    return id && pz__task_id_running(id);
}

static bool spin_enter(pz_async_rwlock_t *l, int kind)
{
    if (pz__current_task() && pz_worker_count() <= 1)
        return false;
    for (int spins = 1; spins <= LONG_SPIN_ROUNDS; spins++) {
        uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
        if (s & (PARKED | UPG_PARKED))
            return false;
        if ((s & WRITER) ? !writer_may_run(l) : spins > SHORT_SPIN_ROUNDS)
            return false;
        for (int i = 0; i < (1 << (spins < SPIN_MAX_SHIFT ? spins : SPIN_MAX_SHIFT)); i++)
            pz__arch_cpu_relax();
        if (try_enter(l, kind))
            return true;
    }
    return false;
}

static int acquire(pz_async_rwlock_t *l, int kind, int64_t deadline)
{
    int r = 0;
    if (!try_enter(l, kind)) {
        /* The cooperative budget: a task that keeps winning here without
         * suspending lets the tasks queued behind it run now and then. */
        pz__coop_tick();
        if (!spin_enter(l, kind))
            r = acquire_slow(l, kind, deadline);
    }
    if (r == 0 && kind == K_WRITE)
        note_writer(l);
    return r;
}

int pz_async_rwlock_read(pz_async_rwlock_t *l)
{
    return acquire(l, K_READ, PZ_FOREVER);
}

int pz_async_rwlock_read_until(pz_async_rwlock_t *l, int64_t deadline)
{
    return acquire(l, K_READ, deadline);
}

bool pz_async_rwlock_try_read(pz_async_rwlock_t *l)
{
    return try_enter(l, K_READ);
}

int pz_async_rwlock_write(pz_async_rwlock_t *l)
{
    return acquire(l, K_WRITE, PZ_FOREVER);
}

int pz_async_rwlock_write_until(pz_async_rwlock_t *l, int64_t deadline)
{
    return acquire(l, K_WRITE, deadline);
}

bool pz_async_rwlock_try_write(pz_async_rwlock_t *l)
{
    if (!try_enter(l, K_WRITE))
        return false;
    note_writer(l);
    return true;
}

int pz_async_rwlock_upgradable_read(pz_async_rwlock_t *l)
{
    return acquire(l, K_UPG, PZ_FOREVER);
}

int pz_async_rwlock_upgradable_read_until(pz_async_rwlock_t *l, int64_t deadline)
{
    return acquire(l, K_UPG, deadline);
}

bool pz_async_rwlock_try_upgradable_read(pz_async_rwlock_t *l)
{
    return try_enter(l, K_UPG);
}

static int misuse(pz_async_rwlock_t *l, const char *call, const char *mode)
{
    pz__report("%s: async rwlock %p is not held %s; ignored", call, (void *)l, mode);
    return -EPERM;
}

int pz_async_rwlock_read_unlock(pz_async_rwlock_t *l)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        if (READERS(s) <= ((s & UPGRADABLE) ? 1u : 0u))
            return misuse(l, "pz_async_rwlock_read_unlock", "for reading");
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, s - READER, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    s -= READER;
    if ((s & UPG_PARKED) && READERS(s) == 1)
        pz_unpark_one((const char *)l + 1, NULL, NULL);
    else if ((s & PARKED) && READERS(s) == 0)
        dispatch(l);
    return 0;
}

/* Replaces the holder's mode: clears `drop` (which must be set) and adds
 * `add`; dispatches if anyone is queued. */
static int change_mode(pz_async_rwlock_t *l, uintptr_t need, uintptr_t sub, uintptr_t add, const char *call,
                       const char *mode)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        if (!(s & need))
            return misuse(l, call, mode);
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, s - sub + add, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    s = s - sub + add;
    if (s & PARKED)
        dispatch(l);
    return 0;
}

int pz_async_rwlock_write_unlock(pz_async_rwlock_t *l)
{
    atomic_store_explicit(&l->writer, 0, memory_order_relaxed);
    uintptr_t w = WRITER;
    if (atomic_compare_exchange_strong_explicit(&l->state, &w, 0, memory_order_release, memory_order_relaxed))
        return 0;
    return change_mode(l, WRITER, WRITER, 0, "pz_async_rwlock_write_unlock", "for writing");
}

int pz_async_rwlock_upgradable_unlock(pz_async_rwlock_t *l)
{
    return change_mode(l, UPGRADABLE, UPGRADABLE + READER, 0, "pz_async_rwlock_upgradable_unlock",
                       "as upgradable reader");
}

int pz_async_rwlock_downgrade(pz_async_rwlock_t *l)
{
    atomic_store_explicit(&l->writer, 0, memory_order_relaxed);
    return change_mode(l, WRITER, WRITER, READER, "pz_async_rwlock_downgrade", "for writing");
}

int pz_async_rwlock_downgrade_to_upgradable(pz_async_rwlock_t *l)
{
    atomic_store_explicit(&l->writer, 0, memory_order_relaxed);
    return change_mode(l, WRITER, WRITER, READER + UPGRADABLE, "pz_async_rwlock_downgrade_to_upgradable",
                       "for writing");
}

int pz_async_rwlock_upgradable_downgrade(pz_async_rwlock_t *l)
{
    return change_mode(l, UPGRADABLE, UPGRADABLE, 0, "pz_async_rwlock_upgradable_downgrade",
                       "as upgradable reader");
}

/* The upgradable holder is the only reader left: become the writer. */
static bool upgrade_now(pz_async_rwlock_t *l, uintptr_t *s)
{
    while (READERS(*s) == 1) {
        uintptr_t n = ((*s - READER - UPGRADABLE) & ~UPG_PARKED) | WRITER;
        if (atomic_compare_exchange_weak_explicit(&l->state, s, n, memory_order_acquire, memory_order_relaxed))
            return true;
    }
    return false;
}

bool pz_async_rwlock_try_upgrade(pz_async_rwlock_t *l)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    if (!(s & UPGRADABLE)) {
        misuse(l, "pz_async_rwlock_try_upgrade", "as upgradable reader");
        return false;
    }
    if (!upgrade_now(l, &s))
        return false;
    note_writer(l);
    return true;
}

struct upg_wait {
    pz_async_rwlock_t *l;
    bool done;
};

static bool upg_validate(void *ctx)
{
    struct upg_wait *w = ctx;
    uintptr_t s = atomic_load_explicit(&w->l->state, memory_order_relaxed);
    for (;;) {
        if (upgrade_now(w->l, &s)) {
            w->done = true;
            return false;
        }
        if ((s & UPG_PARKED) || atomic_compare_exchange_weak_explicit(&w->l->state, &s, s | UPG_PARKED,
                                                                      memory_order_relaxed, memory_order_relaxed))
            return true;
    }
}

static void upg_timed_out(void *ctx, bool was_last)
{
    (void)was_last; /* only the upgradable holder ever waits there */
    struct upg_wait *w = ctx;
    atomic_fetch_and_explicit(&w->l->state, ~UPG_PARKED, memory_order_relaxed);
}

int pz_async_rwlock_upgrade_until(pz_async_rwlock_t *l, int64_t deadline)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    if (!(s & UPGRADABLE))
        return misuse(l, "pz_async_rwlock_upgrade", "as upgradable reader");
    if (upgrade_now(l, &s)) {
        note_writer(l);
        return 0;
    }
    for (;;) {
        struct upg_wait w = {l, false};
        int r = pz_park((const char *)l + 1, upg_validate, NULL, upg_timed_out, &w, 0, deadline, 0, NULL);
        if (w.done) {
            note_writer(l);
            return 0;
        }
        if (r == 0 || r == -EAGAIN)
            continue; /* the last other reader left: validate converts */
        /* Gave up: readers held back by UPG_PARKED may enter again. */
        if (atomic_load_explicit(&l->state, memory_order_relaxed) & PARKED)
            dispatch(l);
        return r;
    }
}

int pz_async_rwlock_upgrade(pz_async_rwlock_t *l)
{
    return pz_async_rwlock_upgrade_until(l, PZ_FOREVER);
}
