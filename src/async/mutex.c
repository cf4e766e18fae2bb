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
 * Unlock with PARKED set and WOKEN clear (or STARVING): the lot picks the
 * first waiter and, under the bucket lock, unlock_decide chooses.  A fair
 * hand-off (the lot's be_fair, or STARVING) keeps LOCKED set and gives the
 * waiter TOKEN_HANDOFF: it returns owning the lock and writes its id into
 * the lock word.  Otherwise the lock is released with WOKEN set, and the
 * woken waiter competes with running tasks, owning WOKEN until it takes
 * the lock or parks again.  So at most one woken waiter is on its way at a
 * time, and unlocks while it is on its way wake nobody.
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
 * Progress.  Safety holds in every interleaving (models/mutex.pml checks
 * it exhaustively for three tasks): one holder at a time, and never a
 * waiter parked on a free mutex with nobody on the way to take it.  And
 * every waiter gets the lock, whatever the others do: a waiter that has
 * been trying for STARVE_NS (1 ms) turns on starvation mode and is
 * served after at most as many hand-offs as there are waiters ahead of it
 * (models/mutex.pml's progress check is of a waiter without deadline
 * while two others lock and unlock for ever, under weak fairness;
 * models/mutex.md gives its figures).  Six things make that hold; each
 * closes a cycle in which the model's search found the waiter losing for
 * ever:
 *   1. A starving waiter's validate is never refused (park_validate): it
 *      sets PARKED | STARVING again under the bucket lock and either takes
 *      the free word or queues.  (Refused, it could keep losing the window
 *      between its announce and its validate, in which a hand-off that
 *      empties the queue clears both bits, or an unlock that finds it
 *      empty frees the word for a barger.)
 *   2. A waiter that is not starving parks for STARVE_NS at most, then
 *      announces again, starving.  (Tasks that spin while each other holds
 *      the lock own WOKEN in turn, and an unlock that sees WOKEN wakes
 *      nobody: a waiter parked once would never look again.)
 *   3. STARVING ends when the last starving waiter has the lock (or gives
 *      up): the waiter word counts them (STARVERS).  Not when a waiter is
 *      served quickly (one queued ahead of a starving one would end the
 *      mode for it), nor when the queue empties (a starving waiter between
 *      its announce and its validate is not queued yet).
 *   4. An unlock that released by exchange and then finds STARVING takes
 *      the word back if it is still free and hands it to the head of the
 *      queue (pz__async_mutex_unlock_slow): its first load came before the
 *      waiter's read-modify-write.
 *   5. A wake after a release that saw PARKED late hands the word over if
 *      STARVING is set and the word is still free, and otherwise leaves
 *      the queue alone (released_filter): the holder's unlock will hand
 *      over.
 *   6. A CAS that loses a free word to another task counts as a spin
 *      round, and a waiter whose rounds are spent announces and parks
 *      although it read the word free.  (Looping on a lost CAS, a waiter
 *      that reads the word free each time never parks, so it never turns
 *      starving, and can lose that race for ever.)
 * The cost: a timer per park that is not starving yet (parks are rare
 * where spinning wins), strict queue order while a starving waiter waits
 * (ending starvation mode only when the queue emptied kept it on for good
 * under 64 tasks, and async_contended went from 48 to 305 ns/op; with the
 * count it is unchanged), and two rare branches in the release path.  The inline lock and unlock are unchanged.
 * tests/test_lock_progress_stress.c forces a starving waiter behind
 * hammering bargers and counts the acquisitions it lets by.
 *
 * Cancel-safety: the lot wakes a waiter with a token or lets it time out
 * having left the queue, never both.  A waiter that received TOKEN_HANDOFF
 * owns the lock and returns 0 even if its deadline or a cancel came at the
 * same instant; one that timed out received nothing and leaves nothing
 * behind (if it was the last waiter, it clears PARKED and STARVING under
 * the bucket lock).
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
/* A waiter trying this long turns on starvation mode. */
#define STARVE_NS 1000000

#define LOCKED ((uint64_t)PZ__AMUTEX_LOCKED)
#define PARKED ((uint32_t)PZ__AMUTEX_PARKED)
#define FENCED ((uint32_t)PZ__AMUTEX_FENCED)
#define WOKEN ((uint32_t)PZ__AMUTEX_WOKEN)
#define STARVING ((uint32_t)PZ__AMUTEX_STARVING)
#define CONTENDED ((uint32_t)PZ__AMUTEX_CONTENDED)
/* The waiter word's count of starving waiters (bits 8..31): STARVING is
 * set exactly while it is not 0. */
#define STARVER ((uint32_t)1 << 8)
#define STARVERS (~(uint32_t)0 << 8)

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

/* What a waiter's park passes to the lot's callbacks. */
struct park_ctx {
    pz_async_mutex_t *m;
    uint64_t self;
    bool starving; /* the waiter has been trying for STARVE_NS */
    bool took;     /* validate took the free lock word for it */
};

/* Validate, under the bucket lock.  A waiter that is not starving parks
 * only if the mutex is still held and PARKED still set.  A starving one
 * (counted in STARVERS since its announce, so STARVING is set) is never
 * refused: it sets PARKED again by a seq_cst read-modify-write (a hand-off
 * that emptied the queue since its announce may have cleared it) and, if
 * the lock word is free, takes it (the waiter word is not 0, so the holder
 * word stays 0) and does not park.  Otherwise it queues, and since
 * STARVING stays set until it leaves the count, every unlock from then on
 * hands over in queue order: the holder's, whose load of the waiter word
 * comes after our read-modify-write (it took the word after it, or the
 * CAS here would have succeeded), or, for an unlock whose load came before
 * it, its second load after releasing (the take-back in
 * pz__async_mutex_unlock_slow) or released_filter. */
static bool park_validate(void *arg)
{
    struct park_ctx *c = arg;
    pz_async_mutex_t *m = c->m;
    if (!c->starving)
        return (atomic_load_explicit(&m->state, memory_order_seq_cst) & LOCKED) &&
               (atomic_load_explicit(&m->waiters, memory_order_relaxed) & PARKED);
    atomic_fetch_or_explicit(&m->waiters, PARKED, memory_order_seq_cst);
    uint64_t s = 0;
    if (atomic_compare_exchange_strong_explicit(&m->state, &s, c->self | LOCKED, memory_order_seq_cst,
                                                memory_order_relaxed)) {
        c->took = true;
        return false;
    }
    return true;
}

static void mutex_timed_out(void *arg, bool was_last)
{
    pz_async_mutex_t *m = ((struct park_ctx *)arg)->m;
    if (was_last)
        atomic_fetch_and_explicit(&m->waiters, ~PARKED, memory_order_relaxed); /* a starving one leaves STARVERS itself */
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

/* Sets PARKED and CONTENDED (and, if asked, counts the caller in STARVERS
 * and sets STARVING), giving up WOKEN if we
 * own it, by a seq_cst CAS (always a read-modify-write: it is our half of
 * the Dekker pair with a read-modify-write release).  Then the heavy fence,
 * unless one has run for this mutex already.  If the fence fails, the
 * plain-store unlock is turned off for good and this waiter is not
 * covered (see fences_lost). */
static enum announce announce_parked(pz_async_mutex_t *m, uint32_t *f, bool woken, bool starving)
{
    uint32_t want = ((*f | PARKED | CONTENDED) & ~(woken ? WOKEN : 0)) + (starving ? STARVER : 0);
    if (starving)
        want |= STARVING;
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

/* A starving waiter that has the lock (or gives up) leaves the count of
 * starving waiters; the last one ends starvation mode. */
static void leave_starvers(pz_async_mutex_t *m)
{
    uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed), n;
    do {
        n = f - STARVER;
        if (!(n & STARVERS))
            n &= ~STARVING;
    } while (!atomic_compare_exchange_weak_explicit(&m->waiters, &f, n, memory_order_seq_cst, memory_order_relaxed));
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
    const int spin_rounds = pz__async_spin_rounds();
    int spins = 0;
    bool woken = false;   /* this caller owns WOKEN */
    bool counted = false; /* this caller is counted in STARVERS */
    int64_t first_park = 0;
    for (;;) {
        /* Barge in while the lock is free.  In starvation mode it passes
         * only by hand-off and is not seen free (except when an unlock
         * raced with the waiter turning it on: then anyone may take it). */
        uint64_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
        if (s == 0) {
            if (pz__async_mutex_take(m, self)) {
                if (woken)
                    atomic_fetch_and_explicit(&m->waiters, ~WOKEN, memory_order_relaxed);
                return 0;
            }
            /* Another task took the word between our load and our CAS.
             * That counts as a spin round: with the rounds spent we
             * announce and park below although the word was free (no
             * holder to spin on; validate refuses us if it is free again,
             * and we look again), so that after STARVE_NS we turn starving
             * and are served, instead of possibly losing this race for
             * ever (models/mutex.md, "The barging race").  Where the
             * winner still holds the lock, that is the park the next
             * look would have made anyway. */
            if (++spins < spin_rounds)
                continue;
        }
        uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
        if (!(f & STARVING) && spins < spin_rounds && holder_may_run(s)) {
            if (!woken && (f & PARKED) && !(f & WOKEN)) {
                if (!atomic_compare_exchange_weak_explicit(&m->waiters, &f, f | WOKEN, memory_order_relaxed,
                                                           memory_order_relaxed))
                    continue;
                woken = true;
            }
            pz__async_backoff(++spins);
            continue;
        }
        /* Park, giving up WOKEN.  A waiter that was woken and lost the
         * lock parks again at the tail of the queue; once it has been
         * trying for STARVE_NS it turns on starvation mode, so that it
         * cannot lose again: it is counted in STARVERS, its validate cannot
         * refuse it (park_validate), and every unlock hands over in queue
         * order until it has the lock.  A waiter that is not starving yet parks
         * until then at most, and looks again: a waiter parked once is
         * woken only by an unlock that finds WOKEN clear, and tasks that
         * spin while each other holds the lock can keep it set. */
        bool starving = counted || (first_park && pz__clock_now() - first_park >= STARVE_NS);
        enum announce a = announce_parked(m, &f, woken, starving && !counted);
        if (a == ANNOUNCE_RETRY)
            continue;
        woken = false;
        counted = starving;
        bool again = first_park != 0; /* parked before in this call */
        if (!first_park)
            first_park = pz__clock_now();
        uintptr_t token = TOKEN_NORMAL;
        int64_t until = deadline;
        if (!starving && first_park + STARVE_NS < until)
            until = first_park + STARVE_NS;
        if (a == ANNOUNCE_UNFENCED && until - pz__clock_now() > UNFENCED_POLL_NS)
            until = pz__clock_now() + UNFENCED_POLL_NS;
        pz__wait_note_again(PZ__WAIT_ASYNC_MUTEX, m, again);
        struct park_ctx c = {.m = m, .self = self, .starving = starving};
        const pz_park_opts_t opts = {.validate = park_validate, .timed_out = mutex_timed_out, .ctx = &c};
        int r = pz_park(m, until, &opts, &token);
        if (r == 0 && token == TOKEN_HANDOFF) {
            /* The unlocker left the lock word LOCKED with no holder id,
             * which nobody else changes; its section happens before our
             * wake (the lot's bucket lock and the task wake order it).
             * STARVING stays until the last starving waiter has the lock,
             * so a waiter served quickly does not end the mode for a
             * starving one behind it. */
            atomic_store_explicit(&m->state, self | LOCKED, memory_order_relaxed);
            if (counted)
                leave_starvers(m);
            return 0;
        }
        if (r == -EAGAIN && c.took) {
            /* A starving validate took the free word. */
            leave_starvers(m);
            return 0;
        }
        if (r == 0) {
            /* Woken without the lock: the unlocker set WOKEN for us. */
            woken = true;
        } else if (r == -ECANCELED || (r == -ETIMEDOUT && until == deadline)) {
            if (counted)
                leave_starvers(m);
            return r;
        } else if (r == -ETIMEDOUT) {
            /* The STARVE_NS timer, or an unfenced park's poll: look at the
             * lock word again. */
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
 * sets it for the woken waiter, and clears the queue's bits once the
 * queue is empty. */
static uint32_t waiters_after(uint32_t f, pz_unpark_result_t r, bool handoff)
{
    return (f & (WOKEN | CONTENDED | FENCED | STARVING | STARVERS)) | (r.have_more ? (f & PARKED) : 0) |
           (r.unparked && !handoff ? WOKEN : 0);
}

/* Under the bucket lock, by the holder, with r telling whom the lot took. */
static uintptr_t unlock_decide(pz_unpark_result_t r, void *arg)
{
    pz_async_mutex_t *m = arg;
    /* By the holder: the word still names it as LOCKED. */
    PZ__ASSERT(atomic_load_explicit(&m->state, memory_order_relaxed) & LOCKED);
    uint32_t f = atomic_load_explicit(&m->waiters, memory_order_relaxed);
    bool handoff = r.unparked && (r.be_fair || (f & STARVING));
    while (!atomic_compare_exchange_weak_explicit(&m->waiters, &f, waiters_after(f, r, handoff),
                                                  memory_order_seq_cst, memory_order_relaxed)) {
        handoff = r.unparked && (r.be_fair || (f & STARVING));
    }
    if (handoff) {
        /* LOCKED stays set, the holder id is cleared for the woken waiter
         * to write. */
        atomic_store_explicit(&m->state, LOCKED, memory_order_release);
        return TOKEN_HANDOFF;
    }
    atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
    return TOKEN_NORMAL;
}

/* A wake after a release that saw PARKED late (or a give-up). */
struct released {
    pz_async_mutex_t *m;
    bool kept; /* released_filter took the lock word to hand it over */
};

/* Under the bucket lock, before each waiter is claimed.  Without
 * STARVING the first waiter is woken without the lock, to compete.  With
 * STARVING it gets the lock if the word is still free (taken here by CAS,
 * then handed over); if the word is held again, the first waiter stays
 * queued: the holder's unlock sees STARVING (set before our load, and
 * set until the starving waiter has the lock) and hands over itself.
 * Waking it without the lock instead let the holder take the word again
 * before it ran, for ever (the fifth cycle models/mutex.pml's progress
 * check found, when an emptied queue still cleared STARVING).  A
 * waiter whose claim then loses (it timed out) is passed over, and the
 * next one decided the same way, keeping a word already taken. */
static pz_filter_op_t released_filter(uintptr_t park_token, void *arg)
{
    (void)park_token;
    struct released *c = arg;
    if (c->kept || !(atomic_load_explicit(&c->m->waiters, memory_order_seq_cst) & STARVING))
        return PZ_FILTER_UNPARK_STOP;
    uint64_t s = 0;
    if (atomic_compare_exchange_strong_explicit(&c->m->state, &s, LOCKED, memory_order_seq_cst, memory_order_relaxed)) {
        c->kept = true;
        return PZ_FILTER_UNPARK_STOP;
    }
    return PZ_FILTER_STOP;
}

/* Under the bucket lock, after released_filter: the token, and the waiter
 * word (WOKEN for a waiter woken without the lock; the queue's bits
 * cleared if it emptied).  A word taken for a waiter that then timed out,
 * with nobody else to take, is released again. */
static uintptr_t released_decide(pz_unpark_result_t r, void *arg)
{
    struct released *c = arg;
    bool handoff = c->kept && r.unparked;
    uint32_t f = atomic_load_explicit(&c->m->waiters, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&c->m->waiters, &f, waiters_after(f, r, handoff),
                                                  memory_order_seq_cst, memory_order_relaxed)) {
    }
    if (c->kept && !r.unparked)
        atomic_exchange_explicit(&c->m->state, 0, memory_order_seq_cst);
    return handoff ? TOKEN_HANDOFF : TOKEN_NORMAL;
}

int pz__async_mutex_wake_released(pz_async_mutex_t *m)
{
    struct released c = {.m = m};
    pz_unpark_filter(m, released_filter, released_decide, &c);
    return 0;
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
    if ((f & STARVING) || (f & (PARKED | WOKEN)) == PARKED) {
        pz_unpark_one(m, unlock_decide, m);
    } else {
        /* Nobody parked, or a woken waiter or spinner is on its way and
         * will take the lock: release by read-modify-write and look
         * again. */
        atomic_exchange_explicit(&m->state, 0, memory_order_seq_cst);
        f = atomic_load_explicit(&m->waiters, memory_order_seq_cst);
        if (f & STARVING) {
            /* A waiter turned starving after our first load: take the
             * word back if it is still free and hand it to the head of
             * the queue, rather than wake that waiter to compete with
             * bargers (which can go on for ever).  If somebody took it
             * already, that holder's unlock sees STARVING. */
            uint64_t z = 0;
            if (atomic_compare_exchange_strong_explicit(&m->state, &z, LOCKED, memory_order_seq_cst,
                                                        memory_order_relaxed))
                pz_unpark_one(m, unlock_decide, m);
        } else if ((f & (PARKED | WOKEN)) == PARKED) {
            pz__async_mutex_wake_released(m);
        }
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
        pz__coop_tick_release();
    return 0;
}
