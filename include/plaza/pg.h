/*
 * plaza PostgreSQL: libpq's non-blocking API driven by plaza's reactor, a
 * connection pool, and a distributed async mutex on advisory locks.
 *
 * An optional component: the library plaza_pg (libplaza_pg.a, .so) is built
 * only where libpq is found, and this header is not included by <plaza.h>.
 * Include <plaza/pg.h> and link plaza_pg, libpq and plaza.  The header does
 * not need libpq's headers: the libpq types appear only as the incomplete
 * `struct pg_conn` and `struct pg_result`, which are libpq's PGconn and
 * PGresult for a program that includes <libpq-fe.h> as well.
 *
 * Every call that waits takes a deadline (absolute pz_now() nanoseconds,
 * PZ_FOREVER for none) and honours pz_cancel.  Errors are negative errno
 * values:
 *
 *   -ETIMEDOUT   the deadline passed;
 *   -ECANCELED   the calling task was cancelled;
 *   -EREMOTEIO   the server reported an error for the statement (the
 *                result, when asked for, is still returned: read its
 *                SQLSTATE and message);
 *   -ECONNRESET  the connection broke during the call; it is now broken;
 *   -ENOTCONN    the connection was already broken;
 *   -EINVAL      bad arguments (NULL, negative counts, ...);
 *   -ENOMEM      out of memory.
 *
 * A query that times out or is cancelled is cancelled on the server too
 * (libpq's PQcancel, run on the blocking pool), and the connection is
 * drained in the background by a task of its own so that it stays usable;
 * the call itself returns at once.  The next call on that connection waits
 * (within its own deadline) until the drain is over; a connection whose
 * drain fails is broken.  No worker thread ever sits in a blocking libpq
 * call.
 *
 * A connection serves one call at a time: calls from several tasks on one
 * connection take turns (a one-permit semaphore), they never interleave.
 * Call these functions from tasks; docs/pg.md has the details.
 */
#ifndef PLAZA_PG_H
#define PLAZA_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct pg_conn;   /* libpq's PGconn */
struct pg_result; /* libpq's PGresult */

typedef struct pz_pg_conn pz_pg_conn_t;

/* A result is libpq's own PGresult, not a copy: the accessors below cover
 * what a task usually needs (SQL NULL told apart from the empty string,
 * integers parsed with their errors), and a program that includes
 * <libpq-fe.h> may use every PQ* accessor on it directly.  Free it with
 * pz_pg_result_free (PQclear). */
typedef struct pg_result pz_pg_result_t;

/* ---------------------------------------------------------------- connections */

/* Opens a connection (libpq conninfo string or postgresql:// URI).  Returns 0
 * with *out set, or -ETIMEDOUT, -ECANCELED, -ECONNREFUSED (the server could
 * not be reached or refused us; the message is in the report on stderr
 * only with PLAZA_PG_DEBUG), -ENOMEM, -EINVAL. */
int pz_pg_connect(const char *conninfo, int64_t deadline, pz_pg_conn_t **out);

/* Closes the connection and frees it.  If a background drain is running the
 * drain frees it when done.  No other task may be using c. */
void pz_pg_close(pz_pg_conn_t *c);

/* False once the connection is broken (lost, or a drain failed). */
bool pz_pg_conn_ok(pz_pg_conn_t *c);

/* The server process id of the connection's session (for
 * pg_terminate_backend and logs), 0 if broken. */
int pz_pg_backend_pid(pz_pg_conn_t *c);

/* libpq's last error message for c: a copy, valid until the next call of
 * this on c.  While a command that gave up is being finished on c (see
 * pz_pg_query), a note saying so instead. */
const char *pz_pg_error_message(pz_pg_conn_t *c);

/* The libpq connection, for what this API does not cover.  Do not call
 * blocking libpq functions on it from a task. */
struct pg_conn *pz_pg_raw(pz_pg_conn_t *c);

/* ---------------------------------------------------------------- queries */

/* Runs one statement with text parameters $1..$nparams (params[i] NULL is
 * SQL NULL).  On 0 or -EREMOTEIO, *res (if res is not NULL) holds the
 * result, which the caller frees; on any other error *res is NULL. */
int pz_pg_query(pz_pg_conn_t *c, const char *sql, int nparams, const char *const *params, int64_t deadline,
                pz_pg_result_t **res);

/* A parameter with its format: format 0 is text (value a NUL-terminated
 * string, length ignored), format 1 binary (length bytes in the type's
 * binary wire format: a float8 is its IEEE 754 bits as 8 big-endian bytes,
 * an int8 8 big-endian bytes, an array the server's array format).
 * value NULL is SQL NULL.  Binary saves the formatting and parsing of
 * numbers as text on both sides. */
typedef struct pz_pg_param {
    const char *value;
    int length;
    int format;
} pz_pg_param_t;

/* pz_pg_query with parameters that may be binary; the result is text as
 * for pz_pg_query.  -EINVAL for a format other than 0 or 1, a negative
 * binary length, nparams < 1 or NULL params. */
int pz_pg_query_params(pz_pg_conn_t *c, const char *sql, int nparams, const pz_pg_param_t *params, int64_t deadline,
                       pz_pg_result_t **res);
/* The same for a statement prepared with pz_pg_prepare. */
int pz_pg_query_prepared_params(pz_pg_conn_t *c, const char *name, int nparams, const pz_pg_param_t *params,
                                int64_t deadline, pz_pg_result_t **res);

/* pz_pg_query that discards the result; returns the number of rows the
 * statement affected or returned (>= 0), or an error. */
int64_t pz_pg_exec(pz_pg_conn_t *c, const char *sql, int nparams, const char *const *params, int64_t deadline);

/* Prepared statements: pz_pg_prepare parses and plans sql once on c's
 * session under name (parameters $1..$nparams, their types inferred);
 * pz_pg_query_prepared runs it, skipping the parse and plan.  Names live as
 * long as the session (a pooled connection keeps them; a new one has none).
 * Returns as pz_pg_query. */
int pz_pg_prepare(pz_pg_conn_t *c, const char *name, const char *sql, int nparams, int64_t deadline);
int pz_pg_query_prepared(pz_pg_conn_t *c, const char *name, int nparams, const char *const *params, int64_t deadline,
                         pz_pg_result_t **res);

/* One statement of a pipeline. */
typedef struct pz_pg_statement {
    const char *sql;
    int nparams;
    const char *const *params;
} pz_pg_statement_t;

/* Pipelining (libpq 14+ pipeline mode): sends the n statements in one
 * batch and one sync, then reads the n results, so the batch costs one
 * round trip.  The statements run in one implicit transaction: an error
 * aborts the ones after it (their results are PGRES_PIPELINE_ABORTED).
 * Returns 0 if every statement succeeded, -EREMOTEIO if one failed (results
 * filled in either case, each freed by the caller), or another error with
 * every res[i] NULL. */
int pz_pg_pipeline(pz_pg_conn_t *c, const pz_pg_statement_t *stmts, int n, int64_t deadline, pz_pg_result_t **res);

/* ---------------------------------------------------------------- results */

int pz_pg_result_rows(const pz_pg_result_t *r);
int pz_pg_result_cols(const pz_pg_result_t *r);
/* The text of a value; NULL for SQL NULL or a row/column out of range. */
const char *pz_pg_result_value(const pz_pg_result_t *r, int row, int col);
/* Parses a value as a decimal integer: 0, -ENOENT (SQL NULL or out of
 * range), -EINVAL (not an integer). */
int pz_pg_result_int64(const pz_pg_result_t *r, int row, int col, int64_t *out);
/* Rows affected by an INSERT/UPDATE/DELETE (or returned by a SELECT). */
int64_t pz_pg_result_affected(const pz_pg_result_t *r);
/* The SQLSTATE of a failed statement ("" if it succeeded), and the
 * server's message ("" if none). */
const char *pz_pg_result_sqlstate(const pz_pg_result_t *r);
const char *pz_pg_result_error(const pz_pg_result_t *r);
void pz_pg_result_free(pz_pg_result_t *r);

/* ---------------------------------------------------------------- LISTEN/NOTIFY */

typedef struct pz_pg_notification {
    const char *channel;
    const char *payload;
    int sender_pid;
} pz_pg_notification_t;

/* LISTEN channel (quoted as an identifier).  Use a connection of its own for
 * listening: notifications arrive on the session that listens. */
int pz_pg_listen(pz_pg_conn_t *c, const char *channel, int64_t deadline);
/* pg_notify(channel, payload). */
int pz_pg_notify(pz_pg_conn_t *c, const char *channel, const char *payload, int64_t deadline);
/* Waits for the next notification on c, in the order the server sent them.
 * Returns 0 with *out set (free it with pz_pg_notification_free),
 * -ETIMEDOUT, -ECANCELED, -ECONNRESET / -ENOTCONN. */
int pz_pg_wait_notification(pz_pg_conn_t *c, int64_t deadline, pz_pg_notification_t **out);
void pz_pg_notification_free(pz_pg_notification_t *n);

/* ---------------------------------------------------------------- pool */

typedef struct pz_pg_pool pz_pg_pool_t;

/* Zero in any field means its default. */
typedef struct pz_pg_pool_opts {
    const char *conninfo;      /* required; copied */
    int size;                  /* connections at most; default 8 */
    int64_t idle_check_ns;     /* health check (SELECT 1) on acquire after this idle time; default 1 s */
    int64_t backoff_min_ns;    /* first reconnect delay after a failure; default 10 ms */
    int64_t backoff_max_ns;    /* reconnect delays double up to this; default 2 s */
    /* Called with every new connection before it is first lent (prepare
     * statements, set session parameters), on the acquiring task: 0 keeps
     * it; a negative error closes it and counts as a failed connect (the
     * acquire goes on as after one).  NULL: none. */
    int (*on_connect)(pz_pg_conn_t *c, void *arg);
    void *on_connect_arg;
} pz_pg_pool_opts_t;

typedef struct pz_pg_pool_stats {
    uint64_t connects;         /* successful connections made */
    uint64_t connect_failures; /* failed attempts */
    uint64_t discarded;        /* broken connections closed instead of reused */
    uint64_t health_checks;    /* SELECT 1 on acquire after idle */
    int idle;                  /* connections idle in the pool now */
    int open;                  /* connections open (idle + lent) */
} pz_pg_pool_stats_t;

/* Creates a pool; connections are made on demand.  0 or -EINVAL/-ENOMEM. */
int pz_pg_pool_create(const pz_pg_pool_opts_t *opts, pz_pg_pool_t **out);
/* Lends a healthy connection: waits for a free slot (at most `size` are
 * lent), takes an idle connection (checked if it idled longer than
 * idle_check_ns) or connects a new one, backing off exponentially after
 * failures.  0 with *out set, -ETIMEDOUT, -ECANCELED; when the deadline
 * passes while the server cannot be reached, the last connect error. */
int pz_pg_pool_acquire(pz_pg_pool_t *p, int64_t deadline, pz_pg_conn_t **out);
/* Acquire, pz_pg_query, release in one call, all within deadline: the
 * simplest way for a task to run one statement.  Returns as pz_pg_query,
 * or the acquire's error. */
int pz_pg_pool_query(pz_pg_pool_t *p, const char *sql, int nparams, const char *const *params, int64_t deadline,
                     pz_pg_result_t **res);
/* Gives the connection back; a broken one, or one left inside a
 * transaction (no COMMIT or ROLLBACK), is closed, not kept. */
void pz_pg_pool_release(pz_pg_pool_t *p, pz_pg_conn_t *c);
void pz_pg_pool_stats(pz_pg_pool_t *p, pz_pg_pool_stats_t *out);
/* Closes the idle connections and frees the pool.  Every lent connection
 * must have been released. */
void pz_pg_pool_destroy(pz_pg_pool_t *p);

/* ---------------------------------------------------------------- distributed lock */

/* A mutex shared by every process that opens the same key on the same
 * database, shaped like pz_async_mutex: one holder at a time across all
 * processes and, inside a process, across all tasks sharing the object.
 * Built on a session-level advisory lock (pg_advisory_lock(key)) held on a
 * connection the object owns, plus a fencing token: every acquisition gets
 * the next value of the sequence plaza_fence_seq, taken after the lock is
 * granted in the same statement, so strictly increasing per key across all
 * holders (not dense: one sequence serves every key).  Give the token to storage, which rejects a
 * write whose token is lower than one it has seen (pz_pg_fence_admit).
 * docs/pg.md states the guarantees and the window in which two holders can
 * both believe they hold the lock. */
typedef struct pz_pg_lock pz_pg_lock_t;

/* Opens the lock for key on the database conninfo names (creating the
 * sequence plaza_fence_seq and the table plaza_fence_seen if needed).  0 or
 * a connect error. */
int pz_pg_lock_open(const char *conninfo, int64_t key, int64_t deadline, pz_pg_lock_t **out);
/* Options of pz_pg_lock_open_with; zero in a field means its default. */
typedef struct pz_pg_lock_opts {
    /* The lease: the server ends the lock's session (releasing the lock)
     * once it has been idle this long, which a holder's session is for
     * its whole critical section (idle_session_timeout, PostgreSQL 14+).
     * So a holder that stops (paused, hung, cut off from the server)
     * keeps the others out at most this long; a holder slower than its
     * lease loses the lock (its next check or unlock says -ENOLCK, and its
     * writes are refused by their fencing token).  0: no lease (the lock
     * lasts as long as the session).  At least 1 ms. */
    int64_t lease_ns;
} pz_pg_lock_opts_t;

/* pz_pg_lock_open with options (opts may be NULL).  -EINVAL for a lease
 * under 1 ms or over INT32_MAX ms. */
int pz_pg_lock_open_with(const char *conninfo, int64_t key, const pz_pg_lock_opts_t *opts, int64_t deadline,
                         pz_pg_lock_t **out);
/* Makes l the lock of another key, so that a few lock objects (each one
 * session) serve many keys one at a time.  Only while no task holds l or
 * waits for it: 0, or -EBUSY if l is held or being taken. */
int pz_pg_lock_set_key(pz_pg_lock_t *l, int64_t key);
/* Acquires the lock; on 0, *token (if not NULL) is this acquisition's
 * fencing token.  -ETIMEDOUT, -ECANCELED (nothing held), or a connection
 * error (the object reconnects on the next call). */
int pz_pg_lock_lock(pz_pg_lock_t *l, uint64_t *token);
int pz_pg_lock_lock_until(pz_pg_lock_t *l, int64_t deadline, uint64_t *token);
/* One attempt: 0 (held, *token set), -EBUSY (another holder, here or in
 * another process), or an error.  Takes one round trip, within deadline. */
int pz_pg_lock_trylock(pz_pg_lock_t *l, int64_t deadline, uint64_t *token);
/* Releases the lock.  0, or -ENOLCK if the session was lost while held
 * (then the lock had already been released by the server: another holder
 * may have had it); either way the caller no longer holds it.  -EPERM (and
 * a report on stderr) if the calling task is not the holder.  Waits at most
 * 5 s for the server; past that (or when cancelled) it ends the session
 * instead, which releases the lock as surely, and returns 0. */
int pz_pg_lock_unlock(pz_pg_lock_t *l);
/* Asks the server (one round trip) whether the holder's session is still
 * alive and so still holds the lock: 0 if it does, -ENOLCK if it was lost,
 * -ETIMEDOUT if the server did not answer in time (assume lost), -EPERM if
 * the calling task is not the holder. */
int pz_pg_lock_check(pz_pg_lock_t *l, int64_t deadline);
/* Waits, without a round trip, until the session is lost (-ENOLCK), the
 * deadline (-ETIMEDOUT) or a cancel.  Meant for a watchdog task beside the
 * holder that cancels its work when the lock is lost; call it only while
 * the lock is held, and let it return (cancel it) before the holder
 * unlocks. */
int pz_pg_lock_wait_lost(pz_pg_lock_t *l, int64_t deadline);
/* The token of the current acquisition (0 if not held). */
uint64_t pz_pg_lock_token(pz_pg_lock_t *l);
/* The server process id of the lock's session (0 if not connected). */
int pz_pg_lock_backend_pid(pz_pg_lock_t *l);
/* Closes the session (releasing the lock if held) and frees l. */
void pz_pg_lock_close(pz_pg_lock_t *l);

/* The storage side of fencing, to call inside the writer's transaction on
 * the storage connection (after BEGIN, before the write): records token as
 * the highest seen for key in table plaza_fence_seen and returns 0, or
 * returns -ESTALE if a higher token was already seen (roll back then).  The
 * row lock it takes orders concurrent writers of one key. */
int pz_pg_fence_admit(pz_pg_conn_t *c, int64_t key, uint64_t token, int64_t deadline);

#ifdef __cplusplus
}
#endif
#endif
