/*
 * The storage interface (storage.h) against a back end: the same checks
 * for each (today SQLite; PostgreSQL joins behind the same interface).
 *
 *   test_weather_storage sqlite
 *   test_weather_storage pg      (PLAZA_PG_URL, or the state file named by
 *                                 PLAZA_PG_STATE of the test server fixture)
 *
 * Seeding follows the protocol exactly and only once; a batch is stored
 * whole; recent() returns the newest first and at most what was asked;
 * many tasks reading while the writer commits all see committed data only
 * (the row count never goes down and ends at the exact total); a failed
 * open is an error with a message, not a crash.  SQLite: commits do not
 * checkpoint, the store's checkpointer does, soon after (the database file
 * alone, without its WAL, holds every committed row).
 */
#define _GNU_SOURCE
#include "storage.h"

#include <plaza.h>

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#ifdef WX_HAVE_PG
#include <plaza/pg.h>
#endif

static int failures;
#define CHECK(cond, ...)                                                                                             \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            failures++;                                                                                              \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                     \
            fprintf(stderr, __VA_ARGS__);                                                                            \
            fprintf(stderr, "\n");                                                                                   \
        }                                                                                                            \
    } while (0)

static char url[4096];
static char pg_admin[2048]; /* conninfo of the server's own database */
static char pg_db[64];      /* the test's database, created and dropped here */
static const int64_t T0 = 1733300000000LL;

typedef struct reader_arg {
    wx_store *s;
    _Atomic int *stop;
    int64_t last;
    int ok;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    a->ok = 1;
    while (!atomic_load(a->stop)) {
        int64_t n = 0;
        if (wx_store_count(a->s, &n) < 0 || n < a->last) {
            a->ok = 0;
            break;
        }
        a->last = n;
        wx_point pts[WX_RECENT];
        int k = wx_store_recent(a->s, "city05", pts, WX_RECENT);
        for (int i = 1; i < k; i++)
            if (pts[i].time_ms > pts[i - 1].time_ms)
                a->ok = 0;
    }
    return NULL;
}

#ifdef WX_HAVE_PG
static int pg_admin_exec(const char *sql)
{
    pz_pg_conn_t *c;
    int r = pz_pg_connect(pg_admin, pz_now() + 30000000000LL, &c);
    if (r < 0)
        return r;
    int64_t n = pz_pg_exec(c, sql, 0, NULL, pz_now() + 30000000000LL);
    if (n < 0)
        fprintf(stderr, "%s: %s\n", sql, pz_pg_error_message(c));
    pz_pg_close(c);
    return n < 0 ? (int)n : 0;
}
#endif

/* Rows in readings of a copy of the SQLite database file alone (its WAL
 * left behind, so only what a checkpoint copied into the file counts), or
 * -1 if the copy cannot be read. */
static int64_t rows_in_file_alone(const char *path)
{
    char copy[4200];
    snprintf(copy, sizeof copy, "%s.alone", path);
    FILE *in = fopen(path, "rb"), *out = fopen(copy, "wb");
    char buf[65536];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t rows = -1;
    if (sqlite3_open_v2(copy, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT count(*) FROM readings", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        rows = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    unlink(copy);
    return rows;
}

static void *body(void *arg)
{
    (void)arg;
    char err[512];
    wx_store *s = NULL;
#ifdef WX_HAVE_PG
    if (pg_db[0]) {
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", pg_db);
        int c = pg_admin_exec(sql);
        CHECK(c == 0, "create the test database: %d", c);
        if (c)
            return NULL;
    }
#endif
    int r = wx_store_open(url, NULL, &s, err, sizeof err);
    CHECK(r == 0, "open %s: %s", url, err);
    if (r)
        return NULL;
    CHECK(wx_store_seed(s, T0) == 0, "seed");
    CHECK(wx_store_seed(s, T0 + 1) == 0, "seed again");
    int64_t rows = 0;
    CHECK(wx_store_count(s, &rows) == 0 && rows == WX_SEED_CITIES * WX_SEED_READINGS,
          "seeded once: %lld rows", (long long)rows);
    wx_city cities[100];
    int n = wx_store_cities(s, cities, 100);
    CHECK(n == WX_SEED_CITIES, "64 cities, got %d", n);
    for (int i = 0; i < n; i++) {
        char name[16];
        snprintf(name, sizeof name, "city%02d", i);
        CHECK(strcmp(cities[i].name, name) == 0 && cities[i].base == ((i * 7) % 40) - 5.0, "city %d: %s %g", i,
              cities[i].name, cities[i].base);
    }
    wx_point pts[WX_RECENT];
    int k = wx_store_recent(s, "city07", pts, WX_RECENT);
    CHECK(k == WX_RECENT, "32 recent readings of city07, got %d", k);
    for (int j = 0; j < k; j++) {
        /* Newest first: j = 0 is the seeded reading 31, at T0. */
        int kk = WX_SEED_READINGS - 1 - j;
        CHECK(pts[j].time_ms == T0 - (int64_t)j * 60000, "time of reading %d", j);
        CHECK(fabs(pts[j].temperature - (wx_seed_base(7) + (((kk * 13 + 7) % 11) - 5) * 0.1)) < 1e-9,
              "seeded value %d: %g", kk, pts[j].temperature);
    }
    CHECK(wx_store_recent(s, "city07", pts, 3) == 3, "a limit of 3");
    CHECK(wx_store_recent(s, "nowhere", pts, WX_RECENT) == 0, "an unknown city has no readings");
    CHECK(wx_store_recent(s, "city07", pts, 0) == -EINVAL, "a limit of 0 is -EINVAL");

    /* Batches committed while readers read. */
    _Atomic int stop = 0;
    reader_arg ra[6];
    pz_task_t *t[6];
    for (int i = 0; i < 6; i++) {
        ra[i] = (reader_arg){.s = s, .stop = &stop};
        t[i] = pz_spawn(reader, &ra[i]);
    }
    wx_reading batch[500];
    int64_t added = 0;
    for (int b = 0; b < 40; b++) {
        int m = 1 + (b * 37) % 500;
        for (int i = 0; i < m; i++)
            batch[i] = (wx_reading){"city05", (double)(b * 1000 + i) / 10.0, T0 + 1000 + b * 1000 + i};
        CHECK(wx_store_insert_batch(s, batch, (size_t)m) == 0, "batch %d", b);
        added += m;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 6; i++) {
        pz_join(t[i], NULL);
        CHECK(ra[i].ok, "reader %d saw the count go down or readings out of order", i);
    }
    CHECK(wx_store_count(s, &rows) == 0 && rows == WX_SEED_CITIES * WX_SEED_READINGS + added,
          "every batch stored whole: %lld rows", (long long)rows);
    k = wx_store_recent(s, "city05", pts, 1);
    CHECK(k == 1 && pts[0].time_ms == T0 + 1000 + 39 * 1000 + (39 * 37) % 500,
          "the newest reading is the last inserted");
    CHECK(wx_store_health(s) == 0, "healthy");
    if (!pg_db[0]) {
        /* The checkpointer looks every 100 ms; give it up to 20 s on a
         * loaded machine (or under a sanitizer). */
        int64_t alone = -1;
        for (int i = 0; i < 200 && alone != rows; i++) {
            pz_sleep(100000000);
            alone = rows_in_file_alone(url);
        }
        CHECK(alone == rows, "the checkpointer copied every committed row into the file: %lld of %lld",
              (long long)alone, (long long)rows);
    }
    wx_store_close(s);

    /* Opening something that is not a database fails cleanly. */
    if (!pg_db[0]) {
        char bad[4200];
        snprintf(bad, sizeof bad, "%s.bad", url);
        FILE *f = fopen(bad, "w");
        fputs("this is not a database, just some text that is long enough to be a header............\n", f);
        fclose(f);
        r = wx_store_open(bad, NULL, &s, err, sizeof err);
        CHECK(r == -EBADMSG, "a file that is not a database: -EBADMSG, got %d (%s)", r, err);
        unlink(bad);
        r = wx_store_open("/nonexistent-dir/x.db", NULL, &s, err, sizeof err);
        CHECK(r < 0 && err[0], "a path that cannot be created fails with a message: %d %s", r, err);
    }
#ifdef WX_HAVE_PG
    if (pg_db[0]) {
        err[0] = 0;
        r = wx_store_open("pg:host=/nonexistent port=1 connect_timeout=2", NULL, &s, err, sizeof err);
        CHECK(r < 0 && err[0], "an unreachable server fails with a message: %d %s", r, err);
        char sql[128];
        snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", pg_db);
        CHECK(pg_admin_exec(sql) == 0, "drop the test database");
    }
#endif
    return NULL;
}

int main(int argc, char **argv)
{
    const char *backend = argc > 1 ? argv[1] : "sqlite";
    char dir[] = "/tmp/plaza-weather-storage-XXXXXX";
    if (strcmp(backend, "sqlite") == 0) {
        if (!mkdtemp(dir))
            return 1;
        snprintf(url, sizeof url, "%s/w.db", dir);
    } else if (strcmp(backend, "pg") == 0) {
#ifdef WX_HAVE_PG
        const char *e = getenv("PLAZA_PG_URL");
        const char *state = getenv("PLAZA_PG_STATE");
        if (e && *e) {
            snprintf(pg_admin, sizeof pg_admin, "%s", e);
        } else if (state) {
            /* A file of KEY='value' lines (scripts/pg-test-server.sh). */
            FILE *f = fopen(state, "r");
            char line[2048];
            while (f && fgets(line, sizeof line, f))
                if (strncmp(line, "PLAZA_PG_URL='", 14) == 0) {
                    char *end = strrchr(line + 14, '\'');
                    if (end)
                        *end = 0;
                    snprintf(pg_admin, sizeof pg_admin, "%s", line + 14);
                }
            if (f)
                fclose(f);
        }
        if (!pg_admin[0]) {
            fprintf(stderr, "no PostgreSQL server: set PLAZA_PG_URL or PLAZA_PG_STATE\n");
            return 1;
        }
        snprintf(pg_db, sizeof pg_db, "plaza_weather_test_%d", (int)getpid());
        snprintf(url, sizeof url, "pg:%s dbname=%s", pg_admin, pg_db);
#else
        fprintf(stderr, "this build has no PostgreSQL back end\n");
        return 1;
#endif
    } else {
        fprintf(stderr, "unknown back end %s\n", backend);
        return 2;
    }
    pz_config_t cfg = {.workers = 2};
    int r = pz_run(&cfg, body, NULL, NULL);
    if (r < 0)
        return 1;
    if (strcmp(backend, "sqlite") == 0) {
        const char *tails[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            char p[4200];
            snprintf(p, sizeof p, "%s%s", url, tails[i]);
            unlink(p);
        }
        rmdir(dir);
    }
    printf("%s\n", failures ? "FAILED" : "all storage checks passed");
    return failures ? 1 : 0;
}
