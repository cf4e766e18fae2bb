/* Internal declarations of the I/O layer. */
#ifndef PZ_IO_INTERNAL_H
#define PZ_IO_INTERNAL_H

#include "plaza/io.h"
#include "plaza/park.h"
#include "../runtime/internal.h"

#define PZ__IO_READ 1u
#define PZ__IO_WRITE 2u
#define PZ__IO_CLOSED 4u
#define PZ__IO_TICK 256u
/* pz__io_source_signal: the descriptor was closed by pz_close. */
#define PZ__SIG_CLOSED 0x100u

enum { PZ__SRC_NEW = 0, PZ__SRC_POLLED = 1, PZ__SRC_BLOCKING = 2 };

typedef struct pz__io_source {
    _Atomic uint64_t readiness; /* see reactor.c */
    _Atomic int kind;           /* PZ__SRC_*; set once under reg_lock */
    pz__spin reg_lock;
    /* Parking-lot keys: only their addresses matter. */
    char read_key;
    char write_key;
    char either_key;            /* pz_wait_fd for both (io.c: wait_either) */
    _Atomic int either_waiters;
} pz__io_source;

pz__io_source *pz__io_source_of(pz__runtime *rt, int fd);
void pz__io_source_signal(pz__io_source *src, unsigned events);
/* fd's source, registered with the poller on first use (io.c); NULL
 * outside a task or without a runtime. */
pz__io_source *pz__io_source_register(int fd, pz__runtime **rtp);

#endif
