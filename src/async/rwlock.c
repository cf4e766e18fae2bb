/*
 * pz_async_rwlock.  The word is described in include/plaza/async.h.
 *
 * The design is the async mutex's, for two kinds of holder: running tasks
 * take the lock ahead of parked waiters (barging), a waiter spins while the
 * holders may be running, unlocks wake one waiter at a time (WOKEN), and a
 * waiter that has waited 1 ms switches the lock to strict queue order
 * (STARVING).  The earlier strict-FIFO design parked 85% of acquisitions
 * under 64 tasks with 10% writers: once anyone was queued, everybody queued.
 *
 * Entry rules (fast paths, spinners, woken waiters, and validate under the
 * bucket lock):
 *   read        no WRITER, no UPG_PARKED, not STARVING, no waiting writer
 *   upgradable  as read, and no UPGRADABLE holder
 *   write       no WRITER, no UPGRADABLE, no readers, not STARVING, no
 *               SLOTS (see "read slots" below); a writer that is not yet
 *               counted as waiting also needs no waiting writer (it does
 *               not barge past them)
 * PARKED and WOKEN never stop an entry.
 *
 * Waiting writers (WW) are counted from a writer's first attempt that
 * readers (or open read slots) kept out, until it takes the lock or gives
 * up: while any writer waits, new readers stay out, so the readers inside
 * drain and the writer gets in: no writer starves behind a stream of
 * readers.  A writer kept out only by another writer is not counted:
 * readers cannot enter meanwhile anyway, and counting would cost the word
 * a write per contended write (64 writers on 2 workers: 100 -> 52 ns).
 *
 * Dispatch (an unlock that leaves the lock free enough for a waiter, with
 * PARKED set and WOKEN clear, or in STARVING mode with WOKEN set too; and a
 * waiter that gives up):
 *   normal mode: wake, without granting, the waiter that can use the lock:
 *     the first queued writer if any writer waits (readers could not enter),
 *     otherwise the first waiter and, if it is a reader, the readers behind
 *     it up to the next writer.  The lock counts the writers parked and not
 *     yet picked by a dispatch (parked_writers, under the bucket lock): with
 *     none, a dispatch that wants a writer stops at once instead of walking
 *     every parked reader to find none (64 tasks on 2 workers, 10% writers:
 *     readers stayed parked while counted writers spun or were woken, and
 *     each release walked ~40 of them).  A writer picked whose claim was lost
 *     is no longer counted; it is leaving and dispatches itself.  WOKEN is set if anyone was woken; the woken
 *     compete like running tasks and whoever of them takes the lock or parks
 *     again clears WOKEN.
 *   STARVING mode: grant in queue order as a strict FIFO lock: the first
 *     waiter if it can enter beside the holders, then the readers (and at
 *     most one upgradable reader) behind it up to the first writer.  The
 *     filter marks each granted waiter's record before the lot claims it; a
 *     waiter whose claim is lost (deadline or cancel at that instant) finds
 *     the mark under the same bucket lock and keeps the grant.  STARVING
 *     ends when the queue empties or a waiter is served within 1 ms.
 *
 * Progress: what holds is that no waiter is left parked with nobody to
 * wake it (below), and that STARVING, while it lasts, grants in queue
 * order.  No bound holds for one waiter's wait while others keep taking
 * the lock, for two reasons the code shows (the async mutex had both, and
 * models/mutex.pml's progress check found them there; models/rwlock.pml
 * checks this lock's normal mode for lost wake-ups, not progress):
 *   - STARVING is turned on only by a waiter that announces again after
 *     1 ms, and a parked waiter announces again only when a dispatch wakes
 *     it.  A release that sees WOKEN dispatches nobody, and tasks that
 *     spin while each other holds the lock own WOKEN in turn, so a waiter
 *     parked once can stay parked while they alternate.  (The cooperative
 *     budget breaks this only when they share a worker with other tasks.)
 *   - STARVING ends when a waiter is served within 1 ms of its first park:
 *     a waiter queued ahead of a starving one and served quickly ends the
 *     mode, the starving one is woken without a grant in normal mode and
 *     can lose to a running task again, parking at the tail.
 * The async mutex closes both with a 1 ms timer on every park that is not
 * starving yet and a count of starving waiters that ends the mode only
 * when the last of them is served (src/async/mutex.c, "Progress"); the
 * same two changes would apply here, with a model to show they suffice.
 * In practice a writer behind two tasks that hammer the write lock on one
 * worker, yielding inside the section, gets it after about 1 ms.
 *
 * Why no waiter is left parked with nobody to wake it (models/rwlock.pml
 * checks it for normal mode, deadlines included).  A waiter parks only
 * after validate, under the bucket lock, found that it cannot enter; then
 * one of these holds, and each ends in a dispatch that sees it (a dispatch
 * takes the same bucket lock):
 *   - a holder exists: its last release dispatches (WOKEN clear), or the
 *     woken waiter that kept WOKEN set takes the lock (and is then a holder)
 *     or parks again, clearing WOKEN, after its own validate;
 *   - a writer waits (WW) and nobody holds the lock, and no writer is
 *     parked (parked_writers, exact under the bucket lock validate holds):
 *     each waiting writer is spinning, or woken and on its way, and takes
 *     the lock (then it is a holder) or gives up and dispatches.  With a
 *     writer parked, validate does not park: the caller dispatches, which
 *     wakes a writer (normal mode wakes a writer first when WW > 0);
 *   - STARVING with nobody holding: STARVING is set only by a waiter that
 *     parks while the lock is held, and the last release in STARVING mode
 *     dispatches (grants) whatever WOKEN says.
 *
 * Upgrade: the upgradable holder waits for the other readers on address +
 * 1, having set UPG_PARKED (by CAS on the word, so with the reader count
 * it saw); the reader that brings the count down to 1 wakes it.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include "../runtime/internal.h"
#include "spin.h"
#include "deadline.h"
#include "observe.h"

#define PARKED ((uintptr_t)PZ__ARW_PARKED)
#define UPG_PARKED ((uintptr_t)PZ__ARW_UPG_PARKED)
#define UPGRADABLE ((uintptr_t)PZ__ARW_UPGRADABLE)
#define WRITER ((uintptr_t)PZ__ARW_WRITER)
#define WOKEN ((uintptr_t)PZ__ARW_WOKEN)
#define STARVING ((uintptr_t)PZ__ARW_STARVING)
#define SLOTS ((uintptr_t)PZ__ARW_SLOTS)
#define REVOKING ((uintptr_t)PZ__ARW_REVOKING)
#define SHARE_ONE ((uintptr_t)1 << PZ__ARW_SHARE_SHIFT)
#define SHARE_MASK ((uintptr_t)PZ__ARW_SHARE_MASK)
#define WW_SHIFT PZ__ARW_WW_SHIFT
#define WW_ONE ((uintptr_t)1 << WW_SHIFT)
#define WW_MASK ((uintptr_t)0xffff << WW_SHIFT)
#define WW(s) (((s) & WW_MASK) >> WW_SHIFT)
#define READER_SHIFT PZ__ARW_READER_SHIFT
#define READER ((uintptr_t)1 << READER_SHIFT)
#define READERS(s) ((s) >> READER_SHIFT)

#define TOKEN_NORMAL 0
#define TOKEN_GRANTED 1
/* A waiter trying this long turns on STARVING. */
#define STARVE_NS 1000000

enum kind { K_READ, K_WRITE, K_UPG };

/* What rw_validate decided, under the bucket lock. */
enum rw_verdict {
    RW_ENTERED,      /* it took the lock for the caller */
    RW_PARKED,       /* PARKED is set: the caller sleeps */
    RW_FREE_CLOSED,  /* free but closed to the caller: dispatch first */
    RW_SLOTS_BUSY,   /* read slots open or being revoked: revoke them, or spin */
};

struct rw_wait {
    pz_async_rwlock_t *l;
    int kind;
    bool counted; /* a writer counted in WW */
    enum rw_verdict result;
    bool revoke;  /* validate entered as upgradable reader and cleared
                   * SLOTS: the caller revokes the slots */
    bool granted; /* set by a STARVING dispatch under the bucket lock */
    bool in_count; /* a parked writer counted in parked_writers (under the
                    * bucket lock: set by validate, cleared by the dispatch
                    * that picks it or when it leaves the queue itself) */
    int64_t since; /* when this waiter first parked */
};

/* The word after entering as kind from s, or 0 if kind may not enter.
 * counted: the caller is a writer counted in WW (entering uncounts it). */
static uintptr_t enter(int kind, uintptr_t s, bool counted)
{
    switch (kind) {
    case K_READ:
        return (s & (WRITER | UPG_PARKED | STARVING | WW_MASK)) ? 0 : s + READER;
    case K_WRITE:
        if ((s & (WRITER | UPGRADABLE | STARVING | SLOTS | REVOKING)) || READERS(s))
            return 0;
        if (counted)
            return (s - WW_ONE) | WRITER;
        return (s & WW_MASK) ? 0 : s | WRITER;
    default:
        /* The upgradable reader closes the read slots (the caller revokes
         * them), so that its upgrade can count the readers in the word. */
        if (s & (WRITER | UPG_PARKED | UPGRADABLE | STARVING | WW_MASK))
            return 0;
        return ((s + READER + UPGRADABLE) & ~SLOTS) | ((s & SLOTS) ? REVOKING : 0);
    }
}

/* ---- read slots ----
 *
 * Readers on different workers that all add to the word move its cache
 * line between the cores at every lock and unlock: with 64 tasks reading
 * on 2 workers that costs about 110 ns an operation against 17 ns on one
 * worker.  So, once readers are seen sharing the lock, the word's SLOTS
 * bit lets a reader running on a worker hold the lock through one of its
 * worker's read slots instead (the runtime's object slots,
 * src/runtime/slots.c: a line per worker): enter by a CAS of a free slot
 * from 0 to the lock's address, leave by a CAS back to 0, both on a line
 * only that worker normally writes.
 *
 * The holders of the lock for reading are then the readers counted in the
 * word plus the slots, of any worker, that hold the lock's address.  Read
 * holds are interchangeable: a reader leaves by releasing a slot of its
 * worker holding the address if there is one, else by taking one off the
 * word's count if that counts a plain reader, else by releasing any
 * worker's slot holding the address.
 *
 * Revoking: a writer (or an entering upgradable reader) clears SLOTS and
 * then moves every slot holding the address into the word: count one
 * reader more, then CAS the slot to 0 (if the CAS fails, its reader left
 * meanwhile: count one less).  Entering by slot and revoking are a Dekker
 * pair in seq_cst: a reader CASes its slot and then loads the word, a
 * revoker clears SLOTS and then loads the slots, so either the reader sees
 * SLOTS cleared (it backs out by CASing its slot back to 0; if that CAS
 * fails, the revoker has moved it into the word and it holds the lock
 * counted there), or the revoker sees its slot and moves it.
 *
 * Invariants that make the word's count exact when it matters:
 *   - SLOTS is set only by a reader on a worker, beside another reader or
 *     while the sharing score is above 0, in a word without WRITER,
 *     UPGRADABLE, UPG_PARKED, PARKED, STARVING, REVOKING or waiting
 *     writers (WW);
 *   - a writer that finds SLOTS set clears it and sets REVOKING in the
 *     same CAS that counts it in WW, then revokes and clears REVOKING:
 *     while it is counted nobody sets SLOTS again, so no later slot can be
 *     missed;
 *   - a writer enters only from a word without SLOTS or REVOKING: not even
 *     another counted writer may enter while a scan is moving holds into
 *     the word (the storm test caught that one: WRITER with a reader
 *     counted beside it);
 *   - the upgradable reader clears SLOTS (setting REVOKING) on entry and
 *     revokes; nobody sets SLOTS while it holds, and its upgrade waits for
 *     REVOKING to clear, so the upgrade sees every reader in the word;
 *   - nobody parks in a word with SLOTS (a writer revokes first), and
 *     SLOTS is not set while anyone is parked: a release through a slot
 *     never has a waiter to dispatch.
 */

/* Moves every read hold of l kept in a worker's slot into the word, then
 * clears REVOKING.  The caller has cleared SLOTS and set REVOKING in one
 * CAS of a word that keeps SLOTS clear (see above); while REVOKING is set
 * no writer enters and no upgrade completes, since the word may not yet
 * count every reader. */
struct revoke {
    pz_async_rwlock_t *l;
    bool moved;
};

/* One worker's line: moves each of its slots holding r->l into the word. */
static bool revoke_line(_Atomic uintptr_t *slots, void *ctx)
{
    struct revoke *r = ctx;
    for (int j = 0; j < PZ__WORKER_SLOTS; j++) {
        if (atomic_load_explicit(&slots[j], memory_order_seq_cst) != (uintptr_t)r->l)
            continue;
        /* Count first: the hold is always somewhere the leaving reader
         * looks (the slot, or the word). */
        atomic_fetch_add_explicit(&r->l->state, READER, memory_order_relaxed);
        uintptr_t v = (uintptr_t)r->l;
        if (atomic_compare_exchange_strong_explicit(&slots[j], &v, 0, memory_order_acq_rel, memory_order_acquire))
            r->moved = true;
        else
            atomic_fetch_sub_explicit(&r->l->state, READER, memory_order_relaxed);
    }
    return false; /* every line */
}

static void revoke_slots(pz_async_rwlock_t *l)
{
    /* The caller's CAS that cleared SLOTS is our half of the Dekker pair;
     * an upgradable reader's entry CAS is only acquire, so fence here. */
    atomic_thread_fence(memory_order_seq_cst);
    struct revoke r = {.l = l, .moved = false};
    pz__slots_each(revoke_line, &r);
    bool moved = r.moved;
    /* Done, and the sharing score: full again if readers were in the
     * slots, one less if the slots were open for nothing.  Release: a
     * writer that enters after this sees the moved counts. */
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = s & ~REVOKING;
        if (moved)
            n |= SHARE_MASK;
        else if (n & SHARE_MASK)
            n -= SHARE_ONE;
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_release, memory_order_relaxed))
            break;
    }
}

/* A writer that finds SLOTS set counts itself as waiting (so nobody opens
 * the slots again meanwhile: SLOTS implies no waiting writer, so it was
 * not counted yet), closes them, and moves their holds into the word.
 * False if the word had no SLOTS by then. */
static bool close_slots(pz_async_rwlock_t *l)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    while (s & SLOTS) {
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, ((s + WW_ONE) & ~SLOTS) | REVOKING,
                                                  memory_order_seq_cst, memory_order_relaxed)) {
            revoke_slots(l);
            return true;
        }
    }
    return false;
}

/* Enters for reading through a slot of the worker's line `slots`, with
 * SLOTS seen set.  False if the line's slots are all taken or SLOTS was cleared meanwhile (the
 * caller then enters through the word). */
static bool slot_enter(_Atomic uintptr_t *slots, pz_async_rwlock_t *l)
{
    for (int i = 0; i < PZ__WORKER_SLOTS; i++) {
        _Atomic uintptr_t *slot = &slots[i];
        uintptr_t v = 0;
        if (atomic_load_explicit(slot, memory_order_relaxed) != 0 ||
            !atomic_compare_exchange_strong_explicit(slot, &v, (uintptr_t)l, memory_order_seq_cst,
                                                     memory_order_relaxed))
            continue;
        /* seq_cst, and acquire: the sections of the writers before. */
        if (atomic_load_explicit(&l->state, memory_order_seq_cst) & SLOTS)
            return true;
        /* Revoked meanwhile: back out, unless the revoker has already
         * moved this hold into the word (then we hold the lock). */
        v = (uintptr_t)l;
        return !atomic_compare_exchange_strong_explicit(slot, &v, 0, memory_order_acquire, memory_order_acquire);
    }
    return false;
}

/* Releases one slot of the line `slots` holding l, if there is one. */
static bool slot_leave(_Atomic uintptr_t *slots, pz_async_rwlock_t *l)
{
    for (int i = 0; i < PZ__WORKER_SLOTS; i++) {
        uintptr_t v = (uintptr_t)l;
        /* Acquire: a slot found emptied by a revoker (which counted the
         * hold in the word first) makes that count visible to the look at
         * the word that follows. */
        if (atomic_load_explicit(&slots[i], memory_order_acquire) == v &&
            atomic_compare_exchange_strong_explicit(&slots[i], &v, 0, memory_order_release,
                                                    memory_order_acquire))
            return true;
    }
    return false;
}

static bool slot_leave_line(_Atomic uintptr_t *slots, void *l)
{
    return slot_leave(slots, l);
}

static bool slot_leave_anywhere(pz_async_rwlock_t *l)
{
    return pz__slots_each(slot_leave_line, l);
}

static bool try_read(pz_async_rwlock_t *l)
{
    _Atomic uintptr_t *w = pz__slots_mine();
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        if (s & (WRITER | UPG_PARKED | STARVING | WW_MASK))
            return false;
        if (w && !(s & (SLOTS | UPGRADABLE | PARKED)) && (READERS(s) || (s & SHARE_MASK))) {
            /* Readers share the lock now, or did lately: open the slots.
             * Sharing seen now renews the score. */
            uintptr_t n = s | SLOTS | (READERS(s) ? SHARE_MASK : 0);
            if (!atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_relaxed, memory_order_relaxed))
                continue;
            s = n;
        }
        if (w && (s & SLOTS) && slot_enter(w, l))
            return true;
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, s + READER, memory_order_acquire,
                                                  memory_order_relaxed))
            return true;
    }
}

static bool try_enter(pz_async_rwlock_t *l, int kind)
{
    if (kind == K_READ)
        return try_read(l);
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = enter(kind, s, false);
        if (!n)
            return false;
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_acquire, memory_order_relaxed)) {
            if (s & ~n & SLOTS)
                revoke_slots(l);
            return true;
        }
    }
}

/* ---- dispatch ---- */

struct dispatch {
    pz_async_rwlock_t *l;
    bool started;      /* the mode below is decided at the first waiter */
    bool grant;        /* STARVING mode: grant in queue order */
    bool writers_wait; /* normal mode: WW > 0, so wake the first writer */
    bool granted_any, granted_writer, served_fast, stop, woke_reader;
};

/* A STARVING grant: enters w into the word by CAS, checking the rules of a
 * strict queue against the word as it is (holders may leave meanwhile, and
 * the upgradable holder may upgrade, so each grant is one CAS, never a sum
 * decided earlier).  Returns false if w must wait. */
static bool grant_one(struct dispatch *d, struct rw_wait *w)
{
    uintptr_t s = atomic_load_explicit(&d->l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n;
        switch (w->kind) {
        case K_WRITE:
            if (d->granted_any || (s & (WRITER | UPGRADABLE | UPG_PARKED | SLOTS | REVOKING)) || READERS(s))
                return false;
            n = (s - (w->counted ? WW_ONE : 0)) | WRITER;
            break;
        case K_READ:
            if (s & (WRITER | UPG_PARKED))
                return false;
            n = s + READER;
            break;
        default:
            if (s & (WRITER | UPG_PARKED | UPGRADABLE))
                return false;
            n = s + READER + UPGRADABLE;
            break;
        }
        /* acq_rel: the grantee's section must come after the sections of
         * the holders that left before (the dispatcher may be a third
         * task), and the lot's wake carries this to the grantee. */
        if (atomic_compare_exchange_weak_explicit(&d->l->state, &s, n, memory_order_acq_rel, memory_order_relaxed))
            return true;
    }
}

/* Under the bucket lock: w is picked (woken or granted) or leaves the
 * queue, so it no longer counts as a parked writer.  A pick whose claim is
 * lost uncounts it too: it is leaving on its own, and its leaving
 * dispatches (writer_gives_up). */
static void uncount_parked(struct rw_wait *w)
{
    if (w->in_count) {
        w->in_count = false;
        PZ__ASSERT(atomic_load_explicit(&w->l->parked_writers, memory_order_relaxed) > 0);
        atomic_fetch_sub_explicit(&w->l->parked_writers, 1, memory_order_relaxed);
    }
}

static pz_filter_op_t rw_filter(uintptr_t park_token, void *ctx)
{
    struct dispatch *d = ctx;
    struct rw_wait *w = (struct rw_wait *)park_token;
    /* Granted by an earlier dispatch whose claim it lost: it is leaving
     * holding the lock and must not be counted twice. */
    if (w->granted)
        return PZ_FILTER_SKIP;
    if (d->stop)
        return PZ_FILTER_STOP;
    if (!d->started) {
        /* Under the bucket lock: STARVING is cleared only here (and by the
         * last waiter leaving), never while a dispatch walks the queue. */
        uintptr_t s = atomic_load_explicit(&d->l->state, memory_order_relaxed);
        d->started = true;
        d->grant = (s & STARVING) != 0;
        d->writers_wait = WW(s) > 0;
    }
    if (!d->grant) {
        if (d->writers_wait) {
            /* Readers cannot enter while a writer waits: wake a writer.
             * None parked (the waiting ones spin, or were woken and are
             * on their way): walking the parked readers would find none. */
            if (atomic_load_explicit(&d->l->parked_writers, memory_order_relaxed) == 0)
                return PZ_FILTER_STOP;
            if (w->kind != K_WRITE)
                return PZ_FILTER_SKIP;
            d->stop = true;
            uncount_parked(w);
            return PZ_FILTER_UNPARK;
        }
        if (w->kind == K_WRITE) {
            if (d->woke_reader)
                return PZ_FILTER_STOP;
            d->stop = true;
            uncount_parked(w);
            return PZ_FILTER_UNPARK;
        }
        d->woke_reader = true;
        return PZ_FILTER_UNPARK;
    }
    if (d->granted_writer || !grant_one(d, w)) {
        d->stop = true; /* in order: nobody passes a waiter that must wait */
        return PZ_FILTER_STOP;
    }
    if (!d->granted_any)
        d->served_fast = pz__clock_now() - w->since < STARVE_NS;
    w->granted = true;
    uncount_parked(w);
    d->granted_any = true;
    if (w->kind == K_WRITE) {
        d->granted_writer = true;
        d->stop = true;
    }
    return PZ_FILTER_UNPARK;
}

static uintptr_t rw_dispatch_done(pz_unpark_result_t r, void *ctx)
{
    struct dispatch *d = ctx;
    uintptr_t s = atomic_load_explicit(&d->l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = s;
        if (d->grant) {
            /* The grants are in the word already.  Strict order ends when
             * the queue is empty or its head was served within 1 ms. */
            if (!r.have_more || d->served_fast)
                n &= ~STARVING;
        } else if (r.unparked) {
            n |= WOKEN;
        }
        /* Nobody left in the queue: no strict order to keep. */
        n = r.have_more ? (n | PARKED) : (n & ~(PARKED | STARVING));
        if (atomic_compare_exchange_weak_explicit(&d->l->state, &s, n, memory_order_acq_rel, memory_order_relaxed))
            return d->grant ? TOKEN_GRANTED : TOKEN_NORMAL;
    }
}

/* Returns how many waiters it woke or granted. */
static int dispatch(pz_async_rwlock_t *l)
{
    struct dispatch d = {.l = l};
    return pz_unpark_filter(l, rw_filter, rw_dispatch_done, &d).unparked;
}

/* After a release that left s: dispatch if someone parked may now enter and
 * nobody else is on the way (in STARVING mode, always). */
static void released(pz_async_rwlock_t *l, uintptr_t s)
{
    if ((s & PARKED) && (!(s & WOKEN) || (s & STARVING)))
        dispatch(l);
}

/* ---- waiting ---- */

/* A writer (or a reader: counted false) leaves without the lock.  Readers
 * that a counted writer held back may enter now, and it may have been the
 * waiter the others waited behind: dispatch if anyone is parked. */
static void writer_gives_up(pz_async_rwlock_t *l, bool counted)
{
    uintptr_t after = counted ? atomic_fetch_sub_explicit(&l->state, WW_ONE, memory_order_relaxed) - WW_ONE
                              : atomic_load_explicit(&l->state, memory_order_relaxed);
    if (after & PARKED)
        dispatch(l);
}

/* Under the bucket lock.  Nobody holding the lock and still no entry means
 * a waiting writer (WW) or STARVING keeps us out with nobody to release
 * the lock and dispatch: if the waiting writer is parked, only a dispatch
 * wakes it, and the release that would have done it may have seen a WOKEN
 * that we, a woken waiter, have just given up.  So we do not park; the
 * caller dispatches (it cannot here: dispatch takes this bucket lock). */
static bool rw_validate(void *ctx)
{
    struct rw_wait *w = ctx;
    uintptr_t s = atomic_load_explicit(&w->l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = enter(w->kind, s, w->counted);
        if (n) {
            if (atomic_compare_exchange_weak_explicit(&w->l->state, &s, n, memory_order_acquire,
                                                      memory_order_relaxed)) {
                w->result = RW_ENTERED;
                w->revoke = (s & ~n & SLOTS) != 0;
                return false;
            }
            continue;
        }
        if (s & (SLOTS | REVOKING)) {
            /* Readers hold slots (only a writer or an upgradable reader
             * gets here then), or their holds are being moved into the
             * word (anyone may: a reader kept out by the revoking writer
             * too): nobody parks in such a word, since nothing would wake
             * it when the scan ends; the caller revokes or spins. */
            w->result = RW_SLOTS_BUSY;
            return false;
        }
        if (!(s & (WRITER | UPGRADABLE)) && READERS(s) == 0 &&
            ((s & STARVING) || atomic_load_explicit(&w->l->parked_writers, memory_order_relaxed))) {
            w->result = RW_FREE_CLOSED;
            return false;
        }
        /* Free and kept out only by waiting writers none of which is
         * parked (parked_writers is exact under this bucket lock): each is
         * spinning, or woken and on its way, and will take the lock, whose
         * release dispatches, or give up, which dispatches too; so we may
         * park (under load a worker whose counted writer's thread was
         * preempted otherwise went round dispatch and yield for as long). */
        if ((s & PARKED) ||
            atomic_compare_exchange_weak_explicit(&w->l->state, &s, s | PARKED, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            w->result = RW_PARKED;
            if (w->kind == K_WRITE) {
                w->in_count = true;
                atomic_fetch_add_explicit(&w->l->parked_writers, 1, memory_order_relaxed);
            }
            return true;
        }
    }
}

static void rw_timed_out(void *ctx, bool was_last)
{
    struct rw_wait *w = ctx;
    uncount_parked(w);
    if (was_last)
        atomic_fetch_and_explicit(&w->l->state, ~(PARKED | STARVING), memory_order_relaxed);
}

/* Spinning (src/async/spin.h) while the holder that keeps us out may be
 * running; while readers hold (their number says nothing of whether they
 * run) only the first SHORT_SPIN_ROUNDS (about 1 us). */
#define SHORT_SPIN_ROUNDS 6

/* A waiter kept out by a writer (or a revocation) backs off in the longest
 * rounds from its first round on (PZ__ASYNC_SPIN_MAX_SHIFT: 1024
 * cpu_relax, about 14 us on the Xeon of bench/RESULTS.md), each one
 * spending half of the spin phase's rounds, so the phase lasts about as
 * long as before (2 rounds of 1024 against 2 + 4 + ... + 1024).  Why:
 * with tasks on both workers that keep taking the lock, short rounds had
 * the waiting worker look at the word every few tens of nanoseconds and
 * pounce as soon as the writer left; then both workers ran the lock at
 * once, and every read and unlock moved the word's line (or a slot line)
 * between the cores.  Waiting out a whole long round leaves the other
 * worker to run its tasks' operations uncontended meanwhile, which is
 * what one worker alone does at 25 ns/op.  64 tasks on 2 workers, 10%
 * writers (`async_rwlock tasks=64 workers=2 write_pct=10`, alternating
 * runs under SCHED_FIFO so that both workers ran): 58 ns/op before, 24
 * after; Go's sync.RWMutex 27.5 in the same runs.  A waiter kept out by
 * readers keeps the short growing rounds: a reader's section may be long,
 * and SHORT_SPIN_ROUNDS bounds that spin to about 1 us. */
#define LONG_WAIT_MASK (WRITER | REVOKING)

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
    /* 0: the writer has entered and not yet written its id, or has just
     * left: assume it runs. */
    return !id || pz__task_id_running(id);
}

static bool worth_spinning(pz_async_rwlock_t *l, uintptr_t s, int spins)
{
    if (s & REVOKING)
        return true; /* a scan of a few lines, never suspended */
    if (s & STARVING)
        return false;
    if (s & WRITER)
        return writer_may_run(l);
    if (READERS(s) || (s & UPGRADABLE))
        return spins <= SHORT_SPIN_ROUNDS;
    /* Free, but a waiting writer keeps readers out.  If it spins it will
     * be in and out soon.  If it is parked, or woken and not yet running
     * (WOKEN: a dispatch or a spinner is on its way), it may sit in this
     * worker's queue, behind us, and spinning would only keep it waiting
     * (64 tasks on 2 workers, 10% writers: a woken writer waited out whole
     * spin phases of the task that had woken it): go on to validate,
     * which dispatches and yields. */
    if ((s & WOKEN) || atomic_load_explicit(&l->parked_writers, memory_order_relaxed))
        return false;
    return spins <= SHORT_SPIN_ROUNDS;
}

static int acquire_slow(pz_async_rwlock_t *l, int kind, int64_t deadline)
{
    deadline = pz__async_deadline(deadline);
    const int spin_rounds = pz__async_spin_rounds(PZ__ASYNC_SPIN_ROUNDS);
    bool counted = false, woken = false;
    int spins = 0;
    int64_t first_park = 0;
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        uintptr_t n = enter(kind, s, counted);
        if (n && kind == K_READ && !woken) {
            /* A spinning reader enters as on the fast path: through a read
             * slot if they are open. */
            if (try_read(l))
                return 0;
            s = atomic_load_explicit(&l->state, memory_order_relaxed);
            continue;
        }
        if (n) {
            if (woken)
                n &= ~WOKEN;
            if (atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_acquire,
                                                      memory_order_relaxed)) {
                if (s & ~n & SLOTS)
                    revoke_slots(l);
                return 0;
            }
            continue;
        }
        if (kind == K_WRITE && (s & SLOTS)) {
            if (close_slots(l))
                counted = true;
            s = atomic_load_explicit(&l->state, memory_order_relaxed);
            continue;
        }
        if (kind == K_WRITE && !counted && (READERS(s) || (s & UPGRADABLE))) {
            /* Readers keep us out: announce, so that new readers stay out
             * from now on.  A writer kept out by another writer does not
             * announce (readers cannot enter meanwhile anyway), which spares
             * the word a write per contended write. */
            if ((s & WW_MASK) == WW_MASK) {
                /* 65535 writers already wait: wait uncounted (readers may
                 * then pass this one; the counted ones hold them back). */
            } else if (atomic_compare_exchange_weak_explicit(&l->state, &s, s + WW_ONE, memory_order_relaxed,
                                                             memory_order_relaxed)) {
                counted = true;
                s += WW_ONE;
                continue;
            } else {
                continue;
            }
        }
        if (spins < spin_rounds && worth_spinning(l, s, spins + 1)) {
            if (!woken && (s & PARKED) && !(s & WOKEN)) {
                /* While we spin, releases wake nobody: we will take it. */
                if (!atomic_compare_exchange_weak_explicit(&l->state, &s, s | WOKEN, memory_order_relaxed,
                                                           memory_order_relaxed))
                    continue;
                woken = true;
            }
            if (s & LONG_WAIT_MASK) {
                pz__async_backoff(PZ__ASYNC_SPIN_MAX_SHIFT);
                spins += spin_rounds / 2 > 1 ? spin_rounds / 2 : 1;
            } else {
                pz__async_backoff(++spins);
            }
            s = atomic_load_explicit(&l->state, memory_order_relaxed);
            continue;
        }
        /* Park, giving up WOKEN.  A waiter that has been trying for
         * STARVE_NS turns on STARVING, but only while somebody holds the
         * lock (whose release then dispatches in queue order). */
        uintptr_t want = (s | PARKED) & ~(woken ? WOKEN : 0);
        if (first_park && ((s & (WRITER | UPGRADABLE)) || READERS(s)) &&
            pz__clock_now() - first_park >= STARVE_NS)
            want |= STARVING;
        if (want != s &&
            !atomic_compare_exchange_weak_explicit(&l->state, &s, want, memory_order_relaxed, memory_order_relaxed))
            continue;
        /* If a release saw our WOKEN and woke nobody, validate below finds
         * the lock free and enters instead of parking. */
        woken = false;
        bool again = first_park != 0; /* parked before in this call */
        if (!first_park)
            first_park = pz__clock_now();
        struct rw_wait w = {.l = l, .kind = kind, .counted = counted, .result = RW_PARKED, .since = first_park};
        uintptr_t token = TOKEN_NORMAL;
        pz__wait_note_again(PZ__WAIT_ASYNC_RWLOCK, l, again);
        const pz_park_opts_t opts = {.validate = rw_validate, .timed_out = rw_timed_out, .ctx = &w,
                                     .park_token = (uintptr_t)&w};
        int r = pz_park(l, deadline, &opts, &token);
        /* Picked by a dispatch, or left the queue through rw_timed_out. */
        PZ__ASSERT(!w.in_count);
        if (r == -EAGAIN && w.result == RW_ENTERED) {
            /* validate entered (and uncounted us) */
            if (w.revoke)
                revoke_slots(l);
            return 0;
        }
        if (r == -EAGAIN && w.result == RW_SLOTS_BUSY) {
            pz__arch_cpu_relax();
            s = atomic_load_explicit(&l->state, memory_order_relaxed);
            continue; /* revoke the slots, above, or wait for the scan */
        }
        if (r == -EAGAIN && w.result == RW_FREE_CLOSED) {
            /* Free but closed to us: wake whoever may enter (a parked
             * writer, or the head in STARVING mode).  Whether we woke it
             * (it runs next on this worker) or it was on its way already
             * (perhaps queued behind us here), let it run. */
            dispatch(l);
            pz_yield();
            if (deadline != PZ_FOREVER && pz_now() >= deadline) {
                r = -ETIMEDOUT;
            } else {
                spins = spin_rounds; /* no more spinning: park next */
                s = atomic_load_explicit(&l->state, memory_order_relaxed);
                continue;
            }
        }
        if (w.granted || (r == 0 && token == TOKEN_GRANTED)) {
            /* Granted by a STARVING dispatch (if our claim was lost at that
             * instant we keep the grant: the word already counts us). */
            return 0;
        }
        if (r == 0) {
            woken = true; /* woken without the lock: dispatch set WOKEN */
            spins = 0;
        } else if (r != -EAGAIN || (deadline != PZ_FOREVER && pz_now() >= deadline)) {
            /* Gave up.  Readers that a counted writer held back may enter
             * now, and we may have been the waiter the others waited
             * behind: dispatch if anyone is parked. */
            writer_gives_up(l, counted);
            return r == -EAGAIN ? -ETIMEDOUT : r;
        }
        s = atomic_load_explicit(&l->state, memory_order_relaxed);
    }
}

static int acquire_plain(pz_async_rwlock_t *l, int kind, int64_t deadline)
{
    if (!l)
        return -EINVAL;
    int r = 0;
    if (!try_enter(l, kind)) {
        /* The cooperative budget: a task that keeps winning here without
         * suspending lets the tasks queued behind it run now and then. */
        pz__coop_tick();
        r = acquire_slow(l, kind, deadline);
    }
    if (r == 0 && kind == K_WRITE)
        note_writer(l);
    return r;
}

/* The advisor (src/async/observe.h): while it is on, acquisitions go
 * through acquire_observed, which times the wait only when the first
 * attempt fails; off, acquire() is one test of the switch more.  site is
 * the public call's return address, taken in the public call itself. */
static unsigned observe_flags(int kind)
{
    return kind == K_WRITE ? 0 : PZ__LOCK_SHARED;
}

static __attribute__((noinline)) int acquire_observed(pz_async_rwlock_t *l, int kind, int64_t deadline,
                                                      const void *site)
{
    if (l && try_enter(l, kind)) {
        if (kind == K_WRITE)
            note_writer(l);
        pz__async_observe_acquired(l, PZ__LOCK_ASYNC_RWLOCK, site, -1, observe_flags(kind));
        return 0;
    }
    int64_t t0 = pz_now();
    int r = acquire_plain(l, kind, deadline);
    int64_t waited = pz_now() - t0;
    if (r == 0)
        pz__async_observe_acquired(l, PZ__LOCK_ASYNC_RWLOCK, site, waited, observe_flags(kind));
    else if (l)
        pz__async_observe_gave_up(l, PZ__LOCK_ASYNC_RWLOCK, site, waited, observe_flags(kind), r);
    return r;
}

#define acquire(l, kind, deadline)                                                                          \
    (PZ__ASYNC_OBSERVED() ? acquire_observed(l, kind, deadline, __builtin_return_address(0))                \
                          : acquire_plain(l, kind, deadline))

static inline bool observe_try(pz_async_rwlock_t *l, bool taken, int kind, const void *site)
{
    if (taken && PZ__ASYNC_OBSERVED())
        pz__async_observe_acquired(l, PZ__LOCK_ASYNC_RWLOCK, site, -1, observe_flags(kind));
    return taken;
}

static inline void observe_release(pz_async_rwlock_t *l, int kind)
{
    if (PZ__ASYNC_OBSERVED())
        pz__async_observe_released(l, PZ__LOCK_ASYNC_RWLOCK, observe_flags(kind));
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
    if (!l)
        return false;
    return observe_try(l, try_enter(l, K_READ), K_READ, __builtin_return_address(0));
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
    if (!l)
        return false;
    if (!try_enter(l, K_WRITE)) {
        /* Read slots open: the lock may be free with nobody in the slots.
         * Revoke them as a counted writer and try once more. */
        if (!close_slots(l))
            return false;
        uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
        for (;;) {
            uintptr_t n = enter(K_WRITE, s, true);
            if (!n) {
                writer_gives_up(l, true);
                return false;
            }
            if (atomic_compare_exchange_weak_explicit(&l->state, &s, n, memory_order_acquire, memory_order_relaxed))
                break;
        }
    }
    note_writer(l);
    return observe_try(l, true, K_WRITE, __builtin_return_address(0));
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
    if (!l)
        return false;
    return observe_try(l, try_enter(l, K_UPG), K_UPG, __builtin_return_address(0));
}

static int misuse(pz_async_rwlock_t *l, const char *call, const char *mode)
{
    pz__report("%s: async rwlock %p is not held %s; ignored", call, (void *)l, mode);
    return -EPERM;
}

/* How many times read_unlock looks for a hold before it calls the unlock a
 * misuse (a few milliseconds of pauses in all). */
#define READ_UNLOCK_PASSES 64

/* Takes one plain reader off the word's count, if it counts one. */
static bool leave_counted(pz_async_rwlock_t *l)
{
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        if (READERS(s) <= ((s & UPGRADABLE) ? 1u : 0u))
            return false;
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, s - READER, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    s -= READER;
    if ((s & UPG_PARKED) && READERS(s) == 1)
        pz_unpark_one((const char *)l + 1, NULL, NULL);
    else if (READERS(s) == 0)
        released(l, s);
    return true;
}

struct count_slots {
    pz_async_rwlock_t *l;
    uint64_t n;
};

static bool count_line(_Atomic uintptr_t *slots, void *ctx)
{
    struct count_slots *c = ctx;
    for (int j = 0; j < PZ__WORKER_SLOTS; j++)
        c->n += atomic_load_explicit(&slots[j], memory_order_relaxed) == (uintptr_t)c->l;
    return false;
}

uint64_t pz_async_rwlock_readers(pz_async_rwlock_t *l)
{
    if (!l)
        return 0;
    struct count_slots c = {.l = l, .n = READERS(atomic_load_explicit(&l->state, memory_order_relaxed))};
    pz__slots_each(count_line, &c);
    return c.n;
}

int pz_async_rwlock_read_unlock(pz_async_rwlock_t *l)
{
    if (!l)
        return -EINVAL;
    observe_release(l, K_READ);
    /* Read holds are interchangeable (see "read slots"): this worker's
     * slots, then the word, then any worker's slots.  A hold moves only
     * from a slot into the word, but holds are also swapped (another
     * reader may leave by ours and leave us its own), so while revocations
     * run, a look can miss the hold it is after.  Each miss needs a
     * revocation inside the look; after many misses in a row, with pauses
     * between, nobody holds it: misuse. */
    _Atomic uintptr_t *w = pz__slots_mine();
    if (w && slot_leave(w, l)) {
        pz__coop_release_step();
        return 0;
    }
    for (int pass = 0; pass < READ_UNLOCK_PASSES; pass++) {
        if (leave_counted(l) || slot_leave_anywhere(l)) {
            pz__coop_release_step();
            return 0;
        }
        for (int i = 0; i < (1 << (pass < 10 ? pass : 10)); i++)
            pz__arch_cpu_relax();
    }
    return misuse(l, "pz_async_rwlock_read_unlock", "for reading");
}

/* Replaces the holder's mode: clears `drop` (which must be set) and adds
 * `add`; dispatches if anyone is queued. */
static int change_mode(pz_async_rwlock_t *l, uintptr_t need, uintptr_t sub, uintptr_t add, const char *call,
                       const char *mode)
{
    if (!l)
        return -EINVAL;
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        if (!(s & need))
            return misuse(l, call, mode);
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, s - sub + add, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    released(l, s - sub + add);
    pz__coop_release_step();
    return 0;
}

/* Whether the caller may be the writer, as far as the writer word tells:
 * it names the writing task (UINT64_MAX: a plain thread; 0: a writer
 * between entering and writing its id, or none).  A caller that is
 * certainly not the writer (another task, or a thread while a task
 * writes, or a task while a thread writes) is refused; threads are not
 * told apart from each other, nor is the moment after a writer entered.
 * The writer itself always passes: it wrote its id before it returned
 * from the lock. */
static bool may_be_writer(pz_async_rwlock_t *l)
{
    uint64_t id = atomic_load_explicit(&l->writer, memory_order_relaxed);
    if (!id)
        return true;
    pz_task_t *t = pz__current_task();
    return id == (t ? t->id : UINT64_MAX);
}

/* Gives up the write lock (into `add`), after the writer check. */
static int writer_leaves(pz_async_rwlock_t *l, uintptr_t add, const char *call)
{
    if (!l)
        return -EINVAL;
    if ((atomic_load_explicit(&l->state, memory_order_relaxed) & WRITER) && !may_be_writer(l)) {
        pz__report("%s: async rwlock %p is held for writing by another %s; ignored", call, (void *)l,
                   atomic_load_explicit(&l->writer, memory_order_relaxed) == UINT64_MAX ? "thread" : "task");
        return -EPERM;
    }
    atomic_store_explicit(&l->writer, 0, memory_order_relaxed);
    return change_mode(l, WRITER, WRITER, add, call, "for writing");
}

int pz_async_rwlock_write_unlock(pz_async_rwlock_t *l)
{
    observe_release(l, K_WRITE);
    return writer_leaves(l, 0, "pz_async_rwlock_write_unlock");
}

int pz_async_rwlock_upgradable_unlock(pz_async_rwlock_t *l)
{
    observe_release(l, K_UPG);
    return change_mode(l, UPGRADABLE, UPGRADABLE + READER, 0, "pz_async_rwlock_upgradable_unlock",
                       "as upgradable reader");
}

int pz_async_rwlock_downgrade(pz_async_rwlock_t *l)
{
    return writer_leaves(l, READER, "pz_async_rwlock_downgrade");
}

int pz_async_rwlock_downgrade_to_upgradable(pz_async_rwlock_t *l)
{
    return writer_leaves(l, READER + UPGRADABLE, "pz_async_rwlock_downgrade_to_upgradable");
}

int pz_async_rwlock_upgradable_downgrade(pz_async_rwlock_t *l)
{
    return change_mode(l, UPGRADABLE, UPGRADABLE, 0, "pz_async_rwlock_upgradable_downgrade",
                       "as upgradable reader");
}

/* The upgradable holder is the only reader left: become the writer. */
static bool upgrade_now(pz_async_rwlock_t *l, uintptr_t *s)
{
    while (READERS(*s) == 1 && !(*s & REVOKING)) {
        uintptr_t n = ((*s - READER - UPGRADABLE) & ~UPG_PARKED) | WRITER;
        if (atomic_compare_exchange_weak_explicit(&l->state, s, n, memory_order_acquire, memory_order_relaxed))
            return true;
    }
    return false;
}

bool pz_async_rwlock_try_upgrade(pz_async_rwlock_t *l)
{
    if (!l)
        return false;
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
    if (!l)
        return -EINVAL;
    deadline = pz__async_deadline(deadline);
    uintptr_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    if (!(s & UPGRADABLE))
        return misuse(l, "pz_async_rwlock_upgrade", "as upgradable reader");
    if (upgrade_now(l, &s)) {
        note_writer(l);
        return 0;
    }
    for (;;) {
        struct upg_wait w = {l, false};
        pz__wait_note(PZ__WAIT_ASYNC_RWLOCK, l);
        const pz_park_opts_t opts = {.validate = upg_validate, .timed_out = upg_timed_out, .ctx = &w};
        int r = pz_park((const char *)l + 1, deadline, &opts, NULL);
        if (w.done) {
            note_writer(l);
            return 0;
        }
        if (r == 0 || r == -EAGAIN)
            continue; /* the last other reader left: validate converts */
        /* Gave up: readers held back by UPG_PARKED may enter again. */
        released(l, atomic_load_explicit(&l->state, memory_order_relaxed));
        return r;
    }
}

int pz_async_rwlock_upgrade(pz_async_rwlock_t *l)
{
    return pz_async_rwlock_upgrade_until(l, PZ_FOREVER);
}
