/*
 * plaza's parking lot: the wait queues every plaza lock is built on, open to
 * users who build their own primitives.
 *
 * A primitive keeps its state in its own small word (a mutex is one byte)
 * and never has a wait queue of its own.  Waiters park on an address; the
 * lot keeps one global hash table of queues keyed by address, so a lock
 * costs no memory for waiters and no initialisation.  The idea is WebKit's
 * ParkingLot, and Rust's parking_lot made it known; this is plaza's own.
 *
 * A waiter is a thread (it sleeps on a futex) or, when pz_park is called from
 * a task without PZ_PARK_THREAD, a task (it suspends; its worker runs other
 * tasks).  Callbacks run while the lot holds the lock of the queue's bucket:
 * they must be short and must not park, unpark or take other plaza locks.
 *
 * Bad input.  addr is only a key (never read or written), so any address
 * is valid except NULL: pz_park refuses NULL and any flag other than
 * PZ_PARK_THREAD with -EINVAL, before it calls anything (opts NULL is
 * no callbacks, park token 0, no flags); the unpark calls
 * and pz_requeue wake and move nobody on NULL, and pz_unpark_filter wakes
 * nobody without a filter.  Every callback may be NULL (validate: park
 * without a check; pz_requeue's validate: PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST;
 * the unparks' callback: token 0).  A deadline already past, 0 or negative
 * included, still validates and queues the waiter, which then times out at
 * once: timed_out runs and pz_park returns -ETIMEDOUT.  The lot keeps no
 * state per address, so there is nothing to initialise or destroy.
 */
#ifndef PLAZA_PARK_H
#define PLAZA_PARK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* pz_park flags. */
#define PZ_PARK_THREAD 1u /* block the calling thread even when it runs a task */

/* What an unpark did, passed to its callback and returned. */
typedef struct pz_unpark_result {
    int unparked;   /* waiters woken */
    int requeued;   /* waiters moved to another address (pz_requeue) */
    bool have_more; /* waiters left on the address after this call */
    bool be_fair;   /* the lot asks for a fair hand-off now: the woken waiter
                     * has waited about 1 ms, or a random interval of up to
                     * 1 ms has passed since the last fair hand-off here */
} pz_unpark_result_t;

/* How pz_park waits; a zeroed struct (or NULL) means: no callbacks, park
 * token 0, no flags. */
typedef struct pz_park_opts {
    /* Under the bucket lock, before queueing: false returns -EAGAIN at once
     * (the state the caller saw has changed). */
    bool (*validate)(void *ctx);
    /* After the waiter is queued and the bucket lock released, before it
     * sleeps (a condition variable unlocks its mutex here). */
    void (*before_sleep)(void *ctx);
    /* When the wait ends by deadline or cancel: under the bucket lock, once
     * the waiter has left the queue; was_last says no other waiter remains
     * on the address. */
    void (*timed_out)(void *ctx, bool was_last);
    void *ctx;             /* passed to the three callbacks */
    uintptr_t park_token;  /* what pz_unpark_filter sees of this waiter */
    unsigned flags;        /* PZ_PARK_THREAD */
} pz_park_opts_t;

/*
 * Parks the caller on addr until an unpark picks it, the deadline (absolute
 * pz_now() nanoseconds, PZ_FOREVER for none; one that has passed still
 * validates and queues, then times out at once) passes or, for a task, the
 * task is cancelled.  opts may be NULL.
 *
 * Returns 0 and stores the unparker's token in *unpark_token (if not NULL),
 * or -EAGAIN (validate said no), -ETIMEDOUT, -ECANCELED.
 */
int pz_park(const void *addr, int64_t deadline, const pz_park_opts_t *opts, uintptr_t *unpark_token);

/*
 * Wakes the first waiter on addr (waiters are served in the order they
 * parked).  callback(result, ctx), if not NULL, runs under the bucket lock
 * after the waiter is chosen and before it runs; it returns the token the
 * waiter receives (a mutex uses it to say "you own the lock now").
 */
pz_unpark_result_t pz_unpark_one(const void *addr, uintptr_t (*callback)(pz_unpark_result_t result, void *ctx),
                                 void *ctx);

/* Wakes every waiter on addr, each receiving unpark_token.  Returns how many. */
int pz_unpark_all(const void *addr, uintptr_t unpark_token);

/* pz_requeue operations, chosen by its validate callback. */
typedef enum pz_requeue_op {
    PZ_REQUEUE_ABORT,                  /* do nothing */
    PZ_REQUEUE_UNPARK_ONE,             /* wake the first waiter, move none */
    PZ_REQUEUE_ALL,                    /* move every waiter */
    PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST /* wake the first, move the rest */
} pz_requeue_op_t;

/*
 * Moves waiters from one address to another without waking them (so a
 * condition variable's notify_all wakes one waiter and queues the rest on
 * the mutex, instead of waking a herd that fights for it).  validate(ctx)
 * runs under both bucket locks and picks the operation; callback(op, result,
 * ctx) runs under them afterwards and returns the woken waiter's token.
 */
pz_unpark_result_t pz_requeue(const void *from, const void *to, pz_requeue_op_t (*validate)(void *ctx),
                              uintptr_t (*callback)(pz_requeue_op_t op, pz_unpark_result_t result, void *ctx),
                              void *ctx);

/* pz_unpark_filter decisions. */
typedef enum pz_filter_op {
    PZ_FILTER_UNPARK, /* wake this waiter and go on */
    PZ_FILTER_SKIP,   /* leave it parked and go on */
    PZ_FILTER_STOP,   /* leave it and every later one */
    /* Wake this waiter and stop there; if it has just timed out or been
     * cancelled (it is leaving the queue on its own), go on to the next as
     * if it were not there.  Wakes exactly one waiter when any can be
     * woken, deciding before the waiter is taken out of the queue (a mutex
     * uses it to leave the first waiter queued when it cannot hand it the
     * lock). */
    PZ_FILTER_UNPARK_STOP
} pz_filter_op_t;

/*
 * Walks the waiters on addr in order, asking filter(park_token, ctx) about
 * each (a reader-writer lock wakes readers up to the first writer).
 * callback(result, ctx) then returns the token every woken waiter receives.
 */
pz_unpark_result_t pz_unpark_filter(const void *addr, pz_filter_op_t (*filter)(uintptr_t park_token, void *ctx),
                                    uintptr_t (*callback)(pz_unpark_result_t result, void *ctx), void *ctx);

#ifdef __cplusplus
}
#endif
#endif
