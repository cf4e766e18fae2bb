/* Task groups: first error, cancel on error, a group of 1 000 children
 * cancelled midway (every child ends, its cleanup ran, no task is left),
 * nested groups, a group left open by its owner, deadlines, misuse. */
#include "helpers.h"
#include "runtime/internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>


static long live_tasks(void)
{
    return atomic_load(&atomic_load(&pz__rt)->live_tasks);
}

/* Waits until the runtime holds no more than `base` tasks: children free
 * themselves just after their group's wait returns. */
static void wait_live(long base)
{
    int64_t give_up = pz_now() + 30 * SEC;
    while (live_tasks() > base && pz_now() < give_up)
        pz_sleep(100000);
    CHECK_EQ(live_tasks(), base);
}

static _Atomic long ran, ended, cleaned;

static int ok_or_fail(void *arg)
{
    intptr_t i = (intptr_t)arg;
    atomic_fetch_add(&ran, 1);
    pz_sleep((int64_t)(i % 5) * 100000);
    return i == 37 ? -EIO : 0;
}

static void *first_error_main(void *arg)
{
    (void)arg;
    long base = live_tasks();
    pz_group_t *g = pz_group_new(0);
    CHECK(g);
    for (intptr_t i = 0; i < 100; i++)
        CHECK_EQ(pz_group_spawn(g, ok_or_fail, (void *)i), 0);
    CHECK_EQ(pz_group_wait(g), -EIO);
    CHECK_EQ(atomic_load(&ran), 100); /* no cancel: everyone ran to the end */
    wait_live(base);
    g = pz_group_new(0);
    CHECK_EQ(pz_group_wait(g), 0); /* empty */
    CHECK_EQ(pz_group_spawn(NULL, ok_or_fail, NULL), -EINVAL);
    return NULL;
}

static void test_group_first_error(void **state)
{
    (void)state;
    atomic_store(&ran, 0);
    run_in_runtime(2, first_error_main, NULL);
}

/* ---- the first failure cancels the others ---- */

static int fail_soon(void *arg)
{
    (void)arg;
    pz_sleep(2 * MS);
    return -EPROTO;
}

static int sleeper(void *arg)
{
    (void)arg;
    int r = pz_sleep(60 * SEC);
    atomic_fetch_add(&ended, 1);
    return r;
}

static void *cancel_on_error_main(void *arg)
{
    (void)arg;
    long base = live_tasks();
    pz_group_t *g = pz_group_new(PZ_GROUP_CANCEL_ON_ERROR);
    for (int i = 0; i < 50; i++)
        CHECK_EQ(pz_group_spawn(g, sleeper, NULL), 0);
    CHECK_EQ(pz_group_spawn(g, fail_soon, NULL), 0);
    int64_t t0 = pz_now();
    CHECK_EQ(pz_group_wait(g), -EPROTO);
    CHECK(pz_now() - t0 < 30 * SEC);
    CHECK_EQ(atomic_load(&ended), 50);
    wait_live(base);
    return NULL;
}

static void test_group_cancel_on_error(void **state)
{
    (void)state;
    atomic_store(&ended, 0);
    run_in_runtime(2, cancel_on_error_main, NULL);
}

/* ---- 1 000 children, the owner cancelled midway ---- */

#define CHILDREN 1000
static pz_async_mutex_t shared = PZ_ASYNC_MUTEX_INIT;
static _Atomic long iterations;
static long guarded_sum; /* under `shared` */

static int worker_child(void *arg)
{
    uint64_t seed = (uint64_t)(intptr_t)arg * 7919 + 1;
    int r;
    for (;;) {
        if ((r = pz_async_mutex_lock(&shared)) < 0)
            break;
        guarded_sum++;
        r = pz_sleep((int64_t)(test_rand(&seed) % 200) * 1000);
        pz_async_mutex_unlock(&shared);
        if (r < 0)
            break;
        atomic_fetch_add(&iterations, 1);
        if ((r = pz_sleep((int64_t)(test_rand(&seed) % 500) * 1000)) < 0)
            break;
    }
    CHECK_EQ(r, -ECANCELED);
    CHECK(pz_cancelled());
    /* Cleanup that waits: shielded, it takes the lock once more. */
    pz_shield_begin();
    CHECK_EQ(pz_async_mutex_lock(&shared), 0);
    guarded_sum++;
    pz_async_mutex_unlock(&shared);
    pz_shield_end();
    atomic_fetch_add(&cleaned, 1);
    atomic_fetch_add(&ended, 1);
    return r;
}

static _Atomic int owner_result;
static _Atomic int owner_spawned;

static void *owner_task(void *arg)
{
    (void)arg;
    pz_group_t *g = pz_group_new(0);
    for (intptr_t i = 0; i < CHILDREN; i++)
        CHECK_EQ(pz_group_spawn(g, worker_child, (void *)i), 0);
    atomic_store(&owner_spawned, 1);
    atomic_store(&owner_result, pz_group_wait(g));
    CHECK_EQ(atomic_load(&ended), CHILDREN); /* the wait returned after all of them */
    return NULL;
}

static void *thousand_main(void *arg)
{
    (void)arg;
    long base = live_tasks();
    pz_task_t *owner = pz_spawn(owner_task, NULL);
    /* Midway: once every child runs and a few thousand rounds went by. */
    while (!atomic_load(&owner_spawned) || atomic_load(&iterations) < SCALED(3000))
        pz_sleep(MS);
    CHECK(atomic_load(&ended) == 0);
    pz_cancel(owner);
    CHECK_EQ(pz_join(owner, NULL), 0);
    CHECK_EQ(atomic_load(&owner_result), -ECANCELED);
    CHECK_EQ(atomic_load(&ended), CHILDREN);
    CHECK_EQ(atomic_load(&cleaned), CHILDREN);
    CHECK(!pz_async_mutex_is_locked(&shared));
    wait_live(base);
    return NULL;
}

static void test_group_thousand_cancelled(void **state)
{
    (void)state;
    atomic_store(&ended, 0);
    atomic_store(&cleaned, 0);
    atomic_store(&iterations, 0);
    run_in_runtime(0, thousand_main, NULL);
    CHECK(guarded_sum >= SCALED(3000) + CHILDREN);
}

/* ---- nested groups: cancel reaches the grandchildren ---- */

static int grandchild(void *arg)
{
    (void)arg;
    int r = pz_sleep(60 * SEC);
    atomic_fetch_add(&cleaned, 1);
    return r;
}

static int middle(void *arg)
{
    intptr_t leave_open = (intptr_t)arg;
    pz_group_t *g = pz_group_new(0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(pz_group_spawn(g, grandchild, NULL), 0);
    if (leave_open) {
        /* Never waits: the group is closed at this child's end. */
        pz_sleep(60 * SEC);
        return -ECANCELED;
    }
    int r = pz_group_wait(g);
    atomic_fetch_add(&ended, 1);
    return r;
}

static void *nested_main(void *arg)
{
    (void)arg;
    long base = live_tasks();
    pz_group_t *g = pz_group_new(0);
    for (intptr_t i = 0; i < 40; i++)
        CHECK_EQ(pz_group_spawn(g, middle, (void *)(intptr_t)(i % 4 == 0)), 0);
    while (live_tasks() < base + 40 + 400)
        pz_sleep(MS);
    capture_stderr_begin();
    pz_group_cancel(g);
    int r = pz_group_wait(g);
    const char *err = capture_stderr_end_quiet();
    CHECK_EQ(r, -ECANCELED);
    CHECK_EQ(atomic_load(&ended), 30);
    CHECK_EQ(atomic_load(&cleaned), 400);
    CHECK(strstr(err, "ended with a group of 10 running children") != NULL);
    wait_live(base);
    return NULL;
}

static void test_group_nested(void **state)
{
    (void)state;
    atomic_store(&ended, 0);
    atomic_store(&cleaned, 0);
    run_in_runtime(2, nested_main, NULL);
}

/* ---- deadlines, the main task leaving a group open, misuse ---- */

static pz_group_t *shared_group;

static void *stranger(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_group_wait(shared_group), -EPERM); /* reported; within the test's capture */
    return NULL;
}

static void *deadline_main(void *arg)
{
    (void)arg;
    pz_group_t *g = pz_group_new(0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(pz_group_spawn(g, sleeper, NULL), 0);
    CHECK_EQ(pz_group_wait_until(g, pz_now() + 5 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_group_running(g), 10);
    shared_group = g;
    pz_task_t *t = pz_spawn(stranger, NULL);
    CHECK_EQ(pz_join(t, NULL), 0);
    pz_group_cancel(g);
    CHECK_EQ(pz_group_wait(g), -ECANCELED); /* the children's result */
    CHECK_EQ(atomic_load(&ended), 10);
    /* Left open by main: closed at main's end, before pz_run returns. */
    g = pz_group_new(0);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(pz_group_spawn(g, sleeper, NULL), 0);
    return NULL;
}

static void test_group_deadline_and_main_exit(void **state)
{
    (void)state;
    atomic_store(&ended, 0);
    capture_stderr_begin();
    run_in_runtime(2, deadline_main, NULL);
    const char *err = capture_stderr_end_quiet();
    CHECK_EQ(atomic_load(&ended), 20);
    CHECK(strstr(err, "ended with a group of 10 running children") != NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_first_error),
        cmocka_unit_test(test_group_cancel_on_error),
        cmocka_unit_test(test_group_thousand_cancelled),
        cmocka_unit_test(test_group_nested),
        cmocka_unit_test(test_group_deadline_and_main_exit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
