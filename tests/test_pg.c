/* The PostgreSQL client against a real server (tests/pg_helpers.h): queries
 * and results, no worker ever blocked in libpq, deadlines and cancels
 * cancelled on the server, pipelining, LISTEN/NOTIFY, the pool. */
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "helpers.h"
#include "pg_helpers.h"


static const char *url;

/* ------------------------------------------------------------ queries */

static _Atomic int hung_up;

static size_t put_msg(char *out, char type, const char *body, size_t n)
{
    out[0] = type;
    uint32_t len = htonl((uint32_t)(n + 4));
    memcpy(out + 1, &len, 4);
    memcpy(out + 5, body, n);
    return n + 5;
}

/* A fake server that lets the client in as a read-only session: a client
 * asking for target_session_attrs=read-write then closes this connection
 * and tries its next host, on a new socket. */
static void *read_only_server_task(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = pz_accept(lfd, NULL, NULL, PZ_FOREVER);
        if (fd < 0)
            return NULL;
        char b[512];
        pz_read(fd, b, sizeof b, in_ms(5000)); /* the startup message */
        char out[512];
        size_t n = 0;
        n += put_msg(out + n, 'R', "\0\0\0\0", 4); /* AuthenticationOk */
        n += put_msg(out + n, 'S', "server_version\0" "15.0\0", 20);
        n += put_msg(out + n, 'S', "in_hot_standby\0off\0", 19);
        n += put_msg(out + n, 'S', "default_transaction_read_only\0on\0", 33);
        n += put_msg(out + n, 'K', "\0\0\0\1\0\0\0\2", 8);
        n += put_msg(out + n, 'Z', "I", 1);
        pz_write_all(fd, out, n, in_ms(5000));
        while (pz_read(fd, b, sizeof b, in_ms(5000)) > 0) {
        }
        pz_close(fd);
        atomic_fetch_add(&hung_up, 1);
    }
}

static void *basics_main(void *arg)
{
    (void)arg;
    pz_pg_conn_t *c;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &c), 0);
    CHECK(pz_pg_conn_ok(c));
    CHECK(pz_pg_backend_pid(c) > 0);

    const char *p[3] = {"20", "22", NULL};
    pz_pg_result_t *r;
    CHECK_EQ(pz_pg_query(c, "SELECT $1::int + $2::int, $3::text IS NULL, $3::text, 'x'", 3, p, in_ms(10000), &r), 0);
    CHECK_EQ(pz_pg_result_rows(r), 1);
    CHECK_EQ(pz_pg_result_cols(r), 4);
    int64_t v = 0;
    CHECK_EQ(pz_pg_result_int64(r, 0, 0, &v), 0);
    CHECK_EQ(v, 42);
    CHECK(strcmp(pz_pg_result_value(r, 0, 1), "t") == 0);
    CHECK(pz_pg_result_value(r, 0, 2) == NULL); /* SQL NULL */
    CHECK_EQ(pz_pg_result_int64(r, 0, 2, &v), -ENOENT);
    CHECK_EQ(pz_pg_result_int64(r, 0, 3, &v), -EINVAL);
    CHECK(pz_pg_result_value(r, 1, 0) == NULL); /* out of range */
    CHECK(strcmp(pz_pg_result_sqlstate(r), "") == 0);
    pz_pg_result_free(r);

    /* A server error: -EREMOTEIO with its SQLSTATE; the connection goes on. */
    CHECK_EQ(pz_pg_query(c, "SELECT 1/0", 0, NULL, in_ms(10000), &r), -EREMOTEIO);
    CHECK(strcmp(pz_pg_result_sqlstate(r), "22012") == 0);
    CHECK(strstr(pz_pg_result_error(r), "division by zero") != NULL);
    pz_pg_result_free(r);
    CHECK_EQ(pz_pg_query(c, "SELECT $1::int", 1, (const char *[]){"nope"}, in_ms(10000), NULL), -EREMOTEIO);

    /* Statements without parameters, several at once; rows affected. */
    CHECK_EQ(pz_pg_exec(c, "DROP TABLE IF EXISTS t_basics; CREATE TABLE t_basics (a int)", 0, NULL, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_exec(c, "INSERT INTO t_basics SELECT generate_series(1, 17)", 0, NULL, in_ms(10000)), 17);
    CHECK_EQ(pz_pg_exec(c, "SELECT * FROM t_basics", 0, NULL, in_ms(10000)), 17);
    CHECK_EQ(pz_pg_exec(c, "DROP TABLE t_basics", 0, NULL, in_ms(10000)), 0);

    /* Prepared statements. */
    CHECK_EQ(pz_pg_prepare(c, "twice", "SELECT $1::int * 2", 1, in_ms(10000)), 0);
    for (int i = 0; i < 5; i++) {
        char a[8];
        snprintf(a, sizeof a, "%d", i);
        CHECK_EQ(pz_pg_query_prepared(c, "twice", 1, (const char *[]){a}, in_ms(10000), &r), 0);
        CHECK_EQ(pz_pg_result_int64(r, 0, 0, &v), 0);
        CHECK_EQ(v, 2 * i);
        pz_pg_result_free(r);
    }
    CHECK_EQ(pz_pg_prepare(c, "twice", "SELECT 1", 0, in_ms(10000)), -EREMOTEIO); /* the name is taken */
    CHECK_EQ(pz_pg_query_prepared(c, "nobody", 0, NULL, in_ms(10000), NULL), -EREMOTEIO);

    /* Bad input. */
    CHECK_EQ(pz_pg_query(c, NULL, 0, NULL, in_ms(1000), NULL), -EINVAL);
    CHECK_EQ(pz_pg_query(c, "SELECT $1", 1, NULL, in_ms(1000), NULL), -EINVAL);
    CHECK_EQ(pz_pg_connect(NULL, in_ms(1000), &c), -EINVAL);
    pz_pg_close(c);

    /* Several hosts, the first one a read-only session where read-write is
     * asked for: libpq closes that socket and opens another for the next
     * host, which gets the number just freed.  The client must follow the
     * new socket (it compares inodes), or it would wait on the dead one. */
    const char *port = pg_state("PLAZA_PG_PORT");
    if (port) {
        int lfd = pz_tcp_listen("127.0.0.1:0");
        CHECK(lfd >= 0);
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        CHECK_EQ(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
        pz_task_t *h = pz_spawn(read_only_server_task, (void *)(intptr_t)lfd);
        char multi[256];
        snprintf(multi, sizeof multi, "host=127.0.0.1,127.0.0.1 port=%d,%s dbname=postgres user=postgres sslmode=disable "
                 "target_session_attrs=read-write",
                 ntohs(sa.sin_port), port);
        for (int i = 0; i < 20; i++) {
            pz_pg_conn_t *m;
            CHECK_EQ(pz_pg_connect(multi, in_ms(10000), &m), 0);
            CHECK_EQ(pz_pg_exec(m, "SELECT 1", 0, NULL, in_ms(10000)), 1);
            pz_pg_close(m);
        }
        /* Each hang-up is counted by the fake server once it reads the
         * end of the stream, which may come after the client is done. */
        int64_t limit = pz_now() + 10 * SEC;
        while (atomic_load(&hung_up) < 20 && pz_now() < limit)
            pz_sleep(1 * MS);
        CHECK_EQ(atomic_load(&hung_up), 20);
        pz_cancel(h);
        pz_join(h, NULL);
        pz_close(lfd);
    }

    /* Nobody listening there: refused, quickly. */
    pz_pg_conn_t *bad = NULL;
    CHECK_EQ(pz_pg_connect("host=127.0.0.1 port=1 connect_timeout=5", in_ms(5000), &bad), -ECONNREFUSED);
    CHECK(bad == NULL);
    return NULL;
}

static void test_basics(void **state)
{
    (void)state;
    run_in_runtime(2, basics_main, NULL);
}

/* ------------------------------------------------------------ binary parameters */

static void be64(unsigned char *o, uint64_t v)
{
    v = htobe64(v);
    memcpy(o, &v, sizeof v);
}

static void *params_main(void *arg)
{
    (void)arg;
    pz_pg_conn_t *c;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &c), 0);
    /* A float8 and an int8 in binary, a text, a NULL. */
    double d = -11.125e-3;
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    unsigned char f8[8], i8[8];
    be64(f8, bits);
    be64(i8, (uint64_t)-1234567890123LL);
    pz_pg_param_t p[4] = {{(const char *)f8, 8, 1}, {(const char *)i8, 8, 1}, {"héllo", 0, 0}, {NULL, 0, 1}};
    pz_pg_result_t *res = NULL;
    CHECK_EQ(pz_pg_query_params(c, "SELECT $1::float8 = -0.011125, $2::int8, $3::text, $4::int8 IS NULL", 4, p,
                                in_ms(10000), &res),
             0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 0), "t"), 0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 1), "-1234567890123"), 0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 2), "héllo"), 0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 3), "t"), 0);
    pz_pg_result_free(res);
    /* A binary float8[] of three elements, read back by unnest. */
    unsigned char arr[20 + 3 * 12];
    const uint32_t head[5] = {htobe32(1), htobe32(0), htobe32(701), htobe32(3), htobe32(1)};
    memcpy(arr, head, sizeof head);
    const double vals[3] = {1.5, -0.1, 1e300};
    for (int i = 0; i < 3; i++) {
        unsigned char *o = arr + 20 + 12 * i;
        o[0] = o[1] = o[2] = 0;
        o[3] = 8;
        memcpy(&bits, &vals[i], sizeof bits);
        be64(o + 4, bits);
    }
    pz_pg_param_t pa = {(const char *)arr, (int)sizeof arr, 1};
    CHECK_EQ(pz_pg_query_params(c, "SELECT x::text FROM unnest($1::float8[]) AS x", 1, &pa, in_ms(10000), &res), 0);
    CHECK_EQ(pz_pg_result_rows(res), 3);
    for (int i = 0; i < 3; i++)
        CHECK(strtod(pz_pg_result_value(res, i, 0), NULL) == vals[i]);
    pz_pg_result_free(res);
    /* The same through a prepared statement. */
    CHECK_EQ(pz_pg_prepare(c, "bin_twice", "SELECT $1::float8 * 2 = -0.02225", 1, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_query_prepared_params(c, "bin_twice", 1, p, in_ms(10000), &res), 0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 0), "t"), 0);
    pz_pg_result_free(res);
    CHECK_EQ(pz_pg_query_prepared_params(c, "no_such_statement", 1, p, in_ms(10000), &res), -EREMOTEIO);
    pz_pg_result_free(res);
    /* A malformed binary value is the server's error, and the session
     * goes on. */
    pz_pg_param_t bad = {(const char *)f8, 3, 1};
    CHECK_EQ(pz_pg_query_params(c, "SELECT $1::float8", 1, &bad, in_ms(10000), &res), -EREMOTEIO);
    pz_pg_result_free(res);
    /* More parameters than fit on the stack. */
    pz_pg_param_t many[40];
    char text[40][8];
    char sql[512] = "SELECT ";
    for (int i = 0; i < 40; i++) {
        snprintf(text[i], sizeof text[i], "%d", i);
        many[i] = (pz_pg_param_t){text[i], 0, 0};
        snprintf(sql + strlen(sql), sizeof sql - strlen(sql), "%s$%d::int", i ? "+" : "", i + 1);
    }
    CHECK_EQ(pz_pg_query_params(c, sql, 40, many, in_ms(10000), &res), 0);
    CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 0), "780"), 0);
    pz_pg_result_free(res);
    /* Misuse. */
    pz_pg_param_t fmt2 = {"1", 0, 2}, neg = {(const char *)f8, -1, 1};
    CHECK_EQ(pz_pg_query_params(c, "SELECT $1", 1, &fmt2, in_ms(10000), &res), -EINVAL);
    CHECK(res == NULL);
    CHECK_EQ(pz_pg_query_params(c, "SELECT $1", 1, &neg, in_ms(10000), &res), -EINVAL);
    CHECK_EQ(pz_pg_query_params(c, "SELECT 1", 0, p, in_ms(10000), &res), -EINVAL);
    CHECK_EQ(pz_pg_query_params(c, "SELECT $1", 1, NULL, in_ms(10000), &res), -EINVAL);
    CHECK_EQ(pz_pg_query_params(NULL, "SELECT $1", 1, p, in_ms(10000), &res), -EINVAL);
    CHECK_EQ(pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(10000)), 1);
    pz_pg_close(c);
    return NULL;
}

static void test_binary_params(void **state)
{
    (void)state;
    run_in_runtime(2, params_main, NULL);
}

/* ------------------------------------------------------------ no blocked worker */

struct ticker {
    _Atomic int done;
    _Atomic long ticks;
};

static void *tick_task(void *arg)
{
    struct ticker *t = arg;
    while (!atomic_load(&t->done)) {
        pz_sleep(1 * MS);
        atomic_fetch_add(&t->ticks, 1);
    }
    return NULL;
}

static void *one_worker_main(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_worker_count(), 1);
    pz_pg_conn_t *c;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &c), 0);
    struct ticker t = {0, 0};
    pz_task_t *tk = pz_spawn(tick_task, &t);
    /* Let the ticker start, then wait on the server for half a second. */
    while (atomic_load(&t.ticks) == 0)
        pz_yield();
    long before = atomic_load(&t.ticks);
    int64_t t0 = pz_now();
    CHECK_EQ(pz_pg_exec(c, "SELECT pg_sleep(0.5)", 0, NULL, in_ms(10000)), 1);
    int64_t took = pz_now() - t0;
    long ticks = atomic_load(&t.ticks) - before;
    atomic_store(&t.done, 1);
    CHECK_EQ(pz_join(tk, NULL), 0);
    fprintf(stderr, "one worker: the query took %.1f ms while the other task ticked %ld times (1 ms sleeps)\n",
            took / 1e6, ticks);
    CHECK(took >= 490 * MS);
    /* Had the only worker sat in libpq, the ticker could not have run at
     * all during the query (0 ticks); 500 are the ideal, a busy machine
     * gives fewer (169 with two other test programs beside it). */
    CHECK(ticks >= 10);
    pz_pg_close(c);
    return NULL;
}

static void test_one_worker_never_blocked(void **state)
{
    (void)state;
    run_in_runtime(1, one_worker_main, NULL);
}

/* ------------------------------------------------------------ 200 tasks over a pool */

#define LOAD_TASKS 200
#define LOAD_QUERIES 10000

struct load {
    pz_pg_pool_t *pool;
    _Atomic long next;
    _Atomic long sum;
    _Atomic long done;
};

static void *load_task(void *arg)
{
    struct load *L = arg;
    for (;;) {
        long i = atomic_fetch_add(&L->next, 1);
        if (i >= SCALED(LOAD_QUERIES))
            return NULL;
        pz_pg_conn_t *c;
        CHECK_EQ(pz_pg_pool_acquire(L->pool, in_ms(30000), &c), 0);
        char a[24], b[24];
        snprintf(a, sizeof a, "%ld", i);
        snprintf(b, sizeof b, "%ld", i % 7);
        const char *p[2] = {a, b};
        pz_pg_result_t *r;
        CHECK_EQ(pz_pg_query(c, "SELECT $1::bigint * 3 + $2::bigint, $1::text", 2, p, in_ms(30000), &r), 0);
        int64_t v;
        CHECK_EQ(pz_pg_result_int64(r, 0, 0, &v), 0);
        CHECK_EQ(v, i * 3 + i % 7);
        CHECK(strcmp(pz_pg_result_value(r, 0, 1), a) == 0);
        pz_pg_result_free(r);
        pz_pg_pool_release(L->pool, c);
        atomic_fetch_add(&L->sum, v);
        atomic_fetch_add(&L->done, 1);
    }
}

static void *load_main(void *arg)
{
    (void)arg;
    struct load L = {0};
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 8};
    CHECK_EQ(pz_pg_pool_create(&o, &L.pool), 0);
    pz_task_t *t[LOAD_TASKS];
    int64_t t0 = pz_now();
    for (int i = 0; i < LOAD_TASKS; i++)
        CHECK((t[i] = pz_spawn(load_task, &L)) != NULL);
    for (int i = 0; i < LOAD_TASKS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    int64_t took = pz_now() - t0;
    long n = SCALED(LOAD_QUERIES), want = 0;
    for (long i = 0; i < n; i++)
        want += i * 3 + i % 7;
    CHECK_EQ(atomic_load(&L.done), n);
    CHECK_EQ(atomic_load(&L.sum), want);
    /* The one-call form. */
    pz_pg_result_t *r;
    CHECK_EQ(pz_pg_pool_query(L.pool, "SELECT $1::int + 1", 1, (const char *[]){"41"}, in_ms(10000), &r), 0);
    int64_t v;
    CHECK_EQ(pz_pg_result_int64(r, 0, 0, &v), 0);
    CHECK_EQ(v, 42);
    pz_pg_result_free(r);
    CHECK_EQ(pz_pg_pool_query(L.pool, "SELECT 1/0", 0, NULL, in_ms(10000), NULL), -EREMOTEIO);
    pz_pg_pool_stats_t s;
    pz_pg_pool_stats(L.pool, &s);
    CHECK(s.open <= 8);
    CHECK(s.connects <= 8);
    CHECK_EQ(s.idle, s.open);
    fprintf(stderr, "%d tasks, %ld queries over %d connections: %.0f ms\n", LOAD_TASKS, n, s.open, took / 1e6);
    pz_pg_pool_destroy(L.pool);
    return NULL;
}

static void test_pool_load(void **state)
{
    (void)state;
    run_in_runtime(2, load_main, NULL);
}

/* ------------------------------------------------------------ deadline and cancel */

static long sleeping_queries(pz_pg_conn_t *admin)
{
    pz_pg_result_t *r;
    CHECK_EQ(pz_pg_query(admin,
                         "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                         "'SELECT pg_sleep(10)%'",
                         0, NULL, in_ms(10000), &r),
             0);
    int64_t n = -1;
    CHECK_EQ(pz_pg_result_int64(r, 0, 0, &n), 0);
    pz_pg_result_free(r);
    return n;
}

struct sleeper {
    pz_pg_conn_t *c;
    _Atomic int started;
    int result;
    int64_t returned_at;
};

static void *sleeper_task(void *arg)
{
    struct sleeper *s = arg;
    atomic_store(&s->started, 1);
    s->result = (int)pz_pg_exec(s->c, "SELECT pg_sleep(10)", 0, NULL, PZ_FOREVER);
    s->returned_at = pz_now();
    return NULL;
}

static void *cancel_main(void *arg)
{
    (void)arg;
    pz_pg_conn_t *c, *admin;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &c), 0);
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &admin), 0);

    /* The deadline. */
    int64_t deadline = in_ms(100);
    CHECK_EQ(pz_pg_exec(c, "SELECT pg_sleep(10)", 0, NULL, deadline), -ETIMEDOUT);
    int64_t late = pz_now() - deadline;
    fprintf(stderr, "pg_sleep(10) with a 100 ms deadline returned %.2f ms after it\n", late / 1e6);
    CHECK(late < 500 * MS);
    /* The connection is usable, soon: the server cancelled the sleep. */
    int64_t t0 = pz_now();
    CHECK_EQ(pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(3000)), 1);
    fprintf(stderr, "the next query on it answered after %.2f ms (cancel and drain)\n", (pz_now() - t0) / 1e6);
    CHECK(pz_pg_conn_ok(c));
    CHECK_EQ(sleeping_queries(admin), 0);

    /* The cancel. */
    struct sleeper s = {c, 0, 0, 0};
    pz_task_t *t = pz_spawn(sleeper_task, &s);
    while (!atomic_load(&s.started))
        pz_yield();
    /* Wait until the server runs it, so the cancel has something to stop. */
    while (sleeping_queries(admin) == 0)
        pz_sleep(1 * MS);
    int64_t cancelled_at = pz_now();
    pz_cancel(t);
    CHECK_EQ(pz_join(t, NULL), 0);
    CHECK_EQ(s.result, -ECANCELED);
    late = s.returned_at - cancelled_at;
    fprintf(stderr, "pg_sleep(10) cancelled returned %.2f ms after pz_cancel\n", late / 1e6);
    CHECK(late < 500 * MS);
    CHECK_EQ(pz_pg_exec(c, "SELECT 2", 0, NULL, in_ms(3000)), 1);
    CHECK_EQ(sleeping_queries(admin), 0);

    /* A cancel before the call: nothing is sent, the connection is idle. */
    pz_pg_close(admin);
    pz_pg_close(c);
    return NULL;
}

static void test_deadline_and_cancel(void **state)
{
    (void)state;
    run_in_runtime(2, cancel_main, NULL);
}

/* Random deadlines and cancels over a pool: every call ends, every
 * connection stays usable or is discarded, results stay exact. */
struct storm {
    pz_pg_pool_t *pool;
    _Atomic long ok, timed_out, cancelled;
    uint64_t seed;
};

static void *storm_task(void *arg)
{
    struct storm *S = arg;
    uint64_t rng = S->seed;
    for (int i = 0; i < SCALED(40); i++) {
        pz_pg_conn_t *c;
        int r = pz_pg_pool_acquire(S->pool, in_ms(20000), &c);
        if (r == -ECANCELED)
            return NULL;
        CHECK_EQ(r, 0);
        char a[24];
        long x = (long)(test_rand(&rng) % 1000);
        snprintf(a, sizeof a, "%ld", x);
        const char *p[1] = {a};
        /* Some sleep past their deadline. */
        const char *sql = (test_rand(&rng) % 3 == 0) ? "SELECT $1::int + 1 FROM pg_sleep(0.05)" : "SELECT $1::int + 1";
        pz_pg_result_t *res;
        r = pz_pg_query(c, sql, 1, p, in_ms((int64_t)(test_rand(&rng) % 40)), &res);
        if (r == 0) {
            int64_t v;
            CHECK_EQ(pz_pg_result_int64(res, 0, 0, &v), 0);
            CHECK_EQ(v, x + 1);
            atomic_fetch_add(&S->ok, 1);
        } else if (r == -ETIMEDOUT) {
            atomic_fetch_add(&S->timed_out, 1);
            /* The command is being finished by a drain task on another
             * worker now, with libpq calls on this connection: the message
             * must be a copy, never libpq's own buffer, which the drain
             * rewrites and may move (ThreadSanitizer cannot see that race:
             * libpq is not instrumented).  The pointer compared is only
             * read, not followed. */
            const char *m = pz_pg_error_message(c);
            CHECK(m != NULL && strlen(m) < 256);
            CHECK(m != PQerrorMessage(pz_pg_raw(c)));
        } else {
            CHECK_EQ(r, -ECANCELED);
            atomic_fetch_add(&S->cancelled, 1);
        }
        pz_pg_result_free(res);
        pz_pg_pool_release(S->pool, c);
        if (r == -ECANCELED)
            return NULL;
    }
    return NULL;
}

static void *storm_main(void *arg)
{
    (void)arg;
    struct storm S = {0};
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 6};
    CHECK_EQ(pz_pg_pool_create(&o, &S.pool), 0);
    enum { N = 40 };
    pz_task_t *t[N];
    struct storm per[N];
    for (int i = 0; i < N; i++) {
        per[i] = S;
        per[i].seed = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        per[i].pool = S.pool;
        atomic_init(&per[i].ok, 0);
        atomic_init(&per[i].timed_out, 0);
        atomic_init(&per[i].cancelled, 0);
        CHECK((t[i] = pz_spawn(storm_task, &per[i])) != NULL);
    }
    uint64_t rng = 12345;
    for (int i = 0; i < N / 4; i++) {
        pz_sleep((int64_t)(test_rand(&rng) % 20) * MS);
        pz_cancel(t[test_rand(&rng) % N]);
    }
    long ok = 0, to = 0, cc = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ(pz_join(t[i], NULL), 0);
        ok += per[i].ok;
        to += per[i].timed_out;
        cc += per[i].cancelled;
    }
    fprintf(stderr, "storm: %ld answered, %ld timed out, %ld cancelled\n", ok, to, cc);
    CHECK(ok > 0);
    /* Afterwards every connection works. */
    pz_pg_conn_t *c[6];
    for (int i = 0; i < 6; i++) {
        CHECK_EQ(pz_pg_pool_acquire(S.pool, in_ms(20000), &c[i]), 0);
        CHECK_EQ(pz_pg_exec(c[i], "SELECT 1", 0, NULL, in_ms(20000)), 1);
    }
    for (int i = 0; i < 6; i++)
        pz_pg_pool_release(S.pool, c[i]);
    pz_pg_pool_destroy(S.pool);
    return NULL;
}

static void test_deadline_cancel_storm(void **state)
{
    (void)state;
    run_in_runtime(2, storm_main, NULL);
}

/* ------------------------------------------------------------ pipelining */

static void *pipeline_main(void *arg)
{
    (void)arg;
    pz_pg_conn_t *c;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &c), 0);
    enum { N = 100 };
    pz_pg_statement_t st[N];
    char num[N][16];
    const char *params[N][1];
    for (int i = 0; i < N; i++) {
        snprintf(num[i], sizeof num[i], "%d", i);
        params[i][0] = num[i];
        st[i] = (pz_pg_statement_t){"SELECT $1::int * 10", 1, params[i]};
    }
    pz_pg_result_t *res[N];
    CHECK_EQ(pz_pg_pipeline(c, st, N, in_ms(10000), res), 0);
    for (int i = 0; i < N; i++) {
        int64_t v;
        CHECK_EQ(pz_pg_result_int64(res[i], 0, 0, &v), 0);
        CHECK_EQ(v, i * 10);
        pz_pg_result_free(res[i]);
    }
    /* An error in the middle aborts the rest of the batch. */
    st[50] = (pz_pg_statement_t){"SELECT 1/0", 0, NULL};
    CHECK_EQ(pz_pg_pipeline(c, st, N, in_ms(10000), res), -EREMOTEIO);
    CHECK(strcmp(pz_pg_result_sqlstate(res[50]), "22012") == 0);
    CHECK(pz_pg_result_value(res[49], 0, 0) != NULL);
    CHECK(pz_pg_result_value(res[51], 0, 0) == NULL);
    for (int i = 0; i < N; i++)
        pz_pg_result_free(res[i]);
    /* A batch that times out is cancelled and drained. */
    pz_pg_statement_t slow[3] = {{"SELECT 1", 0, NULL}, {"SELECT pg_sleep(10)", 0, NULL}, {"SELECT 3", 0, NULL}};
    int64_t t0 = pz_now();
    CHECK_EQ(pz_pg_pipeline(c, slow, 3, in_ms(50), res), -ETIMEDOUT);
    CHECK(pz_now() - t0 < 550 * MS);
    for (int i = 0; i < 3; i++)
        CHECK(res[i] == NULL);
    CHECK_EQ(pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(3000)), 1);
    /* And the connection still pipelines. */
    CHECK_EQ(pz_pg_pipeline(c, st, 10, in_ms(10000), res), 0);
    for (int i = 0; i < 10; i++)
        pz_pg_result_free(res[i]);
    pz_pg_close(c);
    return NULL;
}

static void test_pipeline(void **state)
{
    (void)state;
    run_in_runtime(2, pipeline_main, NULL);
}

/* ------------------------------------------------------------ LISTEN/NOTIFY */

#define NOTES 200

struct listener {
    pz_pg_conn_t *c;
    _Atomic int ready;
    int got;
};

static void *listener_task(void *arg)
{
    struct listener *L = arg;
    CHECK_EQ(pz_pg_listen(L->c, "plaza chan", in_ms(10000)), 0);
    /* Nothing yet: the wait times out. */
    pz_pg_notification_t *n;
    int64_t t0 = pz_now();
    CHECK_EQ(pz_pg_wait_notification(L->c, in_ms(30), &n), -ETIMEDOUT);
    CHECK(pz_now() - t0 >= 29 * MS);
    atomic_store(&L->ready, 1);
    for (int i = 0; i < NOTES; i++) {
        CHECK_EQ(pz_pg_wait_notification(L->c, in_ms(20000), &n), 0);
        CHECK(strcmp(n->channel, "plaza chan") == 0);
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        CHECK(strcmp(n->payload, want) == 0);
        CHECK(n->sender_pid > 0);
        pz_pg_notification_free(n);
        L->got++;
    }
    return NULL;
}

struct waiter {
    pz_pg_conn_t *c;
    int result;
};

static void *wait_one_task(void *arg)
{
    struct waiter *w = arg;
    pz_pg_notification_t *n = NULL;
    w->result = pz_pg_wait_notification(w->c, PZ_FOREVER, &n);
    pz_pg_notification_free(n);
    return NULL;
}

static void *notify_main(void *arg)
{
    (void)arg;
    struct listener L = {0};
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &L.c), 0);
    pz_pg_conn_t *s;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &s), 0);
    pz_task_t *t = pz_spawn(listener_task, &L);
    while (!atomic_load(&L.ready))
        pz_sleep(1 * MS);
    for (int i = 0; i < NOTES; i++) {
        char p[16];
        snprintf(p, sizeof p, "%d", i);
        CHECK_EQ(pz_pg_notify(s, "plaza chan", p, in_ms(10000)), 0);
        if (i % 50 == 0)
            pz_sleep(2 * MS); /* some arrive while the listener waits, some queued */
    }
    CHECK_EQ(pz_join(t, NULL), 0);
    CHECK_EQ(L.got, NOTES);
    /* A cancelled wait gives the connection back untouched: the next
     * notification still arrives. */
    struct waiter w = {L.c, 0};
    pz_task_t *wt = pz_spawn(wait_one_task, &w);
    pz_sleep(10 * MS);
    pz_cancel(wt);
    CHECK_EQ(pz_join(wt, NULL), 0);
    CHECK_EQ(w.result, -ECANCELED);
    CHECK_EQ(pz_pg_notify(s, "plaza chan", "after", in_ms(10000)), 0);
    pz_pg_notification_t *n;
    CHECK_EQ(pz_pg_wait_notification(L.c, in_ms(10000), &n), 0);
    CHECK(strcmp(n->payload, "after") == 0);
    pz_pg_notification_free(n);
    /* The listening session dies: the wait says so. */
    char pid[16];
    snprintf(pid, sizeof pid, "%d", pz_pg_backend_pid(L.c));
    CHECK_EQ(pz_pg_exec(s, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){pid}, in_ms(10000)), 1);
    CHECK_EQ(pz_pg_wait_notification(L.c, in_ms(10000), &n), -ECONNRESET);
    CHECK(!pz_pg_conn_ok(L.c));
    CHECK_EQ(pz_pg_wait_notification(L.c, in_ms(10000), &n), -ENOTCONN);
    pz_pg_close(L.c);
    pz_pg_close(s);
    return NULL;
}

static void test_listen_notify(void **state)
{
    (void)state;
    run_in_runtime(2, notify_main, NULL);
}

/* ------------------------------------------------------------ pool health */

static void *health_main(void *arg)
{
    (void)arg;
    pz_pg_pool_t *p;
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 2, .idle_check_ns = 20 * MS};
    CHECK_EQ(pz_pg_pool_create(&o, &p), 0);
    pz_pg_conn_t *c, *admin;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &admin), 0);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &c), 0);
    int pid = pz_pg_backend_pid(c);
    CHECK(pid > 0);
    pz_pg_pool_release(p, c);
    /* Its session dies while it idles. */
    char sp[16];
    snprintf(sp, sizeof sp, "%d", pid);
    CHECK_EQ(pz_pg_exec(admin, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){sp}, in_ms(10000)), 1);
    pz_sleep(50 * MS);
    /* The check on acquire finds it dead, discards it and connects anew. */
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &c), 0);
    CHECK(pz_pg_backend_pid(c) != pid);
    CHECK_EQ(pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(10000)), 1);
    pz_pg_pool_stats_t s;
    pz_pg_pool_stats(p, &s);
    CHECK_EQ(s.discarded, 1);
    CHECK(s.health_checks >= 1);
    CHECK_EQ(s.connects, 2);
    /* A connection that breaks while lent is discarded on release. */
    snprintf(sp, sizeof sp, "%d", pz_pg_backend_pid(c));
    CHECK_EQ(pz_pg_exec(admin, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){sp}, in_ms(10000)), 1);
    int64_t r = pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(10000));
    CHECK(r == -ECONNRESET);
    CHECK(!pz_pg_conn_ok(c));
    CHECK_EQ(pz_pg_exec(c, "SELECT 1", 0, NULL, in_ms(10000)), -ENOTCONN);
    pz_pg_pool_release(p, c);
    pz_pg_pool_stats(p, &s);
    CHECK_EQ(s.discarded, 2);
    CHECK_EQ(s.idle, 0);
    /* A connection given back inside a transaction is not lent again. */
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &c), 0);
    CHECK_EQ(pz_pg_exec(c, "BEGIN", 0, NULL, in_ms(10000)), 0);
    pz_pg_pool_release(p, c);
    pz_pg_pool_stats(p, &s);
    CHECK_EQ(s.discarded, 3);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &c), 0);
    CHECK_EQ(PQtransactionStatus(pz_pg_raw(c)), PQTRANS_IDLE);
    pz_pg_pool_release(p, c);
    /* The bound: two lent, a third acquire waits until its deadline. */
    pz_pg_conn_t *a, *b;
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &b), 0);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(30), &c), -ETIMEDOUT);
    pz_pg_pool_release(p, a);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(30), &c), 0);
    CHECK(c == a);
    pz_pg_pool_release(p, b);
    pz_pg_pool_release(p, c);
    pz_pg_pool_destroy(p);

    /* A server that cannot be reached: back-off, and the deadline holds. */
    pz_pg_pool_opts_t o2 = {.conninfo = "host=127.0.0.1 port=1", .size = 2, .backoff_min_ns = 5 * MS};
    CHECK_EQ(pz_pg_pool_create(&o2, &p), 0);
    int64_t t0 = pz_now();
    /* The last connect's refusal, or -ETIMEDOUT when an attempt was still
     * under way at the deadline (a connect that a busy machine has not
     * finished in time): either way the deadline held. */
    r = pz_pg_pool_acquire(p, in_ms(200), &c);
    CHECK(r == -ECONNREFUSED || r == -ETIMEDOUT);
    int64_t took = pz_now() - t0;
    CHECK(took >= 150 * MS && took < 1500 * MS);
    pz_pg_pool_stats(p, &s);
    /* 5, 10, 20, 40, 80 ms apart: a handful of attempts, not hundreds (at
     * least one, however slow the machine; more need it to be quick). */
    CHECK(s.connect_failures >= 1 && s.connect_failures <= 10);
    pz_pg_pool_destroy(p);
    pz_pg_close(admin);
    return NULL;
}

static void test_pool_health(void **state)
{
    (void)state;
    run_in_runtime(2, health_main, NULL);
}

/* ------------------------------------------------------------ the pool's on_connect */

struct hook_state {
    _Atomic int calls;
    _Atomic int refuse; /* refuse this many connections first */
};

static int prepare_hook(pz_pg_conn_t *c, void *arg)
{
    struct hook_state *h = arg;
    atomic_fetch_add(&h->calls, 1);
    if (atomic_load(&h->refuse) > 0) {
        atomic_fetch_sub(&h->refuse, 1);
        return -EPROTO;
    }
    return pz_pg_prepare(c, "twice", "SELECT 2 * $1::int", 1, in_ms(10000));
}

static void *hook_main(void *arg)
{
    (void)arg;
    struct hook_state h = {0, 1};
    pz_pg_pool_t *p;
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 2, .backoff_min_ns = 1000000, .on_connect = prepare_hook,
                           .on_connect_arg = &h};
    CHECK_EQ(pz_pg_pool_create(&o, &p), 0);
    /* The first connection is refused by the hook: closed, counted as a
     * failed connect, and the acquire goes on to a second one. */
    pz_pg_conn_t *a, *b;
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &a), 0);
    CHECK_EQ(atomic_load(&h.calls), 2);
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &b), 0);
    CHECK_EQ(atomic_load(&h.calls), 3);
    /* Both lent connections have the statement. */
    const char *v[] = {"21"};
    pz_pg_result_t *res;
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(pz_pg_query_prepared(i ? b : a, "twice", 1, v, in_ms(10000), &res), 0);
        CHECK_EQ(strcmp(pz_pg_result_value(res, 0, 0), "42"), 0);
        pz_pg_result_free(res);
    }
    pz_pg_pool_release(p, a);
    pz_pg_pool_release(p, b);
    /* A reused connection does not run the hook again. */
    CHECK_EQ(pz_pg_pool_acquire(p, in_ms(10000), &a), 0);
    CHECK_EQ(atomic_load(&h.calls), 3);
    pz_pg_pool_release(p, a);
    pz_pg_pool_stats_t st;
    pz_pg_pool_stats(p, &st);
    CHECK_EQ(st.connects, 2);
    CHECK_EQ(st.connect_failures, 1);
    CHECK_EQ(st.open, 2);
    pz_pg_pool_destroy(p);
    return NULL;
}

static void test_pool_on_connect(void **state)
{
    (void)state;
    run_in_runtime(2, hook_main, NULL);
}

int main(void)
{
    url = pg_url();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basics),
        cmocka_unit_test(test_binary_params),
        cmocka_unit_test(test_one_worker_never_blocked),
        cmocka_unit_test(test_pool_load),
        cmocka_unit_test(test_deadline_and_cancel),
        cmocka_unit_test(test_deadline_cancel_storm),
        cmocka_unit_test(test_pipeline),
        cmocka_unit_test(test_listen_notify),
        cmocka_unit_test(test_pool_health),
        cmocka_unit_test(test_pool_on_connect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
