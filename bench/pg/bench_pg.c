/*
 * bench-pg: the PostgreSQL client, pool-less, against libpq's own blocking
 * loop, and the distributed lock against the bare advisory-lock SQL.
 *
 *   bench-pg URL WORKLOAD [key=value ...]
 *
 * Workloads (secs= the measured time, default 3):
 *   blocking   threads=N sql=select1|insert    N threads, one connection each, PQexecParams in a loop
 *   plaza      workers=W conns=C pipeline=B sql=select1|insert
 *                                              C tasks on W workers, one connection each; B statements
 *                                              per round trip (pz_pg_pipeline) when B > 1
 *   lock_sql   (blocking)                      one thread: SELECT pg_advisory_lock(k); SELECT pg_advisory_unlock(k)
 *   lock_sql_plaza                             the same two statements through pz_pg_query, one task
 *   lock       tasks=T                         pz_pg_lock_lock + pz_pg_lock_unlock, T tasks sharing one lock
 *
 * One CSV line per result on stdout, as bench-plaza prints them:
 * system,workload,param,metric,value.  bench/pg/run.sh starts a server and
 * runs the set.
 */
#define _GNU_SOURCE
#include <plaza.h>
#include <plaza/pg.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static const char *url;
static int64_t secs = 3;
static const char *sql_name = "select1";
static _Atomic long total;
static _Atomic int stop_flag;

static const char *SQL_SELECT1 = "SELECT $1::int";
static const char *SQL_INSERT = "INSERT INTO bench_pg_insert (a, b) VALUES ($1, $2)";

static const char *statement(int *nparams)
{
    bool insert = strcmp(sql_name, "insert") == 0;
    *nparams = insert ? 2 : 1;
    return insert ? SQL_INSERT : SQL_SELECT1;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench-pg: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static long arg(int argc, char **argv, const char *key, long def)
{
    size_t kl = strlen(key);
    for (int i = 3; i < argc; i++)
        if (!strncmp(argv[i], key, kl) && argv[i][kl] == '=')
            return strtol(argv[i] + kl + 1, NULL, 10);
    return def;
}

static const char *arg_str(int argc, char **argv, const char *key, const char *def)
{
    size_t kl = strlen(key);
    for (int i = 3; i < argc; i++)
        if (!strncmp(argv[i], key, kl) && argv[i][kl] == '=')
            return argv[i] + kl + 1;
    return def;
}

static void setup_table(void)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        die("connect", PQerrorMessage(c));
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    PQclear(PQexec(c, "DROP TABLE IF EXISTS bench_pg_insert; CREATE UNLOGGED TABLE bench_pg_insert (a int, b text)"));
    PQfinish(c);
}

/* ------------------------------------------------------------ libpq's blocking loop */

static void *blocking_thread(void *a)
{
    (void)a;
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        die("connect", PQerrorMessage(c));
    int np;
    const char *sql = statement(&np);
    long n = 0;
    char buf[24];
    const char *params[2] = {buf, "payload"};
    while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
        snprintf(buf, sizeof buf, "%ld", n);
        PGresult *r = PQexecParams(c, sql, np, NULL, params, NULL, NULL, 0);
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
            die("query", PQerrorMessage(c));
        PQclear(r);
        n++;
    }
    atomic_fetch_add(&total, n);
    PQfinish(c);
    return NULL;
}

static double run_blocking(int threads)
{
    pthread_t t[256];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, blocking_thread, NULL);
    struct timespec d = {secs, 0};
    nanosleep(&d, NULL);
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    return (double)atomic_load(&total) / (double)secs;
}

/* ------------------------------------------------------------ plaza */

struct plaza_args {
    int conns, pipeline;
    double result;
};

static int64_t end_at;

static void *plaza_task(void *a)
{
    struct plaza_args *A = a;
    pz_pg_conn_t *c;
    int r = pz_pg_connect(url, pz_now() + 10000000000LL, &c);
    if (r < 0)
        die("connect", pz_strerror(r));
    int np;
    const char *sql = statement(&np);
    enum { MAXB = 256 };
    int b = A->pipeline < 1 ? 1 : A->pipeline > MAXB ? MAXB : A->pipeline;
    char bufs[MAXB][24];
    const char *params[MAXB][2];
    pz_pg_statement_t st[MAXB];
    pz_pg_result_t *res[MAXB];
    long n = 0;
    while (pz_now() < end_at) {
        for (int i = 0; i < b; i++) {
            snprintf(bufs[i], sizeof bufs[i], "%ld", n + i);
            params[i][0] = bufs[i];
            params[i][1] = "payload";
            st[i] = (pz_pg_statement_t){sql, np, params[i]};
        }
        if (b == 1) {
            r = pz_pg_query(c, sql, np, params[0], PZ_FOREVER, &res[0]);
            pz_pg_result_free(res[0]);
        } else {
            r = pz_pg_pipeline(c, st, b, PZ_FOREVER, res);
            for (int i = 0; i < b; i++)
                pz_pg_result_free(res[i]);
        }
        if (r < 0)
            die("query", pz_strerror(r));
        n += b;
    }
    atomic_fetch_add(&total, n);
    pz_pg_close(c);
    return NULL;
}

static void *plaza_main(void *a)
{
    struct plaza_args *A = a;
    pz_task_t *t[1024];
    end_at = pz_now() + secs * 1000000000LL;
    int64_t t0 = pz_now();
    for (int i = 0; i < A->conns; i++)
        t[i] = pz_spawn(plaza_task, A);
    for (int i = 0; i < A->conns; i++)
        pz_join(t[i], NULL);
    A->result = (double)atomic_load(&total) / ((double)(pz_now() - t0) / 1e9);
    return NULL;
}

/* ------------------------------------------------------------ locks */

static double run_lock_sql_blocking(void)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        die("connect", PQerrorMessage(c));
    struct timespec s, e;
    clock_gettime(CLOCK_MONOTONIC, &s);
    long n = 0;
    for (;;) {
        PQclear(PQexec(c, "SELECT pg_advisory_lock(77)"));
        PQclear(PQexec(c, "SELECT pg_advisory_unlock(77)"));
        n++;
        clock_gettime(CLOCK_MONOTONIC, &e);
        if (e.tv_sec - s.tv_sec >= secs)
            break;
    }
    PQfinish(c);
    return (double)n / ((double)(e.tv_sec - s.tv_sec) + (double)(e.tv_nsec - s.tv_nsec) / 1e9);
}

struct lock_args {
    int tasks;
    pz_pg_lock_t *lock;
    double result;
};

static void *lock_sql_plaza_main(void *a)
{
    struct lock_args *A = a;
    pz_pg_conn_t *c;
    if (pz_pg_connect(url, PZ_FOREVER, &c) < 0)
        die("connect", NULL);
    int64_t t0 = pz_now(), end = t0 + secs * 1000000000LL;
    long n = 0;
    while (pz_now() < end) {
        if (pz_pg_exec(c, "SELECT pg_advisory_lock(77)", 0, NULL, PZ_FOREVER) < 0 ||
            pz_pg_exec(c, "SELECT pg_advisory_unlock(77)", 0, NULL, PZ_FOREVER) < 0)
            die("lock sql", NULL);
        n++;
    }
    A->result = (double)n / ((double)(pz_now() - t0) / 1e9);
    pz_pg_close(c);
    return NULL;
}

static void *lock_task(void *a)
{
    struct lock_args *A = a;
    long n = 0;
    uint64_t last = 0;
    while (pz_now() < end_at) {
        uint64_t tok;
        if (pz_pg_lock_lock(A->lock, &tok) < 0)
            die("lock", NULL);
        if (tok <= last)
            die("token not increasing", NULL);
        last = tok;
        if (pz_pg_lock_unlock(A->lock) < 0)
            die("unlock", NULL);
        n++;
    }
    atomic_fetch_add(&total, n);
    return NULL;
}

static void *lock_main(void *a)
{
    struct lock_args *A = a;
    if (pz_pg_lock_open(url, 78, PZ_FOREVER, &A->lock) < 0)
        die("lock open", NULL);
    pz_task_t *t[256];
    int64_t t0 = pz_now();
    end_at = t0 + secs * 1000000000LL;
    for (int i = 0; i < A->tasks; i++)
        t[i] = pz_spawn(lock_task, A);
    for (int i = 0; i < A->tasks; i++)
        pz_join(t[i], NULL);
    A->result = (double)atomic_load(&total) / ((double)(pz_now() - t0) / 1e9);
    pz_pg_lock_close(A->lock);
    return NULL;
}

/* The process's CPU time (user + system) in microseconds: what the client
 * side spends per query, less sensitive to a busy machine than the rate. */
static double cpu_us(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec * 1e6 + (double)u.ru_utime.tv_usec + (double)u.ru_stime.tv_sec * 1e6 +
           (double)u.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench-pg URL blocking|plaza|lock_sql|lock_sql_plaza|lock [key=value ...]\n");
        return 2;
    }
    url = argv[1];
    const char *w = argv[2];
    secs = arg(argc, argv, "secs", 3);
    sql_name = arg_str(argc, argv, "sql", "select1");
    setup_table();
    char param[128];
    double cpu0 = cpu_us();
    if (!strcmp(w, "blocking")) {
        int threads = (int)arg(argc, argv, "threads", 1);
        double q = run_blocking(threads);
        snprintf(param, sizeof param, "sql=%s threads=%d", sql_name, threads);
        printf("libpq_blocking,pg_%s,%s,qps,%.0f\n", sql_name, param, q);
        printf("libpq_blocking,pg_%s,%s,cpu_us_per_query,%.2f\n", sql_name, param, (cpu_us() - cpu0) / (q * (double)secs));
    } else if (!strcmp(w, "plaza")) {
        struct plaza_args A = {(int)arg(argc, argv, "conns", 1), (int)arg(argc, argv, "pipeline", 1), 0};
        int workers = (int)arg(argc, argv, "workers", 1);
        pz_config_t cfg = {.workers = workers};
        pz_run(&cfg, plaza_main, &A, NULL);
        snprintf(param, sizeof param, "sql=%s workers=%d conns=%d pipeline=%d", sql_name, workers, A.conns,
                 A.pipeline);
        printf("plaza,pg_%s,%s,qps,%.0f\n", sql_name, param, A.result);
        printf("plaza,pg_%s,%s,cpu_us_per_query,%.2f\n", sql_name, param, (cpu_us() - cpu0) / (A.result * (double)secs));
    } else if (!strcmp(w, "lock_sql")) {
        printf("libpq_blocking,pg_lock,bare_sql,pairs_per_s,%.0f\n", run_lock_sql_blocking());
    } else if (!strcmp(w, "lock_sql_plaza")) {
        struct lock_args A = {1, NULL, 0};
        pz_config_t cfg = {.workers = 1};
        pz_run(&cfg, lock_sql_plaza_main, &A, NULL);
        printf("plaza,pg_lock,bare_sql,pairs_per_s,%.0f\n", A.result);
    } else if (!strcmp(w, "lock")) {
        struct lock_args A = {(int)arg(argc, argv, "tasks", 1), NULL, 0};
        pz_config_t cfg = {.workers = 1};
        pz_run(&cfg, lock_main, &A, NULL);
        snprintf(param, sizeof param, "pz_pg_lock tasks=%d", A.tasks);
        printf("plaza,pg_lock,%s,pairs_per_s,%.0f\n", param, A.result);
    } else {
        die("unknown workload", w);
    }
    return 0;
}
