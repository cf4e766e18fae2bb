/* A PostgreSQL server restarted in the middle of a load: the pool recovers,
 * every error reaches its caller, no call outlives its deadline.  The test
 * starts a server of its own (scripts/pg-test-server.sh), since it restarts
 * it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "pg_helpers.h"


static char url[1024];
static char state[1024];

#define TASKS 32
#define CALL_DEADLINE_MS 2000

struct load {
    pz_pg_pool_t *pool;
    _Atomic int stop;
    _Atomic long ok, ok_after, errors;
    _Atomic long by_code[8]; /* ECONNRESET, ENOTCONN, ECONNREFUSED, ETIMEDOUT, EREMOTEIO, other */
    _Atomic int64_t worst_overrun;
    _Atomic int restarted;
};

static void count_error(struct load *L, int r)
{
    int slot = r == -ECONNRESET ? 0 : r == -ENOTCONN ? 1 : r == -ECONNREFUSED ? 2 : r == -ETIMEDOUT ? 3
             : r == -EREMOTEIO ? 4 : 5;
    if (slot == 5)
        fprintf(stderr, "unexpected error %d (%s)\n", r, pz_strerror(r));
    atomic_fetch_add(&L->by_code[slot], 1);
    atomic_fetch_add(&L->errors, 1);
}

static void overrun(struct load *L, int64_t deadline)
{
    int64_t o = pz_now() - deadline, w = atomic_load(&L->worst_overrun);
    while (o > w && !atomic_compare_exchange_weak(&L->worst_overrun, &w, o)) {
    }
}

static void *load_task(void *arg)
{
    struct load *L = arg;
    long i = 0;
    while (!atomic_load(&L->stop)) {
        int64_t deadline = in_ms(CALL_DEADLINE_MS);
        pz_pg_conn_t *c;
        int r = pz_pg_pool_acquire(L->pool, deadline, &c);
        overrun(L, deadline);
        if (r < 0) {
            count_error(L, r);
            continue;
        }
        char a[24];
        snprintf(a, sizeof a, "%ld", i++);
        pz_pg_result_t *res;
        /* Some queries are on the server when it goes down. */
        r = pz_pg_query(c, i % 4 ? "SELECT $1::bigint + 1" : "SELECT $1::bigint + 1 FROM pg_sleep(0.01)", 1,
                        (const char *[]){a}, deadline, &res);
        overrun(L, deadline);
        if (r == 0) {
            int64_t v;
            CHECK_EQ(pz_pg_result_int64(res, 0, 0, &v), 0);
            CHECK_EQ(v, i);
            atomic_fetch_add(&L->ok, 1);
            if (atomic_load(&L->restarted))
                atomic_fetch_add(&L->ok_after, 1);
        } else {
            count_error(L, r);
        }
        pz_pg_result_free(res);
        pz_pg_pool_release(L->pool, c);
    }
    return NULL;
}

static void *restart_fn(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)pg_private_restart(state);
}

static void *restart_main(void *arg)
{
    (void)arg;
    struct load L = {0};
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 8, .backoff_min_ns = 5 * MS, .backoff_max_ns = 200 * MS};
    CHECK_EQ(pz_pg_pool_create(&o, &L.pool), 0);
    pz_task_t *t[TASKS];
    for (int i = 0; i < TASKS; i++)
        CHECK((t[i] = pz_spawn(load_task, &L)) != NULL);
    while (atomic_load(&L.ok) < 500)
        pz_sleep(5 * MS);
    long before = atomic_load(&L.ok);
    /* The restart (pg_ctl, which waits) runs on the blocking pool. */
    void *rr;
    CHECK_EQ(pz_blocking(restart_fn, NULL, &rr), 0);
    CHECK_EQ((int)(intptr_t)rr, 0);
    atomic_store(&L.restarted, 1);
    /* The pool recovers: queries succeed again. */
    int64_t back = in_ms(20000);
    while (atomic_load(&L.ok_after) < 500 && pz_now() < back)
        pz_sleep(5 * MS);
    atomic_store(&L.stop, 1);
    for (int i = 0; i < TASKS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    pz_pg_pool_stats_t s;
    pz_pg_pool_stats(L.pool, &s);
    fprintf(stderr,
            "restart: %ld answered before, %ld after; %ld errors reported (reset %ld, not connected %ld, "
            "refused %ld, timed out %ld, server error %ld, other %ld); %llu connects, %llu failed, %llu discarded; "
            "worst overrun of a deadline %.2f ms\n",
            before, atomic_load(&L.ok_after), atomic_load(&L.errors), atomic_load(&L.by_code[0]),
            atomic_load(&L.by_code[1]), atomic_load(&L.by_code[2]), atomic_load(&L.by_code[3]),
            atomic_load(&L.by_code[4]), atomic_load(&L.by_code[5]), (unsigned long long)s.connects,
            (unsigned long long)s.connect_failures, (unsigned long long)s.discarded,
            atomic_load(&L.worst_overrun) / 1e6);
    CHECK(atomic_load(&L.ok_after) >= 500);
    /* The restart broke the sessions: callers were told, and the pool
     * replaced every connection it had. */
    CHECK(atomic_load(&L.errors) > 0);
    CHECK_EQ(atomic_load(&L.by_code[5]), 0);
    CHECK(s.discarded >= 1);
    CHECK(s.connects > (uint64_t)s.open);
    CHECK(s.open <= 8);
    /* No call waited much past its deadline. */
    CHECK(atomic_load(&L.worst_overrun) < 1000 * MS);
    pz_pg_pool_destroy(L.pool);
    return NULL;
}

static void test_restart_under_load(void **state_)
{
    (void)state_;
    run_in_runtime(2, restart_main, NULL);
}

int main(void)
{
    const char *shared = pg_url(); /* skips or fails as the other pg tests do */
    (void)shared;
    const char *base = getenv("PLAZA_PG_STATE");
    /* One server per run, even with several runs at once. */
    snprintf(state, sizeof state, "%s.restart.%d", base ? base : "/tmp/plaza-pg-restart.env", (int)getpid());
    if (pg_private_start(state, url, sizeof url) < 0) {
        fprintf(stderr, "cannot start a private PostgreSQL server\n");
        return 1;
    }
    /* The tests run in a child, so that the server is stopped however they
     * end (a failed check aborts). */
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_restart_under_load),
        };
        _exit(cmocka_run_group_tests(tests, NULL, NULL));
    }
    int st = 0;
    int r = child > 0 && waitpid(child, &st, 0) == child && WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    pg_private_stop(state);
    return r;
}
