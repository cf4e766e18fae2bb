/*
 * pz_once.  Word: DONE (fn has returned; final), RUNNING (a caller runs
 * fn), PARKED (a caller may be parked on the once's address waiting for
 * DONE).  Only the caller that moved the word from 0 to RUNNING runs fn;
 * it stores DONE with release, so a caller that loads DONE with acquire
 * sees what fn wrote, and wakes every parked caller if PARKED was set.
 * A waiter validates RUNNING|PARKED under the bucket lock before it
 * sleeps, and the runner's unpark_all takes that lock after storing DONE,
 * so no waiter is left behind.
 *
 * owner names the runner while fn runs (its task, or the thread for a
 * plain thread) so that a call from inside fn is reported instead of
 * waiting for itself for ever.
 */
#define _GNU_SOURCE
#include "plaza/sync.h"
#include "plaza/park.h"

#include <sched.h>

#include "../runtime/internal.h"

#define DONE PZ__ONCE_DONE
#define RUNNING 2u
#define PARKED 4u

static _Thread_local char thread_marker;

/* Who is calling: its task (which may move between threads while fn
 * runs), or the thread. */
static const void *caller_id(void)
{
    pz_task_t *t = pz_self();
    return t ? (const void *)t : (const void *)&thread_marker;
}

static bool still_running(void *arg)
{
    pz_once_t *o = arg;
    return atomic_load_explicit(&o->state, memory_order_relaxed) == (RUNNING | PARKED);
}

void pz__once_slow(pz_once_t *o, void (*fn)(void *), void *arg)
{
    if (!fn) {
        /* Checked here, off the inline fast path: it costs nothing there. */
        pz__report("pz_once: once %p is given a NULL function; nothing runs and the once stays unrun", (void *)o);
        return;
    }
    int spins = 0;
    uint32_t s = atomic_load_explicit(&o->state, memory_order_acquire);
    for (;;) {
        if (s & DONE)
            return;
        if (!(s & RUNNING)) {
            if (atomic_compare_exchange_weak_explicit(&o->state, &s, RUNNING, memory_order_acquire,
                                                      memory_order_acquire)) {
                atomic_store_explicit(&o->owner, caller_id(), memory_order_relaxed);
                fn(arg);
                atomic_store_explicit(&o->owner, NULL, memory_order_relaxed);
                uint32_t prev = atomic_exchange_explicit(&o->state, DONE, memory_order_release);
                if (prev & PARKED)
                    pz_unpark_all(o, 0);
                return;
            }
            continue;
        }
        if (atomic_load_explicit(&o->owner, memory_order_relaxed) == caller_id()) {
            pz__report("pz_once: once %p is called again from inside its own function, which would wait for "
                       "itself for ever; the inner call returns without waiting",
                       (void *)o);
            return;
        }
        if (!(s & PARKED) && spins < 4) {
            spins++;
            sched_yield();
            s = atomic_load_explicit(&o->state, memory_order_acquire);
            continue;
        }
        if (!(s & PARKED) && !atomic_compare_exchange_weak_explicit(&o->state, &s, s | PARKED,
                                                                     memory_order_acquire, memory_order_acquire))
            continue;
        pz__wait_note(PZ__WAIT_ONCE, o);
        const pz_park_opts_t opts = {.validate = still_running, .ctx = o, .flags = PZ_PARK_THREAD};
        pz_park(o, PZ_FOREVER, &opts, NULL);
        s = atomic_load_explicit(&o->state, memory_order_acquire);
    }
}
