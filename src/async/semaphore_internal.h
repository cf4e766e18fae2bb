/* pz_semaphore's wait record and its select calls (semaphore.c).
 * Internal; never installed. */
#ifndef PZ_ASYNC_SEMAPHORE_INTERNAL_H
#define PZ_ASYNC_SEMAPHORE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "plaza/async.h"
#include "../park/lot.h"

/* A waiter's result while it sleeps (the others are return values). */
#define PZ__SEM_PARK 1

struct pz__sem_wait {
    pz_semaphore_t *s;
    uint64_t n;
    int result;   /* validate's verdict: 0 acquired or -EPIPE closed (what the
                   * acquire returns), or PZ__SEM_PARK */
    bool granted; /* set by a dispatch under the bucket lock */
};

/* Queues a select node (task, gen, fired, branch set) for w->n permits of
 * s; false (not queued) if the permits are there or s is closed. */
bool pz__sem_sel_enqueue(pz_semaphore_t *s, struct pz__sem_wait *w, pz__waiter *node);
/* Takes the node out.  fired_here: the select fired on this case; returns
 * 0 with the permits held or -EPIPE (closed).  Otherwise gives back any
 * permits granted meanwhile. */
int pz__sem_sel_leave(struct pz__sem_wait *w, pz__waiter *node, bool fired_here);

#endif
