/* Internal declarations of the PostgreSQL component (src/pg). */
#ifndef PZ_PG_INTERNAL_H
#define PZ_PG_INTERNAL_H

#include "plaza.h"
#include "plaza/pg.h"

#include <libpq-fe.h>
#include <stdatomic.h>

/* A connection; conn.c states its protocol. */
struct pz_pg_conn {
    PGconn *pg;
    int pg_fd;          /* libpq's socket number when last looked at, or -1 */
    int watch_fd;       /* our duplicate of it, the one the reactor watches, or -1 */
    pz_semaphore_t use; /* one permit: the right to call libpq on pg */
    _Atomic int refs;   /* the owner's reference, plus one while a drain runs */
    _Atomic bool broken;
    PGcancel *cancel;   /* made once connected; used only by the drain */
    int pending_syncs;  /* pipeline syncs sent and not yet read back */
    const char *drain_sql; /* the command in flight's undo, run by its drain; under the turn */
    int64_t idle_since; /* for the pool: when it was last released */
    char error[256];    /* pz_pg_error_message's copy, written under the turn */
    struct pz_pg_conn *next_idle;
};

/* Takes the connection's permit within deadline; -ENOTCONN if broken. */
int pz__pg_enter(pz_pg_conn_t *c, int64_t deadline);
/* Gives the permit back. */
void pz__pg_leave(pz_pg_conn_t *c);

/* Reads the next result of the command in flight (waits until libpq has it
 * whole).  0 with *out (NULL when the command's results are over), or an
 * error; a lost connection marks c broken and gives -ECONNRESET. */
int pz__pg_next_result(pz_pg_conn_t *c, int64_t deadline, PGresult **out);
/* Flushes libpq's output buffer within deadline. */
int pz__pg_flush(pz_pg_conn_t *c, int64_t deadline);
/* After a timeout or cancel with a command in flight: hands the permit to a
 * background task that cancels the command on the server and drains the
 * results (or marks c broken), then gives the permit back. */
void pz__pg_abandon(pz_pg_conn_t *c);
/* Waits until the socket has input, an error or end of file. */
int pz__pg_wait_readable(pz_pg_conn_t *c, int64_t deadline);
/* libpq found the connection lost: forget its socket, mark c broken. */
void pz__pg_lost(pz_pg_conn_t *c);
/* pz_pg_query_prepared whose command, if abandoned at its deadline or by
 * a cancel, is followed by `undo` (run by the drain once the session is
 * idle, before anyone else may use it). */
int pz__pg_query_prepared_undo(pz_pg_conn_t *c, const char *name, int nparams, const char *const *params,
                               int64_t deadline, pz_pg_result_t **res, const char *undo);
/* A libpq call failed: -ECONNRESET (and c broken) if the connection is
 * lost, else err. */
int pz__pg_lost_or(pz_pg_conn_t *c, int err);
/* 0 for a result that reports success, -EREMOTEIO for any other. */
int pz__pg_status_error(const PGresult *res);
/* PLAZA_PG_DEBUG: libpq's messages on stderr. */
bool pz__pg_debug_enabled(void);
void pz__pg_debug_report(const char *what, PGconn *pg);
/* Marks c broken (the permit stays with the caller). */
void pz__pg_break(pz_pg_conn_t *c);

#endif
