/* Internal declarations of the I/O layer: the socket calls sit on the
 * runtime's poller driver (src/runtime/driver.c), which owns the sources
 * and their readiness waiters. */
#ifndef PZ_IO_INTERNAL_H
#define PZ_IO_INTERNAL_H

#include "plaza/io.h"
#include "../runtime/internal.h"

#endif
