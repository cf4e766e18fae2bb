/*
 * The advisor's hook points for the async primitives whose calls are out
 * of line (src/async/observe.c): each primitive tests PZ__ASYNC_OBSERVED()
 * once and, only when it is set, reports through these.  site is the
 * public call's return address (its caller's line).
 */
#ifndef PZ_ASYNC_OBSERVE_H
#define PZ_ASYNC_OBSERVE_H

#include <stdint.h>

void pz__async_observe_acquired(const void *lock, unsigned kind, const void *site, int64_t waited, unsigned flags);
void pz__async_observe_gave_up(const void *lock, unsigned kind, const void *site, int64_t waited, unsigned flags,
                               int err);
void pz__async_observe_released(const void *lock, unsigned kind, unsigned flags);

#endif
