/*
 * Fault injection (built with -DPLAZA_FAULTS=ON only).
 *
 * The platform wrappers that can fail in production (stack mappings,
 * thread creation, the poller's registrations, eventfd and epoll creation,
 * accept, reads and writes) ask pz__fault whether to fail this call, and
 * reads and writes ask pz__fault_short for a shorter count, so that the
 * layers above meet every error path they claim to handle.  Decisions come
 * from a per-thread xorshift generator seeded by PLAZA_FAULTS_SEED (and a
 * per-thread counter), failing a call with the probability
 * PLAZA_FAULTS_RATE (default 0.01).  Without the option both are constant
 * functions the compiler removes.
 */
#ifndef PZ_FAULT_H
#define PZ_FAULT_H

#include <stdbool.h>
#include <stddef.h>

enum pz__fault_site {
    PZ__FAULT_MMAP,
    PZ__FAULT_MALLOC,
    PZ__FAULT_THREAD,
    PZ__FAULT_POLLER,
    PZ__FAULT_EVENTFD,
    PZ__FAULT_ACCEPT,
    PZ__FAULT_IO,
    PZ__FAULT_SITES
};

#ifdef PZ_FAULTS
bool pz__fault(enum pz__fault_site site);
size_t pz__fault_short(size_t n);
/* Faults injected so far at a site (for the soak test's report). */
long pz__faults_injected(enum pz__fault_site site);
/* Stops (false) or resumes (true) injecting, process-wide: a test sets up
 * and checks its invariants without faults. */
void pz__faults_enable(bool on);
/* For a test aimed at one error path: inject only at the sites in `sites`
 * (a mask of 1 << site), with probability `rate` (a negative rate goes
 * back to PLAZA_FAULTS_RATE); pz__faults_target(~0u, -1) restores both. */
void pz__faults_target(unsigned sites, double rate);
#else
static inline bool pz__fault(enum pz__fault_site site)
{
    (void)site;
    return false;
}
static inline size_t pz__fault_short(size_t n)
{
    return n;
}
#endif

#endif
