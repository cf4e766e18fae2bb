/*
 * The weather service's storage: the interface every back end implements.
 *
 * Contract.  Every call is made from a plaza task and may suspend that task
 * for as long as the database takes; none blocks a worker thread.  A back
 * end whose client library blocks (SQLite) runs each call on the blocking
 * pool (pz_blocking); a back end with a non-blocking client (PostgreSQL on
 * plaza's own client) waits on the runtime's reactor instead.  So the
 * service above this interface never knows which one it talks to.
 *
 * Roles.  One writer (the service's writer task) calls insert_batch, never
 * two at once; any number of tasks call recent and health at the same
 * time.  A back end keeps one connection for the writer and a small pool
 * for the readers (WX_STORE_READERS), so a reader never waits behind a
 * commit and a commit never shares a connection with a query.
 *
 * Errors are negative errno values: -ENOSPC (disk or database full),
 * -EBUSY (the database stayed locked past the busy timeout), -EBADMSG (the
 * file is not a database or is corrupt), -EIO (anything else the database
 * reported), -EINVAL (bad arguments), -ENOMEM.  Each failure is also logged
 * once on stderr with the database's own message, as one line starting
 * "plaza-weather: storage:".  A failed insert_batch stored nothing of the
 * batch (one transaction): whoever was waiting for it must not be told
 * its readings are stored.
 *
 * Durability.  insert_batch returns 0 only once the batch is committed:
 * with SQLite in WAL mode and synchronous=NORMAL the commit is in the WAL
 * file, so it survives the process being killed (not necessarily a power
 * loss).
 */
#ifndef WX_STORAGE_H
#define WX_STORAGE_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WX_CITY_NAME_MAX 32 /* bytes of a city name, with its NUL */
#define WX_SEED_CITIES 64
#define WX_SEED_READINGS 32 /* per city */
#define WX_RECENT 32        /* readings a forecast is based on */
#define WX_STORE_READERS 4  /* reader connections per back end */

typedef struct wx_city {
    char name[WX_CITY_NAME_MAX];
    double base;
} wx_city;

typedef struct wx_reading {
    const char *city; /* a name the back end only reads during the call */
    double temperature;
    int64_t time_ms; /* unix milliseconds */
} wx_reading;

typedef struct wx_point {
    double temperature;
    int64_t time_ms;
} wx_point;

typedef struct wx_store_opts {
    /* Test hooks, off when zero: every recent() of the city named
     * delay_city (of every city if NULL) takes delay_ms longer, as if the
     * database were slow. */
    int delay_ms;
    const char *delay_city;
    /* SQLite only: once seeded, the file may grow by at most this many
     * pages (PRAGMA max_page_count), so a full disk can be tested. */
    int grow_pages;
} wx_store_opts;

/* A city's forecast as the PostgreSQL back end stores it for every
 * replica of the service: its value, when and from how many readings it
 * was computed, and the fencing token of the distributed lock under which
 * it was written. */
typedef struct wx_forecast {
    double temperature;
    int64_t computed_at_ms; /* unix milliseconds */
    int based_on;
    uint64_t token;
} wx_forecast;

typedef struct wx_store wx_store;

/* The operations of one back end. */
typedef struct wx_store_ops {
    const char *name;
    int (*seed)(wx_store *s, int64_t now_ms);
    int (*cities)(wx_store *s, wx_city *out, int max);
    int (*insert_batch)(wx_store *s, const wx_reading *r, size_t n);
    int (*recent)(wx_store *s, const char *city, wx_point *out, int max);
    int (*count)(wx_store *s, int64_t *rows);
    int (*health)(wx_store *s);
    void (*close)(wx_store *s);
    /* Shared forecasts, for a back end that several processes share
     * (PostgreSQL); NULL in one that serves one process (SQLite).  Reader
     * role.  forecast_get: 1 with *out set, 0 if none is stored, or an
     * error.  forecast_put: stores f if f->token is at least the token of
     * the stored one (the fencing check, in the same statement as the
     * write), 0; -ESTALE if a higher token wrote it first (f was computed
     * under a lock since lost); or an error. */
    int (*forecast_get)(wx_store *s, const char *city, wx_forecast *out);
    int (*forecast_put)(wx_store *s, const char *city, const wx_forecast *f);
} wx_store_ops;

struct wx_store {
    const wx_store_ops *ops;
    wx_store_opts opts;
    /* The database the replicas of the service coordinate on (a libpq
     * conninfo for the distributed locks), or NULL for a back end that
     * serves one process. */
    const char *shared_conninfo;
};

/* Opens the database named by url: "postgresql://..." or "postgres://..."
 * (a libpq URI) or "pg:CONNINFO" (a libpq key=value string), when the
 * PostgreSQL back end is built; "sqlite:PATH", or a plain PATH (SQLite).  Creates the schema if it is missing.  Returns 0 and *out, or a
 * negative error with a message in err. */
int wx_store_open(const char *url, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen);

/* Seeds the cities and their first readings (protocol: 64 cities, 32
 * readings each ending at now_ms) in one transaction if the cities table is
 * empty; does nothing otherwise.  Returns 0 or an error. */
static inline int wx_store_seed(wx_store *s, int64_t now_ms) { return s->ops->seed(s, now_ms); }
/* Fills out with up to max cities sorted by name; returns how many, or an
 * error. */
static inline int wx_store_cities(wx_store *s, wx_city *out, int max) { return s->ops->cities(s, out, max); }
/* Commits n readings in one transaction (writer role).  0 or an error. */
static inline int wx_store_insert_batch(wx_store *s, const wx_reading *r, size_t n)
{
    return s->ops->insert_batch(s, r, n);
}
/* The city's most recent readings, newest first, at most max (reader
 * role).  Returns how many, or an error. */
static inline int wx_store_recent(wx_store *s, const char *city, wx_point *out, int max)
{
    return s->ops->recent(s, city, out, max);
}
/* The number of rows of readings (reader role). */
static inline int wx_store_count(wx_store *s, int64_t *rows) { return s->ops->count(s, rows); }
/* 0 if a query answers now, else an error (reader role). */
static inline int wx_store_health(wx_store *s) { return s->ops->health(s); }
static inline int wx_store_forecast_get(wx_store *s, const char *city, wx_forecast *out)
{
    return s->ops->forecast_get ? s->ops->forecast_get(s, city, out) : -ENOSYS;
}
static inline int wx_store_forecast_put(wx_store *s, const char *city, const wx_forecast *f)
{
    return s->ops->forecast_put ? s->ops->forecast_put(s, city, f) : -ENOSYS;
}
/* Closes every connection.  Nobody may be using the store. */
static inline void wx_store_close(wx_store *s) { s->ops->close(s); }

/* The seeded reading k (0..31) of city i, and its base (protocol). */
double wx_seed_base(int i);
double wx_seed_reading(int i, int k);

/* Back ends. */
int wx_sqlite_open(const char *path, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen);
/* conninfo: a libpq connection string or URI. */
int wx_pg_open(const char *conninfo, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen);

#endif
