/*
 * LISTEN/NOTIFY on a connection.
 *
 * The server pushes a notification to every session that listens on its
 * channel, after the sender's transaction commits, in commit order.  libpq
 * queues the ones it reads (while reading query results too) and hands them
 * out in arrival order through PQnotifies.  A waiting task holds the
 * connection's turn and alternates: take a queued notification if there is
 * one, else read what the socket has (PQconsumeInput), else wait for the
 * socket to become readable.  Nothing is sent, so giving up at the deadline
 * leaves nothing in flight and the turn is simply given back.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pz_pg_listen(pz_pg_conn_t *c, const char *channel, int64_t deadline)
{
    if (!c || !channel)
        return -EINVAL;
    char *q = PQescapeIdentifier(c->pg, channel, strlen(channel));
    if (!q)
        return -ENOMEM;
    size_t len = strlen(q) + sizeof "LISTEN ";
    char *sql = malloc(len);
    if (!sql) {
        PQfreemem(q);
        return -ENOMEM;
    }
    snprintf(sql, len, "LISTEN %s", q);
    PQfreemem(q);
    int64_t r = pz_pg_exec(c, sql, 0, NULL, deadline);
    free(sql);
    return r < 0 ? (int)r : 0;
}

int pz_pg_notify(pz_pg_conn_t *c, const char *channel, const char *payload, int64_t deadline)
{
    if (!c || !channel)
        return -EINVAL;
    const char *params[2] = {channel, payload ? payload : ""};
    int64_t r = pz_pg_exec(c, "SELECT pg_notify($1, $2)", 2, params, deadline);
    return r < 0 ? (int)r : 0;
}

/* One allocation: the struct, then the channel and payload strings. */
static pz_pg_notification_t *copy_notification(const PGnotify *n)
{
    size_t lc = strlen(n->relname) + 1, lp = strlen(n->extra) + 1;
    pz_pg_notification_t *out = malloc(sizeof *out + lc + lp);
    if (!out)
        return NULL;
    char *s = (char *)(out + 1);
    memcpy(s, n->relname, lc);
    memcpy(s + lc, n->extra, lp);
    out->channel = s;
    out->payload = s + lc;
    out->sender_pid = n->be_pid;
    return out;
}

int pz_pg_wait_notification(pz_pg_conn_t *c, int64_t deadline, pz_pg_notification_t **out)
{
    if (!c || !out)
        return -EINVAL;
    *out = NULL;
    int r = pz__pg_enter(c, deadline);
    if (r < 0)
        return r;
    for (;;) {
        PGnotify *n = PQnotifies(c->pg);
        if (n) {
            *out = copy_notification(n);
            PQfreemem(n);
            r = *out ? 0 : -ENOMEM;
            break;
        }
        /* PQisBusy is false on an idle session, so next_result would not
         * wait: read the socket here instead. */
        if (PQconsumeInput(c->pg) == 0 || PQstatus(c->pg) == CONNECTION_BAD) {
            pz__pg_lost(c);
            r = -ECONNRESET;
            break;
        }
        if ((n = PQnotifies(c->pg)) != NULL) {
            *out = copy_notification(n);
            PQfreemem(n);
            r = *out ? 0 : -ENOMEM;
            break;
        }
        if ((r = pz__pg_wait_readable(c, deadline)) < 0)
            break;
    }
    pz__pg_leave(c);
    return r;
}

void pz_pg_notification_free(pz_pg_notification_t *n)
{
    free(n);
}
