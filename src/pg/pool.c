/*
 * A pool of PostgreSQL connections.
 *
 * Bound.  The semaphore `slots` holds `size` permits; a task holds one from
 * acquire until release, so at most `size` connections are lent.  A new
 * connection is only made by a permit holder that found no idle one, so at
 * that moment open == lent <= size, and open never exceeds size.
 *
 * Idle list.  A stack (the most recently used connection first, the one
 * most likely still warm) under the sync mutex `mu`, which also guards the
 * counters and the back-off state: the sections are a few loads and stores,
 * never a wait.
 *
 * Health.  A connection that idled longer than idle_check_ns, or that a
 * background drain still holds (it timed out or was cancelled in a query),
 * is checked with SELECT 1 before it is lent; broken ones, and ones given
 * back inside a transaction, are closed, never lent or kept.
 *
 * New connections.  The pool's on_connect hook runs on each before it is
 * first lent; a connection it refuses is closed and the attempt counts as
 * a failed connect (back-off included).
 *
 * Back-off.  After a failed connect, attempts are spaced by a delay that
 * starts at backoff_min_ns and doubles up to backoff_max_ns, shared by all
 * acquirers (each attempt claims the next slot in time, so a dead server
 * sees one attempt per delay, not one per waiting task); a success resets it.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pz_pg_pool {
    char *conninfo;
    int size;
    int64_t idle_check_ns, backoff_min_ns, backoff_max_ns;
    int (*on_connect)(pz_pg_conn_t *c, void *arg);
    void *on_connect_arg;
    pz_semaphore_t slots;
    pz_mutex_t mu;
    /* Guarded by mu: */
    pz_pg_conn_t *idle;
    int nidle, open;
    int64_t backoff;      /* 0 while connects succeed */
    int64_t next_attempt; /* no connect before this time while backing off */
    int last_error;
    pz_pg_pool_stats_t stats;
};

int pz_pg_pool_create(const pz_pg_pool_opts_t *o, pz_pg_pool_t **out)
{
    if (!o || !o->conninfo || !out || o->size < 0 || o->idle_check_ns < 0 || o->backoff_min_ns < 0 ||
        o->backoff_max_ns < 0)
        return -EINVAL;
    pz_pg_pool_t *p = calloc(1, sizeof *p);
    if (!p || !(p->conninfo = strdup(o->conninfo))) {
        free(p);
        return -ENOMEM;
    }
    p->size = o->size ? o->size : 8;
    p->idle_check_ns = o->idle_check_ns ? o->idle_check_ns : 1000000000LL;
    p->backoff_min_ns = o->backoff_min_ns ? o->backoff_min_ns : 10000000LL;
    p->backoff_max_ns = o->backoff_max_ns ? o->backoff_max_ns : 2000000000LL;
    if (p->backoff_max_ns < p->backoff_min_ns)
        p->backoff_max_ns = p->backoff_min_ns;
    p->on_connect = o->on_connect;
    p->on_connect_arg = o->on_connect_arg;
    pz_semaphore_init(&p->slots, (uint64_t)p->size);
    *out = p;
    return 0;
}

static void discard(pz_pg_pool_t *p, pz_pg_conn_t *c)
{
    pz_pg_close(c);
    pz_mutex_lock(&p->mu);
    p->open--;
    p->stats.discarded++;
    pz_mutex_unlock(&p->mu);
}

/* Waits for the back-off slot and claims the next one.  0, or the wait's
 * error; -ETIMEDOUT (or the last connect error) if the slot comes after
 * the deadline. */
static int backoff_wait(pz_pg_pool_t *p, int64_t deadline)
{
    pz_mutex_lock(&p->mu);
    int64_t now = pz_now();
    int64_t at = p->backoff ? p->next_attempt : now;
    int last = p->last_error;
    if (p->backoff) {
        if (at < now)
            at = now;
        p->next_attempt = at + p->backoff; /* the next attempt waits for this one's verdict */
    }
    pz_mutex_unlock(&p->mu);
    if (at <= now)
        return 0;
    if (at > deadline) {
        int r = pz_sleep_until(deadline);
        return r < 0 ? r : (last ? last : -ETIMEDOUT);
    }
    return pz_sleep_until(at);
}

static void connected(pz_pg_pool_t *p, int r)
{
    pz_mutex_lock(&p->mu);
    if (r == 0) {
        p->open++;
        p->stats.connects++;
        p->backoff = 0;
        p->last_error = 0;
    } else if (r != -ECANCELED) {
        p->stats.connect_failures++;
        p->backoff = p->backoff ? p->backoff * 2 : p->backoff_min_ns;
        if (p->backoff > p->backoff_max_ns)
            p->backoff = p->backoff_max_ns;
        int64_t next = pz_now() + p->backoff;
        if (next > p->next_attempt)
            p->next_attempt = next;
        p->last_error = r;
    }
    pz_mutex_unlock(&p->mu);
}

int pz_pg_pool_acquire(pz_pg_pool_t *p, int64_t deadline, pz_pg_conn_t **out)
{
    if (!p || !out)
        return -EINVAL;
    *out = NULL;
    int r = pz_semaphore_acquire_until(&p->slots, 1, deadline);
    if (r < 0)
        return r;
    for (;;) {
        pz_mutex_lock(&p->mu);
        pz_pg_conn_t *c = p->idle;
        if (c) {
            p->idle = c->next_idle;
            p->nidle--;
        }
        pz_mutex_unlock(&p->mu);
        if (c) {
            c->next_idle = NULL;
            if (!pz_pg_conn_ok(c)) {
                discard(p, c);
                continue;
            }
            bool draining = pz_semaphore_available(&c->use) == 0;
            if (draining || pz_now() - c->idle_since > p->idle_check_ns) {
                pz_mutex_lock(&p->mu);
                p->stats.health_checks++;
                pz_mutex_unlock(&p->mu);
                int64_t h = pz_pg_exec(c, "SELECT 1", 0, NULL, deadline);
                if (h < 0) {
                    discard(p, c);
                    if (h == -ETIMEDOUT || h == -ECANCELED) {
                        pz_semaphore_release(&p->slots, 1);
                        return (int)h;
                    }
                    continue;
                }
            }
            *out = c;
            return 0;
        }
        if ((r = backoff_wait(p, deadline)) < 0)
            break;
        r = pz_pg_connect(p->conninfo, deadline, &c);
        if (r == 0 && p->on_connect) {
            int h = p->on_connect(c, p->on_connect_arg);
            if (h < 0) {
                pz_pg_close(c); /* the hook refused it */
                r = h;
            }
        }
        connected(p, r);
        if (r == 0) {
            *out = c;
            return 0;
        }
        if (r == -ETIMEDOUT || r == -ECANCELED || pz_now() >= deadline)
            break;
    }
    pz_semaphore_release(&p->slots, 1);
    return r;
}

/* A session left inside a transaction (a missing COMMIT, or a statement
 * of the transaction given up) must not reach the next borrower.  Only
 * looked at when nobody holds the connection's turn; one a drain still
 * holds is checked on acquire, where SELECT 1 in an aborted transaction
 * fails and discards it. */
static bool left_in_transaction(pz_pg_conn_t *c)
{
    if (pz_semaphore_try_acquire(&c->use, 1) != 0)
        return false;
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    pz_semaphore_release(&c->use, 1);
    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
}

void pz_pg_pool_release(pz_pg_pool_t *p, pz_pg_conn_t *c)
{
    if (!p || !c)
        return;
    if (!pz_pg_conn_ok(c) || left_in_transaction(c)) {
        discard(p, c);
    } else {
        c->idle_since = pz_now();
        pz_mutex_lock(&p->mu);
        c->next_idle = p->idle;
        p->idle = c;
        p->nidle++;
        pz_mutex_unlock(&p->mu);
    }
    pz_semaphore_release(&p->slots, 1);
}

int pz_pg_pool_query(pz_pg_pool_t *p, const char *sql, int nparams, const char *const *params, int64_t deadline,
                     pz_pg_result_t **res)
{
    if (res)
        *res = NULL;
    pz_pg_conn_t *c;
    int r = pz_pg_pool_acquire(p, deadline, &c);
    if (r < 0)
        return r;
    r = pz_pg_query(c, sql, nparams, params, deadline, res);
    pz_pg_pool_release(p, c);
    return r;
}

void pz_pg_pool_stats(pz_pg_pool_t *p, pz_pg_pool_stats_t *out)
{
    if (!p || !out)
        return;
    pz_mutex_lock(&p->mu);
    *out = p->stats;
    out->idle = p->nidle;
    out->open = p->open;
    pz_mutex_unlock(&p->mu);
}

void pz_pg_pool_destroy(pz_pg_pool_t *p)
{
    if (!p)
        return;
    pz_pg_conn_t *c = p->idle;
    while (c) {
        pz_pg_conn_t *next = c->next_idle;
        pz_pg_close(c);
        c = next;
    }
    free(p->conninfo);
    free(p);
}
