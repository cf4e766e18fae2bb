/*
 * The moment a sync lock's waiter first parks, for the advisor's observed
 * paths (src/sync/observe.c), which time a wait that parked always and
 * one that ended in the spin only as a sample: they set want before the
 * slow path and read at after it.  The slow paths call pz__sync_note_park
 * before each park; unless the caller wants the note it is one load of a
 * thread-local.  A thread-local is right here: a sync lock's waiter
 * blocks its thread (a task waiting on one does not move between
 * threads), and nothing else on the thread runs between the set and the
 * read.
 */
#ifndef PZ_SYNC_PARK_NOTE_H
#define PZ_SYNC_PARK_NOTE_H

#include <stdbool.h>
#include <stdint.h>

#include "plaza/runtime.h"

struct pz__sync_park_note {
    bool want;  /* the observed path is waiting to hear */
    int64_t at; /* pz_now() at the first park since want was set, 0 if none */
};
extern __thread struct pz__sync_park_note pz__sync_park_note __attribute__((tls_model("initial-exec")));

static inline void pz__sync_note_park(void)
{
    struct pz__sync_park_note *n = &pz__sync_park_note;
    if (__builtin_expect(n->want, 0) && !n->at)
        n->at = pz_now();
}

#endif
