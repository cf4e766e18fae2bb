/* Internal declarations of the I/O layer: the socket calls sit on the
 * runtime's poller driver (src/runtime/driver.c), which owns the sources
 * and their readiness waiters. */
#ifndef PZ_IO_INTERNAL_H
#define PZ_IO_INTERNAL_H

#include "plaza/io.h"
#include "../runtime/internal.h"

/* fd's source, registered with the poller on first use (io.c); NULL
 * outside a task or without a runtime. */
pz__io_source *pz__io_source_register(int fd, pz__runtime **rtp);

#endif
