/*
 * PostgreSQL connections on libpq's non-blocking API, driven by the
 * runtime's reactor.
 *
 * Contract.  No worker thread ever waits inside libpq: every libpq call made
 * on a worker is one that returns at once on a non-blocking connection
 * (PQconnectPoll, PQsendQueryParams, PQflush, PQconsumeInput, PQisBusy,
 * PQgetResult only when PQisBusy says it will not block, PQnotifies).  The
 * calls that block run on the blocking pool (pz_blocking): PQconnectStart,
 * which may resolve a host name, and PQcancel, which opens a connection of
 * its own.  A task waits for the socket through pz_wait_input for
 * readability (a real look before it waits, so the reactor's edge-triggered
 * readiness cannot lose a wake-up, and none after the event: libpq's read
 * is the look) and pz_wait_fd for writability.
 *
 * Descriptors.  libpq owns its socket and closes it behind our back: when a
 * connection attempt moves to the next address, and when it finds the
 * connection lost.  The reactor registers a descriptor number once, so a
 * number that libpq closed and the kernel handed out again would keep a
 * stale registration.  We therefore never let the reactor see libpq's
 * number: the reactor watches our own duplicate (watch_fd, F_DUPFD_CLOEXEC)
 * of the same socket, which only we close, with pz_close.  After every libpq
 * call that may have closed or replaced the socket we compare PQsocket with
 * the number we duplicated (and, while connecting, the socket's inode, since
 * a new socket may get the old number) and re-duplicate when it changed.
 * Until we close it, our duplicate keeps a socket libpq closed open; that
 * lasts only until the call returns.
 *
 * Turns.  A connection serves one call at a time: the one-permit semaphore
 * `use` is held by whoever calls libpq on it.  A call that times out or is
 * cancelled with a command in flight does not give the permit back: it
 * hands it, with a reference, to a drain task (pz__pg_abandon) that runs
 * PQcancel on the blocking pool, reads and drops every remaining result
 * (and pipeline sync), then releases the permit; if that fails within
 * PZ_PG_DRAIN_NS the connection is marked broken.  A command that must be
 * undone if abandoned (the distributed lock's: a lock granted as it was
 * given up) carries its undo statement (drain_sql, set and cleared under the
 * turn, so it belongs to that one command), which the drain runs on the
 * idle session before giving the permit back.  The caller returns at
 * once: a cancelled task cannot wait for anything, and a timed-out one
 * should not wait for the server either.  The next call on the connection
 * waits for the permit within its own deadline.
 *
 * Lifetime.  refs counts the owner's reference and the drain's; whoever
 * drops the last one finishes the libpq connection and frees it.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long a drain may take after a cancel before the connection is given
 * up as broken. */
#define PZ_PG_DRAIN_NS (5 * 1000000000LL)
/* The longest single wait for writability.  A single-direction pz_wait_fd
 * can miss an edge that comes between its poll and its wait (it clears the
 * ready bit after a simulated failed attempt), so no such wait may be
 * unbounded; and a flush blocked on a full send buffer must also read what
 * the server sends meanwhile (or both sides wait on each other). */
#define PZ_PG_WRITE_SLICE_NS (5 * 1000000LL)

bool pz__pg_debug_enabled(void)
{
    /* Racing first readers compute the same value. */
    static _Atomic int on = -1;
    int v = atomic_load_explicit(&on, memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("PLAZA_PG_DEBUG");
        v = e && *e && strcmp(e, "0") != 0;
        atomic_store_explicit(&on, v, memory_order_relaxed);
    }
    return v;
}

void pz__pg_debug_report(const char *what, PGconn *pg)
{
    if (pz__pg_debug_enabled())
        fprintf(stderr, "plaza: pg: %s: %s", what, pg ? PQerrorMessage(pg) : "out of memory\n");
}

/* Server notices (NOTICE, WARNING) go to stderr only with PLAZA_PG_DEBUG:
 * libpq's default prints every one. */
static void notice_fn(void *arg, const char *message)
{
    (void)arg;
    if (pz__pg_debug_enabled())
        fprintf(stderr, "plaza: pg: %s", message);
}

static void conn_free(pz_pg_conn_t *c)
{
    if (c->watch_fd >= 0)
        pz_close(c->watch_fd);
    if (c->cancel)
        PQfreeCancel(c->cancel);
    if (c->pg)
        PQfinish(c->pg); /* a non-blocking connection: sends Terminate if it can, never waits */
    free(c);
}

static void conn_unref(pz_pg_conn_t *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        conn_free(c);
}

/* Keeps watch_fd a duplicate of libpq's current socket.  check_inode: the
 * number may be the same while the socket is new (connection attempts). */
static int sync_fd(pz_pg_conn_t *c, bool check_inode)
{
    int s = PQsocket(c->pg);
    bool same = s == c->pg_fd && s >= 0 && c->watch_fd >= 0;
    if (same && check_inode) {
        struct stat a, b;
        same = fstat(s, &a) == 0 && fstat(c->watch_fd, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev;
    }
    if (same || (s < 0 && c->watch_fd < 0))
        return 0;
    if (c->watch_fd >= 0)
        pz_close(c->watch_fd); /* forgets the registration, wakes nobody (we are its only user) */
    c->watch_fd = -1;
    c->pg_fd = s;
    if (s < 0)
        return 0;
    c->watch_fd = fcntl(s, F_DUPFD_CLOEXEC, 0);
    return c->watch_fd < 0 ? -errno : 0;
}

/* Waits until the socket may have input (or an error or end of file,
 * which libpq will find).  After the poller's event it does not look
 * again (pz_wait_input): libpq's read is the look, and if the event was
 * spurious PQisBusy stays true and the caller waits again. */
int pz__pg_wait_readable(pz_pg_conn_t *c, int64_t deadline)
{
    if (c->watch_fd < 0)
        return -ECONNRESET;
    int r = pz_wait_input(c->watch_fd, deadline);
    if (r == 0 || r == -ETIMEDOUT || r == -ECANCELED)
        return r; /* 0: data, end of file or a socket error (or a spurious event): libpq reads it next */
    /* The wait itself failed (our descriptor closed under it, or the poller
     * could not take it): another wait would fail at once the same way, and
     * the caller's loop would spin on a busy libpq without suspending. */
    return -ECONNRESET;
}

static int wait_writable(pz_pg_conn_t *c, int64_t deadline)
{
    if (c->watch_fd < 0)
        return -ECONNRESET;
    int64_t slice = pz_now() + PZ_PG_WRITE_SLICE_NS;
    int r = pz_wait_fd(c->watch_fd, PZ_WRITABLE, slice < deadline ? slice : deadline);
    if (r == -ETIMEDOUT && pz_now() < deadline)
        return 0; /* a slice ended: the caller looks at both directions again */
    if (r == -ETIMEDOUT || r == -ECANCELED)
        return r;
    return 0;
}

/* Waits until the socket is writable for real: PQconnectPoll must not be
 * called before (it would take a connect in progress for a finished one).
 * In slices, like wait_writable. */
static int wait_connected(pz_pg_conn_t *c, int64_t deadline)
{
    for (;;) {
        if (c->watch_fd < 0)
            return -ECONNRESET;
        int64_t slice = pz_now() + PZ_PG_WRITE_SLICE_NS;
        int r = pz_wait_fd(c->watch_fd, PZ_WRITABLE, slice < deadline ? slice : deadline);
        if (r == -ETIMEDOUT && pz_now() < deadline)
            continue;
        return r < 0 ? r : 0;
    }
}

void pz__pg_break(pz_pg_conn_t *c)
{
    atomic_store_explicit(&c->broken, true, memory_order_release);
}

void pz__pg_lost(pz_pg_conn_t *c)
{
    sync_fd(c, false);
    pz__pg_break(c);
}

/* A libpq call failed: the connection is lost if libpq says so. */
int pz__pg_lost_or(pz_pg_conn_t *c, int err)
{
    sync_fd(c, false);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        pz__pg_break(c);
        return -ECONNRESET;
    }
    return err;
}

/* ------------------------------------------------------------------ connect */

struct start_call {
    const char *conninfo;
    PGconn *pg;
};

static void *start_fn(void *arg)
{
    struct start_call *s = arg;
    s->pg = PQconnectStart(s->conninfo);
    return NULL;
}

int pz_pg_connect(const char *conninfo, int64_t deadline, pz_pg_conn_t **out)
{
    if (!conninfo || !out)
        return -EINVAL;
    *out = NULL;
    pz_pg_conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->pg_fd = c->watch_fd = -1;
    atomic_init(&c->refs, 1);
    pz_semaphore_init(&c->use, 1);
    /* PQconnectStart may resolve the first host name: the blocking pool. */
    struct start_call s = {conninfo, NULL};
    int r = pz_blocking(start_fn, &s, NULL);
    c->pg = s.pg;
    if (r < 0)
        goto fail;
    if (!c->pg) {
        r = -ENOMEM;
        goto fail;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        pz__pg_debug_report("connect", c->pg);
        r = -ECONNREFUSED; /* a bad conninfo, or no address */
        goto fail;
    }
    PQsetNoticeProcessor(c->pg, notice_fn, NULL);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if ((r = sync_fd(c, true)) < 0)
            goto fail;
        if (st == PGRES_POLLING_OK)
            break;
        if (st == PGRES_POLLING_FAILED) {
            pz__pg_debug_report("connect", c->pg);
            r = -ECONNREFUSED;
            goto fail;
        }
        /* A wait that returns at once every time (a socket at end of file)
         * must not make this loop outlive its deadline. */
        if (pz_now() >= deadline) {
            r = -ETIMEDOUT;
            goto fail;
        }
        r = st == PGRES_POLLING_READING ? pz__pg_wait_readable(c, deadline) : wait_connected(c, deadline);
        if (r < 0)
            goto fail;
        st = PQconnectPoll(c->pg);
    }
    if (PQsetnonblocking(c->pg, 1) != 0) {
        r = -ECONNRESET;
        goto fail;
    }
    c->cancel = PQgetCancel(c->pg);
    *out = c;
    return 0;
fail:
    conn_free(c);
    return r;
}

void pz_pg_close(pz_pg_conn_t *c)
{
    if (c)
        conn_unref(c);
}

bool pz_pg_conn_ok(pz_pg_conn_t *c)
{
    return c && !atomic_load_explicit(&c->broken, memory_order_acquire);
}

int pz_pg_backend_pid(pz_pg_conn_t *c)
{
    return pz_pg_conn_ok(c) ? PQbackendPID(c->pg) : 0;
}

/* libpq's message lives in the connection and changes with every libpq
 * call on it, and after a command gave up at its deadline a drain task
 * (pz__pg_abandon) makes such calls on another worker while the caller,
 * back from the failed call, asks for the message.  So it is copied under
 * the turn, taken without waiting: a drain that holds it will have
 * replaced the message by the time it is done anyway. */
const char *pz_pg_error_message(pz_pg_conn_t *c)
{
    if (!c || !c->pg)
        return "";
    if (pz_semaphore_try_acquire(&c->use, 1) != 0)
        return "(the connection is finishing a command given up; its message is not available)";
    snprintf(c->error, sizeof c->error, "%s", PQerrorMessage(c->pg));
    pz_semaphore_release(&c->use, 1);
    return c->error;
}

struct pg_conn *pz_pg_raw(pz_pg_conn_t *c)
{
    return c ? c->pg : NULL;
}

/* ------------------------------------------------------------------ turns */

int pz__pg_enter(pz_pg_conn_t *c, int64_t deadline)
{
    int r = pz_semaphore_acquire_until(&c->use, 1, deadline);
    if (r < 0)
        return r;
    if (atomic_load_explicit(&c->broken, memory_order_acquire)) {
        pz_semaphore_release(&c->use, 1);
        return -ENOTCONN;
    }
    return 0;
}

void pz__pg_leave(pz_pg_conn_t *c)
{
    c->drain_sql = NULL; /* it belongs to one command, under the turn */
    pz_semaphore_release(&c->use, 1);
}

/* ------------------------------------------------------------------ I/O */

int pz__pg_flush(pz_pg_conn_t *c, int64_t deadline)
{
    for (;;) {
        int f = PQflush(c->pg);
        if (f == 0)
            return 0;
        if (f < 0)
            return pz__pg_lost_or(c, -ECONNRESET);
        /* Output is stuck: read what the server sends meanwhile, so that
         * neither side waits for the other. */
        if (PQconsumeInput(c->pg) == 0)
            return pz__pg_lost_or(c, -ECONNRESET);
        int r = wait_writable(c, deadline);
        if (r < 0)
            return r;
    }
}

int pz__pg_next_result(pz_pg_conn_t *c, int64_t deadline, PGresult **out)
{
    *out = NULL;
    while (PQisBusy(c->pg)) {
        int r = pz__pg_wait_readable(c, deadline);
        if (r < 0)
            return r;
        if (PQconsumeInput(c->pg) == 0) {
            pz__pg_lost(c);
            return -ECONNRESET;
        }
    }
    *out = PQgetResult(c->pg);
    /* A FATAL error (backend terminated, server shutting down) ends the
     * session: the server closes it right after. */
    const char *sev = *out ? PQresultErrorField(*out, PG_DIAG_SEVERITY_NONLOCALIZED) : NULL;
    if (PQstatus(c->pg) == CONNECTION_BAD || (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC")))) {
        sync_fd(c, false);
        pz__pg_break(c);
        PQclear(*out);
        *out = NULL;
        return -ECONNRESET;
    }
    return 0;
}

/* ------------------------------------------------------------------ drain */

static void *cancel_fn(void *arg)
{
    pz_pg_conn_t *c = arg;
    char err[256];
    return (void *)(intptr_t)(c->cancel && PQcancel(c->cancel, err, sizeof err) ? 1 : 0);
}

/* Reads and drops results until the connection is idle: no command in
 * flight, no pipeline sync outstanding. */
static int drain_results(pz_pg_conn_t *c, int64_t deadline)
{
    int r = pz__pg_flush(c, deadline);
    if (r < 0)
        return r;
    for (;;) {
        bool pipeline = PQpipelineStatus(c->pg) != PQ_PIPELINE_OFF;
        if (pipeline && c->pending_syncs == 0)
            return PQexitPipelineMode(c->pg) == 1 ? 0 : -EPROTO;
        PGresult *res;
        if ((r = pz__pg_next_result(c, deadline, &res)) < 0)
            return r;
        if (!res) {
            /* Outside pipeline mode a NULL ends the command; inside it,
             * one statement's results. */
            if (!pipeline)
                return 0;
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_PIPELINE_SYNC)
            c->pending_syncs--;
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
            return -EPROTO;
    }
}

/* The owner's clean-up statement (drain_sql), on the idle session. */
static int drain_cleanup(pz_pg_conn_t *c, int64_t deadline)
{
    if (!c->drain_sql)
        return 0;
    if (!PQsendQuery(c->pg, c->drain_sql))
        return pz__pg_lost_or(c, -EPROTO);
    int r = pz__pg_flush(c, deadline);
    int failed = 0;
    while (r == 0) {
        PGresult *res;
        if ((r = pz__pg_next_result(c, deadline, &res)) < 0 || !res)
            break;
        failed |= pz__pg_status_error(res) < 0;
        PQclear(res);
    }
    return r < 0 ? r : failed ? -EREMOTEIO : 0;
}

static void *drain_task(void *arg)
{
    pz_pg_conn_t *c = arg;
    void *sent = NULL;
    /* The server stops the command; its error result then ends it. */
    if (pz_blocking(cancel_fn, c, &sent) < 0 || !sent)
        pz__pg_debug_report("cancel", c->pg);
    int64_t deadline = pz_now() + PZ_PG_DRAIN_NS;
    int r = drain_results(c, deadline);
    if (r == 0)
        r = drain_cleanup(c, deadline);
    if (r < 0) {
        pz__pg_debug_report("drain", c->pg);
        pz__pg_break(c);
    }
    pz__pg_leave(c);
    conn_unref(c);
    return NULL;
}

void pz__pg_abandon(pz_pg_conn_t *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    pz_task_t *t = pz_spawn(drain_task, c);
    if (!t) {
        pz__pg_break(c);
        pz__pg_leave(c);
        conn_unref(c);
        return;
    }
    pz_detach(t);
}
