/*
 * The moment a sync lock's waiter first gives up its CPU (its first
 * sched_yield in the spin, or its first park), for the advisor's observed
 * paths (src/sync/observe.c), which time a wait that got that far always
 * and one that ended in the pause-spin only as a sample: they set want
 * before the slow path and read at after it.  The spin and the slow paths
 * call pz__sync_note_off_cpu before each yield and park; unless the caller
 * wants the note it is one load of a thread-local.  A thread-local is
 * right here: a sync lock's waiter blocks its thread (a task waiting on
 * one does not move between threads), and nothing else on the thread runs
 * between the set and the read.  A yield counts, not only a park: on a
 * busy machine each of the spin's yields can last a time slice, so
 * timing from the park would miss milliseconds.
 */
#ifndef PZ_SYNC_OFF_CPU_NOTE_H
#define PZ_SYNC_OFF_CPU_NOTE_H

#include <stdbool.h>
#include <stdint.h>

#include "plaza/runtime.h"

struct pz__sync_off_cpu_note {
    bool want;  /* the observed path is waiting to hear */
    int64_t at; /* pz_now() at the first yield or park since want was set, 0 if none */
};
extern __thread struct pz__sync_off_cpu_note pz__sync_off_cpu_note __attribute__((tls_model("initial-exec")));

static inline void pz__sync_note_off_cpu(void)
{
    struct pz__sync_off_cpu_note *n = &pz__sync_off_cpu_note;
    if (__builtin_expect(n->want, 0) && !n->at)
        n->at = pz_now();
}

#endif
