/*
 * Deadlines of the async waits.  A deadline is an absolute pz_now() time
 * in nanoseconds, PZ_FOREVER for none; one already past (0, negative, or
 * just gone) means "do not wait": the wait succeeds only if it can at
 * once, else returns -ETIMEDOUT.  The lower layers take a negative
 * deadline as "none" for a plain thread (the futex wait has no timeout
 * then), so every async wait passes its deadline through here first.
 */
#ifndef PZ_ASYNC_DEADLINE_H
#define PZ_ASYNC_DEADLINE_H

#include <stdint.h>

static inline int64_t pz__async_deadline(int64_t deadline)
{
    return deadline < 0 ? 0 : deadline;
}

#endif
