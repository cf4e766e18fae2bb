/*
 * The parking lot's waiter node, and the two calls that let a select
 * (src/io/select.c) queue one task on several addresses at once.
 * Internal; never installed.
 */
#ifndef PZ_PARK_LOT_H
#define PZ_PARK_LOT_H

#include <stdbool.h>
#include <stdint.h>

#include "../runtime/internal.h"

typedef struct pz__waiter {
    struct pz__waiter *next, *prev; /* the bucket's queue, under its lock */
    bool queued;                /* in a bucket's queue; under its lock */
    _Atomic(const void *) addr; /* changes under both bucket locks on requeue */
    uintptr_t park_token;
    uintptr_t unpark_token;
    int64_t parked_at;
    pz_task_t *task;            /* NULL for a thread waiter */
    uint64_t gen;
    _Atomic uint32_t futex;     /* thread waiter: 1 while parked */
    _Atomic bool released;      /* task waiter: its park callback is done */
    /* What the task's park callback needs (it runs off the task's stack). */
    struct pz__bucket *bucket;
    void (*before_sleep)(void *ctx);
    void *ctx;
    /* A select node: an unparker first sets *fired from -1 to branch (and
     * skips the node if that fails), then claims the task's park. */
    _Atomic int *fired;
    int branch;
} pz__waiter;

/* Queues w (task, gen, fired and branch set by the caller; zero the rest)
 * on addr if validate(ctx), run under the bucket lock, says so; returns
 * whether it was queued.  The caller is a task between pz__park_prepare
 * and pz__park_commit, and must take w out with pz__lot_leave before it
 * returns (whatever woke it). */
bool pz__lot_enqueue(const void *addr, pz__waiter *w, bool (*validate)(void *ctx), void *ctx);
/* Takes w out of its queue if it is still there (then left(ctx, was_last)
 * runs under the bucket lock); returns whether it was.  If not, an
 * unparker took it, and its token is in w->unpark_token. */
bool pz__lot_leave(pz__waiter *w, void (*left)(void *ctx, bool was_last), void *ctx);

#endif
