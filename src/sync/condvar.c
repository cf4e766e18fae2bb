/*
 * pz_condvar.  The word and the guarantees are described in sync.h.
 *
 * A waiter parks on the condvar's address.  Under the bucket lock it
 * records its mutex in the word (or finds the same one there), then, once
 * queued, unlocks the mutex (before_sleep): a notify that follows the
 * unlock finds it queued, so no wake-up between the predicate check and the
 * sleep is lost.  The word returns to NULL under the bucket lock when the
 * last waiter leaves (notified, moved, or timed out), so the condvar may
 * later be used with another mutex.
 *
 * notify_all takes the buckets of the condvar and of the mutex together
 * and moves the waiters onto the mutex's queue.  If the mutex is locked it
 * moves them all and sets the mutex's PARKED bit first (while LOCKED is
 * still set, by CAS), so the holder's unlock takes the slow path and wakes
 * them one by one; otherwise it wakes one (which then locks the mutex) and
 * moves the rest, setting PARKED afterwards so that their turn comes when
 * that one unlocks.  A moved waiter is woken by the mutex's unlock like any
 * mutex waiter: with the mutex's hand-off token it owns the mutex already,
 * otherwise it locks it.
 *
 * Only a notify removes a waiter from the queue (the lot never wakes a
 * thread waiter otherwise; futex wake-ups are re-checked), hence no
 * spurious wake-ups.  A moved waiter whose deadline passes while it waits
 * for the mutex was notified all the same and returns 0; it tells the two
 * cases apart by the notify_all epoch.
 */
#define _GNU_SOURCE
#include "plaza/sync.h"
#include "plaza/park.h"

#include <errno.h>

#include "../runtime/internal.h"

#define TOKEN_NOTIFIED 0 /* never PZ__MUTEX_TOKEN_HANDOFF */

struct wait_ctx {
    pz_condvar_t *cv;
    pz_mutex_t *m;
    pz_mutex_t *other; /* misuse: the mutex the other waiters use */
    uint32_t epoch;    /* notify_all epoch when the waiter queued */
    bool requeued;     /* found moved onto the mutex at its deadline */
};

static bool wait_validate(void *arg)
{
    struct wait_ctx *c = arg;
    pz_mutex_t *cur = atomic_load_explicit(&c->cv->mutex, memory_order_relaxed);
    if (!cur) {
        atomic_store_explicit(&c->cv->mutex, c->m, memory_order_relaxed);
    } else if (cur != c->m) {
        c->other = cur;
        return false;
    }
    c->epoch = atomic_load_explicit(&c->cv->epoch, memory_order_relaxed);
    return true;
}

static void wait_before_sleep(void *arg)
{
    struct wait_ctx *c = arg;
    pz_mutex_unlock(c->m);
}

/* Runs under the bucket lock of the queue the waiter left: the condvar's,
 * or the mutex's if a notify_all moved it (every notify_all since the
 * waiter queued moved it, and each bumps the epoch under both locks). */
static void wait_timed_out(void *arg, bool was_last)
{
    struct wait_ctx *c = arg;
    if (atomic_load_explicit(&c->cv->epoch, memory_order_relaxed) != c->epoch) {
        c->requeued = true;
        if (was_last)
            atomic_fetch_and_explicit(&c->m->state, (uint8_t)~PZ__MUTEX_PARKED, memory_order_relaxed);
    } else if (was_last) {
        atomic_store_explicit(&c->cv->mutex, NULL, memory_order_relaxed);
    }
}

int pz_condvar_wait_until(pz_condvar_t *cv, pz_mutex_t *m, int64_t deadline)
{
    struct wait_ctx c = {cv, m, NULL, 0, false};
    uintptr_t token = TOKEN_NOTIFIED;
    pz__wait_note(PZ__WAIT_CONDVAR, cv);
    const pz_park_opts_t opts = {.validate = wait_validate, .before_sleep = wait_before_sleep,
                                 .timed_out = wait_timed_out, .ctx = &c, .flags = PZ_PARK_THREAD};
    int r = pz_park(cv, deadline, &opts, &token);
    if (r == -EAGAIN) {
        pz__report("pz_condvar_wait: condvar %p is waited on with mutex %p while other waiters use mutex %p; "
                   "a condvar serves one mutex at a time (the wait returns -EINVAL, mutex still held)",
                   (void *)cv, (void *)m, (void *)c.other);
        return -EINVAL;
    }
    if (r == 0 && token == PZ__MUTEX_TOKEN_HANDOFF) {
        /* Moved onto the mutex, and its unlocker handed it to us. */
        pz__held_acquired(m, "pz_mutex");
        return 0;
    }
    pz_mutex_lock(m);
    return (r == -ETIMEDOUT && !c.requeued) ? -ETIMEDOUT : 0;
}

int pz_condvar_wait(pz_condvar_t *cv, pz_mutex_t *m)
{
    return pz_condvar_wait_until(cv, m, PZ_FOREVER);
}

static uintptr_t notify_one_decide(pz_unpark_result_t r, void *arg)
{
    pz_condvar_t *cv = arg;
    if (!r.have_more)
        atomic_store_explicit(&cv->mutex, NULL, memory_order_relaxed);
    return TOKEN_NOTIFIED;
}

bool pz_condvar_notify_one(pz_condvar_t *cv)
{
    /* NULL: nobody waits.  A waiter stores its mutex before it unlocks
     * that mutex, so a notifier that changed the predicate under the mutex
     * sees the store. */
    if (!atomic_load_explicit(&cv->mutex, memory_order_relaxed))
        return false;
    return pz_unpark_one(cv, notify_one_decide, cv).unparked != 0;
}

struct notify_ctx {
    pz_condvar_t *cv;
    pz_mutex_t *m;
    bool retry; /* the waiters now use another mutex */
};

static pz_requeue_op_t notify_all_validate(void *arg)
{
    struct notify_ctx *c = arg;
    pz_mutex_t *cur = atomic_load_explicit(&c->cv->mutex, memory_order_relaxed);
    if (cur != c->m) {
        c->retry = cur != NULL;
        return PZ_REQUEUE_ABORT;
    }
    /* Every waiter leaves the condvar's queue now. */
    atomic_store_explicit(&c->cv->mutex, NULL, memory_order_relaxed);
    atomic_fetch_add_explicit(&c->cv->epoch, 1, memory_order_relaxed);
    uint8_t s = atomic_load_explicit(&c->m->state, memory_order_relaxed);
    while (s & PZ__MUTEX_LOCKED) {
        if (atomic_compare_exchange_weak_explicit(&c->m->state, &s, (uint8_t)(s | PZ__MUTEX_PARKED),
                                                  memory_order_relaxed, memory_order_relaxed))
            return PZ_REQUEUE_ALL;
    }
    return PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST;
}

static uintptr_t notify_all_decide(pz_requeue_op_t op, pz_unpark_result_t r, void *arg)
{
    struct notify_ctx *c = arg;
    if (op == PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST && r.requeued)
        atomic_fetch_or_explicit(&c->m->state, (uint8_t)PZ__MUTEX_PARKED, memory_order_relaxed);
    return TOKEN_NOTIFIED;
}

bool pz_condvar_notify_all(pz_condvar_t *cv)
{
    for (;;) {
        pz_mutex_t *m = atomic_load_explicit(&cv->mutex, memory_order_relaxed);
        if (!m)
            return false;
        struct notify_ctx c = {cv, m, false};
        pz_unpark_result_t r = pz_requeue(cv, m, notify_all_validate, notify_all_decide, &c);
        if (!c.retry)
            return r.unparked + r.requeued > 0;
    }
}
