/* The distributed lock against a real server: exclusion and fencing tokens
 * across two processes, loss of the holder's session, timeouts. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "pg_helpers.h"


static const char *url;

/* ------------------------------------------------------------ basics */

static void *basics_main(void *arg)
{
    (void)arg;
    const int64_t key = 1001;
    pz_pg_lock_t *a, *b;
    CHECK_EQ(pz_pg_lock_open(url, key, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_lock_open(url, key, in_ms(10000), &b), 0);
    uint64_t ta = 0, tb = 0;
    CHECK_EQ(pz_pg_lock_lock(a, &ta), 0);
    CHECK(ta > 0);
    CHECK_EQ(pz_pg_lock_token(a), ta);
    CHECK_EQ(pz_pg_lock_check(a, in_ms(10000)), 0);
    /* A check that times out (its deadline already passed) is abandoned,
     * but abandoning it does not release the lock. */
    int rc = pz_pg_lock_check(a, pz_now());
    CHECK(rc == -ETIMEDOUT || rc == 0);
    CHECK_EQ(pz_pg_lock_check(a, in_ms(10000)), 0);
    /* Another session: busy, and a bounded wait times out holding nothing. */
    CHECK_EQ(pz_pg_lock_trylock(b, in_ms(10000), &tb), -EBUSY);
    int64_t t0 = pz_now();
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(50), &tb), -ETIMEDOUT);
    CHECK(pz_now() - t0 < 500 * MS);
    CHECK_EQ(pz_pg_lock_token(b), 0);
    /* Unlocking what one does not hold. */
    capture_stderr_begin();
    CHECK_EQ(pz_pg_lock_unlock(b), -EPERM);
    CHECK(strstr(capture_stderr_end(), "does not hold it") != NULL);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    CHECK_EQ(pz_pg_lock_token(a), 0);
    /* Now b gets it, with a later token; a cannot.  b's timed-out attempt
     * above left a session behind that may be granted the lock by a's
     * unlock and keep it until its cancel lands and it ends (milliseconds):
     * try until that is over. */
    int r;
    int64_t until = in_ms(5000);
    while ((r = pz_pg_lock_trylock(b, in_ms(10000), &tb)) == -EBUSY && pz_now() < until)
        pz_sleep(1 * MS);
    CHECK_EQ(r, 0);
    CHECK(tb > ta);
    CHECK_EQ(pz_pg_lock_trylock(a, in_ms(10000), &ta), -EBUSY);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK(ta > tb);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    pz_pg_lock_close(a);
    pz_pg_lock_close(b);
    CHECK_EQ(pz_pg_lock_open(NULL, key, in_ms(10000), &a), -EINVAL);
    return NULL;
}

static void test_basics(void **state)
{
    (void)state;
    run_in_runtime(2, basics_main, NULL);
}

/* ------------------------------------------------------------ two processes */

#define CONTEND_KEY 2002
#define CONTEND_TASKS 50

struct contend {
    pz_pg_lock_t *lock;
    pz_pg_pool_t *pool;
    int rounds;
    uint64_t seed;
    _Atomic long timeouts;
};

static void *contend_task(void *arg)
{
    struct contend *C = arg;
    uint64_t rng = C->seed;
    char pid[16];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (int i = 0; i < C->rounds;) {
        uint64_t token;
        /* One attempt in eight has a deadline of a few milliseconds. */
        int64_t deadline = test_rand(&rng) % 8 == 0 ? in_ms(1 + (int64_t)(test_rand(&rng) % 5)) : in_ms(60000);
        int r = pz_pg_lock_lock_until(C->lock, deadline, &token);
        if (r == -ETIMEDOUT) {
            atomic_fetch_add(&C->timeouts, 1);
            continue;
        }
        CHECK_EQ(r, 0);
        pz_pg_conn_t *c;
        CHECK_EQ(pz_pg_pool_acquire(C->pool, in_ms(60000), &c), 0);
        char tok[24];
        snprintf(tok, sizeof tok, "%llu", (unsigned long long)token);
        const char *p[2] = {tok, pid};
        CHECK_EQ(pz_pg_exec(c, "INSERT INTO t_holders (token, pid) VALUES ($1, $2)", 2, p, in_ms(60000)), 1);
        /* Nobody else holds it: ours is the only row. */
        pz_pg_result_t *res;
        CHECK_EQ(pz_pg_query(c, "SELECT count(*) FROM t_holders", 0, NULL, in_ms(60000), &res), 0);
        int64_t n = 0;
        CHECK_EQ(pz_pg_result_int64(res, 0, 0, &n), 0);
        CHECK_EQ(n, 1);
        pz_pg_result_free(res);
        CHECK_EQ(pz_pg_exec(c, "INSERT INTO t_acquired (token, pid) VALUES ($1, $2)", 2, p, in_ms(60000)), 1);
        if (test_rand(&rng) % 4 == 0)
            pz_sleep(1 * MS); /* a longer section now and then */
        CHECK_EQ(pz_pg_exec(c, "DELETE FROM t_holders WHERE token = $1", 1, p, in_ms(60000)), 1);
        pz_pg_pool_release(C->pool, c);
        CHECK_EQ(pz_pg_lock_unlock(C->lock), 0);
        i++;
    }
    return NULL;
}

static void *contend_main(void *arg)
{
    int rounds = (int)(intptr_t)arg;
    struct contend C = {.rounds = rounds, .seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull};
    CHECK_EQ(pz_pg_lock_open(url, CONTEND_KEY, in_ms(10000), &C.lock), 0);
    pz_pg_pool_opts_t o = {.conninfo = url, .size = 4};
    CHECK_EQ(pz_pg_pool_create(&o, &C.pool), 0);
    /* Both processes start together: each says it is ready and waits for
     * the other. */
    pz_pg_conn_t *c;
    CHECK_EQ(pz_pg_pool_acquire(C.pool, in_ms(10000), &c), 0);
    CHECK_EQ(pz_pg_exec(c, "INSERT INTO t_ready VALUES (1)", 0, NULL, in_ms(10000)), 1);
    for (;;) {
        pz_pg_result_t *r;
        CHECK_EQ(pz_pg_query(c, "SELECT count(*) FROM t_ready", 0, NULL, in_ms(10000), &r), 0);
        int64_t n;
        CHECK_EQ(pz_pg_result_int64(r, 0, 0, &n), 0);
        pz_pg_result_free(r);
        if (n == 2)
            break;
        pz_sleep(1 * MS);
    }
    pz_pg_pool_release(C.pool, c);
    pz_task_t *t[CONTEND_TASKS];
    struct contend per[CONTEND_TASKS];
    for (int i = 0; i < CONTEND_TASKS; i++) {
        per[i] = C;
        per[i].seed = C.seed + (uint64_t)i * 7919;
        CHECK((t[i] = pz_spawn(contend_task, &per[i])) != NULL);
    }
    long timeouts = 0;
    for (int i = 0; i < CONTEND_TASKS; i++) {
        CHECK_EQ(pz_join(t[i], NULL), 0);
        timeouts += per[i].timeouts;
    }
    fprintf(stderr, "process %d: %d acquisitions, %ld attempts timed out\n", (int)getpid(), CONTEND_TASKS * rounds,
            timeouts);
    pz_pg_pool_destroy(C.pool);
    pz_pg_lock_close(C.lock);
    return NULL;
}

static void test_two_processes(void **state)
{
    (void)state;
    int rounds = SCALED(4);
    pg_admin(url, "DROP TABLE IF EXISTS t_holders, t_acquired, t_ready;"
                  "CREATE TABLE t_holders (token bigint PRIMARY KEY, pid int);"
                  "CREATE TABLE t_acquired (seq bigserial PRIMARY KEY, token bigint, pid int);"
                  "CREATE TABLE t_ready (x int)");
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        run_in_runtime(2, contend_main, (void *)(intptr_t)rounds);
        _exit(0);
    }
    run_in_runtime(2, contend_main, (void *)(intptr_t)rounds);
    int st;
    CHECK_EQ(waitpid(child, &st, 0), child);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* Every acquisition, and tokens strictly increasing in acquisition order. */
    long total = 2L * CONTEND_TASKS * rounds;
    CHECK_EQ(pg_admin_int(url, "SELECT count(*) FROM t_acquired"), total);
    CHECK_EQ(pg_admin_int(url, "SELECT count(*) FROM (SELECT token <= lag(token) OVER (ORDER BY seq) AS bad "
                               "FROM t_acquired) x WHERE bad"),
             0);
    CHECK_EQ(pg_admin_int(url, "SELECT count(DISTINCT token) FROM t_acquired"), total);
    CHECK_EQ(pg_admin_int(url, "SELECT count(*) FROM t_holders"), 0);
    /* The processes did contend: the holder changed process at least once. */
    long switches = pg_admin_int(url, "SELECT count(*) FROM (SELECT pid <> lag(pid) OVER (ORDER BY seq) AS sw "
                                      "FROM t_acquired) x WHERE sw");
    fprintf(stderr, "the lock passed between the processes %ld times in %ld acquisitions\n", switches, total);
    CHECK(switches >= 1);
}

/* ------------------------------------------------------------ loss of the session */

#define LOSS_KEY 3003

struct watchdog {
    pz_pg_lock_t *lock;
    int result;
    int64_t at;
};

static void *watchdog_task(void *arg)
{
    struct watchdog *w = arg;
    w->result = pz_pg_lock_wait_lost(w->lock, in_ms(10000));
    w->at = pz_now();
    return NULL;
}

static void *loss_main(void *arg)
{
    (void)arg;
    pz_pg_lock_t *a, *b;
    CHECK_EQ(pz_pg_lock_open(url, LOSS_KEY, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_lock_open(url, LOSS_KEY, in_ms(10000), &b), 0);
    pz_pg_conn_t *admin, *store;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &admin), 0);
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &store), 0);
    CHECK_EQ(pz_pg_exec(store, "DROP TABLE IF EXISTS t_fenced; CREATE TABLE t_fenced (who text)", 0, NULL,
                        in_ms(10000)),
             0);

    uint64_t ta, tb;
    CHECK_EQ(pz_pg_lock_lock(a, &ta), 0);
    /* a's own write, fenced: accepted. */
    CHECK_EQ(pz_pg_exec(store, "BEGIN", 0, NULL, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_fence_admit(store, LOSS_KEY, ta, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_exec(store, "INSERT INTO t_fenced VALUES ('a')", 0, NULL, in_ms(10000)), 1);
    CHECK_EQ(pz_pg_exec(store, "COMMIT", 0, NULL, in_ms(10000)), 0);

    /* A watchdog waits for the loss without any round trip. */
    struct watchdog w = {a, 0, 0};
    pz_task_t *wt = pz_spawn(watchdog_task, &w);
    pz_sleep(20 * MS);
    char pid[16];
    snprintf(pid, sizeof pid, "%d", pz_pg_lock_backend_pid(a));
    int64_t killed_at = pz_now();
    CHECK_EQ(pz_pg_exec(admin, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){pid}, in_ms(10000)), 1);
    CHECK_EQ(pz_join(wt, NULL), 0);
    CHECK_EQ(w.result, -ENOLCK);
    fprintf(stderr, "the holder learnt of its lost session %.2f ms after pg_terminate_backend\n",
            (w.at - killed_at) / 1e6);
    CHECK(w.at - killed_at < 5000 * MS);
    CHECK_EQ(pz_pg_lock_check(a, in_ms(10000)), -ENOLCK);

    /* Another session acquires it, with a later token, and writes. */
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(10000), &tb), 0);
    CHECK(tb > ta);
    CHECK_EQ(pz_pg_exec(store, "BEGIN", 0, NULL, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_fence_admit(store, LOSS_KEY, tb, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_exec(store, "INSERT INTO t_fenced VALUES ('b')", 0, NULL, in_ms(10000)), 1);
    CHECK_EQ(pz_pg_exec(store, "COMMIT", 0, NULL, in_ms(10000)), 0);
    /* The stale holder's write is refused. */
    CHECK_EQ(pz_pg_exec(store, "BEGIN", 0, NULL, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_fence_admit(store, LOSS_KEY, ta, in_ms(10000)), -ESTALE);
    CHECK_EQ(pz_pg_exec(store, "ROLLBACK", 0, NULL, in_ms(10000)), 0);
    pz_pg_result_t *r;
    CHECK_EQ(pz_pg_query(store, "SELECT string_agg(who, ',' ORDER BY who) FROM t_fenced", 0, NULL, in_ms(10000), &r),
             0);
    CHECK(strcmp(pz_pg_result_value(r, 0, 0), "a,b") == 0);
    pz_pg_result_free(r);
    /* The stale holder's unlock says it had lost the lock. */
    CHECK_EQ(pz_pg_lock_unlock(a), -ENOLCK);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    /* And a works again, on a new session. */
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK(ta > tb);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);

    /* Losing the session while idle (not holding): the next lock reconnects. */
    snprintf(pid, sizeof pid, "%d", pz_pg_lock_backend_pid(b));
    CHECK_EQ(pz_pg_exec(admin, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){pid}, in_ms(10000)), 1);
    pz_sleep(20 * MS);
    int b_pid = pz_pg_lock_backend_pid(b);
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(10000), &tb), 0);
    CHECK(pz_pg_lock_backend_pid(b) != b_pid);
    CHECK(tb > ta);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);

    pz_pg_close(store);
    pz_pg_close(admin);
    pz_pg_lock_close(a);
    pz_pg_lock_close(b);
    return NULL;
}

static void test_loss(void **state)
{
    (void)state;
    run_in_runtime(2, loss_main, NULL);
}

/* The same loss with the next holder in another process: the parent holds
 * the lock, its backend is terminated, it is told; the child (waiting for
 * that moment through a table) acquires and writes; the parent's stale
 * write is refused. */
#define LOSS2_KEY 3033

static int64_t wait_row(pz_pg_conn_t *c, const char *what)
{
    int64_t deadline = in_ms(20000), token = -1;
    while (pz_now() < deadline) {
        pz_pg_result_t *r;
        CHECK_EQ(pz_pg_query(c, "SELECT token FROM t_loss_sync WHERE what = $1", 1, (const char *[]){what},
                             in_ms(10000), &r),
                 0);
        bool found = pz_pg_result_rows(r) == 1;
        if (found)
            CHECK_EQ(pz_pg_result_int64(r, 0, 0, &token), 0);
        pz_pg_result_free(r);
        if (found)
            return token;
        pz_sleep(2 * MS);
    }
    check_failed("the other process never wrote its row", __FILE__, __LINE__);
    return -1;
}

static void post_row(pz_pg_conn_t *c, const char *what, uint64_t token)
{
    char t[24];
    snprintf(t, sizeof t, "%llu", (unsigned long long)token);
    CHECK_EQ(pz_pg_exec(c, "INSERT INTO t_loss_sync VALUES ($1, $2)", 2, (const char *[]){what, t}, in_ms(10000)), 1);
}

static int fenced_write(pz_pg_conn_t *store, uint64_t token, const char *who)
{
    CHECK_EQ(pz_pg_exec(store, "BEGIN", 0, NULL, in_ms(10000)), 0);
    int r = pz_pg_fence_admit(store, LOSS2_KEY, token, in_ms(10000));
    if (r == 0)
        CHECK_EQ(pz_pg_exec(store, "INSERT INTO t_fenced2 VALUES ($1)", 1, (const char *[]){who}, in_ms(10000)), 1);
    CHECK_EQ(pz_pg_exec(store, r == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, in_ms(10000)), 0);
    return r;
}

static void *loss_child_main(void *arg)
{
    (void)arg;
    pz_pg_lock_t *b;
    pz_pg_conn_t *store;
    CHECK_EQ(pz_pg_lock_open(url, LOSS2_KEY, in_ms(10000), &b), 0);
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &store), 0);
    wait_row(store, "terminated");
    uint64_t tb;
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(10000), &tb), 0);
    CHECK_EQ(fenced_write(store, tb, "child"), 0);
    post_row(store, "child", tb);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    pz_pg_close(store);
    pz_pg_lock_close(b);
    return NULL;
}

static void *loss_parent_main(void *arg)
{
    (void)arg;
    pz_pg_lock_t *a;
    pz_pg_conn_t *store, *admin;
    CHECK_EQ(pz_pg_lock_open(url, LOSS2_KEY, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &store), 0);
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &admin), 0);
    uint64_t ta;
    CHECK_EQ(pz_pg_lock_lock(a, &ta), 0);
    CHECK_EQ(fenced_write(store, ta, "parent"), 0);
    struct watchdog w = {a, 0, 0};
    pz_task_t *wt = pz_spawn(watchdog_task, &w);
    pz_sleep(10 * MS);
    char pid[16];
    snprintf(pid, sizeof pid, "%d", pz_pg_lock_backend_pid(a));
    int64_t killed_at = pz_now();
    CHECK_EQ(pz_pg_exec(admin, "SELECT pg_terminate_backend($1::int)", 1, (const char *[]){pid}, in_ms(10000)), 1);
    CHECK_EQ(pz_join(wt, NULL), 0);
    CHECK_EQ(w.result, -ENOLCK);
    CHECK(w.at - killed_at < 5000 * MS);
    fprintf(stderr, "holder told %.2f ms after pg_terminate_backend; the other process takes over\n",
            (w.at - killed_at) / 1e6);
    post_row(store, "terminated", ta);
    /* The other process acquires and writes with a later token... */
    int64_t tb = wait_row(store, "child");
    CHECK(tb > (int64_t)ta);
    /* ... and the stale holder's write is refused. */
    CHECK_EQ(fenced_write(store, ta, "parent, stale"), -ESTALE);
    CHECK_EQ(pz_pg_lock_unlock(a), -ENOLCK);
    pz_pg_result_t *r;
    CHECK_EQ(pz_pg_query(store, "SELECT string_agg(who, ',' ORDER BY who) FROM t_fenced2", 0, NULL, in_ms(10000), &r),
             0);
    CHECK(strcmp(pz_pg_result_value(r, 0, 0), "child,parent") == 0);
    pz_pg_result_free(r);
    pz_pg_close(admin);
    pz_pg_close(store);
    pz_pg_lock_close(a);
    return NULL;
}

static void test_loss_other_process(void **state)
{
    (void)state;
    pg_admin(url, "DROP TABLE IF EXISTS t_loss_sync, t_fenced2;"
                  "CREATE TABLE t_loss_sync (what text, token bigint);"
                  "CREATE TABLE t_fenced2 (who text)");
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        run_in_runtime(2, loss_child_main, NULL);
        _exit(0);
    }
    run_in_runtime(2, loss_parent_main, NULL);
    int st;
    CHECK_EQ(waitpid(child, &st, 0), child);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A holder that is cancelled while it waits for the lock holds nothing
 * afterwards, on the server either. */
static void *waiter_task(void *arg)
{
    uint64_t t;
    return (void *)(intptr_t)pz_pg_lock_lock(arg, &t);
}

static void *cancel_main(void *arg)
{
    (void)arg;
    pz_pg_lock_t *a, *b;
    CHECK_EQ(pz_pg_lock_open(url, 4004, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_lock_open(url, 4004, in_ms(10000), &b), 0);
    uint64_t t;
    CHECK_EQ(pz_pg_lock_lock(a, &t), 0);
    pz_task_t *w = pz_spawn(waiter_task, b);
    pz_sleep(30 * MS);
    pz_cancel(w);
    void *res;
    CHECK_EQ(pz_join(w, &res), 0);
    CHECK_EQ((int)(intptr_t)res, -ECANCELED);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    /* b's abandoned attempt left nothing held: a can take it again. */
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &t), 0);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(10000), &t), 0);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    pz_pg_lock_close(a);
    pz_pg_lock_close(b);
    return NULL;
}

static void test_cancelled_waiter(void **state)
{
    (void)state;
    run_in_runtime(2, cancel_main, NULL);
}

/* Two sessions in one process (two lock objects on one key), tasks on both
 * with random deadlines and random cancels: at most one holder at any
 * moment, checked in memory, and tokens increasing in acquisition order. */
struct storm {
    pz_pg_lock_t *lock[2];
    _Atomic int holders;
    _Atomic uint64_t last_token;
    _Atomic long acquired, timed_out, cancelled;
};

struct storm_task_arg {
    struct storm *S;
    int which;
    uint64_t seed;
};

static void *storm_task(void *arg)
{
    struct storm_task_arg *A = arg;
    struct storm *S = A->S;
    uint64_t rng = A->seed;
    for (int i = 0; i < SCALED(12); i++) {
        uint64_t token;
        int r = pz_pg_lock_lock_until(S->lock[A->which], in_ms(1 + (int64_t)(test_rand(&rng) % 30)), &token);
        if (r == -ETIMEDOUT) {
            atomic_fetch_add(&S->timed_out, 1);
            continue;
        }
        if (r == -ECANCELED) {
            atomic_fetch_add(&S->cancelled, 1);
            return NULL;
        }
        CHECK_EQ(r, 0);
        CHECK_EQ(atomic_fetch_add(&S->holders, 1), 0);
        uint64_t last = atomic_load(&S->last_token);
        CHECK(token > last);
        atomic_store(&S->last_token, token);
        atomic_fetch_add(&S->acquired, 1);
        if (test_rand(&rng) % 2)
            pz_sleep((int64_t)(test_rand(&rng) % 3) * MS); /* a cancel may land here */
        CHECK_EQ(atomic_fetch_sub(&S->holders, 1), 1);
        /* A cancelled holder's unlock ends the session instead: 0 too. */
        CHECK_EQ(pz_pg_lock_unlock(S->lock[A->which]), 0);
        if (pz_cancelled())
            return NULL;
    }
    return NULL;
}

static void *storm_main(void *arg)
{
    (void)arg;
    struct storm S = {0};
    CHECK_EQ(pz_pg_lock_open(url, 5005, in_ms(10000), &S.lock[0]), 0);
    CHECK_EQ(pz_pg_lock_open(url, 5005, in_ms(10000), &S.lock[1]), 0);
    enum { N = 24 };
    pz_task_t *t[N];
    struct storm_task_arg a[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct storm_task_arg){&S, i % 2, 0x9e3779b97f4a7c15ull * (uint64_t)(i + 3)};
        CHECK((t[i] = pz_spawn(storm_task, &a[i])) != NULL);
    }
    uint64_t rng = 777;
    for (int i = 0; i < N / 3; i++) {
        pz_sleep((int64_t)(test_rand(&rng) % 15) * MS);
        pz_cancel(t[test_rand(&rng) % N]);
    }
    for (int i = 0; i < N; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    fprintf(stderr, "lock storm: %ld acquired, %ld timed out, %ld cancelled waiting\n", atomic_load(&S.acquired),
            atomic_load(&S.timed_out), atomic_load(&S.cancelled));
    CHECK(atomic_load(&S.acquired) > 0);
    /* Afterwards both objects work. */
    uint64_t t0, t1;
    CHECK_EQ(pz_pg_lock_lock_until(S.lock[0], in_ms(10000), &t0), 0);
    CHECK_EQ(pz_pg_lock_unlock(S.lock[0]), 0);
    CHECK_EQ(pz_pg_lock_lock_until(S.lock[1], in_ms(10000), &t1), 0);
    CHECK(t1 > t0 && t0 > atomic_load(&S.last_token));
    CHECK_EQ(pz_pg_lock_unlock(S.lock[1]), 0);
    pz_pg_lock_close(S.lock[0]);
    pz_pg_lock_close(S.lock[1]);
    return NULL;
}

static void test_timeout_cancel_storm(void **state)
{
    (void)state;
    run_in_runtime(2, storm_main, NULL);
}

/* ------------------------------------------------------------ lease and keys */

#define LEASE_KEY 5005

/* A holder that stops using its session past the lease loses the lock:
 * the server ends the session, the watchdog hears it, another object gets
 * the lock with a later token and the stale token is refused.  An idle
 * object whose session the lease ended reconnects on its next lock.  One
 * object serves several keys in turn (set_key), never while held. */
static void *lease_main(void *arg)
{
    (void)arg;
    const int64_t lease_ms = 300;
    pz_pg_lock_t *a, *b;
    CHECK_EQ(pz_pg_lock_open_with(url, LEASE_KEY, &(pz_pg_lock_opts_t){.lease_ns = 500}, in_ms(10000), &a),
             -EINVAL);
    CHECK_EQ(pz_pg_lock_open_with(url, LEASE_KEY, &(pz_pg_lock_opts_t){.lease_ns = -1}, in_ms(10000), &a), -EINVAL);
    pz_pg_lock_opts_t o = {.lease_ns = lease_ms * MS};
    CHECK_EQ(pz_pg_lock_open_with(url, LEASE_KEY, &o, in_ms(10000), &a), 0);
    CHECK_EQ(pz_pg_lock_open_with(url, LEASE_KEY, NULL, in_ms(10000), &b), 0);
    pz_pg_conn_t *store;
    CHECK_EQ(pz_pg_connect(url, in_ms(10000), &store), 0);

    uint64_t ta = 0, tb = 0;
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK_EQ(pz_pg_lock_set_key(a, LEASE_KEY + 1), -EBUSY);
    int64_t granted = pz_now();
    /* The holder goes quiet: the lease runs out on the server. */
    struct watchdog w = {a, 0, 0};
    pz_task_t *wt = pz_spawn(watchdog_task, &w);
    CHECK_EQ(pz_join(wt, NULL), 0);
    CHECK_EQ(w.result, -ENOLCK);
    fprintf(stderr, "the lease of %lld ms ended the holder's session %.1f ms after the grant\n", (long long)lease_ms,
            (w.at - granted) / 1e6);
    CHECK(w.at - granted >= lease_ms * MS * 9 / 10);
    CHECK_EQ(pz_pg_lock_lock_until(b, in_ms(10000), &tb), 0);
    CHECK(tb > ta);
    CHECK_EQ(pz_pg_fence_admit(store, LEASE_KEY, tb, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_fence_admit(store, LEASE_KEY, ta, in_ms(10000)), -ESTALE);
    CHECK_EQ(pz_pg_lock_unlock(a), -ENOLCK);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);

    /* Idle past the lease: the session is gone, the next lock makes a new
     * one (with the lease again). */
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK(ta > tb);
    int pid = pz_pg_lock_backend_pid(a);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    pz_sleep(2 * lease_ms * MS);
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK(pz_pg_lock_backend_pid(a) != pid);
    CHECK_EQ(pz_pg_lock_check(a, in_ms(10000)), 0);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);

    /* Keys in turn on one object: while a holds key+1, b takes key at
     * once, and key+1 is busy for b. */
    CHECK_EQ(pz_pg_lock_set_key(a, LEASE_KEY + 1), 0);
    CHECK_EQ(pz_pg_lock_lock_until(a, in_ms(10000), &ta), 0);
    CHECK_EQ(pz_pg_lock_trylock(b, in_ms(10000), &tb), 0);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    CHECK_EQ(pz_pg_lock_set_key(b, LEASE_KEY + 1), 0);
    CHECK_EQ(pz_pg_lock_trylock(b, in_ms(10000), &tb), -EBUSY);
    CHECK_EQ(pz_pg_lock_unlock(a), 0);
    CHECK_EQ(pz_pg_lock_trylock(b, in_ms(10000), &tb), 0);
    CHECK(tb > ta);
    CHECK_EQ(pz_pg_lock_unlock(b), 0);
    CHECK_EQ(pz_pg_lock_set_key(NULL, 1), -EINVAL);

    pz_pg_close(store);
    pz_pg_lock_close(a);
    pz_pg_lock_close(b);
    return NULL;
}

static void test_lease_and_keys(void **state)
{
    (void)state;
    run_in_runtime(2, lease_main, NULL);
}

int main(void)
{
    url = pg_url();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basics),
        cmocka_unit_test(test_two_processes),
        cmocka_unit_test(test_loss),
        cmocka_unit_test(test_loss_other_process),
        cmocka_unit_test(test_cancelled_waiter),
        cmocka_unit_test(test_timeout_cancel_storm),
        cmocka_unit_test(test_lease_and_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
