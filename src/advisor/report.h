/* A lock's figures and verdict, as the reports show them (report.c). */
#ifndef PZ_ADVISOR_REPORT_H
#define PZ_ADVISOR_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "advisor_internal.h"

typedef struct pz__advisor_figures_t {
    unsigned kind;
    uint64_t acquisitions, shared, contended, gave_up, owner_changes, owner_probes, blocked_worker_ns;
    uint64_t timed_holds, timed_shared, suspended_holds, blocked_holds;
    uint64_t send_waits, recv_waits; /* channels */
    uint64_t hold_p50, hold_p99, hold_max, wait_p50, wait_p99, wait_max;
    double suspended_share, running_mean_ns;
    uint32_t wait_hist[HIST_BUCKETS]; /* the record's and the threads' slots' */
    const char *verdict;
    char advice[400];
} pz__advisor_figures_t;

/* Called under the report lock (report.c): it uses a static histogram. */
void pz__advisor_figures(pz__advisor_lock *r, pz__advisor_figures_t *f);
/* The lock's name (given, or function@file:line of its first site) and
 * its first site. */
void pz__advisor_label(pz__advisor_lock *r, char *name, size_t name_size, char *site, size_t site_size);

#endif
