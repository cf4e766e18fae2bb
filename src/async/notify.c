/*
 * pz_notify.  The word is described in include/plaza/async.h.
 *
 * Waiters validate under the bucket lock: a newer epoch than the one they
 * registered with, or a stored permit (consumed by CAS), returns at once;
 * otherwise they set WAITERS with a CAS on the whole word, which fails if a
 * notify_all bumped the epoch in between.  notify_all bumps the epoch with
 * one atomic add and, if the old word had WAITERS, wakes everyone parked;
 * a waiter that set WAITERS did so before the add (same word), so it is
 * queued by the time the waker takes the bucket lock.  notify_one wakes the
 * first waiter through the lot, or stores the permit when nobody can be
 * woken; both happen under the bucket lock or by CAS against WAITERS, so a
 * notify_one is never both dropped and undelivered.
 *
 * Cancel-safety: a waiter woken by notify_one received that notification
 * and returns 0 even if its deadline or a cancel came at the same instant
 * (the lot never both wakes and times out a waiter), so a notify_one is
 * never lost; a waiter that timed out took nothing.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include "../runtime/internal.h"
#include "deadline.h"

#define PERMIT 1u
#define WAITERS 2u
#define EPOCH_SHIFT 2
#define EPOCH_UNIT ((uint64_t)1 << EPOCH_SHIFT)

uint64_t pz_notify_epoch(pz_notify_t *n)
{
    if (!n)
        return 0;
    return atomic_load_explicit(&n->state, memory_order_acquire) >> EPOCH_SHIFT;
}

struct notify_wait {
    pz_notify_t *n;
    uint64_t epoch;
    bool done;
};

static bool notify_validate(void *ctx)
{
    struct notify_wait *w = ctx;
    uint64_t st = atomic_load_explicit(&w->n->state, memory_order_acquire);
    for (;;) {
        if ((st >> EPOCH_SHIFT) != (w->epoch & (UINT64_MAX >> EPOCH_SHIFT))) {
            w->done = true;
            return false;
        }
        if (st & PERMIT) {
            if (atomic_compare_exchange_weak_explicit(&w->n->state, &st, st & ~(uint64_t)PERMIT,
                                                      memory_order_acquire, memory_order_acquire)) {
                w->done = true;
                return false;
            }
            continue;
        }
        if ((st & WAITERS) || atomic_compare_exchange_weak_explicit(&w->n->state, &st, st | WAITERS,
                                                                    memory_order_acquire, memory_order_acquire))
            return true;
    }
}

static void notify_timed_out(void *ctx, bool was_last)
{
    struct notify_wait *w = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&w->n->state, ~(uint64_t)WAITERS, memory_order_relaxed);
}

int pz_notify_wait_since(pz_notify_t *n, uint64_t epoch, int64_t deadline)
{
    if (!n)
        return -EINVAL;
    deadline = pz__async_deadline(deadline);
    for (;;) {
        struct notify_wait w = {n, epoch, false};
        pz__wait_note(PZ__WAIT_NOTIFY, n);
        const pz_park_opts_t opts = {.validate = notify_validate, .timed_out = notify_timed_out, .ctx = &w};
        int r = pz_park(n, deadline, &opts, NULL);
        if (r == -EAGAIN) {
            if (w.done)
                return 0;
            continue;
        }
        return r;
    }
}

int pz_notify_wait_until(pz_notify_t *n, int64_t deadline)
{
    return pz_notify_wait_since(n, pz_notify_epoch(n), deadline);
}

int pz_notify_wait(pz_notify_t *n)
{
    return pz_notify_wait_since(n, pz_notify_epoch(n), PZ_FOREVER);
}

static uintptr_t one_done(pz_unpark_result_t r, void *ctx)
{
    pz_notify_t *n = ctx;
    uint64_t st = atomic_load_explicit(&n->state, memory_order_relaxed);
    for (;;) {
        uint64_t nst = st;
        if (!r.have_more)
            nst &= ~(uint64_t)WAITERS;
        if (!r.unparked)
            nst |= PERMIT; /* every waiter was leaving: keep the notification */
        if (atomic_compare_exchange_weak_explicit(&n->state, &st, nst, memory_order_release, memory_order_relaxed))
            return 0;
    }
}

void pz_notify_one(pz_notify_t *n)
{
    if (!n)
        return;
    uint64_t st = atomic_load_explicit(&n->state, memory_order_relaxed);
    for (;;) {
        if (st & WAITERS) {
            pz_unpark_one(n, one_done, n);
            return;
        }
        if (st & PERMIT) {
            /* Order this notify's prior writes for the consumer. */
            if (atomic_compare_exchange_weak_explicit(&n->state, &st, st, memory_order_release,
                                                      memory_order_relaxed))
                return;
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&n->state, &st, st | PERMIT, memory_order_release,
                                                  memory_order_relaxed))
            return;
    }
}

static pz_filter_op_t all_filter(uintptr_t park_token, void *ctx)
{
    (void)park_token;
    (void)ctx;
    return PZ_FILTER_UNPARK;
}

static uintptr_t all_done(pz_unpark_result_t r, void *ctx)
{
    pz_notify_t *n = ctx;
    if (!r.have_more)
        atomic_fetch_and_explicit(&n->state, ~(uint64_t)WAITERS, memory_order_relaxed);
    return 0;
}

void pz_notify_all(pz_notify_t *n)
{
    if (!n)
        return;
    uint64_t old = atomic_fetch_add_explicit(&n->state, EPOCH_UNIT, memory_order_acq_rel);
    if (old & WAITERS)
        pz_unpark_filter(n, all_filter, all_done, n);
}
