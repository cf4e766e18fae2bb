/*
 * Statements on a connection (conn.c has the connection's protocol): one
 * command at a time under the connection's turn, or a pipeline batch.
 *
 * Every command follows the same course: take the turn, send, flush, read
 * results until libpq says the command is over, give the turn back.  A
 * command that gives up at its deadline or by a cancel after sending hands
 * the turn to a drain task (pz__pg_abandon) instead, which cancels it on the
 * server and reads what remains; any other failure means a lost or
 * unusable session, which is marked broken.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <stdlib.h>

/* A call that gave up with a command in flight leaves through here. */
static int give_up(pz_pg_conn_t *c, int r)
{
    if (r == -ETIMEDOUT || r == -ECANCELED)
        pz__pg_abandon(c);
    else
        pz__pg_leave(c);
    return r;
}

enum send_kind { SEND_QUERY, SEND_PREPARE, SEND_PREPARED };

/* One command: send it, then read its results until libpq says they are
 * over; the last result is kept (the first error, if one failed). */
static int command_with(pz_pg_conn_t *c, enum send_kind kind, const char *name, const char *sql, int nparams,
                        const char *const *params, const int *lengths, const int *formats, int64_t deadline,
                        pz_pg_result_t **res, const char *undo)
{
    if (res)
        *res = NULL;
    if (!c || !sql || nparams < 0 || (nparams > 0 && !params && kind != SEND_PREPARE))
        return -EINVAL;
    int r = pz__pg_enter(c, deadline);
    if (r < 0)
        return r;
    c->drain_sql = undo; /* for a drain, should this command be abandoned */
    int sent;
    switch (kind) {
    case SEND_PREPARE:
        sent = PQsendPrepare(c->pg, name, sql, nparams, NULL);
        break;
    case SEND_PREPARED:
        sent = PQsendQueryPrepared(c->pg, sql, nparams, params, lengths, formats, 0);
        break;
    default:
        /* Without parameters the simple protocol runs several statements
         * separated by semicolons. */
        sent = nparams > 0 ? PQsendQueryParams(c->pg, sql, nparams, NULL, params, lengths, formats, 0)
                           : PQsendQuery(c->pg, sql);
        break;
    }
    if (!sent) {
        r = pz__pg_lost_or(c, -EINVAL);
        if (r == -EINVAL && pz__pg_debug_enabled())
            pz__pg_debug_report("send", c->pg);
        pz__pg_leave(c);
        return r;
    }
    if ((r = pz__pg_flush(c, deadline)) < 0)
        return give_up(c, r);
    PGresult *keep = NULL;
    for (;;) {
        PGresult *one;
        if ((r = pz__pg_next_result(c, deadline, &one)) < 0) {
            PQclear(keep);
            return give_up(c, r);
        }
        if (!one)
            break;
        ExecStatusType st = PQresultStatus(one);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* COPY is not spoken here: end the exchange by dropping the session. */
            PQclear(one);
            PQclear(keep);
            pz__pg_break(c);
            pz__pg_leave(c);
            return -EPROTO;
        }
        if (keep && pz__pg_status_error(keep) < 0) {
            PQclear(one); /* keep the first error */
        } else {
            PQclear(keep);
            keep = one;
        }
    }
    pz__pg_leave(c);
    if (!keep)
        return -EPROTO;
    r = pz__pg_status_error(keep);
    if (res)
        *res = keep;
    else
        PQclear(keep);
    return r;
}

static int command(pz_pg_conn_t *c, enum send_kind kind, const char *name, const char *sql, int nparams,
                   const char *const *params, int64_t deadline, pz_pg_result_t **res, const char *undo)
{
    return command_with(c, kind, name, sql, nparams, params, NULL, NULL, deadline, res, undo);
}

/* Parameters with lengths and formats: libpq wants three arrays. */
#define PZ__PG_PARAMS_ON_STACK 16

int pz_pg_query_params(pz_pg_conn_t *c, const char *sql, int nparams, const pz_pg_param_t *params, int64_t deadline,
                       pz_pg_result_t **res)
{
    if (res)
        *res = NULL;
    if (!c || !sql || nparams <= 0 || !params)
        return -EINVAL;
    for (int i = 0; i < nparams; i++)
        if ((params[i].format != 0 && params[i].format != 1) ||
            (params[i].format == 1 && params[i].value && params[i].length < 0))
            return -EINVAL;
    const char *values_s[PZ__PG_PARAMS_ON_STACK];
    int lengths_s[PZ__PG_PARAMS_ON_STACK], formats_s[PZ__PG_PARAMS_ON_STACK];
    const char **values = values_s;
    int *lengths = lengths_s, *formats = formats_s;
    if (nparams > PZ__PG_PARAMS_ON_STACK) {
        values = malloc((size_t)nparams * sizeof *values);
        lengths = malloc((size_t)nparams * sizeof *lengths);
        formats = malloc((size_t)nparams * sizeof *formats);
        if (!values || !lengths || !formats) {
            free(values);
            free(lengths);
            free(formats);
            return -ENOMEM;
        }
    }
    for (int i = 0; i < nparams; i++) {
        values[i] = params[i].value;
        lengths[i] = params[i].format == 1 ? params[i].length : 0;
        formats[i] = params[i].format;
    }
    int r = command_with(c, SEND_QUERY, NULL, sql, nparams, values, lengths, formats, deadline, res, NULL);
    if (values != values_s) {
        free(values);
        free(lengths);
        free(formats);
    }
    return r;
}

int pz_pg_query(pz_pg_conn_t *c, const char *sql, int nparams, const char *const *params, int64_t deadline,
                pz_pg_result_t **res)
{
    return command(c, SEND_QUERY, NULL, sql, nparams, params, deadline, res, NULL);
}

int pz_pg_prepare(pz_pg_conn_t *c, const char *name, const char *sql, int nparams, int64_t deadline)
{
    if (!name)
        return -EINVAL;
    return command(c, SEND_PREPARE, name, sql, nparams, NULL, deadline, NULL, NULL);
}

int pz_pg_query_prepared(pz_pg_conn_t *c, const char *name, int nparams, const char *const *params, int64_t deadline,
                         pz_pg_result_t **res)
{
    return command(c, SEND_PREPARED, NULL, name, nparams, params, deadline, res, NULL);
}

int pz__pg_query_prepared_undo(pz_pg_conn_t *c, const char *name, int nparams, const char *const *params,
                               int64_t deadline, pz_pg_result_t **res, const char *undo)
{
    return command(c, SEND_PREPARED, NULL, name, nparams, params, deadline, res, undo);
}

int64_t pz_pg_exec(pz_pg_conn_t *c, const char *sql, int nparams, const char *const *params, int64_t deadline)
{
    pz_pg_result_t *res;
    int r = pz_pg_query(c, sql, nparams, params, deadline, &res);
    int64_t n = r == 0 ? pz_pg_result_affected(res) : r;
    pz_pg_result_free(res);
    return n;
}

int pz_pg_pipeline(pz_pg_conn_t *c, const pz_pg_statement_t *stmts, int n, int64_t deadline, pz_pg_result_t **res)
{
    if (!c || n < 0 || (n > 0 && (!stmts || !res)))
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        res[i] = NULL;
        if (!stmts[i].sql || stmts[i].nparams < 0 || (stmts[i].nparams > 0 && !stmts[i].params))
            return -EINVAL;
    }
    if (n == 0)
        return 0;
    int r = pz__pg_enter(c, deadline);
    if (r < 0)
        return r;
    if (PQenterPipelineMode(c->pg) != 1) {
        r = pz__pg_lost_or(c, -EPROTO);
        pz__pg_leave(c);
        return r;
    }
    for (int i = 0; i < n; i++) {
        if (!PQsendQueryParams(c->pg, stmts[i].sql, stmts[i].nparams, NULL, stmts[i].params, NULL, NULL, 0)) {
            /* Only a lost connection or no memory make a send fail: give
             * the session up rather than reason about a half-sent batch. */
            r = pz__pg_lost_or(c, -ENOMEM);
            pz__pg_break(c);
            pz__pg_leave(c);
            return r;
        }
    }
    if (PQpipelineSync(c->pg) != 1) {
        r = pz__pg_lost_or(c, -ECONNRESET);
        pz__pg_break(c);
        pz__pg_leave(c);
        return r;
    }
    c->pending_syncs++;
    if ((r = pz__pg_flush(c, deadline)) < 0)
        return give_up(c, r);
    int failed = 0;
    for (int i = 0; i <= n; i++) {
        PGresult *one;
        if ((r = pz__pg_next_result(c, deadline, &one)) < 0)
            goto abandon;
        if (i == n) {
            /* After the last statement: the sync's own result. */
            if (!one || PQresultStatus(one) != PGRES_PIPELINE_SYNC) {
                PQclear(one);
                r = -EPROTO;
                goto abandon;
            }
            PQclear(one);
            c->pending_syncs--;
            break;
        }
        if (!one) {
            r = -EPROTO;
            goto abandon;
        }
        res[i] = one;
        if (pz__pg_status_error(one) < 0)
            failed = 1;
        /* Each statement's results end with a NULL. */
        PGresult *end;
        if ((r = pz__pg_next_result(c, deadline, &end)) < 0)
            goto abandon;
        if (end) {
            PQclear(end);
            r = -EPROTO;
            goto abandon;
        }
    }
    if (PQexitPipelineMode(c->pg) != 1) {
        pz__pg_break(c);
        pz__pg_leave(c);
        r = -EPROTO;
        goto clear;
    }
    pz__pg_leave(c);
    return failed ? -EREMOTEIO : 0;
abandon:
    if (r == -ETIMEDOUT || r == -ECANCELED) {
        pz__pg_abandon(c);
    } else {
        pz__pg_break(c);
        pz__pg_leave(c);
    }
clear:
    for (int i = 0; i < n; i++) {
        PQclear(res[i]);
        res[i] = NULL;
    }
    return r;
}
