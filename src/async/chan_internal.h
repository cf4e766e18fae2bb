/*
 * pz_chan's waiter node and the calls a select (src/io/select.c) queues
 * its nodes with.  Internal; never installed.
 */
#ifndef PZ_ASYNC_CHAN_INTERNAL_H
#define PZ_ASYNC_CHAN_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "plaza/async.h"
#include "../runtime/internal.h"

#define PENDING 1                /* a node's result while it is queued */
#define PZ__CHAN_LOST 2          /* a select node unlinked because its select fired elsewhere */

struct pz__chan_waiter {
    pz__chan_waiter *next, *prev;
    void *item;     /* a receiver's destination or a sender's source */
    int result;     /* PENDING, then 0 or -EPIPE (or, for a select node,
                     * -EAGAIN: woken with nothing moved; or LOST);
                     * under the channel lock */
    pz_task_t *task;          /* the waiting task, NULL for a thread */
    uint64_t gen;             /* the task's park generation */
    _Atomic uint32_t futex;   /* a thread waiter sleeps while it is 1 */
    /* A select node: it is served only by whoever sets *fired from -1 to
     * branch first (src/async/chan.c, live_first). */
    _Atomic int *fired;
    int branch;
};

/* Queues a select node (item, task, gen, fired, branch set) as a sender or
 * a receiver, setting its side's waiting bit. */
void pz__chan_sel_enqueue(pz_chan_t *ch, pz__chan_waiter *w, bool send);
/* After all of a select's nodes are queued: whether this side could go
 * through now (without taking anything), so the select does not sleep
 * past an item or a free cell that came before its node was queued. */
bool pz__chan_sel_ready(pz_chan_t *ch, bool send);
/* Takes the node out if it is still queued; returns its result (PENDING
 * if it was still queued). */
int pz__chan_sel_leave(pz_chan_t *ch, pz__chan_waiter *w, bool send);

#endif
