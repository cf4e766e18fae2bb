/*
 * Results: libpq's own PGresult, read through accessors that tell SQL NULL
 * from the empty string and parse integers with their errors.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <stdlib.h>

int pz__pg_status_error(const PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
        return 0;
    default:
        return -EREMOTEIO;
    }
}

int pz_pg_result_rows(const pz_pg_result_t *r)
{
    return r ? PQntuples(r) : 0;
}

int pz_pg_result_cols(const pz_pg_result_t *r)
{
    return r ? PQnfields(r) : 0;
}

const char *pz_pg_result_value(const pz_pg_result_t *r, int row, int col)
{
    if (!r || row < 0 || col < 0 || row >= PQntuples(r) || col >= PQnfields(r) || PQgetisnull(r, row, col))
        return NULL;
    return PQgetvalue(r, row, col);
}

int pz_pg_result_int64(const pz_pg_result_t *r, int row, int col, int64_t *out)
{
    const char *v = pz_pg_result_value(r, row, col);
    if (!v)
        return -ENOENT;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end)
        return -EINVAL;
    if (out)
        *out = x;
    return 0;
}

int64_t pz_pg_result_affected(const pz_pg_result_t *r)
{
    if (!r)
        return 0;
    const char *t = PQcmdTuples((PGresult *)r);
    if (t && *t)
        return strtoll(t, NULL, 10);
    return PQntuples(r);
}

const char *pz_pg_result_sqlstate(const pz_pg_result_t *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

const char *pz_pg_result_error(const pz_pg_result_t *r)
{
    const char *s = r ? PQresultErrorMessage(r) : NULL;
    return s ? s : "";
}

void pz_pg_result_free(pz_pg_result_t *r)
{
    PQclear(r);
}
