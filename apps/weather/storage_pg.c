/*
 * The PostgreSQL back end of the weather storage (storage.h), on plaza's
 * own PostgreSQL client (include/plaza/pg.h).
 *
 * The client drives libpq's non-blocking API on the runtime's reactor, so
 * unlike the SQLite back end nothing here goes to the blocking pool: a
 * call suspends the calling task until the server answers.
 *
 * Connections, one per role as in the SQLite back end: the writer's own
 * (only the service's writer task uses it; reconnected on the next call
 * if it broke) and a pool of WX_STORE_READERS for the readers
 * (pz_pg_pool: reconnects with back-off, checks idle connections).
 *
 * Invariant: insert_batch is one statement (an INSERT of unnest() over
 * three array parameters), so one implicit transaction: a batch is stored
 * whole or not at all, in one round trip.  The commit is durable when the
 * statement returns (synchronous_commit on, the server's default).
 *
 * Seeding runs in one transaction that first locks the cities table, so
 * two services starting on one empty database seed it once.
 *
 * Forecasts are shared by every replica of the service on the database
 * (table forecasts).  A write is admitted by its fencing token in the
 * same statement: an upsert whose update applies only if the stored
 * row's token is not higher, so a writer whose distributed lock was lost
 * and taken by another (a higher token) cannot overwrite the newer
 * forecast; the row lock of the upsert orders concurrent writers.
 */
#define _GNU_SOURCE
#include "storage.h"

#include <plaza.h>
#include <plaza/pg.h>

#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_TIMEOUT (30 * 1000000000LL)

typedef struct pg_store {
    wx_store base;
    char *conninfo;
    pz_pg_conn_t *writer;
    bool insert_prepared; /* on this writer session (after the schema exists) */
    pz_pg_pool_t *readers;
} pg_store;

static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base DOUBLE PRECISION NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS readings(id BIGSERIAL PRIMARY KEY, city TEXT NOT NULL,"
     " temperature DOUBLE PRECISION NOT NULL, time BIGINT NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time)",
    ("CREATE TABLE IF NOT EXISTS forecasts(city TEXT PRIMARY KEY, temperature DOUBLE PRECISION NOT NULL,"
     " computed_at BIGINT NOT NULL, based_on INT NOT NULL, token BIGINT NOT NULL)"),
};

static int fail(pz_pg_conn_t *c, const char *what, int r)
{
    fprintf(stderr, "plaza-weather: storage: %s: %s (%s)\n", what, c ? pz_pg_error_message(c) : "", pz_strerror(r));
    return r == -ENOMEM || r == -EINVAL ? r : -EIO;
}

static int64_t deadline(void) { return pz_now() + PG_TIMEOUT; }

/* The writer's connection, reconnected if it broke. */
static int writer_conn(pg_store *s, pz_pg_conn_t **out)
{
    if (s->writer && !pz_pg_conn_ok(s->writer)) {
        pz_pg_close(s->writer);
        s->writer = NULL;
        s->insert_prepared = false; /* a new session has no statements */
    }
    if (!s->writer) {
        int r = pz_pg_connect(s->conninfo, deadline(), &s->writer);
        if (r < 0) {
            s->writer = NULL;
            return fail(NULL, "connect", r);
        }
    }
    *out = s->writer;
    return 0;
}

static int pg_seed(wx_store *base, int64_t now_ms)
{
    pg_store *s = (pg_store *)base;
    pz_pg_conn_t *c;
    int r = writer_conn(s, &c);
    if (r < 0)
        return r;
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    const char *params[] = {now};
    int64_t n;
    if ((n = pz_pg_exec(c, "BEGIN", 0, NULL, deadline())) < 0 ||
        (n = pz_pg_exec(c, "LOCK TABLE cities IN EXCLUSIVE MODE", 0, NULL, deadline())) < 0)
        goto failed;
    pz_pg_result_t *res = NULL;
    int64_t count = 0;
    r = pz_pg_query(c, "SELECT count(*) FROM cities", 0, NULL, deadline(), &res);
    if (r == 0)
        r = pz_pg_result_int64(res, 0, 0, &count);
    pz_pg_result_free(res);
    if (r < 0) {
        n = r;
        goto failed;
    }
    if (count == 0) {
        /* The protocol's values, computed in float8 as the C back end
         * computes them in double, so both store the same bits. */
        if ((n = pz_pg_exec(c,
                            "INSERT INTO cities(name, base) SELECT 'city' || lpad(i::text, 2, '0'),"
                            " ((i * 7) % 40)::float8 - 5.0::float8 FROM generate_series(0, 63) i",
                            0, NULL, deadline())) < 0 ||
            (n = pz_pg_exec(c,
                            "INSERT INTO readings(city, temperature, time) SELECT 'city' || lpad(i::text, 2, '0'),"
                            " (((i * 7) % 40)::float8 - 5.0::float8) + (((k * 13 + i) % 11) - 5)::float8 * 0.1::float8,"
                            " $1::bigint - (31 - k) * 60000 FROM generate_series(0, 63) i, generate_series(0, 31) k"
                            " ORDER BY i, k",
                            1, params, deadline())) < 0)
            goto failed;
    }
    if ((n = pz_pg_exec(c, "COMMIT", 0, NULL, deadline())) < 0)
        goto failed;
    return 0;
failed:
    r = fail(c, "seed", (int)n);
    if (pz_pg_conn_ok(c))
        pz_pg_exec(c, "ROLLBACK", 0, NULL, deadline());
    return r;
}

/* The statements of the forecast path, prepared on every reader
 * connection when it is made (the pool's on_connect), so each call is one
 * round trip without a parse and plan on the server. */
enum { ST_NONE = -1, ST_RECENT, ST_FC_GET, ST_FC_PUT, ST_COUNT };
static const struct {
    const char *name, *sql;
    int nparams;
} statements[ST_COUNT] = {
    [ST_RECENT] = {"wx_recent",
                   "SELECT temperature, time FROM readings WHERE city = $1 ORDER BY time DESC LIMIT $2::int", 2},
    [ST_FC_GET] = {"wx_fc_get", "SELECT temperature, computed_at, based_on, token FROM forecasts WHERE city = $1", 1},
    /* The fencing check and the write are one statement: no row comes
     * back (0 affected) when a higher token has written the city. */
    [ST_FC_PUT] = {"wx_fc_put",
                   "INSERT INTO forecasts AS f (city, temperature, computed_at, based_on, token)"
                   " VALUES ($1, $2::float8, $3::bigint, $4::int, $5::bigint) ON CONFLICT (city) DO UPDATE"
                   " SET temperature = EXCLUDED.temperature, computed_at = EXCLUDED.computed_at,"
                   " based_on = EXCLUDED.based_on, token = EXCLUDED.token WHERE f.token <= EXCLUDED.token",
                   5},
};

static int prepare_reader(pz_pg_conn_t *c, void *arg)
{
    (void)arg;
    for (int i = 0; i < ST_COUNT; i++) {
        int r = pz_pg_prepare(c, statements[i].name, statements[i].sql, statements[i].nparams, deadline());
        if (r < 0)
            return fail(c, "prepare", r);
    }
    return 0;
}

/* Runs a reader query on a pooled connection: the prepared statement st,
 * or sql with st ST_NONE. */
static int reader_run(pg_store *s, const char *what, int st, const char *sql, int nparams, const char *const *params,
                      pz_pg_result_t **res)
{
    pz_pg_conn_t *c;
    int r = pz_pg_pool_acquire(s->readers, deadline(), &c);
    if (r < 0)
        return fail(NULL, what, r);
    r = st == ST_NONE ? pz_pg_query(c, sql, nparams, params, deadline(), res)
                      : pz_pg_query_prepared(c, statements[st].name, nparams, params, deadline(), res);
    if (r < 0) {
        r = fail(c, what, r);
        if (*res) {
            pz_pg_result_free(*res);
            *res = NULL;
        }
    }
    pz_pg_pool_release(s->readers, c);
    return r;
}

static int pg_cities(wx_store *base, wx_city *out, int max)
{
    pz_pg_result_t *res = NULL;
    int r = reader_run((pg_store *)base, "cities", ST_NONE, "SELECT name, base FROM cities ORDER BY name", 0, NULL,
                       &res);
    if (r < 0)
        return r;
    int n = pz_pg_result_rows(res);
    if (n > max)
        n = max;
    for (int i = 0; i < n; i++) {
        snprintf(out[i].name, sizeof out[i].name, "%s", pz_pg_result_value(res, i, 0));
        out[i].base = strtod(pz_pg_result_value(res, i, 1), NULL);
    }
    pz_pg_result_free(res);
    return n;
}

/* A one-dimensional array in PostgreSQL's binary format (what the server's
 * array_recv reads): a header (dimensions 1, no nulls, the element type's
 * OID, the length, lower bound 1), then each element as a 4-byte length
 * and its bytes, every integer big-endian.  Sent as a binary parameter, it
 * spares formatting every reading's numbers as text here and parsing them
 * there. */
typedef struct bin_array {
    unsigned char *p;
    size_t len, cap;
    uint32_t n;
} bin_array;

enum { OID_INT8 = 20, OID_TEXT = 25, OID_FLOAT8 = 701, BIN_ARRAY_HEADER = 20 };

static void put_be32(unsigned char *o, uint32_t v)
{
    v = htobe32(v);
    memcpy(o, &v, sizeof v);
}

static int ba_reserve(bin_array *a, size_t more)
{
    if (a->len + more <= a->cap)
        return 0;
    size_t ncap = a->cap ? a->cap : 1024;
    while (ncap < a->len + more)
        ncap *= 2;
    unsigned char *p = realloc(a->p, ncap);
    if (!p)
        return -ENOMEM;
    a->p = p;
    a->cap = ncap;
    return 0;
}

static int ba_begin(bin_array *a, uint32_t elem_oid)
{
    if (ba_reserve(a, BIN_ARRAY_HEADER) < 0)
        return -ENOMEM;
    put_be32(a->p, 1);        /* dimensions */
    put_be32(a->p + 4, 0);    /* no nulls */
    put_be32(a->p + 8, elem_oid);
    put_be32(a->p + 12, 0);   /* the length, set by ba_end */
    put_be32(a->p + 16, 1);   /* lower bound */
    a->len = BIN_ARRAY_HEADER;
    a->n = 0;
    return 0;
}

static int ba_add(bin_array *a, const void *bytes, uint32_t n)
{
    if (ba_reserve(a, 4 + (size_t)n) < 0)
        return -ENOMEM;
    put_be32(a->p + a->len, n);
    memcpy(a->p + a->len + 4, bytes, n);
    a->len += 4 + (size_t)n;
    a->n++;
    return 0;
}

static int ba_add_u64(bin_array *a, uint64_t v)
{
    v = htobe64(v);
    return ba_add(a, &v, sizeof v);
}

static void ba_end(bin_array *a)
{
    put_be32(a->p + 12, a->n);
}

static int pg_insert_batch(wx_store *base, const wx_reading *rd, size_t n)
{
    pg_store *s = (pg_store *)base;
    if (n == 0)
        return 0;
    if (n > INT32_MAX / 64)
        return -EINVAL;
    bin_array arr[3] = {{0}};
    int r = 0;
    const uint32_t oids[3] = {OID_TEXT, OID_FLOAT8, OID_INT8};
    for (int k = 0; k < 3 && r == 0; k++)
        r = ba_begin(&arr[k], oids[k]);
    for (size_t i = 0; i < n && r == 0; i++) {
        uint64_t bits;
        memcpy(&bits, &rd[i].temperature, sizeof bits); /* float8: the IEEE 754 bits */
        r = ba_add(&arr[0], rd[i].city, (uint32_t)strlen(rd[i].city));
        if (r == 0)
            r = ba_add_u64(&arr[1], bits);
        if (r == 0)
            r = ba_add_u64(&arr[2], (uint64_t)rd[i].time_ms);
    }
    if (r == 0) {
        pz_pg_conn_t *c;
        r = writer_conn(s, &c);
        if (r == 0) {
            pz_pg_param_t params[3];
            for (int k = 0; k < 3; k++) {
                ba_end(&arr[k]);
                params[k] = (pz_pg_param_t){(const char *)arr[k].p, (int)arr[k].len, 1};
            }
            pz_pg_result_t *res = NULL;
            int q = 0;
            if (!s->insert_prepared &&
                (q = pz_pg_prepare(c, "wx_insert",
                                   "INSERT INTO readings(city, temperature, time)"
                                   " SELECT * FROM unnest($1::text[], $2::float8[], $3::bigint[])",
                                   3, deadline())) == 0)
                s->insert_prepared = true;
            if (q == 0)
                q = pz_pg_query_prepared_params(c, "wx_insert", 3, params, deadline(), &res);
            int64_t m = q == 0 ? pz_pg_result_affected(res) : q;
            pz_pg_result_free(res);
            if (m < 0)
                r = fail(c, "insert batch", (int)m);
            else if ((size_t)m != n)
                r = fail(c, "insert batch: short insert", -EIO);
        }
    }
    for (int k = 0; k < 3; k++)
        free(arr[k].p);
    return r;
}

static int pg_recent(wx_store *base, const char *city, wx_point *out, int max)
{
    pg_store *s = (pg_store *)base;
    if (max <= 0)
        return -EINVAL;
    if (s->base.opts.delay_ms > 0 && (!s->base.opts.delay_city || strcmp(s->base.opts.delay_city, city) == 0))
        pz_sleep((int64_t)s->base.opts.delay_ms * 1000000);
    char lim[16];
    snprintf(lim, sizeof lim, "%d", max);
    const char *params[] = {city, lim};
    pz_pg_result_t *res = NULL;
    int r = reader_run(s, "recent readings", ST_RECENT, NULL, 2, params, &res);
    if (r < 0)
        return r;
    int n = pz_pg_result_rows(res);
    if (n > max)
        n = max;
    for (int i = 0; i < n; i++) {
        int64_t t = 0;
        out[i].temperature = strtod(pz_pg_result_value(res, i, 0), NULL);
        pz_pg_result_int64(res, i, 1, &t);
        out[i].time_ms = t;
    }
    pz_pg_result_free(res);
    return n;
}

static int pg_forecast_get(wx_store *base, const char *city, wx_forecast *out)
{
    const char *params[] = {city};
    pz_pg_result_t *res = NULL;
    int r = reader_run((pg_store *)base, "forecast", ST_FC_GET, NULL, 1, params, &res);
    if (r < 0)
        return r;
    r = 0;
    if (pz_pg_result_rows(res) == 1) {
        int64_t at = 0, based = 0, token = 0;
        out->temperature = strtod(pz_pg_result_value(res, 0, 0), NULL);
        if (pz_pg_result_int64(res, 0, 1, &at) < 0 || pz_pg_result_int64(res, 0, 2, &based) < 0 ||
            pz_pg_result_int64(res, 0, 3, &token) < 0)
            r = -EIO;
        out->computed_at_ms = at;
        out->based_on = (int)based;
        out->token = (uint64_t)token;
        if (r == 0)
            r = 1;
    }
    pz_pg_result_free(res);
    return r;
}

static int pg_forecast_put(wx_store *base, const char *city, const wx_forecast *f)
{
    char temp[40], at[24], based[16], token[24];
    snprintf(temp, sizeof temp, "%.17g", f->temperature);
    snprintf(at, sizeof at, "%lld", (long long)f->computed_at_ms);
    snprintf(based, sizeof based, "%d", f->based_on);
    snprintf(token, sizeof token, "%llu", (unsigned long long)f->token);
    const char *params[] = {city, temp, at, based, token};
    pz_pg_result_t *res = NULL;
    int r = reader_run((pg_store *)base, "forecast write", ST_FC_PUT, NULL, 5, params, &res);
    if (r < 0)
        return r;
    int64_t n = pz_pg_result_affected(res);
    pz_pg_result_free(res);
    return n == 1 ? 0 : -ESTALE;
}

static int pg_scalar(pg_store *s, const char *what, const char *sql, int64_t *v)
{
    pz_pg_result_t *res = NULL;
    int r = reader_run(s, what, ST_NONE, sql, 0, NULL, &res);
    if (r < 0)
        return r;
    r = pz_pg_result_int64(res, 0, 0, v);
    pz_pg_result_free(res);
    return r < 0 ? -EIO : 0;
}

static int pg_count(wx_store *base, int64_t *rows)
{
    return pg_scalar((pg_store *)base, "count", "SELECT count(*) FROM readings", rows);
}

static int pg_health(wx_store *base)
{
    int64_t v;
    return pg_scalar((pg_store *)base, "health", "SELECT count(*) FROM cities", &v);
}

static void pg_close(wx_store *base)
{
    pg_store *s = (pg_store *)base;
    if (s->writer)
        pz_pg_close(s->writer);
    if (s->readers)
        pz_pg_pool_destroy(s->readers);
    free(s->conninfo);
    free(s);
}

static const wx_store_ops pg_ops = {
    .name = "postgresql",
    .seed = pg_seed,
    .cities = pg_cities,
    .insert_batch = pg_insert_batch,
    .recent = pg_recent,
    .count = pg_count,
    .health = pg_health,
    .close = pg_close,
    .forecast_get = pg_forecast_get,
    .forecast_put = pg_forecast_put,
};

int wx_pg_open(const char *conninfo, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen)
{
    pg_store *s = calloc(1, sizeof *s);
    if (!s || !(s->conninfo = strdup(conninfo))) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->base.ops = &pg_ops;
    s->base.shared_conninfo = s->conninfo;
    if (opts)
        s->base.opts = *opts;
    int r = pz_pg_connect(conninfo, deadline(), &s->writer);
    if (r < 0) {
        s->writer = NULL;
        snprintf(err, errlen, "cannot connect to PostgreSQL: %s", pz_strerror(r));
        pg_close(&s->base);
        return r;
    }
    for (size_t i = 0; i < sizeof schema / sizeof schema[0]; i++) {
        /* Replicas starting at once can collide creating the same table
         * (a unique violation in the catalog); the next attempt finds it. */
        int64_t m = -1;
        for (int attempt = 0; attempt < 3 && m < 0; attempt++)
            m = pz_pg_exec(s->writer, schema[i], 0, NULL, deadline());
        if (m < 0) {
            snprintf(err, errlen, "schema: %s", pz_pg_error_message(s->writer));
            pg_close(&s->base);
            return -EIO;
        }
    }
    pz_pg_pool_opts_t po = {.conninfo = conninfo, .size = WX_STORE_READERS, .on_connect = prepare_reader};
    r = pz_pg_pool_create(&po, &s->readers);
    if (r < 0) {
        s->readers = NULL;
        snprintf(err, errlen, "reader pool: %s", pz_strerror(r));
        pg_close(&s->base);
        return r;
    }
    *out = &s->base;
    return 0;
}
