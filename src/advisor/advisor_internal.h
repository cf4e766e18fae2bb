/*
 * The advisor's records (src/advisor/advisor.c fills them, report.c reads
 * them).  Every field read by a report is atomic: the report runs while
 * the locks are in use.
 */
#ifndef PZ_ADVISOR_INTERNAL_H
#define PZ_ADVISOR_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"

#define PZ__ADVISOR_SITES 8
#define PZ__ADVISOR_OPEN 8 /* timed holds of one lock in progress at once */
#define PZ__ADVISOR_KIND_UNKNOWN 99u

typedef struct pz__advisor_site {
    _Atomic(const void *) addr; /* a return address in the acquiring function */
    _Atomic uint64_t acquisitions, contended, gave_up, wait_sum;
    _Atomic uint64_t timed_holds, hold_sum, waiting_sum;
} pz__advisor_site;

/* A timed hold in progress, claimed by its holder (owner: its caller id,
 * by CAS from 0) at the acquisition and given back at the release; the
 * other fields are written by the owner only, between the two. */
typedef struct pz__advisor_open {
    _Atomic uint64_t owner;
    int64_t t0, susp0, cpu0, vol0;
    const void *thread; /* the holding thread's identity (a thread-local's address) */
    pz__advisor_site *site;
    bool shared;
} pz__advisor_open;

typedef struct pz__advisor_lock {
    const void *lock;
    _Atomic unsigned kind;
    _Atomic(char *) name;
    _Atomic(const void *) first_site;
    /* The owner probe (runtime.h, pz__observe_owner): read by every
     * exclusive acquisition, written when a timed hold arms it (probe: its
     * holder; probe_weight: the acquisitions that sample stands for) and
     * when the next exclusive acquisition disarms it.  A line of its own,
     * so that the writes of the contended and timed paths below do not
     * take it away from the readers.  owner_changes is the sum of the
     * weights of the probes that found another owner (an estimate; exact
     * while every hold is timed); owner_probes counts the probes. */
    _Alignas(64) _Atomic uint64_t probe, probe_weight;
    _Atomic uint64_t owner_changes, owner_probes;
    /* Acquisitions flushed from the threads' caches; contended waits and
     * waits that gave up (deadline, cancel); channel waits. */
    _Alignas(64) _Atomic uint64_t acquisitions, shared, contended, gave_up;
    _Atomic uint64_t wait_sum, wait_max, blocked_worker_ns;
    _Atomic uint64_t send_waits, recv_waits;
    /* The timed (sampled) holds, exclusive and shared. */
    _Atomic uint64_t timed_holds, timed_shared, hold_sum, hold_max, waiting_sum, running_max;
    _Atomic uint64_t suspended_holds, blocked_holds;
    _Atomic uint64_t long_holds; /* timed holds of LONG_HOLD_NS or more */
    pz__advisor_open open[PZ__ADVISOR_OPEN];
    pz__advisor_site sites[PZ__ADVISOR_SITES];
    _Atomic uint32_t wait_hist[HIST_BUCKETS]; /* waits that took time (the others waited 0) */
    _Atomic uint32_t hold_hist[HIST_BUCKETS]; /* the timed holds */
} pz__advisor_lock;

const char *pz__advisor_kind_name(unsigned kind);
/* The figures still counted in the threads' caches (advisor.c) for lock
 * r (and site, unless NULL); the waits' histogram is added to wait_hist
 * (HIST_BUCKETS counts) unless it is NULL. */
typedef struct pz__advisor_count_t {
    uint64_t acquisitions, shared, contended, wait_sum, wait_max, blocked_worker_ns;
} pz__advisor_count_t;
void pz__advisor_thread_counts(pz__advisor_lock *r, const void *site, pz__advisor_count_t *c, uint32_t *wait_hist);
pz__advisor_lock *pz__advisor_record_at(unsigned i);
unsigned pz__advisor_table_size(void);
/* Picoseconds per uncontended lock+unlock on this machine, measured when
 * the advisor was switched on. */
extern int64_t pz__advisor_cost_mutex_ps, pz__advisor_cost_async_ps;

/* "file:line" and the function of a code address (libdw), into buffers;
 * false if unknown. */
bool pz__advisor_resolve(const void *addr, char *where, size_t where_size, char *func, size_t func_size);

/* src/advisor/http.c: starts the live page if PLAZA_ADVISOR_HTTP is set. */
void pz__advisor_http_start_from_env(void);
/* The runtime_started hook: spawns the live page task if asked for. */
void pz__advisor_runtime_started(void);

#endif
