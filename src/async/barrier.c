/*
 * pz_barrier.  state: bits 0-31 the number arrived in the current
 * generation, bits 32-63 the generation.  count (fixed at init) is how many
 * make a generation.
 *
 * An arrival adds one by CAS.  The one that makes count (the leader) starts
 * the next generation in the same CAS (arrived 0, generation + 1) and wakes
 * every waiter parked on the address.  The others park while the
 * generation they joined is current (validated under the bucket lock, so
 * the leader's wake, which takes that lock after its CAS, cannot miss them).
 *
 * Cancel-safety: a waiter that times out or is cancelled runs its
 * timed_out callback under the bucket lock after leaving the queue; there
 * it takes its arrival back by CAS, unless the generation has already
 * moved on (the leader completed it counting this waiter, and its wake lost
 * the race with the deadline): then the waiter passed the barrier and
 * returns 0.  Taking an arrival back and the leader's completing CAS act on
 * the same word, so exactly one of them wins.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include "../runtime/internal.h"
#include "deadline.h"

#define ARRIVED_MASK 0xffffffffull
#define GEN_SHIFT 32

int pz_barrier_init(pz_barrier_t *b, uint32_t n)
{
    if (!b)
        return -EINVAL;
    if (n == 0)
        return -EINVAL;
    atomic_init(&b->state, 0);
    b->count = n;
    return 0;
}

struct barrier_wait {
    pz_barrier_t *b;
    uint64_t gen;
    bool passed;
};

static bool barrier_validate(void *ctx)
{
    struct barrier_wait *w = ctx;
    return (atomic_load_explicit(&w->b->state, memory_order_acquire) >> GEN_SHIFT) == w->gen;
}

static void barrier_timed_out(void *ctx, bool was_last)
{
    (void)was_last;
    struct barrier_wait *w = ctx;
    uint64_t st = atomic_load_explicit(&w->b->state, memory_order_acquire);
    for (;;) {
        if ((st >> GEN_SHIFT) != w->gen) {
            w->passed = true;
            return;
        }
        if (atomic_compare_exchange_weak_explicit(&w->b->state, &st, st - 1, memory_order_acquire,
                                                  memory_order_acquire))
            return;
    }
}

int pz_barrier_wait_until(pz_barrier_t *b, int64_t deadline)
{
    if (!b)
        return -EINVAL;
    deadline = pz__async_deadline(deadline);
    if (b->count == 0)
        return -EINVAL;
    uint64_t st = atomic_load_explicit(&b->state, memory_order_relaxed);
    uint64_t gen;
    for (;;) {
        gen = st >> GEN_SHIFT;
        uint64_t arrived = (st & ARRIVED_MASK) + 1;
        uint64_t nst = arrived >= b->count ? (gen + 1) << GEN_SHIFT : st + 1;
        if (atomic_compare_exchange_weak_explicit(&b->state, &st, nst, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            if (arrived >= b->count) {
                pz_unpark_all(b, 0);
                return PZ_BARRIER_LEADER;
            }
            break;
        }
    }
    for (;;) {
        struct barrier_wait w = {b, gen & (UINT64_MAX >> GEN_SHIFT), false};
        pz__wait_note(PZ__WAIT_BARRIER, b);
        const pz_park_opts_t opts = {.validate = barrier_validate, .timed_out = barrier_timed_out, .ctx = &w};
        int r = pz_park(b, deadline, &opts, NULL);
        if (r == 0 || r == -EAGAIN) {
            /* Woken by the leader, or the generation moved on before we
             * parked; a wake meant for another barrier sharing nothing
             * with us cannot happen (the address is ours), but check. */
            if ((atomic_load_explicit(&b->state, memory_order_acquire) >> GEN_SHIFT) != w.gen)
                return 0;
            continue;
        }
        if (w.passed) {
            return 0;
        }
        return r;
    }
}

int pz_barrier_wait(pz_barrier_t *b)
{
    return pz_barrier_wait_until(b, PZ_FOREVER);
}
