/* The advisor: waits that end without the lock, and the locks beyond the
 * two mutexes.
 *
 *   gave_up     a pz_mutex held across a suspension while another task's
 *               pz_mutex_lock_until times out on it, every round: each
 *               timed-out wait is counted (gave_up), its time is in the
 *               wait figures and in the worker time the lock blocked, and
 *               the advice says so; the same with pz_async_mutex_lock_until
 *               and a waiter cancelled in pz_async_mutex_lock.
 *   coverage    pz_async_rwlock and pz_semaphore around a counter (data
 *               behind an async lock), pz_async_rwlock read holds across a
 *               sleep (logic, the read holds timed), pz_rwlock read holds
 *               across a sleep (logic behind a sync lock), and a channel
 *               whose receive waits and whose receive_until times out.
 *
 * Every wait the test relies on is forced: the holder keeps the lock until
 * the waiter says its attempt has ended, and a task is cancelled only once
 * it is queued on the mutex.  Nothing depends on timing but the deadlines
 * the test sets itself. */
#include "helpers.h"
#include "advisor_json.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUNDS 8
#define GIVE_UP_NS (4 * MS)
/* A wait that gave up at a deadline GIVE_UP_NS after its call began: the
 * advisor times it from the failed first attempt, later; on a machine
 * whose other core is busy the thread can lose its CPU for a time slice
 * (a few ms) between the deadline's clock read and that attempt (the
 * channel's check below once saw less than 0.9 ms of a 1 ms deadline
 * under TSan with one core busy), so the bound is half the deadline. */
#define GAVE_UP_WAIT (GIVE_UP_NS / 2)

static pz_mutex_t wait_sync;
static pz_async_mutex_t wait_async;
static _Atomic int held_round, tried_round;

/* Holds lock (sync or async) in each round until the waiter has tried. */
static void *holder(void *arg)
{
    bool async = arg != NULL;
    for (int i = 1; i <= ROUNDS; i++) {
        if (async)
            CHECK(pz_async_mutex_lock(&wait_async) == 0);
        else
            pz_mutex_lock(&wait_sync);
        atomic_store(&held_round, i);
        while (atomic_load(&tried_round) != i)
            pz_sleep(50 * US);
        if (async)
            CHECK(pz_async_mutex_unlock(&wait_async) == 0);
        else
            pz_mutex_unlock(&wait_sync);
    }
    return NULL;
}

static void *waiter(void *arg)
{
    bool async = arg != NULL;
    for (int i = 1; i <= ROUNDS; i++) {
        while (atomic_load(&held_round) != i)
            pz_yield();
        int r = async ? pz_async_mutex_lock_until(&wait_async, pz_now() + GIVE_UP_NS)
                      : pz_mutex_lock_until(&wait_sync, pz_now() + GIVE_UP_NS);
        CHECK_EQ(r, -ETIMEDOUT);
        atomic_store(&tried_round, i);
    }
    return NULL;
}

static _Atomic bool victim_started;

static void *victim(void *arg)
{
    (void)arg;
    atomic_store(&victim_started, true);
    return (void *)(intptr_t)pz_async_mutex_lock(&wait_async);
}

static void *gave_up_main(void *arg)
{
    bool async = arg != NULL;
    atomic_store(&held_round, 0);
    atomic_store(&tried_round, 0);
    pz_task_t *h = pz_spawn(holder, arg), *w = pz_spawn(waiter, arg);
    CHECK(h && w);
    CHECK(pz_join(w, NULL) == 0);
    CHECK(pz_join(h, NULL) == 0);
    if (async) {
        /* One more wait that ends without the mutex: a cancel. */
        CHECK(pz_async_mutex_lock(&wait_async) == 0);
        pz_task_t *v = pz_spawn(victim, NULL);
        CHECK(v);
        wait_parked(v);
        pz_cancel(v);
        void *res;
        CHECK(pz_join(v, &res) == 0);
        CHECK_EQ((int)(intptr_t)res, -ECANCELED);
        CHECK(pz_async_mutex_unlock(&wait_async) == 0);
    }
    return NULL;
}

/* ---- coverage ---- */

static pz_async_rwlock_t data_arw, logic_arw;
static pz_rwlock_t logic_rw;
static pz_semaphore_t data_sem;
static uint64_t arw_counter, sem_counter;
static pz_chan_t *chan;

#define DATA_TASKS 4
#define DATA_ITERS 2000
#define LOGIC_ITERS 10

static void *data_task(void *arg)
{
    (void)arg;
    for (int i = 0; i < SCALED(DATA_ITERS); i++) {
        if (i % 4 == 0) {
            CHECK(pz_async_rwlock_write(&data_arw) == 0);
            arw_counter++;
            CHECK(pz_async_rwlock_write_unlock(&data_arw) == 0);
        } else {
            CHECK(pz_async_rwlock_read(&data_arw) == 0);
            CHECK(pz_async_rwlock_read_unlock(&data_arw) == 0);
        }
        CHECK(pz_semaphore_acquire(&data_sem, 1) == 0);
        sem_counter++;
        CHECK(pz_semaphore_release(&data_sem, 1) == 0);
        if (i % 128 == 0)
            pz_yield();
    }
    return NULL;
}

static void *logic_reader(void *arg)
{
    bool sync = arg != NULL;
    for (int i = 0; i < LOGIC_ITERS; i++) {
        if (sync) {
            pz_rwlock_read(&logic_rw);
            pz_sleep(1 * MS);
            pz_rwlock_read_unlock(&logic_rw);
        } else {
            CHECK(pz_async_rwlock_read(&logic_arw) == 0);
            pz_sleep(1 * MS);
            CHECK(pz_async_rwlock_read_unlock(&logic_arw) == 0);
        }
    }
    return NULL;
}

static _Atomic bool receiver_waiting;

static void *receiver(void *arg)
{
    (void)arg;
    int v = 0;
    /* Nothing was sent: this one gives up at its deadline. */
    CHECK_EQ(pz_chan_recv_until(chan, &v, pz_now() + GIVE_UP_NS), -ETIMEDOUT);
    atomic_store(&receiver_waiting, true);
    CHECK(pz_chan_recv(chan, &v) == 0); /* waits for the send below */
    CHECK_EQ(v, 42);
    return NULL;
}

static void *coverage_main(void *arg)
{
    (void)arg;
    pz_task_t *t[DATA_TASKS + 3];
    int n = 0;
    for (int i = 0; i < DATA_TASKS; i++)
        t[n++] = pz_spawn(data_task, NULL);
    t[n++] = pz_spawn(logic_reader, NULL);
    t[n++] = pz_spawn(logic_reader, (void *)1);
    pz_task_t *r = pz_spawn(receiver, NULL);
    CHECK(r);
    while (!atomic_load(&receiver_waiting))
        pz_yield();
    wait_parked(r); /* queued in its receive */
    int v = 42;
    CHECK(pz_chan_send(chan, &v) == 0);
    t[n++] = r;
    for (int i = 0; i < n; i++) {
        CHECK(t[i]);
        CHECK(pz_join(t[i], NULL) == 0);
    }
    return NULL;
}

/* ---- the report ---- */

static void expect_verdict(json_t *l, const char *kind, const char *verdict)
{
    if (strcmp(str(l, "verdict"), verdict) != 0 || strcmp(str(l, "kind"), kind) != 0)
        fprintf(stderr, "%s (%s): verdict %s, expected %s (%s): %s\n", str(l, "name"), str(l, "kind"),
                str(l, "verdict"), verdict, kind, str(l, "advice"));
    CHECK(strcmp(str(l, "kind"), kind) == 0);
    CHECK(strcmp(str(l, "verdict"), verdict) == 0);
}

static void test_gave_up_waits(void **state)
{
    (void)state;
    CHECK(pz_advisor_enable("") == 0);
    CHECK(pz_lock_name(&wait_sync, "wait_sync") == 0);
    CHECK(pz_lock_name(&wait_async, "wait_async") == 0);
    run_in_runtime(2, gave_up_main, NULL);
    run_in_runtime(2, gave_up_main, (void *)1);

    json_t *root = report_json();
    json_t *l = named(root, "locks", "wait_sync");
    expect_verdict(l, "pz_mutex", "logic_behind_sync");
    /* Every round's wait timed out, none acquired: all are in the figures. */
    CHECK_EQ(num(l, "gave_up", NULL), ROUNDS);
    CHECK_EQ(num(l, "contended", NULL), 0);
    CHECK_EQ(num(l, "acquisitions", NULL), ROUNDS);
    CHECK(num(l, "wait_ns", "max") >= GAVE_UP_WAIT);
    CHECK(num(l, "wait_ns", "p99") >= GAVE_UP_WAIT);
    /* The waiter is a task: its timed-out waits blocked its worker. */
    CHECK(num(l, "blocked_worker_ns", NULL) >= ROUNDS * GAVE_UP_WAIT);
    CHECK(strstr(str(l, "advice"), "give up") != NULL);
    CHECK(strstr(str(l, "advice"), "blocked worker threads for 0.000 ms") == NULL);

    l = named(root, "locks", "wait_async");
    expect_verdict(l, "pz_async_mutex", "logic");
    CHECK_EQ(num(l, "gave_up", NULL), ROUNDS + 1); /* the cancelled one too */
    CHECK(num(l, "wait_ns", "max") >= GAVE_UP_WAIT);
    CHECK_EQ(num(l, "blocked_worker_ns", NULL), 0); /* async waiters suspend */
    json_decref(root);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(pz_advisor_report(f, PZ_ADVISOR_TEXT) == 0);
    fclose(f);
    CHECK(strstr(buf, "gave up 8,") != NULL);
    free(buf);
    pz_advisor_disable();
}

static void test_coverage(void **state)
{
    (void)state;
    CHECK(pz_advisor_enable("") == 0);
    pz_semaphore_init(&data_sem, 1);
    chan = pz_chan_create(sizeof(int), 1);
    CHECK(chan);
    CHECK(pz_lock_name(&data_arw, "data_arw") == 0);
    CHECK(pz_lock_name(&logic_arw, "logic_arw") == 0);
    CHECK(pz_lock_name(&logic_rw, "logic_rw") == 0);
    CHECK(pz_lock_name(&data_sem, "data_sem") == 0);
    CHECK(pz_lock_name(chan, "chan") == 0);
    run_in_runtime(2, coverage_main, NULL);
    CHECK_EQ(sem_counter, (uint64_t)DATA_TASKS * SCALED(DATA_ITERS));

    json_t *root = report_json();
    json_t *l = named(root, "locks", "data_arw");
    expect_verdict(l, "pz_async_rwlock", "data_behind_async");
    CHECK_EQ(num(l, "acquisitions", NULL), DATA_TASKS * SCALED(DATA_ITERS));
    CHECK(num(l, "shared", NULL) > 0);
    CHECK(num(l, "timed_shared", NULL) > 0); /* read holds are timed too */
    CHECK(strstr(str(l, "advice"), "pz_rwlock") != NULL);

    l = named(root, "locks", "data_sem");
    expect_verdict(l, "pz_semaphore", "data_behind_async");
    CHECK_EQ(num(l, "acquisitions", NULL), DATA_TASKS * SCALED(DATA_ITERS));

    l = named(root, "locks", "logic_arw");
    expect_verdict(l, "pz_async_rwlock", "logic");
    CHECK_EQ(num(l, "timed_shared", NULL), LOGIC_ITERS);
    CHECK(num(l, "hold_ns", "p50") >= 1 * MS);

    l = named(root, "locks", "logic_rw");
    expect_verdict(l, "pz_rwlock", "logic_behind_sync");
    CHECK_EQ(num(l, "timed_shared", NULL), LOGIC_ITERS);
    CHECK(num(l, "suspended_holds", NULL) == LOGIC_ITERS);

    l = named(root, "channels", "chan");
    CHECK(strcmp(str(l, "kind"), "pz_chan") == 0);
    CHECK_EQ(num(l, "recv_waits", NULL), 2);
    CHECK_EQ(num(l, "send_waits", NULL), 0);
    CHECK_EQ(num(l, "gave_up", NULL), 1);
    CHECK(num(l, "wait_ns", "max") >= GAVE_UP_WAIT);
    json_decref(root);
    pz_advisor_disable();
    pz_chan_destroy(chan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gave_up_waits),
        cmocka_unit_test(test_coverage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
