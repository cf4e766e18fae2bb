/*
 * The SQLite back end of the weather storage (storage.h).
 *
 * SQLite calls block the calling thread (on disk, and on the file locks of
 * other connections), so every call here runs on plaza's blocking pool
 * through pz_blocking: the calling task is suspended, its worker runs
 * other tasks.
 *
 * Connections, one per role: the writer's own (only the service's single
 * writer task uses it, one call at a time, so it needs no lock) and
 * WX_STORE_READERS readers lent out through a pz_chan holding the free
 * ones: a reader takes one (suspending while all are lent), uses it on the
 * blocking pool and gives it back.  A connection is used by one thread at
 * a time, which SQLite's default (serialized) build allows from any
 * thread.  In WAL mode readers read the last committed snapshot while the
 * writer appends, so readers and the writer never wait for each other;
 * what can still return SQLITE_BUSY is a checkpoint or recovery by another
 * connection (or another process), which busy_timeout=5000 waits out.  A
 * call still busy after that fails with -EBUSY and the service answers
 * 503.
 *
 * Invariant: insert_batch is one transaction (BEGIN IMMEDIATE ... COMMIT);
 * on any failure it rolls back, so a batch is stored whole or not at all.
 *
 * Checkpoints.  SQLite's default copies the WAL back into the database file
 * inside the commit that takes the WAL past 1000 pages: that commit writes
 * the pages and syncs both files, 2-6 ms where a commit takes 0.1-0.3, and
 * every POST queued behind it waits that long (it was the whole tail of
 * POST latency, its 99th percentile 6 ms against 1 without it).  So the
 * writer's connection does not checkpoint (wal_autocheckpoint=0); a
 * checkpointer task of the store does, on a connection of its own, every
 * WX_SQLITE_CHECKPOINT_MS when something was committed since its last run,
 * on the blocking pool, in PASSIVE mode: it copies what it can without
 * taking any lock that the writer or a reader waits for.
 *
 * The WAL must also start over, or it grows for ever, and a long WAL is
 * slow: at 4 500 POSTs and 18 000 GETs a second, letting it reach 16 384
 * pages before starting it over doubled the p99 of both endpoints.  It
 * starts over at a write that finds it wholly copied, which a commit made
 * while the checkpointer copies prevents, and under steady writes one
 * always is.  So once the WAL holds WX_SQLITE_WAL_RESTART_FRAMES, the
 * checkpointer copies again at once (what came in during its first pass,
 * a few hundred pages) and then tries a RESTART checkpoint, which takes
 * the write lock for the last few pages and their sync so that the next
 * commit starts the WAL over.  It tries without waiting (a busy timeout of
 * 0: if the writer or a reader is in the way, it is a PASSIVE one and the
 * next round tries again), so it never queues commits behind it; only past
 * WX_SQLITE_WAL_FORCE_FRAMES does it wait for the lock (busy_timeout).
 * journal_size_limit truncates the file back when the WAL starts over.
 * Durability is unchanged: a commit is in the WAL file either way (see
 * storage.h).
 */
#define _GNU_SOURCE
#include "storage.h"

#include <plaza.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

typedef struct sq_store {
    wx_store base;
    sqlite3 *writer;
    sqlite3_stmt *insert;
    sqlite3 *readers[WX_STORE_READERS];
    sqlite3_stmt *recent[WX_STORE_READERS];
    pz_chan_t *free_readers; /* items: int, the index of a free reader */
    sqlite3 *checkpointer;   /* the checkpointer task's own connection */
    pz_task_t *checkpoint_task;
    _Atomic uint64_t commits; /* batches committed by the writer */
    bool checkpoint_failing; /* the last checkpoint failed (logged once per streak) */
    char path[4096];
} sq_store;

/* How often the checkpointer looks for committed work, the WAL size (in
 * pages of 4 KiB, 16 MiB) from which it tries to make the WAL start over,
 * and the size (256 MiB) from which it waits to (see the file's comment). */
#define WX_SQLITE_CHECKPOINT_MS 100
#define WX_SQLITE_WAL_RESTART_FRAMES 4096
#define WX_SQLITE_WAL_FORCE_FRAMES 65536

static const char *const schema =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
    "PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;"
    "CREATE TABLE IF NOT EXISTS cities(name TEXT PRIMARY KEY, base REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS readings(id INTEGER PRIMARY KEY, city TEXT NOT NULL,"
    " temperature REAL NOT NULL, time INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS readings_city_time ON readings(city, time);";

static int errno_of(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return -EBADMSG;
    case SQLITE_NOMEM:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static int fail(sqlite3 *db, const char *what, int rc)
{
    fprintf(stderr, "plaza-weather: storage: %s: %s (sqlite %d)\n", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
            rc);
    return errno_of(rc);
}




static int open_conn(const char *path, sqlite3 **out, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, schema, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return errno_of(rc);
    }
    *out = db;
    return 0;
}

/* ---- calls that run on the blocking pool ---- */

typedef struct call {
    sq_store *s;
    int reader; /* index of the lent reader */
    int64_t now_ms;
    const char *city;
    const wx_reading *r;
    size_t n;
    wx_point *points;
    wx_city *cities;
    int max;
    int64_t rows;
    int result;
} call;

static void *seed_blocking(void *arg)
{
    call *c = arg;
    sqlite3 *db = c->s->writer;
    sqlite3_stmt *count = NULL, *city = NULL, *reading = NULL;
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        c->result = fail(db, "seed: begin", rc);
        return NULL;
    }
    rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM cities", -1, &count, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(count)) == SQLITE_ROW && sqlite3_column_int64(count, 0) > 0) {
        rc = SQLITE_DONE; /* seeded before */
        goto done;
    }
    if (rc != SQLITE_ROW)
        goto done;
    rc = sqlite3_prepare_v2(db, "INSERT INTO cities(name, base) VALUES (?, ?)", -1, &city, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "INSERT INTO readings(city, temperature, time) VALUES (?, ?, ?)", -1, &reading,
                                NULL);
    for (int i = 0; rc == SQLITE_OK && i < WX_SEED_CITIES; i++) {
        char name[16];
        snprintf(name, sizeof name, "city%02d", i);
        sqlite3_bind_text(city, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(city, 2, wx_seed_base(i));
        rc = sqlite3_step(city);
        sqlite3_reset(city);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        for (int k = 0; rc == SQLITE_OK && k < WX_SEED_READINGS; k++) {
            sqlite3_bind_text(reading, 1, name, -1, SQLITE_TRANSIENT);
            sqlite3_bind_double(reading, 2, wx_seed_reading(i, k));
            sqlite3_bind_int64(reading, 3, c->now_ms - (int64_t)(WX_SEED_READINGS - 1 - k) * 60000);
            rc = sqlite3_step(reading);
            sqlite3_reset(reading);
            rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
        }
    }
    if (rc == SQLITE_OK)
        rc = SQLITE_DONE;
done:
    sqlite3_finalize(count);
    sqlite3_finalize(city);
    sqlite3_finalize(reading);
    if (rc == SQLITE_DONE) {
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        c->result = rc == SQLITE_OK ? 0 : fail(db, "seed: commit", rc);
    } else {
        c->result = fail(db, "seed", rc);
    }
    if (c->result < 0)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (c->result == 0 && c->s->base.opts.grow_pages > 0) {
        /* The test hook: a database that fills up soon. */
        char sql[96];
        sqlite3_stmt *pc = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &pc, NULL) == SQLITE_OK && sqlite3_step(pc) == SQLITE_ROW) {
            snprintf(sql, sizeof sql, "PRAGMA max_page_count = %lld",
                     (long long)sqlite3_column_int64(pc, 0) + c->s->base.opts.grow_pages);
            sqlite3_exec(db, sql, NULL, NULL, NULL);
        }
        sqlite3_finalize(pc);
    }
    return NULL;
}

static void *cities_blocking(void *arg)
{
    call *c = arg;
    sqlite3 *db = c->s->readers[c->reader];
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT name, base FROM cities ORDER BY name", -1, &st, NULL);
    int n = 0;
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            break;
        if (n < c->max) {
            const char *name = (const char *)sqlite3_column_text(st, 0);
            snprintf(c->cities[n].name, sizeof c->cities[n].name, "%s", name ? name : "");
            c->cities[n].base = sqlite3_column_double(st, 1);
            n++;
        }
    }
    c->result = rc == SQLITE_DONE ? n : fail(db, "cities", rc);
    sqlite3_finalize(st);
    return NULL;
}

static void *insert_blocking(void *arg)
{
    call *c = arg;
    sqlite3 *db = c->s->writer;
    sqlite3_stmt *st = c->s->insert;
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        c->result = fail(db, "insert batch: begin", rc);
        return NULL;
    }
    for (size_t i = 0; i < c->n && rc == SQLITE_OK; i++) {
        sqlite3_bind_text(st, 1, c->r[i].city, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 2, c->r[i].temperature);
        sqlite3_bind_int64(st, 3, c->r[i].time_ms);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        c->result = fail(db, "insert batch", rc);
        /* A failed COMMIT may leave the transaction open (SQLITE_BUSY):
         * roll it back so the batch is not committed later by surprise. */
        if (!sqlite3_get_autocommit(db))
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return NULL;
    }
    c->result = 0;
    atomic_fetch_add_explicit(&c->s->commits, 1, memory_order_relaxed);
    return NULL;
}

static void *checkpoint_blocking(void *arg)
{
    sq_store *s = arg;
    int frames = 0, copied = 0;
    int rc = sqlite3_wal_checkpoint_v2(s->checkpointer, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
    if (rc == SQLITE_OK && frames >= WX_SQLITE_WAL_RESTART_FRAMES) {
        rc = sqlite3_wal_checkpoint_v2(s->checkpointer, NULL, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
        bool force = frames >= WX_SQLITE_WAL_FORCE_FRAMES;
        if (rc == SQLITE_OK) {
            if (force)
                sqlite3_busy_timeout(s->checkpointer, 5000);
            rc = sqlite3_wal_checkpoint_v2(s->checkpointer, NULL, SQLITE_CHECKPOINT_RESTART, &frames, &copied);
            if (force)
                sqlite3_busy_timeout(s->checkpointer, 0);
        }
    }
    /* SQLITE_BUSY: another connection (another process) was checkpointing,
     * or RESTART found the write lock or a reader in the way; the next
     * round tries again. */
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        if (!s->checkpoint_failing)
            fail(s->checkpointer, "checkpoint (the WAL grows until it succeeds)", rc);
        s->checkpoint_failing = true;
    } else if (rc == SQLITE_OK && s->checkpoint_failing) {
        fprintf(stderr, "plaza-weather: storage: checkpoints succeed again\n");
        s->checkpoint_failing = false;
    }
    return NULL;
}

/* The store's checkpointer task (see the file's comment).  Ends when
 * cancelled by close; a checkpoint under way when that happens is finished
 * first (pz_blocking waits for a call that has started). */
static void *checkpointer_task(void *arg)
{
    sq_store *s = arg;
    uint64_t seen = 0;
    int64_t next = pz_now();
    for (;;) {
        next += (int64_t)WX_SQLITE_CHECKPOINT_MS * 1000000;
        if (next < pz_now())
            next = pz_now();
        if (pz_sleep_until(next) < 0)
            break;
        uint64_t commits = atomic_load_explicit(&s->commits, memory_order_relaxed);
        if (commits == seen)
            continue;
        seen = commits;
        if (pz_blocking(checkpoint_blocking, s, NULL) < 0)
            break;
    }
    return NULL;
}

static void *recent_blocking(void *arg)
{
    call *c = arg;
    sq_store *s = c->s;
    if (s->base.opts.delay_ms > 0 && (!s->base.opts.delay_city || strcmp(s->base.opts.delay_city, c->city) == 0))
        usleep((useconds_t)s->base.opts.delay_ms * 1000);
    sqlite3 *db = s->readers[c->reader];
    sqlite3_stmt *st = s->recent[c->reader];
    sqlite3_bind_text(st, 1, c->city, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, c->max);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < c->max) {
        c->points[n].temperature = sqlite3_column_double(st, 0);
        c->points[n].time_ms = sqlite3_column_int64(st, 1);
        n++;
    }
    c->result = rc == SQLITE_DONE || rc == SQLITE_ROW ? n : fail(db, "recent readings", rc);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return NULL;
}

static void *count_blocking(void *arg)
{
    call *c = arg;
    sqlite3 *db = c->s->readers[c->reader];
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, c->city ? c->city : "SELECT count(*) FROM readings", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        c->rows = sqlite3_column_int64(st, 0);
        c->result = 0;
    } else {
        c->result = fail(db, c->city ? "health" : "count", rc);
    }
    sqlite3_finalize(st);
    return NULL;
}

/* ---- the interface ---- */

static int run(pz_fn fn, call *c)
{
    int r = pz_blocking(fn, c, NULL);
    return r < 0 ? r : c->result;
}

/* Runs fn with a reader lent from the pool. */
static int run_reader(pz_fn fn, call *c)
{
    int idx;
    int r = pz_chan_recv(c->s->free_readers, &idx);
    if (r < 0)
        return r;
    c->reader = idx;
    r = run(fn, c);
    /* The channel has room for every reader, so this never waits. */
    pz_chan_send(c->s->free_readers, &idx);
    return r;
}

static int sq_seed(wx_store *base, int64_t now_ms)
{
    call c = {.s = (sq_store *)base, .now_ms = now_ms};
    return run(seed_blocking, &c);
}

static int sq_cities(wx_store *base, wx_city *out, int max)
{
    call c = {.s = (sq_store *)base, .cities = out, .max = max};
    return run_reader(cities_blocking, &c);
}

static int sq_insert_batch(wx_store *base, const wx_reading *r, size_t n)
{
    if (n == 0)
        return 0;
    call c = {.s = (sq_store *)base, .r = r, .n = n};
    return run(insert_blocking, &c);
}

static int sq_recent(wx_store *base, const char *city, wx_point *out, int max)
{
    if (max <= 0)
        return -EINVAL;
    call c = {.s = (sq_store *)base, .city = city, .points = out, .max = max};
    return run_reader(recent_blocking, &c);
}

static int sq_count(wx_store *base, int64_t *rows)
{
    call c = {.s = (sq_store *)base};
    int r = run_reader(count_blocking, &c);
    if (r == 0)
        *rows = c.rows;
    return r;
}

static int sq_health(wx_store *base)
{
    /* A query that reads the database file (not only the schema cache). */
    call c = {.s = (sq_store *)base, .city = "SELECT count(*) FROM cities"};
    return run_reader(count_blocking, &c);
}

static void *final_checkpoint_blocking(void *arg)
{
    sq_store *s = arg;
    /* Fold the WAL into the database file so it is one file again. */
    sqlite3_wal_checkpoint_v2(s->writer, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    return NULL;
}

static void sq_close(wx_store *base)
{
    sq_store *s = (sq_store *)base;
    /* Closing is not a wait a cancelled caller may skip: the checkpointer
     * must be gone before its connection, and the last checkpoint copies
     * the whole WAL (a blocking call, so on the blocking pool). */
    pz_shield_begin();
    if (s->checkpoint_task) {
        pz_cancel(s->checkpoint_task);
        pz_join(s->checkpoint_task, NULL);
    }
    sqlite3_close(s->checkpointer);
    for (int i = 0; i < WX_STORE_READERS; i++) {
        sqlite3_finalize(s->recent[i]);
        sqlite3_close(s->readers[i]);
    }
    sqlite3_finalize(s->insert);
    if (s->writer) {
        pz_blocking(final_checkpoint_blocking, s, NULL);
        sqlite3_close(s->writer);
    }
    pz_shield_end();
    if (s->free_readers)
        pz_chan_destroy(s->free_readers);
    free(s);
}

static const wx_store_ops sqlite_ops = {
    .name = "sqlite",
    .seed = sq_seed,
    .cities = sq_cities,
    .insert_batch = sq_insert_batch,
    .recent = sq_recent,
    .count = sq_count,
    .health = sq_health,
    .close = sq_close,
};

int wx_sqlite_open(const char *path, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen)
{
    sq_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->base.ops = &sqlite_ops;
    if (opts)
        s->base.opts = *opts;
    snprintf(s->path, sizeof s->path, "%s", path);
    int r = open_conn(path, &s->writer, err, errlen);
    if (r == 0) {
        int rc = sqlite3_prepare_v3(s->writer, "INSERT INTO readings(city, temperature, time) VALUES (?, ?, ?)", -1,
                                    SQLITE_PREPARE_PERSISTENT, &s->insert, NULL);
        if (rc != SQLITE_OK) {
            snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->writer));
            r = errno_of(rc);
        }
    }
    for (int i = 0; r == 0 && i < WX_STORE_READERS; i++) {
        r = open_conn(path, &s->readers[i], err, errlen);
        if (r == 0) {
            int rc = sqlite3_prepare_v3(s->readers[i],
                                        "SELECT temperature, time FROM readings WHERE city = ? "
                                        "ORDER BY time DESC LIMIT ?",
                                        -1, SQLITE_PREPARE_PERSISTENT, &s->recent[i], NULL);
            if (rc != SQLITE_OK) {
                snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->readers[i]));
                r = errno_of(rc);
            }
        }
    }
    if (r == 0) {
        s->free_readers = pz_chan_create(sizeof(int), WX_STORE_READERS);
        if (!s->free_readers) {
            snprintf(err, errlen, "out of memory");
            r = -ENOMEM;
        }
        for (int i = 0; r == 0 && i < WX_STORE_READERS; i++)
            pz_chan_try_send(s->free_readers, &i);
    }
    if (r == 0)
        r = open_conn(path, &s->checkpointer, err, errlen);
    if (r == 0)
        sqlite3_busy_timeout(s->checkpointer, 0); /* it never waits (see the file's comment) */
    if (r == 0 && !(s->checkpoint_task = pz_spawn(checkpointer_task, s))) {
        snprintf(err, errlen, "no task for the checkpointer");
        r = -ENOMEM;
    }
    if (r < 0) {
        sq_close(&s->base); /* frees whatever was opened */
        return r;
    }
    *out = &s->base;
    return 0;
}
