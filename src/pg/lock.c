/*
 * A distributed async mutex on PostgreSQL advisory locks, with fencing
 * tokens.
 *
 * Holding.  Inside a process the object's pz_async_mutex `local` picks one
 * holder among the tasks; that task then takes pg_advisory_lock(key) on the
 * object's own session (a dedicated connection, so the session-level lock
 * is exactly as alive as that connection).  The lock is held, for the
 * process, from the moment the advisory lock is granted until
 * pg_advisory_unlock or the session's end.
 *
 * Token.  The same statement, so the same round trip, takes the next value
 * of the sequence plaza_fence_seq once the lock is granted.  The previous
 * holder took its value before it released the lock, and nextval hands out
 * strictly increasing values across sessions (CACHE 1, the default; a
 * sequence with a larger cache would break this), so tokens strictly
 * increase in acquisition order.  A session-level advisory lock outlives
 * the statement's transaction, and nextval is not rolled back.
 *
 * Giving up.  A lock attempt that times out or is cancelled may have been
 * granted on the server at the very moment it was abandoned, and the grant
 * would outlive the statement.  The connection's drain, which cancels the
 * statement and reads its end, then runs pg_advisory_unlock_all() on the
 * idle session (the lock statement's undo; no other statement of the
 * session has one, so a holder's timed-out check never releases the lock)
 * before anyone can use the session again; if the
 * drain fails the connection is broken and dropped, and the session's end
 * releases everything.  So the session is kept (no reconnect after a
 * timeout), and nothing stays held.
 *
 * Loss.  If the session dies (connection lost, backend terminated) the
 * server has released the lock and another process may hold it.  The
 * holder learns it from pz_pg_lock_check (a round trip), from
 * pz_pg_lock_wait_lost (which watches the session's socket through the
 * object's own duplicate `watch`, valid from connect to the next reconnect,
 * which only a lock call makes) and at the latest from pz_pg_lock_unlock,
 * all of which then return -ENOLCK.  docs/pg.md states the window.
 *
 * Lease.  With a lease (pz_pg_lock_open_with), the session runs with
 * idle_session_timeout set to it: the server ends the session, and so
 * releases the lock, once the session has sent no statement for that
 * long.  A holder is idle on its session for its whole critical section,
 * so the lease bounds how long a holder that stopped (paused, hung, cut
 * off) keeps everyone else out; a holder that is merely slower than its
 * lease loses the lock as any lost session does, and its late writes are
 * refused by their fencing token.  An idle session ended while nothing was
 * held is replaced by the next lock call (acquire_remote's one retry).
 *
 * Keys.  The key is the object's, fixed between acquisitions:
 * pz_pg_lock_set_key changes it while nobody holds or waits for the
 * object, so a few objects (sessions) serve many keys one at a time.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long an unlock may wait for the server before the session is dropped
 * instead (which releases the lock as surely). */
#define PZ_PG_UNLOCK_NS (5 * 1000000000LL)

struct pz_pg_lock {
    char *conninfo;
    char key[24]; /* the key as text, the statements' parameter */
    int64_t lease_ms; /* idle_session_timeout of the session; 0: none */
    pz_async_mutex_t local;
    /* Changed only by the local holder (and by open and close): */
    pz_pg_conn_t *conn;
    int watch;           /* our duplicate of the session's socket, or -1 */
    _Atomic uint64_t token; /* 0 while not held */
    pz_task_t *_Atomic holder; /* the local holder, for misuse reports */
};

/* The tokens come from one sequence for every key: nextval hands out
 * strictly increasing values across all sessions (a sequence with CACHE 1,
 * the default), and the holder takes its value after the lock is granted,
 * the previous holder before releasing it.  So per key the tokens increase
 * in acquisition order; they are not dense per key, which fencing does not
 * need. */
static const char *const SETUP_SQL[] = {
    "CREATE SEQUENCE IF NOT EXISTS plaza_fence_seq",
    "CREATE TABLE IF NOT EXISTS plaza_fence_seen (key bigint PRIMARY KEY, token bigint NOT NULL)",
};
#define SETUP_N 2
#define SETUP_MAX (SETUP_N + 1) /* and the lease's SET */

/* One statement, one round trip: the subquery in FROM (not flattened into
 * the outer query, its function being volatile) is run first, so nextval
 * is evaluated only once the lock is granted. */
static const char LOCK_SQL[] = "SELECT nextval('plaza_fence_seq') FROM (SELECT pg_advisory_lock($1::bigint)) l";
/* NULL when the lock was not free. */
static const char TRYLOCK_SQL[] =
    "SELECT CASE WHEN l.ok THEN nextval('plaza_fence_seq') END FROM (SELECT pg_try_advisory_lock($1::bigint) AS ok) l";
static const char UNLOCK_SQL[] = "SELECT pg_advisory_unlock($1::bigint)";

static void drop_session(pz_pg_lock_t *l)
{
    if (l->watch >= 0)
        pz_close(l->watch);
    l->watch = -1;
    pz_pg_close(l->conn);
    l->conn = NULL;
}

/* A session with the fence row in place. */
static int ensure_session(pz_pg_lock_t *l, int64_t deadline)
{
    if (l->conn && pz_pg_conn_ok(l->conn))
        return 0;
    drop_session(l);
    pz_pg_conn_t *c;
    int r = pz_pg_connect(l->conninfo, deadline, &c);
    if (r < 0)
        return r;
    pz_pg_statement_t st[SETUP_MAX] = {{SETUP_SQL[0], 0, NULL}, {SETUP_SQL[1], 0, NULL}};
    int nst = SETUP_N;
    char lease[64];
    if (l->lease_ms > 0) {
        /* A session-level setting: it outlives the pipeline's implicit
         * transaction once that commits. */
        snprintf(lease, sizeof lease, "SET idle_session_timeout = %" PRId64, l->lease_ms);
        st[nst++] = (pz_pg_statement_t){lease, 0, NULL};
    }
    pz_pg_result_t *res[SETUP_MAX];
    /* Two sessions creating the objects at once can collide on the catalog
     * (unique_violation); the second attempt finds them made. */
    for (int attempt = 0; attempt < 3; attempt++) {
        r = pz_pg_pipeline(c, st, nst, deadline, res);
        for (int i = 0; i < nst; i++)
            pz_pg_result_free(res[i]);
        if (r != -EREMOTEIO)
            break;
    }
    if (r < 0) {
        pz_pg_close(c);
        return r;
    }
    /* The lock's statements, parsed and planned once per session. */
    if (r == 0)
        r = pz_pg_prepare(c, "plaza_lock", LOCK_SQL, 1, deadline);
    if (r == 0)
        r = pz_pg_prepare(c, "plaza_trylock", TRYLOCK_SQL, 1, deadline);
    if (r == 0)
        r = pz_pg_prepare(c, "plaza_unlock", UNLOCK_SQL, 1, deadline);
    if (r < 0) {
        pz_pg_close(c);
        return r;
    }
    int fd = PQsocket(pz_pg_raw(c));
    l->watch = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    l->conn = c;
    return 0;
}

int pz_pg_lock_open(const char *conninfo, int64_t key, int64_t deadline, pz_pg_lock_t **out)
{
    return pz_pg_lock_open_with(conninfo, key, NULL, deadline, out);
}

int pz_pg_lock_open_with(const char *conninfo, int64_t key, const pz_pg_lock_opts_t *opts, int64_t deadline,
                         pz_pg_lock_t **out)
{
    if (!conninfo || !out)
        return -EINVAL;
    /* idle_session_timeout is an int of milliseconds; a lease under 1 ms
     * would end the session between any two statements. */
    if (opts && (opts->lease_ns < 0 || (opts->lease_ns > 0 && opts->lease_ns < 1000000) ||
                 opts->lease_ns / 1000000 > INT32_MAX))
        return -EINVAL;
    *out = NULL;
    pz_pg_lock_t *l = calloc(1, sizeof *l);
    if (!l || !(l->conninfo = strdup(conninfo))) {
        free(l);
        return -ENOMEM;
    }
    snprintf(l->key, sizeof l->key, "%" PRId64, key);
    l->lease_ms = opts ? opts->lease_ns / 1000000 : 0;
    l->watch = -1;
    int r = ensure_session(l, deadline);
    if (r < 0) {
        free(l->conninfo);
        free(l);
        return r;
    }
    *out = l;
    return 0;
}

static int parse_token(pz_pg_result_t *res, uint64_t *token)
{
    int64_t t;
    if (pz_pg_result_int64(res, 0, 0, &t) < 0 || t <= 0)
        return -EPROTO;
    *token = (uint64_t)t;
    return 0;
}

/* The holder's part, with the local lock held: take the advisory lock
 * (try: only if free) and the next token. */
static int acquire_remote(pz_pg_lock_t *l, bool try, int64_t deadline, uint64_t *token)
{
    /* A session that died while nobody held the lock (a server restart, an
     * idle timeout) is found by this statement: nothing was held, so one
     * more try on a new session is safe. */
    bool fresh = !(l->conn && pz_pg_conn_ok(l->conn));
    int r = ensure_session(l, deadline);
    if (r < 0)
        return r;
    const char *params[1] = {l->key};
    pz_pg_result_t *res;
    /* An abandoned lock statement may have been granted as it was given
     * up: its drain releases whatever the session holds before anyone can
     * use the session again (it holds no other advisory lock). */
    r = pz__pg_query_prepared_undo(l->conn, try ? "plaza_trylock" : "plaza_lock", 1, params, deadline, &res,
                                   "SELECT pg_advisory_unlock_all()");
    if (r == 0) {
        if (try && pz_pg_result_value(res, 0, 0) == NULL)
            r = -EBUSY;
        else
            r = parse_token(res, token);
    }
    pz_pg_result_free(res);
    /* A statement abandoned at its deadline or by a cancel is undone by the
     * connection's drain (drain_sql); any other failure leaves a session we
     * are unsure of, and whatever it may hold goes with it. */
    if (r < 0 && r != -EBUSY && r != -ETIMEDOUT && r != -ECANCELED)
        drop_session(l);
    if ((r == -ECONNRESET || r == -ENOTCONN) && !fresh)
        return acquire_remote(l, try, deadline, token);
    return r;
}

static int lock_common(pz_pg_lock_t *l, bool try, int64_t deadline, uint64_t *token)
{
    if (!l)
        return -EINVAL;
    int r;
    if (try)
        r = pz_async_mutex_trylock(&l->local) ? 0 : -EBUSY;
    else
        r = pz_async_mutex_lock_until(&l->local, deadline);
    if (r < 0)
        return r;
    uint64_t t = 0;
    r = acquire_remote(l, try, deadline, &t);
    if (r < 0) {
        pz_async_mutex_unlock(&l->local);
        return r;
    }
    atomic_store_explicit(&l->holder, pz_self(), memory_order_relaxed);
    atomic_store_explicit(&l->token, t, memory_order_release);
    if (token)
        *token = t;
    return 0;
}

int pz_pg_lock_lock_until(pz_pg_lock_t *l, int64_t deadline, uint64_t *token)
{
    return lock_common(l, false, deadline, token);
}

int pz_pg_lock_lock(pz_pg_lock_t *l, uint64_t *token)
{
    return lock_common(l, false, PZ_FOREVER, token);
}

int pz_pg_lock_trylock(pz_pg_lock_t *l, int64_t deadline, uint64_t *token)
{
    return lock_common(l, true, deadline, token);
}

/* Whether the caller holds the local lock. */
static bool caller_holds(pz_pg_lock_t *l)
{
    return atomic_load_explicit(&l->token, memory_order_acquire) != 0 &&
           atomic_load_explicit(&l->holder, memory_order_relaxed) == pz_self();
}

int pz_pg_lock_unlock(pz_pg_lock_t *l)
{
    if (!l)
        return -EINVAL;
    if (!caller_holds(l)) {
        fprintf(stderr, "plaza: pz_pg_lock_unlock of key %s by a task that does not hold it\n", l->key);
        return -EPERM;
    }
    const char *params[1] = {l->key};
    pz_pg_result_t *res = NULL;
    int r = pz_pg_query_prepared(l->conn, "plaza_unlock", 1, params, pz_now() + PZ_PG_UNLOCK_NS, &res);
    if (r == 0) {
        const char *v = pz_pg_result_value(res, 0, 0);
        if (!v || v[0] != 't')
            r = -ENOLCK; /* the session no longer held it */
    } else if (r == -ECONNRESET || r == -ENOTCONN) {
        r = -ENOLCK;
    }
    pz_pg_result_free(res);
    if (r < 0)
        drop_session(l); /* a session we are unsure of releases everything by ending */
    if (r == -ETIMEDOUT || r == -ECANCELED)
        r = 0; /* we held it until now, and ending the session released it */
    atomic_store_explicit(&l->token, 0, memory_order_release);
    atomic_store_explicit(&l->holder, NULL, memory_order_relaxed);
    pz_async_mutex_unlock(&l->local);
    return r;
}

int pz_pg_lock_check(pz_pg_lock_t *l, int64_t deadline)
{
    if (!l)
        return -EINVAL;
    if (!caller_holds(l))
        return -EPERM;
    if (!l->conn || !pz_pg_conn_ok(l->conn))
        return -ENOLCK;
    int64_t r = pz_pg_exec(l->conn, "SELECT 1", 0, NULL, deadline);
    if (r == -ECONNRESET || r == -ENOTCONN)
        return -ENOLCK;
    return r < 0 ? (int)r : 0;
}

int pz_pg_lock_wait_lost(pz_pg_lock_t *l, int64_t deadline)
{
    if (!l)
        return -EINVAL;
    if (atomic_load_explicit(&l->token, memory_order_acquire) == 0)
        return -EPERM;
    pz_pg_conn_t *c = l->conn;
    int fd = l->watch;
    if (!c || fd < 0)
        return -ENOLCK;
    for (;;) {
        /* Take in what the session has received: a lost session shows as a
         * broken connection. */
        int r = pz__pg_enter(c, deadline);
        if (r == -ENOTCONN)
            return -ENOLCK;
        if (r < 0)
            return r;
        if (PQconsumeInput(c->pg) == 0 || PQstatus(c->pg) == CONNECTION_BAD) {
            pz__pg_lost(c);
            pz__pg_leave(c);
            return -ENOLCK;
        }
        pz__pg_leave(c);
        /* Then wait for the socket to have more: a message, end of file or
         * an error.  Data that a query of the holder's is about to read
         * makes this return at once, and the turn above then waits for
         * that query to finish. */
        char b;
        ssize_t n = pz_recv(fd, &b, 1, MSG_PEEK, deadline);
        if (n == -ETIMEDOUT || n == -ECANCELED)
            return (int)n;
        if (n == 0 || n == -EBADF)
            return -ENOLCK;
        if (n < 0) {
            /* The socket failed: the session is lost.  Marked under the
             * turn, as every change to the connection is (a query of the
             * holder's may be using it); if the turn says it is broken
             * already, so much the better. */
            if (pz__pg_enter(c, deadline) == 0) {
                pz__pg_lost(c);
                pz__pg_leave(c);
            }
            return -ENOLCK;
        }
        pz_yield();
    }
}

int pz_pg_lock_set_key(pz_pg_lock_t *l, int64_t key)
{
    if (!l)
        return -EINVAL;
    /* Held, or being taken: the key is the holder's statements' parameter. */
    if (!pz_async_mutex_trylock(&l->local))
        return -EBUSY;
    snprintf(l->key, sizeof l->key, "%" PRId64, key);
    pz_async_mutex_unlock(&l->local);
    return 0;
}

uint64_t pz_pg_lock_token(pz_pg_lock_t *l)
{
    return l ? atomic_load_explicit(&l->token, memory_order_acquire) : 0;
}

int pz_pg_lock_backend_pid(pz_pg_lock_t *l)
{
    return l && l->conn ? pz_pg_backend_pid(l->conn) : 0;
}

void pz_pg_lock_close(pz_pg_lock_t *l)
{
    if (!l)
        return;
    drop_session(l);
    free(l->conninfo);
    free(l);
}

int pz_pg_fence_admit(pz_pg_conn_t *c, int64_t key, uint64_t token, int64_t deadline)
{
    if (!c || token == 0 || token > INT64_MAX)
        return -EINVAL;
    char k[24], t[24];
    snprintf(k, sizeof k, "%" PRId64, key);
    snprintf(t, sizeof t, "%" PRIu64, token);
    const char *params[2] = {k, t};
    /* The row lock of the upsert orders concurrent writers of one key; the
     * WHERE refuses a token below the highest seen, and then no row comes
     * back. */
    int64_t n = pz_pg_exec(c,
                           "INSERT INTO plaza_fence_seen AS s (key, token) VALUES ($1, $2) "
                           "ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token WHERE s.token <= EXCLUDED.token "
                           "RETURNING token",
                           2, params, deadline);
    if (n < 0)
        return (int)n;
    return n == 1 ? 0 : -ESTALE;
}
