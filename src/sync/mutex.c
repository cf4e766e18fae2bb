/*
 * pz_mutex slow paths.  The lock word is described in sync.h.
 *
 * Lock: spin while nobody is parked (a holder of a data critical section
 * lets go within nanoseconds; sleeping would cost microseconds), with
 * exponential back-off of cpu_relax, then a few sched_yield; then set PARKED
 * and park in the lot, validating under the bucket lock that the word is
 * still LOCKED|PARKED so an unlock in between cannot be missed.
 *
 * Unlock with PARKED set: the lot takes the first waiter out of the queue
 * and, under the bucket lock, unlock_decide chooses: a fair hand-off keeps
 * LOCKED set and gives the waiter TOKEN_HANDOFF (it returns owning the
 * lock); otherwise the word becomes 0, or PARKED if more waiters remain,
 * and the woken waiter competes for the lock again with running threads.
 *
 * Why no wake-up is lost: the queue is never left non-empty with PARKED
 * clear at a moment the bucket lock is free (a waiter queues only with
 * PARKED set under the bucket lock, and PARKED is cleared only under the
 * bucket lock with the queue empty: by unlock_decide, by a waiter that
 * leaves at its deadline (here or in condvar.c), and by lw_validate taking
 * a free word on which it set PARKED itself), and an unlock that sees
 * PARKED takes the bucket lock.  While PARKED is set the word can change outside the bucket lock
 * only by a thread setting LOCKED on a free word: every release of a
 * word with PARKED goes through the bucket lock.
 *
 * Progress (models/sync_mutex.pml checks it): every waiter gets the lock,
 * whatever the other threads do.  A waiter begins to wait when its first
 * spin is over (since, kept across the re-parks of one lock call; the
 * lot's own clock, pz__clock_coarse), and is long-waiting once
 * PZ__MUTEX_FAIR_NS have passed since.  The coarse clock makes the 1 ms
 * up to a tick more (4 ms at HZ=250), and that is kept on purpose: read
 * from the precise clock, the 1 ms made nearly every unlock a hand-off
 * once waiters queue for longer than that, as 64 threads on two cores
 * always do, and `contended threads=64 work=100` in bench/ went from 153
 * to 210 ns per lock (`bench-plaza contended threads=64 work=100`, the
 * builds before and with it in 7 alternating runs, medians, Xeon model 167
 * VM), though the longest wait of `threads=2 work=0` fell from 4-8 ms to
 * under 0.2 ms.
 * A bound in turns that does not hand off at every unlock (parking_lot
 * hands off at most about every 0.5 ms per bucket) would keep both.
 * Then:
 *   1. An unlock that takes it from the queue hands it the lock
 *      (unlock_filter reads since through its park token, the address of
 *      its struct waiter).  Counting from its current park instead let it
 *      lose for ever: woken without the lock at the head of the queue,
 *      beaten by a running thread, parked again at the tail with a fresh
 *      clock, while the lot's random hand-off went to a waiter queued
 *      ahead of it.
 *   2. It neither spins nor sets PARKED by CAS, and its validate cannot
 *      refuse it: it sets PARKED and then takes the word if LOCKED is
 *      clear, or else queues (lw_validate).  Refused, it could keep losing
 *      the window between its look at the word and its validate, in which
 *      an unlock frees the word for a running thread; setting PARKED by
 *      CAS, it could keep finding the word changed (the clock starts before
 *      that CAS for this reason: a waiter that never got to park would
 *      never have begun to wait).
 *   3. A CAS that loses a free word to another thread is a spin round,
 *      and once the spin is over a long-waiting waiter that loses one
 *      parks as in 2.  Looking again at once, a waiter that read the word
 *      free each time never began to wait and could lose for ever.
 * It checks the clock at each look at a held word, and at each lost CAS,
 * once its spin is over (so from its next look on, if it was running when
 * its time came).
 * Once queued it is served after at most as many unlocks as there are
 * waiters ahead of it: each unlock takes the head, and a waiter woken
 * without the lock that parks again goes to the tail, behind it.  So
 * after it has waited PZ__MUTEX_FAIR_NS and is queued (or has looked at
 * the word once more), other threads take the lock at most once for each
 * waiter queued ahead of it (tests/test_sync_progress_stress.c forces
 * this with bargers hammering the lock).  The cost is in the slow paths
 * only: a coarse clock read when a waiter's spin ends, per look of a
 * waiter whose spin is over, and per unlock that wakes somebody.
 * Waiters moved here from a condition variable (park token 0) keep the
 * lot's rule (be_fair: 1 ms in their current park, or the random
 * interval), and once woken lock the mutex afresh under this one.
 */
#define _GNU_SOURCE
#include "plaza/sync.h"
#include "plaza/park.h"

#include <sched.h>

#include "../runtime/internal.h"
#include "off_cpu_note.h"
#include "spin_wait.h"

/*
 * The mutex's spin (spin_wait.h, shared with the rwlock): rounds of 4, 32
 * and 128 cpu_relax between looks at the word, then sched_yield rounds up
 * to the same limit, then park.  The rounds were 2, 4 and 8.  Why longer
 * rounds: under contention the time goes into moving the word's cache line
 * between the cores (the lock's and the unlock's atomic operations took 75%
 * of the samples of contended threads=2 work=0), and the line moves for
 * each look of a spinning waiter and for each hand-over of the lock to
 * another thread.  A holder that unlocks and locks again in a loop leaves
 * the word free for a few instructions per section; a waiter that looks
 * every 2-8 cpu_relax finds it free often, takes it, and the holder becomes
 * the waiter: the lock changed threads about once per 11 sections (the
 * shorter the section, the more often), ~45 ns per section on the 2-vCPU
 * Xeon against 15 ns uncontended.  With these rounds a waiter whose first
 * look failed looks a tenth as often, the lock changes threads about once
 * per 35 sections, and the same row takes ~24 ns.  The first round stays
 * short, so that when sections are far apart (work=100 in bench/) the word
 * is free at the waiter's next look and those rows keep their figures.
 * One cpu_relax is a pause, ~30 ns on that Xeon: the spin before the first
 * yield lasts up to ~5 us there (less on processors with a shorter pause).
 * A waiter that finds PARKED set does not spin (the callers' rule).
 */

#define TOKEN_NORMAL 0
#define TOKEN_HANDOFF PZ__MUTEX_TOKEN_HANDOFF

/* A waiter in pz__mutex_lock_slow, on its stack; its address is the park
 * token, read by unlock_filter while the waiter is queued (its frame is
 * alive until pz_park returns, and the queue is read under the bucket
 * lock). */
struct waiter {
    pz_mutex_t *m;
    int64_t since;     /* pz__clock_coarse() when its first spin ended */
    bool long_waiting; /* since was PZ__MUTEX_FAIR_NS ago at its last look */
    bool took;         /* lw_validate took the free word for it */
};

static bool waited_long(int64_t since, int64_t now)
{
    return now - since >= PZ__MUTEX_FAIR_NS;
}

/* Validate, under the bucket lock.  A waiter that has not waited long
 * parks only if the word is still LOCKED|PARKED (else it looks again).
 * A long-waiting one is never refused: it sets PARKED, which freezes
 * every release behind the bucket lock we hold, so afterwards the word
 * is PARKED (free: take it, clearing PARKED again if we set it, since
 * then nobody is queued) or LOCKED|PARKED (held: queue), and the CAS
 * below can fail only because a thread set LOCKED meanwhile. */
static bool lw_validate(void *arg)
{
    struct waiter *w = arg;
    if (!w->long_waiting)
        return atomic_load_explicit(&w->m->state, memory_order_relaxed) == (PZ__MUTEX_LOCKED | PZ__MUTEX_PARKED);
    uint8_t s = atomic_fetch_or_explicit(&w->m->state, (uint8_t)PZ__MUTEX_PARKED, memory_order_relaxed);
    if (s & PZ__MUTEX_LOCKED)
        return true;
    uint8_t parked = PZ__MUTEX_PARKED, mine = (uint8_t)(PZ__MUTEX_LOCKED | (s & PZ__MUTEX_PARKED));
    if (atomic_compare_exchange_strong_explicit(&w->m->state, &parked, mine, memory_order_acquire,
                                                memory_order_relaxed)) {
        w->took = true;
        return false;
    }
    return true;
}

static void mutex_timed_out(void *arg, bool was_last)
{
    struct waiter *w = arg;
    if (was_last)
        atomic_fetch_and_explicit(&w->m->state, (uint8_t)~PZ__MUTEX_PARKED, memory_order_relaxed);
}

void pz__mutex_lock_slow(pz_mutex_t *m, int64_t deadline, int *result)
{
    int spins = 0;
    bool parked = false; /* parked before in this call */
    struct waiter w = {.m = m};
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    for (;;) {
        if (!(s & PZ__MUTEX_LOCKED)) {
            if (atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_LOCKED),
                                                      memory_order_acquire, memory_order_relaxed))
                return;
            /* Another thread took the free word between our load and our
             * CAS.  Looking again at once, a waiter that reads the word
             * free each time would never begin to wait, so never turn
             * long-waiting, and could lose this race for ever
             * (models/sync_mutex.md).  So a lost CAS is a spin round; once
             * the spin is over the waiter has begun to wait, and a
             * long-waiting one parks: lw_validate takes the free word or
             * queues it. */
            if (!w.since) {
                if (!pz__spin_wait(&spins))
                    w.since = pz__clock_coarse();
                continue;
            }
            if (!w.long_waiting)
                w.long_waiting = waited_long(w.since, pz__clock_coarse());
            if (!w.long_waiting)
                continue;
        }
        /* A waiter that has begun to wait checks whether it has waited
         * long at each look at a held word (a clock read; one still in its
         * first spin pays nothing). */
        if (w.since && !w.long_waiting)
            w.long_waiting = waited_long(w.since, pz__clock_coarse());
        if (!w.long_waiting) {
            if (!(s & PZ__MUTEX_PARKED) && pz__spin_wait(&spins)) {
                s = atomic_load_explicit(&m->state, memory_order_relaxed);
                continue;
            }
            /* The spin is over: from here on it waits. */
            if (!w.since)
                w.since = pz__clock_coarse();
            if (!(s & PZ__MUTEX_PARKED)) {
                if (!atomic_compare_exchange_weak_explicit(&m->state, &s, (uint8_t)(s | PZ__MUTEX_PARKED),
                                                           memory_order_relaxed, memory_order_relaxed))
                    continue;
            }
        }
        uintptr_t token = TOKEN_NORMAL;
        pz__wait_note_again(PZ__WAIT_MUTEX, m, parked);
        parked = true;
        const pz_park_opts_t opts = {.validate = lw_validate, .timed_out = mutex_timed_out, .ctx = &w,
                                     .park_token = (uintptr_t)&w, .flags = PZ_PARK_THREAD};
        pz__sync_note_off_cpu();
        int r = pz_park(m, deadline, &opts, &token);
        if (r == 0 && token == TOKEN_HANDOFF)
            return; /* the unlocker left LOCKED set for us */
        if (r == -EAGAIN && w.took)
            return; /* a long-waiting validate took the free word */
        if (r == -ETIMEDOUT) {
            if (result)
                *result = -ETIMEDOUT;
            return;
        }
        /* Woken to compete, or refused: look again. */
        spins = 0;
        s = atomic_load_explicit(&m->state, memory_order_relaxed);
    }
}

struct unlock_ctx {
    pz_mutex_t *m;
    bool force_fair;
    int64_t head_since; /* the chosen waiter's since; 0: not a lock waiter */
};

/* Under the bucket lock, for the first waiter (and, should its claim be
 * lost, the next): remember since when it waits, and take it. */
static pz_filter_op_t unlock_filter(uintptr_t park_token, void *arg)
{
    struct unlock_ctx *c = arg;
    const struct waiter *w = (const struct waiter *)park_token;
    c->head_since = w ? w->since : 0;
    return PZ_FILTER_UNPARK_STOP;
}

static uintptr_t unlock_decide(pz_unpark_result_t r, void *arg)
{
    struct unlock_ctx *c = arg;
    /* Under the bucket lock, by the holder: still LOCKED (nobody else
     * unlocks; PARKED may have been cleared by the last waiter leaving at
     * its deadline between our look and this lock). */
    PZ__ASSERT(atomic_load_explicit(&c->m->state, memory_order_relaxed) & PZ__MUTEX_LOCKED);
    if (r.unparked && (c->force_fair || r.be_fair ||
                       (c->head_since && waited_long(c->head_since, pz__clock_coarse())))) {
        if (!r.have_more)
            atomic_store_explicit(&c->m->state, PZ__MUTEX_LOCKED, memory_order_relaxed);
        return TOKEN_HANDOFF;
    }
    atomic_store_explicit(&c->m->state, r.have_more ? PZ__MUTEX_PARKED : 0, memory_order_release);
    return TOKEN_NORMAL;
}

void pz__mutex_unlock_slow(pz_mutex_t *m, bool fair)
{
    uint8_t s = atomic_load_explicit(&m->state, memory_order_relaxed);
    if (!(s & PZ__MUTEX_LOCKED)) {
        pz__report("pz_mutex_unlock: mutex %p is not locked; ignored", (void *)m);
        return;
    }
    /* Only LOCKED (a racing waiter just cleared PARKED): a plain unlock. */
    if (s == PZ__MUTEX_LOCKED) {
        uint8_t locked = PZ__MUTEX_LOCKED;
        if (atomic_compare_exchange_strong_explicit(&m->state, &locked, 0, memory_order_release,
                                                    memory_order_relaxed))
            return;
    }
    struct unlock_ctx c = {m, fair, 0};
    pz_unpark_filter(m, unlock_filter, unlock_decide, &c);
}
