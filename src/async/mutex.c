/*
 * pz_async_mutex slow paths.  The two words are described in
 * include/plaza/async.h.
 *
 * Lock: a task that finds the mutex held spins a few rounds (with back-off)
 * when the holder may be running on another worker, even if waiters are
 * parked: a data-sized section is over within nanoseconds and suspending
 * costs far more.  While it spins with waiters parked it owns WOKEN, so the
 * unlock it is waiting for releases the word without waking anybody (a
 * wake-up that would only find the lock taken again and re-park is the
 * expensive part of a contended async lock).  Then it sets PARKED, drops
 * WOKEN, and parks in the lot, which suspends the task (or blocks a plain
 * thread).  The lot's validate callback checks under the bucket lock that
 * the mutex is still locked and PARKED still set.
 *
 * Why no unlock can be missed.  There are two kinds of release:
 *   - the plain store (the inline fast path, only while the waiter word
 *     was 0, that is before anyone ever found the mutex held, and only if
 *     the process has asymmetric fences): store 0, compiler barrier, load
 *     the waiter word, wake one if PARKED.  A waiter that finds FENCED
 *     clear sets PARKED (and CONTENDED, if the lock's slow path has not
 *     set it already) and runs the heavy fence before validate, so
 *     validate sees the store or the unlock's load sees PARKED.  Then it
 *     sets FENCED.  A waiter that finds FENCED skips the fence: the
 *     fence that set FENCED came after CONTENDED was set, so every unlock
 *     whose store it did not make visible ran its load after that fence
 *     and saw the waiter word nonzero (and woke someone if PARKED: this
 *     path ignores WOKEN, and goes through the bucket lock whenever the
 *     second load finds the word nonzero: a waiter may have come, fenced,
 *     and timed out, clearing PARKED, before another skipped the fence);
 *     every later unlock sees it nonzero at its first load and takes the
 *     path below.  If a fence ever fails (the kernel refuses membarrier
 *     after registering), pz__async_mutex_fences_failed turns the plain
 *     store off for good; an unlock that read the flag on just before may
 *     still release by plain store later, so from then on a waiter on a
 *     mutex without FENCED parks for at most 1 ms at a time and looks
 *     again (FENCED set still means a fence covered every plain store).
 *   - read-modify-write (every other release, and all of them without
 *     asymmetric fences): a seq_cst exchange of the lock word, then a
 *     seq_cst load of the waiter word, against the waiter's seq_cst CAS of
 *     the waiter word and seq_cst load of the lock word: an ordinary Dekker
 *     pair, so validate sees the release or the unlock sees the waiter.  An
 *     unlock that sees PARKED|WOKEN wakes nobody: the WOKEN owner takes the
 *     lock, or parks again after a CAS of the waiter word that comes after
 *     that load, so its validate sees the release.
 *
 * Unlock with PARKED set, and WOKEN clear or the head long-waiting (see
 * Fairness): the lot walks its queue and serve_filter chooses, under the
 * bucket lock, by the age of the first waiter (its park token is its
 * struct park_ctx, on its stack, which says since when it waits).  One
 * that has waited FAIR_NS is handed the lock: LOCKED stays set and the
 * waiter gets TOKEN_HANDOFF, returns owning the lock and writes its id
 * into the lock word (so does any waiter when the lot says be_fair).  A
 * younger one is woken without the lock, which is released with WOKEN set: it
 * competes with running tasks, owning WOKEN until it takes the lock or
 * parks again.  So at most one woken waiter is on its way at a time, and
 * unlocks while it is on its way wake nobody.  An unlock that came to the
 * lot only for the head's age (it saw WOKEN) and finds the head young wakes
 * nobody (the WOKEN owner will take the lock: it cannot park before the
 * release, since its validate needs the bucket lock we hold).
 *
 * WOKEN can have two owners for a moment (a spinner sets it just before an
 * unlocker, which saw it clear, wakes a waiter); either clearing it early
 * only lets a later unlock wake one waiter more than needed.  It is never
 * left set with no owner, because every way out of the lock slow path
 * (taking the lock, parking) clears it first, so a parked waiter is never
 * forgotten.
 *
 * Giving up.  A waiter that times out or is cancelled inside the lot has
 * left the queue under the bucket lock and owns nothing: an unlock either
 * picked it (it returns 0, owning the lock or WOKEN) or picks another.  A
 * waiter whose park is refused (-EAGAIN: validate found the lock word free
 * or PARKED clear) after its deadline gives up outside the lot, and that
 * exit passes the wake-up on: if PARKED is set it wakes one waiter, as an
 * unlock that found PARKED late does.  Without that, two interleavings
 * strand a waiter B (parked with PZ_FOREVER) on a free mutex:
 *   (a) C owns WOKEN (an unlock woke it, or it spins while B is parked);
 *       H takes the lock; C loads the lock word (held); H unlocks, sees
 *       WOKEN and wakes nobody; C's CAS drops WOKEN and sets PARKED; C's
 *       validate sees the word free; C's deadline has passed; C returns.
 *   (b) validate reads two words (lock, then waiters): B's can read the
 *       lock held, and then PARKED set by C (B's own PARKED having been
 *       cleared in between by an unlock that found the queue empty), so B
 *       parks relying on C's PARKED, and C then abandons it as in (a).
 * In both the last unlock saw WOKEN and woke nobody, relying on C, which
 * left with PARKED set; C's exit wake covers it.
 *
 * Fairness without a timer.  A waiter's wait begins at its first announce
 * (since, kept across its re-parks within one lock call; pz_now() time),
 * and it is long-waiting once FAIR_NS have passed since.  The unlock
 * decides, by the head's age, as pz_mutex's unlock does (src/sync/mutex.c):
 *   1. An unlock that takes a long-waiting waiter from the queue hands it
 *      the lock (serve_filter reads since through the park token).  A
 *      waiter woken to compete that loses parks again at the tail, but
 *      keeps its since, so by its next turn at the head it is handed the
 *      lock.
 *   2. A long-waiting waiter does not spin, and its validate is never
 *      refused: it sets PARKED again by a seq_cst read-modify-write and
 *      either takes the free word or queues.  (Refused, it could keep
 *      losing the window between its announce and its validate, in which
 *      an unlock that empties the queue clears PARKED, or frees the word
 *      for a barger.)
 *   3. An unlock that sees WOKEN wakes nobody, and tasks that spin while
 *      each other holds the lock own WOKEN in turn: a waiter parked once
 *      would never be woken.  So the mutex keeps head_since, the start of
 *      the queue head's wait, written under the bucket lock: set by a
 *      waiter that queues into an empty queue, set exactly by a filter
 *      that looked at the head and woke nobody, 1 (unknown: look) after
 *      the head was served or a waiter left, 0 when the queue empties.  It
 *      is never later than the head's since, so an unlock that finds
 *      PARKED | WOKEN and head_since FAIR_NS old, or unknown, goes through
 *      the lot all the same, and serves a long-waiting head.  The clock
 *      is read only by such unlocks (and by the filter): the lock and
 *      unlock fast paths, and unlocks with nobody parked, read none.
 *   4. An unlock that released by exchange (its first look found nobody
 *      to serve) looks again after the release, and if it now finds a
 *      waiter to serve it calls pz__async_mutex_wake_released, whose
 *      filter, for a long-waiting head, takes the word back if it is still
 *      free and hands it over; if the word is held again, it leaves the
 *      queue as it is (PZ_FILTER_STOP) with head_since exact: the holder's
 *      unlock finds PARKED and a long-waiting head and serves it.  (Waking
 *      it without the lock let the holder take the word again before it
 *      ran, for ever: models/mutex.md.)
 *   5. A CAS that loses a free word to another task counts as a spin
 *      round, and a waiter whose rounds are spent (or that is
 *      long-waiting) announces and parks although it read the word free.
 *      (Looping on a lost CAS, a waiter that reads the word free each time
 *      never parks, so its wait never begins, and it can lose that race
 *      for ever.)
 * So once a waiter is long-waiting and queued, each unlock serves the head
 * of the queue as soon as the head is long-waiting too, and those ahead of
 * it queued before it: it gets the lock after at most FAIR_NS more and one
 * hand-off per waiter ahead of it, whatever the other tasks do (a barger
 * can still take the word between an unlock's look and its release; the
 * barger's own unlock then serves the head).  models/mutex.pml checks it:
 * safety in every interleaving of three tasks (one holder at a time,
 * never a waiter parked on a free mutex with nobody on the way to take
 * it), and progress for a waiter without deadline while two others lock
 * and unlock for ever, under weak fairness (models/mutex.md gives the
 * figures).  tests/test_lock_progress_stress.c forces a long-waiting
 * waiter behind bargers that hammer trylock, and one behind tasks that
 * spin and re-lock, and counts the acquisitions it lets by.
 *
 * Why no timer.  The version before armed a 1 ms timer at a waiter's first
 * park: a waiter that was not starving yet parked for 1 ms at most, then
 * announced again, starving, and turned on a mode in which every unlock
 * handed over in queue order (a count of starving waiters in the waiter
 * word).  Every long wait then cost a timer, an idle worker's wake-up from
 * epoll to fire it, and a second park at the tail of the queue: in the
 * logic benchmark (a lock held across a 50 us database call, 64 tasks),
 * 1.41 epoll calls per section (1.03 now, tokio 1.07) and 40 us of CPU
 * per section (27 now, tokio 24), for 8 700 sections/s (9 700 now, tokio
 * 9 300; docs/async.md has the rounds).  A timer is not needed for progress
 * either: a queued waiter is forgotten only if no unlock ever goes
 * through the lot after it parks; every unlock does while PARKED is set
 * and WOKEN clear or the head long-waiting (3.), and unlocks stop only if
 * the lock is held for ever (then waiting is right) or released with
 * nobody on the way, which the safety argument above excludes.  The one
 * timer left is the poll of a waiter no fence covers (fences_lost), a
 * fallback for a kernel that refused membarrier after registering it.
 *
 * Cancel-safety: the lot wakes a waiter with a token or lets it time out
 * having left the queue, never both.  A waiter that received TOKEN_HANDOFF
 * owns the lock and returns 0 even if its deadline or a cancel came at the
 * same instant; one that timed out received nothing and leaves nothing
 * behind (if it was the last waiter, it clears PARKED under the bucket
 * lock; otherwise it marks head_since unknown, since it may have been the
 * head).
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include <stdio.h>

#include "../runtime/internal.h"
#include "deadline.h"
#include "spin.h"

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF 1
/* A waiter that has waited this long is long-waiting (see Fairness). */
#define FAIR_NS PZ__AMUTEX_FAIR_NS

#define LOCKED ((uint64_t)PZ__AMUTEX_LOCKED)
#define PARKED ((uint32_t)PZ__AMUTEX_PARKED)
#define FENCED ((uint32_t)PZ__AMUTEX_FENCED)
#define WOKEN ((uint32_t)PZ__AMUTEX_WOKEN)
#define CONTENDED ((uint32_t)PZ__AMUTEX_CONTENDED)
#define HEAD_NONE ((uint32_t)PZ__AMUTEX_HEAD_NONE)
#define HEAD_UNKNOWN ((uint32_t)PZ__AMUTEX_HEAD_UNKNOWN)
#define SINCE_SHIFT PZ__AMUTEX_SINCE_SHIFT
#define FAIR_UNITS ((uint32_t)(FAIR_NS >> SINCE_SHIFT))

/* A parked waiter that no fence covers wakes this often to look again. */
#define UNFENCED_POLL_NS 1000000

_Atomic bool pz__async_unlock_by_store;
/* The process is registered for asymmetric fences: waiters run them.
 * Both flags are set at load time, before any task or thread can use a
 * mutex (thread creation orders that store before everything the new
 * thread does, so relaxed loads suffice), and only ever cleared, by
 * pz__async_mutex_fences_failed. */
static _Atomic bool heavy_fences;
/* A fence failed after plain-store unlocks were allowed: unlock_by_store
 * is off since, but an unlock that read it on just before may still
 * release by plain store at any later time (a thread can be preempted
 * between that load and its store), and no fence orders it against a
 * waiter.  So a waiter on a mutex without FENCED parks for at most
 * UNFENCED_POLL_NS at a time and looks again; with FENCED set, the fence
 * that set it covers every plain store that did not see CONTENDED, as
 * before.  Never cleared. */
static _Atomic bool fences_lost;

/* At load time: a waiter and an unlocker must agree on whether the
 * plain-store release is in use.  The registration survives fork (the
 * child's memory map is a copy; test_mutex_fences_after_fork checks it),
 * and exec starts a new image whose constructors run again. */
__attribute__((constructor)) static void async_mutex_init(void)
{
    bool fences = pz__arch_heavy_fence_init();
    atomic_store_explicit(&heavy_fences, fences, memory_order_relaxed);
    atomic_store_explicit(&pz__async_unlock_by_store, fences, memory_order_relaxed);
}

void pz__async_mutex_fences_failed(void)
{
    /* seq_cst: ordered before this waiter's validate, so every unlock
     * that loads the flag after that sees it off (and releases by
     * read-modify-write, the Dekker pair with our CAS). */
    atomic_store_explicit(&pz__async_unlock_by_store, false, memory_order_seq_cst);
    atomic_store_explicit(&fences_lost, true, memory_order_seq_cst);
    if (atomic_exchange_explicit(&heavy_fences, false, memory_order_relaxed))
        pz__report("pz_async_mutex: the asymmetric fence (membarrier) failed; unlocks use a read-modify-write "
                   "from now on");
}

/* What a waiter's park passes to the lot's callbacks; its address is the
 * park token, read by serve_filter while the waiter is queued (the frame
 * lives until pz_park returns, and the queue is read under the bucket
 * lock). */
struct park_ctx {
    pz_async_mutex_t *m;
    uint64_t self;
    int64_t since;     /* when this lock call's wait began (pz_now() time) */
    bool long_waiting; /* since was FAIR_NS ago at the waiter's last look */
    bool took;         /* validate took the free lock word for it */
};

/* head_since's form of a pz_now() time: 0 and 1 are taken (nobody queued,
 * unknown), so those two values read as 2, a few microseconds off once
 * every 73 minutes. */
static inline uint32_t since_stamp(int64_t t)
{
    uint32_t x = (uint32_t)((uint64_t)t >> SINCE_SHIFT);
    return x > HEAD_UNKNOWN ? x : HEAD_UNKNOWN + 1;
}

/* Whether the head of the queue has waited FAIR_NS by head_since (or is
 * unknown, so that the caller goes and looks).  Unsigned arithmetic: a
 * stamp more than 2^32 units (73 minutes) old reads as young for at most
 * FAIR_NS, and head_since is never later than now, so no other case
 * misreads.  A relaxed load: the word is a hint for when to go through
 * the lot, and every decision is taken again under the bucket lock. */
static bool head_waited_long(pz_async_mutex_t *m)
{
    uint32_t h = atomic_load_explicit(&m->head_since, memory_order_relaxed);
    if (h == HEAD_NONE)
        return false;
    return h == HEAD_UNKNOWN || since_stamp(pz__clock_now()) - h >= FAIR_UNITS;
}

/* Whether an unlock that found f must go through the lot: a waiter is
 * parked and nobody is on the way to take the lock, or the head of the
 * queue has waited FAIR_NS (then WOKEN is no reason to wait). */
static inline bool should_serve(pz_async_mutex_t *m, uint32_t f)
{
    return (f & PARKED) && (!(f & WOKEN) || head_waited_long(m));
}

/* Under the bucket lock, for a waiter about to queue: the first one in an
 * empty queue records the start of its wait. */
static void note_queued(pz_async_mutex_t *m, int64_t since)
{
    if (atomic_load_explicit(&m->head_since, memory_order_relaxed) == HEAD_NONE)
        atomic_store_explicit(&m->head_since, since_stamp(since), memory_order_relaxed);
}

/* Validate, under the bucket lock.  A waiter that is not long-waiting
 * parks only if the mutex is still held and PARKED still set.  A
 * long-waiting one is never refused: it sets PARKED again by a seq_cst
 * read-modify-write (an unlock that emptied the queue since its announce
 * may have cleared it) and, if the lock word is free, takes it (the waiter
 * word is not 0, so the holder word stays 0) and does not park.  Otherwise
 * it queues, and every unlock from then on that finds it at the head
 * hands it the lock: the holder's, whose load of the waiter word comes
 * after our read-modify-write (it took the word after it, or the CAS here
 * would have succeeded), or, for an unlock whose first look came before
 * it, its second look after releasing (pz__async_mutex_unlock_slow) or
 * pz__async_mutex_wake_released. */
static bool park_validate(void *arg)
{
    struct park_ctx *c = arg;
    pz_async_mutex_t *m = c->m;
    if (!c->long_waiting) {
        if (!((atomic_load_explicit(&m->state, memory_order_seq_cst) & LOCKED) &&
              (atomic_load_explicit(&m->waiters, memory_order_relaxed) & PARKED)))
            return false;
    } else {
        atomic_fetch_or_explicit(&m->waiters, PARKED, memory_order_seq_cst);
        uint64_t s = 0;
        if (atomic_compare_exchange_strong_explicit(&m->state, &s, c->self | LOCKED, memory_order_seq_cst,
                                                    memory_order_relaxed)) {
            c->took = true;
            return false;
        }
    }
    note_queued(m, c->since);
    return true;
}

/* Under the bucket lock, once a waiter that timed out or was cancelled has
 * left the queue.  If it was the last, the queue is empty: PARKED and
 * head_since go.  Otherwise it may have been the head: head_since becomes
 * unknown, so that the next unlock that finds WOKEN looks at the new head. */
static void mutex_timed_out(void *arg, bool was_last)
{
    pz_async_mutex_t *m = ((struct park_ctx *)arg)->m;
    if (was_last) {
        atomic_fetch_and_explicit(&m->waiters, ~PARKED, memory_order_relaxed);
        atomic_store_explicit(&m->head_since, HEAD_NONE, memory_order_relaxed);
    } else {
        atomic_store_explicit(&m->head_since, HEAD_UNKNOWN, memory_order_relaxed);
    }
}

/* Whether the holder recorded in s may be running now, so that spinning
 * can see it let go soon.  A task holder suspended in the section (a
 * logic critical section waiting for I/O) will not let go soon: park at
 * once.  A thread holder is assumed to run; so is nobody (a word without
 * a holder id is being handed to a woken waiter: do not spin on that). */
static bool holder_may_run(uint64_t s)
{
    uint64_t id = s >> PZ__AMUTEX_OWNER_SHIFT;
    if (!id)
        return false;
    if (id & PZ__AMUTEX_THREAD_BIT)
        return true;
    return pz__task_id_running(id);
}

/* What announce_parked did. */
enum announce {
    ANNOUNCE_RETRY,   /* the waiter word changed first: nothing done */
    ANNOUNCE_COVERED, /* PARKED set; no unlock can miss this waiter */
    ANNOUNCE_UNFENCED /* PARKED set, but a plain-store unlock may (fences lost) */
};

/* Sets PARKED and CONTENDED, giving up WOKEN if we own it, by a seq_cst
 * CAS (always a read-modify-write: it is our half of the Dekker pair with
 * a read-modify-write release).  Then the heavy fence, unless one has run
 * for this mutex already.  If the fence fails, the plain-store unlock is
 * turned off for good and this waiter is not covered (see fences_lost). */
static enum announce announce_parked(pz_async_mutex_t *m, uint32_t *f, bool woken)
{
    uint32_t want = (*f | PARKED | CONTENDED) & ~(woken ? WOKEN : 0);
    if (!atomic_compare_exchange_weak_explicit(&m->waiters, f, want, memory_order_seq_cst, memory_order_relaxed))
        return ANNOUNCE_RETRY;
    if (*f & FENCED)
        return ANNOUNCE_COVERED;
    if (atomic_load_explicit(&heavy_fences, memory_order_relaxed)) {
        if (pz__arch_heavy_fence()) {
            atomic_fetch_or_explicit(&m->waiters, FENCED, memory_order_relaxed);
            return ANNOUNCE_COVERED;
        }
        pz__async_mutex_fences_failed();
    }
    return atomic_load_explicit(&fences_lost, memory_order_relaxed) ? ANNOUNCE_UNFENCED : ANNOUNCE_COVERED;
}

/* A waiter whose park was refused (validate found the mutex free, or
 * PARKED gone) gives up at its deadline instead of trying again.  Its
 * CAS in announce_parked set PARKED and dropped WOKEN if it owned it; an
 * unlock that saw that WOKEN woke nobody, and a waiter may have parked
 * relying on that PARKED, so with PARKED still set it wakes one, as an
 * unlock that found PARKED late does (the woken waiter gets WOKEN and
 * competes; if the mutex is held again, it parks again, and that
 * holder's unlock sees PARKED).  PARKED clear means the queue emptied
 * under the bucket lock after our CAS, and any waiter that came since set
 * it again itself and is covered by the next unlock. */
static void give_up_refused_park(pz_async_mutex_t *m)
{
    if (atomic_load_explicit(&m->waiters, memory_order_seq_cst) & PARKED)
        pz__async_mutex_wake_released(m);
}

/* For the runtime's reports (dumps, deadlocks): the holder's caller id
 * is in the lock word.  Registered with the runtime when the program is
 * loaded, so the runtime never calls up into this layer by name. */
static uint64_t holder_query(const void *obj)
{
    uint64_t s = atomic_load_explicit(&((const pz_async_mutex_t *)obj)->state, memory_order_relaxed);
    return (s & PZ__AMUTEX_LOCKED) ? s >> PZ__AMUTEX_OWNER_SHIFT : 0;
}

__attribute__((constructor)) static void register_holder_query(void)
{
    pz__holder_query_register(PZ__WAIT_ASYNC_MUTEX, holder_query);
}

int pz__async_mutex_lock_slow(pz_async_mutex_t *m, uint64_t self, int64_t deadline)
{
    deadline = pz__async_deadline(deadline);
    /* A task that keeps winning the lock here never suspends, so this
     * counts one step of the cooperative budget, as every release of a
     * contended mutex does (pz__async_mutex_unlock_slow), but does not
     * yield: the task yields at its next contended release, between its
     * sections.  A yield here made the lock call itself wait for every
     * runnable task of its worker to use up its budget, while the lock
     * may well have been free: that queue was where the longest waits of
     * async_contended came from (64 tasks on 2 workers: yields of 0.3 ms
     * on average and 0.8 ms at most in the lock call, nearly all of every
     * wait over 0.5 ms; 1024 tasks: 1.3 ms on average, 2.4 ms at most).
     * Counting here still keeps each task's turn as long as before
     * (dropping the step made every turn up to twice as long, and so the
     * wait of a waiter whose timer queued it behind them). */
    pz__coop_count();
    /* The first caller to find the mutex held marks it CONTENDED, so
     * that from now on every unlock goes through the slow path and counts
     * against the budget.  Marking only at the first park was not enough:
     * where spinners always win before they park (short sections, work
     * between them), unlocks stayed plain stores, tasks that kept taking
     * the lock by the fast path never yielded, and a task that did yield
     * here waited for each of them to finish (90 ms of a 180 ms run of
     * async_contended, 64 tasks, work=100).  The fence is not tied to
     * this: the first waiter to park still runs it, as FENCED is clear. */
    if (!(atomic_load_explicit(&m->waiters, memory_order_relaxed) & CONTENDED))
        atomic_fetch_or_explicit(&m->waiters, CONTENDED, memory_order_relaxed);
    const int spin_rounds = pz__async_spin_rounds(PZ__AMUTEX_SPIN_ROUNDS);
    int spins = 0;
    bool woken = false;        /* this caller owns WOKEN */
    int64_t since = 0;         /* when the wait began: the first announce */
    bool long_waiting = false; /* since was FAIR_NS ago at the last look */
    for (;;) {
        /* Barge in while the lock is free. */
        uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
        if (s == 0) {
            if (pz__async_mutex_take(m, self)) {
                if (woken)
                    atomic_fetch_and_explicit(&m->waiters, ~WOKEN, memory_order_relaxed);
                return 0;
            }
            /* Another task took the word between our load and our CAS.
             * That counts as a spin round: with the rounds spent (or once
             * long-waiting) we announce and park below although the word
             * was free (no holder to spin on; validate refuses a waiter
             * that is not long-waiting if it is free again, and it looks
             * again), so that our wait begins and after FAIR_NS we are
             * served, instead of possibly losing this race for ever
             * (models/mutex.md, "The barging race").  Where the winner
             * still holds the lock, that is the park the next look would
             * have made anyway. */
            if (!long_waiting && ++spins < spin_rounds)
                continue;
        }
        uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
        if (!long_waiting && spins < spin_rounds && holder_may_run(s)) {
            if (!woken && (f & PARKED) && !(f & WOKEN)) {
                if (!atomic_compare_exchange_weak_explicit(&m->waiters, &f, f | WOKEN, memory_order_relaxed,
                                                           memory_order_relaxed))
                    continue;
                woken = true;
            }
            pz__async_mutex_spin(++spins);
            continue;
        }
        /* Park, giving up WOKEN.  The wait begins at the first announce
         * (the clock is read before the CAS, so a waiter whose CAS keeps
         * failing still ages); a waiter woken to compete that loses parks
         * again at the tail of the queue with the same since, and once
         * long-waiting it does not spin, its validate cannot refuse it,
         * and the unlock that takes it from the queue hands it the lock. */
        int64_t now = pz__clock_now();
        bool again = since != 0; /* announced before in this call */
        if (!since)
            since = now;
        else if (!long_waiting)
            long_waiting = now - since >= FAIR_NS;
        enum announce a = announce_parked(m, &f, woken);
        if (a == ANNOUNCE_RETRY)
            continue;
        woken = false;
        uintptr_t token = TOKEN_NORMAL;
        int64_t until = deadline;
        if (a == ANNOUNCE_UNFENCED && until - now > UNFENCED_POLL_NS)
            until = now + UNFENCED_POLL_NS;
        pz__wait_note_again(PZ__WAIT_ASYNC_MUTEX, m, again);
        struct park_ctx c = {.m = m, .self = self, .since = since, .long_waiting = long_waiting};
        const pz_park_opts_t opts = {
            .validate = park_validate, .timed_out = mutex_timed_out, .ctx = &c, .park_token = (uintptr_t)&c};
        int r = pz_park(m, until, &opts, &token);
        if (r == 0 && token == TOKEN_HANDOFF) {
            /* The unlocker left the lock word LOCKED with no holder id,
             * which nobody else changes; its section happens before our
             * wake (the lot's bucket lock and the task wake order it). */
            atomic_store_explicit(&m->state, self | LOCKED, memory_order_relaxed);
            return 0;
        }
        if (r == -EAGAIN && c.took)
            return 0; /* a long-waiting validate took the free word */
        if (r == 0) {
            /* Woken without the lock: the unlocker set WOKEN for us. */
            woken = true;
        } else if (r == -ECANCELED || (r == -ETIMEDOUT && until == deadline)) {
            return r;
        } else if (r == -ETIMEDOUT) {
            /* An unfenced park's poll: look at the lock word again. */
        } else if (deadline != PZ_FOREVER && pz_now() >= deadline) {
            /* -EAGAIN (the words changed before we slept) and out of
             * time.  We have set PARKED and dropped WOKEN if we owned it,
             * so an unlock may have relied on us (see the give-up rule
             * above): pass the wake-up on. */
            give_up_refused_park(m);
            return -ETIMEDOUT;
        }
        spins = 0;
    }
}

/* The new waiter word after a wake that found r: keeps a spinner's WOKEN,
 * sets it for the woken waiter, and clears PARKED once the queue is
 * empty. */
static uint32_t waiters_after(uint32_t f, pz_unpark_result_t r, bool handoff)
{
    return (f & (WOKEN | CONTENDED | FENCED)) | (r.have_more ? (f & PARKED) : 0) |
           (r.unparked && !handoff ? WOKEN : 0);
}

/* One serving of the queue: by an unlock that still holds the lock
 * (released false), or after a release that found a waiter late, or a
 * give-up (released true: pz__async_mutex_wake_released). */
struct serve {
    pz_async_mutex_t *m;
    bool released;
    bool woken_seen;    /* the unlock came here although it saw WOKEN: for the head's age */
    bool kept;          /* released: serve_filter took the free word to hand it over */
    bool old;           /* the waiter looked at last is long-waiting */
    int64_t now;        /* the clock, read once, by the first look */
    int64_t head_since; /* the since of the waiter looked at last */
};

/* Under the bucket lock, before each waiter is claimed (the first, and
 * the next if a claim is lost because that waiter is timing out).
 * Returns:
 *   - UNPARK_STOP to hand the lock over, for a long-waiting waiter: by
 *     an unlock that still holds it; after a release, if the word is
 *     still free (taken here by CAS, kept), or for the next waiter once a
 *     word taken for one whose claim then lost is kept;
 *   - STOP, waking nobody, after a release for a long-waiting waiter
 *     when the word is held again: the holder's unlock finds PARKED and
 *     head_since, exact from here, long past, and hands over itself;
 *   - STOP for a younger waiter when the unlock came only for the head's
 *     age, having seen WOKEN, and WOKEN is still set: its owner takes the
 *     lock (it has not parked, since it clears WOKEN before its validate,
 *     and it cannot park before our release, which comes before its
 *     validate: either our exchange below, or the unlock's before this
 *     wake-up), and we learn the head's since for head_since.  The look
 *     must be here, under the bucket lock: the owner the unlock saw may
 *     have parked since (models/mutex.pml found that lost wake-up);
 *   - UNPARK_STOP otherwise, to wake a younger waiter to compete, even if
 *     a spinner has set WOKEN since the unlock looked (two owners for a
 *     moment, as above).  Waking nobody then, which the model allows as
 *     well, left parked waiters asleep behind spinners: in async_contended
 *     with 1024 tasks most of the unlocks that came here found WOKEN set
 *     by then, and the longest wait went from 43 to 1586 us (medians of 7
 *     rounds). */
static pz_filter_op_t serve_filter(uintptr_t park_token, void *arg)
{
    struct serve *c = arg;
    const struct park_ctx *w = (const struct park_ctx *)park_token;
    if (!c->now)
        c->now = pz__clock_now();
    c->head_since = w->since;
    c->old = c->now - w->since >= FAIR_NS;
    if (c->released && c->kept)
        return PZ_FILTER_UNPARK_STOP;
    if (c->old) {
        if (!c->released)
            return PZ_FILTER_UNPARK_STOP;
        uint64_t s = 0;
        if (atomic_compare_exchange_strong_explicit(&c->m->state, &s, LOCKED, memory_order_seq_cst,
                                                    memory_order_relaxed)) {
            c->kept = true;
            return PZ_FILTER_UNPARK_STOP;
        }
        return PZ_FILTER_STOP;
    }
    if (c->woken_seen && (atomic_load_explicit(&c->m->waiters, memory_order_seq_cst) & WOKEN))
        return PZ_FILTER_STOP;
    return PZ_FILTER_UNPARK_STOP;
}

/* Under the bucket lock, after serve_filter: the token; the waiter word
 * (WOKEN for a waiter woken without the lock, PARKED cleared if the queue
 * emptied); head_since (nobody, exact if the filter stopped at the head,
 * unknown once the head was served); and the lock word: handed over
 * (LOCKED with no id), or released by an unlock that wakes a waiter to
 * compete or nobody, or released again if a word taken after a release
 * found nobody left to take it. */
static uintptr_t serve_decide(pz_unpark_result_t r, void *arg)
{
    struct serve *c = arg;
    pz_async_mutex_t *m = c->m;
    bool handoff = r.unparked && (c->released ? c->kept : (c->old || r.be_fair));
    /* By the holder: the word still names it as LOCKED. */
    PZ__ASSERT(c->released || (atomic_load_explicit(&m->state, memory_order_relaxed) & LOCKED));
    uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&m->waiters, &f, waiters_after(f, r, handoff),
                                                  memory_order_seq_cst, memory_order_relaxed)) {
    }
    uint32_t h = !r.have_more ? HEAD_NONE : (r.unparked || !c->now) ? HEAD_UNKNOWN : since_stamp(c->head_since);
    atomic_store_explicit(&m->head_since, h, memory_order_relaxed);
    if (!c->released) {
        if (handoff) {
            /* LOCKED stays set, the holder id is cleared for the woken
             * waiter to write. */
            atomic_store_explicit(&m->state, LOCKED, memory_order_release);
            return TOKEN_HANDOFF;
        }
        atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
        return TOKEN_NORMAL;
    }
    if (c->kept && !r.unparked)
        atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
    return handoff ? TOKEN_HANDOFF : TOKEN_NORMAL;
}

int pz__async_mutex_wake_released(pz_async_mutex_t *m)
{
    struct serve c = {.m = m, .released = true};
    pz_unpark_filter(m, serve_filter, serve_decide, &c);
    return 0;
}

void pz__async_mutex_released_look(pz_async_mutex_t *m, uint32_t f)
{
    if (should_serve(m, f)) {
        struct serve c = {.m = m, .released = true, .woken_seen = (f & WOKEN) != 0};
        pz_unpark_filter(m, serve_filter, serve_decide, &c);
    }
}

static int unlock_misuse(pz_async_mutex_t *m, uint64_t s, uint64_t self)
{
    char who[48], holder[48];
    uint64_t me = self >> PZ__AMUTEX_OWNER_SHIFT, owner = s >> PZ__AMUTEX_OWNER_SHIFT;
    if (me & PZ__AMUTEX_THREAD_BIT)
        snprintf(who, sizeof who, "thread #%llu", (unsigned long long)(me & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(who, sizeof who, "task %llu", (unsigned long long)me);
    if (!(s & LOCKED))
        snprintf(holder, sizeof holder, "nobody (it is not locked)");
    else if (!owner)
        snprintf(holder, sizeof holder, "a waiter it is being handed to");
    else if (owner & PZ__AMUTEX_THREAD_BIT)
        snprintf(holder, sizeof holder, "thread #%llu", (unsigned long long)(owner & ~PZ__AMUTEX_THREAD_BIT));
    else
        snprintf(holder, sizeof holder, "task %llu", (unsigned long long)owner);
    pz__report("pz_async_mutex_unlock: async mutex %p is held by %s, not by the unlocking %s; ignored", (void *)m,
               holder, who);
    return -EPERM;
}

int pz__async_mutex_unlock_slow(pz_async_mutex_t *m, uint64_t self)
{
    uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    if (s != (self | LOCKED))
        return unlock_misuse(m, s, self);
    /* The holder word is 0 or ours (it was quiet when we took the lock). */
    if (atomic_load_explicit(&m->holder, memory_order_relaxed))
        atomic_store_explicit(&m->holder, 0, memory_order_relaxed);
    uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
    if (should_serve(m, f)) {
        struct serve c = {.m = m, .woken_seen = (f & WOKEN) != 0};
        pz_unpark_filter(m, serve_filter, serve_decide, &c);
    } else {
        /* Nobody parked, or a woken waiter or spinner is on its way and
         * will take the lock: release by read-modify-write and look
         * again.  A waiter that came meanwhile, or a head that has now
         * waited FAIR_NS, is served after the release: for a long-waiting
         * head, serve_filter takes the word back if it is still free and
         * hands it over, rather than wake it to compete with bargers
         * (which can go on for ever); if somebody took the word already,
         * that holder's unlock serves it. */
        atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
        f = atomic_load_explicit(&m->waiters, memory_order_seq_cst);
        pz__async_mutex_released_look(m, f);
    }
    /* Every release of a contended mutex (this path) counts against the
     * cooperative budget.  A task that keeps taking the lock by the fast
     * path never reaches the lock's slow path, so without this it would
     * keep its worker from the tasks queued behind it (a woken waiter, or
     * tasks that yielded in the slow path) for as long as it keeps winning:
     * 64 tasks on 2 workers waited up to 4-10 ms for the lock that way,
     * 0.3-0.5 ms with this (and 27-28 ns/op against 19-28, once the step
     * was one call: pz__coop_tick_release skips sync sections itself). */
    if (f)
        pz__coop_release_step();
    return 0;
}
