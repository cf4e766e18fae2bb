/*
 * pz_semaphore.  The word is described in include/plaza/async.h.
 *
 * Fast paths are one CAS while WAITERS is clear.  Once anyone waits, every
 * acquire queues behind it and every release goes through the bucket lock,
 * so the queue is served strictly in order: release hands permits to the
 * waiters at the head, each as large as its request, and stops at the
 * first one the permits do not cover (a large request is never overtaken).
 * While WAITERS is set only code holding the bucket lock changes the
 * permits, which is what makes the hand-out below consistent.
 *
 * A waiter parks with its park token pointing at its own wait record (on
 * its stack).  The hand-out (dispatch) runs pz_unpark_filter; the filter
 * marks each waiter it serves as granted in that record, under the bucket
 * lock, before the lot tries to claim it.  If the claim is lost (the
 * waiter's deadline or a cancel won at that instant), the waiter still
 * finds granted set when its timed_out callback runs under the same bucket
 * lock, so it keeps the permits and returns 0: no permit is lost.  A waiter
 * that timed out without a grant runs a dispatch itself afterwards, since
 * the waiters behind it may now be served by the permits it was blocking.
 *
 * An acquire whose fast-path CAS loses to another worker backs off in long
 * rounds before it looks again (CONTENDED_FIRST_ROUND below), so that two
 * workers taking permits at once do not pass the word's line back and
 * forth at every call.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include "../runtime/internal.h"
#include "../park/lot.h"
#include "deadline.h"
#include "semaphore_internal.h"
#include "observe.h"
#include "spin.h"

#define TOKEN_GRANTED 1
#define TOKEN_CLOSED 2
#define UNIT ((uint64_t)1 << PZ__SEM_SHIFT)

/* struct pz__sem_wait: semaphore_internal.h. */

/* The fast path's back-off after a lost CAS (the round of
 * src/async/spin.h it starts at: 256 cpu_relax, about 3.5 us on x86,
 * doubling to 1024).  A lost CAS means a task on another worker took or
 * gave permits between our load and our CAS, and with both workers
 * acquiring and releasing at once every call would otherwise take the
 * word's line from the other core (at each load and again at each CAS).
 * Waiting out a long round leaves the other worker to run its calls on a
 * line it keeps, as one worker alone does: `semaphore tasks=64 workers=2
 * permits=4` went from 63 to 27 ns/op (21 with workers=1); starting at 64
 * cpu_relax gave 40, at 1024 gave 24.  Only the acquire backs off: a
 * release that lost its CAS still holds its permits, and delaying it would
 * keep them from the waiters; and only in the fast path, never under the
 * bucket lock.  The back-off changes timing only: the word and what each
 * CAS may do are as before. */
#define CONTENDED_FIRST_ROUND 8

void pz_semaphore_init(pz_semaphore_t *s, uint64_t permits)
{
    if (!s)
        return;
    if (permits > PZ_SEMAPHORE_MAX_PERMITS)
        permits = PZ_SEMAPHORE_MAX_PERMITS;
    atomic_init(&s->state, permits << PZ__SEM_SHIFT);
}

uint64_t pz_semaphore_available(pz_semaphore_t *s)
{
    if (!s)
        return 0;
    return atomic_load_explicit(&s->state, memory_order_relaxed) >> PZ__SEM_SHIFT;
}

int pz_semaphore_try_acquire(pz_semaphore_t *s, uint64_t n)
{
    if (!s)
        return -EINVAL;
    if (n > PZ_SEMAPHORE_MAX_PERMITS)
        return -EINVAL;
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    for (;;) {
        if (st & PZ__SEM_CLOSED)
            return -EPIPE;
        if ((st & PZ__SEM_WAITERS) || (st >> PZ__SEM_SHIFT) < n)
            return -EAGAIN;
        if (atomic_compare_exchange_weak_explicit(&s->state, &st, st - n * UNIT, memory_order_acquire,
                                                  memory_order_relaxed))
            return 0;
    }
}

/* Under the bucket lock: take the permits, fail on close, or mark WAITERS
 * and park. */
static bool sem_validate(void *ctx)
{
    struct pz__sem_wait *w = ctx;
    uint64_t st = atomic_load_explicit(&w->s->state, memory_order_relaxed);
    for (;;) {
        if (st & PZ__SEM_CLOSED) {
            w->result = -EPIPE;
            return false;
        }
        if (!(st & PZ__SEM_WAITERS) && (st >> PZ__SEM_SHIFT) >= w->n) {
            if (atomic_compare_exchange_weak_explicit(&w->s->state, &st, st - w->n * UNIT, memory_order_acquire,
                                                      memory_order_relaxed)) {
                w->result = 0;
                return false;
            }
            continue;
        }
        if ((st & PZ__SEM_WAITERS) ||
            atomic_compare_exchange_weak_explicit(&w->s->state, &st, st | PZ__SEM_WAITERS, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            w->result = PZ__SEM_PARK;
            return true;
        }
    }
}

static void sem_timed_out(void *ctx, bool was_last)
{
    struct pz__sem_wait *w = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&w->s->state, ~(uint64_t)PZ__SEM_WAITERS, memory_order_relaxed);
}

struct dispatch {
    pz_semaphore_t *s;
    uint64_t added;   /* permits this release adds */
    uint64_t granted; /* permits handed to waiters so far */
};

/* Permits a dispatch may still hand out.  Read under the bucket lock; the
 * permits in the word change meanwhile only by a lock-free release after a
 * close, which adds, so the figure never runs short. */
static uint64_t dispatch_avail(struct dispatch *d, uint64_t st)
{
    return (st >> PZ__SEM_SHIFT) + d->added - d->granted;
}

static pz_filter_op_t sem_filter(uintptr_t park_token, void *ctx)
{
    struct dispatch *d = ctx;
    struct pz__sem_wait *w = (struct pz__sem_wait *)park_token;
    /* Granted by an earlier dispatch whose claim it lost: it is leaving
     * with its permits and must not be served twice. */
    if (w->granted)
        return PZ_FILTER_SKIP;
    uint64_t st = atomic_load_explicit(&d->s->state, memory_order_relaxed);
    if (st & PZ__SEM_CLOSED)
        return PZ_FILTER_STOP; /* close wakes them all itself */
    if (w->n > dispatch_avail(d, st))
        return PZ_FILTER_STOP;
    d->granted += w->n;
    w->granted = true;
    return PZ_FILTER_UNPARK;
}

static uintptr_t sem_dispatch_done(pz_unpark_result_t r, void *ctx)
{
    struct dispatch *d = ctx;
    uint64_t st = atomic_load_explicit(&d->s->state, memory_order_relaxed);
    for (;;) {
        uint64_t nst = (dispatch_avail(d, st) << PZ__SEM_SHIFT) | (st & PZ__SEM_CLOSED) |
                       (r.have_more ? PZ__SEM_WAITERS : 0);
        if (atomic_compare_exchange_weak_explicit(&d->s->state, &st, nst, memory_order_release,
                                                  memory_order_relaxed))
            break;
    }
    return TOKEN_GRANTED;
}

static void dispatch(pz_semaphore_t *s, uint64_t added)
{
    struct dispatch d = {s, added, 0};
    pz_unpark_filter(s, sem_filter, sem_dispatch_done, &d);
}

static int acquire_plain(pz_semaphore_t *s, uint64_t n, int64_t deadline)
{
    if (!s)
        return -EINVAL;
    deadline = pz__async_deadline(deadline);
    if (n > PZ_SEMAPHORE_MAX_PERMITS)
        return -EINVAL;
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    for (int round = CONTENDED_FIRST_ROUND; !(st & (PZ__SEM_WAITERS | PZ__SEM_CLOSED)) && (st >> PZ__SEM_SHIFT) >= n;
         round++) {
        /* Strong: a failure must mean that another call changed the
         * word, not a spurious one (an LL/SC machine), before we wait. */
        if (atomic_compare_exchange_strong_explicit(&s->state, &st, st - n * UNIT, memory_order_acquire,
                                                    memory_order_relaxed))
            return 0;
        pz__async_backoff(round);
        st = atomic_load_explicit(&s->state, memory_order_relaxed);
    }
    if (st & PZ__SEM_CLOSED)
        return -EPIPE;
    for (;;) {
        struct pz__sem_wait w = {s, n, 1, false};
        uintptr_t token = 0;
        pz__wait_note(PZ__WAIT_SEMAPHORE, s);
        const pz_park_opts_t opts = {.validate = sem_validate, .timed_out = sem_timed_out, .ctx = &w,
                                     .park_token = (uintptr_t)&w};
        int r = pz_park(s, deadline, &opts, &token);
        if (r == -EAGAIN) {
            if (w.result <= 0)
                return w.result;
            continue; /* cannot happen: validate parks whenever result is PZ__SEM_PARK */
        }
        if (r == 0) {
            if (token == TOKEN_CLOSED)
                return -EPIPE;
            return 0;
        }
        /* Timed out or cancelled, having left the queue. */
        if (w.granted) {
            return 0; /* the permits reached us at that instant: keep them */
        }
        if (atomic_load_explicit(&s->state, memory_order_relaxed) & PZ__SEM_WAITERS)
            dispatch(s, 0);
        return r;
    }
}

/* The advisor (src/async/observe.h): a semaphore's permits, taken and
 * given back by the same caller, are a shared hold; the wait is timed
 * only when the first attempt fails.  site is the public call's return
 * address. */
static __attribute__((noinline)) int acquire_observed(pz_semaphore_t *s, uint64_t n, int64_t deadline,
                                                      const void *site)
{
    int r = pz_semaphore_try_acquire(s, n);
    if (r == 0) {
        pz__async_observe_acquired(s, PZ__LOCK_SEMAPHORE, site, -1, PZ__LOCK_SHARED);
        return 0;
    }
    if (r != -EAGAIN)
        return r;
    int64_t t0 = pz_now();
    r = acquire_plain(s, n, deadline);
    int64_t waited = pz_now() - t0;
    if (r == 0)
        pz__async_observe_acquired(s, PZ__LOCK_SEMAPHORE, site, waited, PZ__LOCK_SHARED);
    else if (r == -ETIMEDOUT || r == -ECANCELED)
        pz__async_observe_gave_up(s, PZ__LOCK_SEMAPHORE, site, waited, PZ__LOCK_SHARED, r);
    return r;
}

int pz_semaphore_acquire_until(pz_semaphore_t *s, uint64_t n, int64_t deadline)
{
    if (PZ__ASYNC_OBSERVED())
        return acquire_observed(s, n, deadline, __builtin_return_address(0));
    return acquire_plain(s, n, deadline);
}

int pz_semaphore_acquire(pz_semaphore_t *s, uint64_t n)
{
    if (PZ__ASYNC_OBSERVED())
        return acquire_observed(s, n, PZ_FOREVER, __builtin_return_address(0));
    return acquire_plain(s, n, PZ_FOREVER);
}

int pz_semaphore_release(pz_semaphore_t *s, uint64_t n)
{
    if (!s)
        return -EINVAL;
    if (n == 0)
        return 0;
    if (PZ__ASYNC_OBSERVED())
        pz__async_observe_released(s, PZ__LOCK_SEMAPHORE, PZ__LOCK_SHARED);
    uint64_t st = atomic_load_explicit(&s->state, memory_order_relaxed);
    for (;;) {
        if (PZ_SEMAPHORE_MAX_PERMITS - (st >> PZ__SEM_SHIFT) < n)
            return -EOVERFLOW;
        if (st & PZ__SEM_WAITERS)
            break;
        if (atomic_compare_exchange_weak_explicit(&s->state, &st, st + n * UNIT, memory_order_release,
                                                  memory_order_relaxed))
            return 0;
    }
    dispatch(s, n);
    return 0;
}

void pz_semaphore_close(pz_semaphore_t *s)
{
    if (!s)
        return;
    atomic_fetch_or_explicit(&s->state, PZ__SEM_CLOSED, memory_order_acq_rel);
    /* Waiters validated before CLOSED was set are queued; this takes the
     * same bucket lock after, so it finds every one of them. */
    pz_unpark_all(s, TOKEN_CLOSED);
    atomic_fetch_and_explicit(&s->state, ~(uint64_t)PZ__SEM_WAITERS, memory_order_relaxed);
}

/* ---- select (src/io/select.c; semaphore_internal.h) ----
 *
 * A select's node waits in the queue like any acquirer, with its wait
 * record as park token, so a dispatch serves it in order.  A dispatch
 * marks a waiter granted (and counts its permits out of the word) before
 * the lot claims it; a select node whose claim fails because its select
 * fired on another case keeps its grant only until it leaves, and then
 * gives the permits back (a release), so nothing is kept that the select
 * does not return. */

static bool sem_sel_validate(void *ctx)
{
    struct pz__sem_wait *w = ctx;
    uint64_t st = atomic_load_explicit(&w->s->state, memory_order_relaxed);
    for (;;) {
        if ((st & PZ__SEM_CLOSED) || (!(st & PZ__SEM_WAITERS) && (st >> PZ__SEM_SHIFT) >= w->n)) {
            w->result = 0; /* ready: the select takes it by trying again */
            return false;
        }
        if ((st & PZ__SEM_WAITERS) ||
            atomic_compare_exchange_weak_explicit(&w->s->state, &st, st | PZ__SEM_WAITERS, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            w->result = PZ__SEM_PARK;
            return true;
        }
    }
}

bool pz__sem_sel_enqueue(pz_semaphore_t *s, struct pz__sem_wait *w, pz__waiter *node)
{
    *w = (struct pz__sem_wait){s, w->n, 1, false};
    node->park_token = (uintptr_t)w;
    return pz__lot_enqueue(s, node, sem_sel_validate, w);
}

int pz__sem_sel_leave(struct pz__sem_wait *w, pz__waiter *node, bool fired_here)
{
    pz__lot_leave(node, sem_timed_out, w);
    if (fired_here)
        return node->unpark_token == TOKEN_CLOSED ? -EPIPE : 0;
    if (w->granted)
        pz_semaphore_release(w->s, w->n); /* granted as the select fired elsewhere: back */
    else if (atomic_load_explicit(&w->s->state, memory_order_relaxed) & PZ__SEM_WAITERS)
        dispatch(w->s, 0); /* it may have been blocking the waiters behind it */
    return 1;
}
