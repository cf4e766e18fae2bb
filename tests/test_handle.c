/* Task handles detect reuse: a second join, a second detach, a join after
 * a detached task ended, a cancel of a stale handle, and a stale handle
 * whose memory went to a new task are all reported and refused (before,
 * the second join freed the task twice and glibc aborted). */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>


static void *quick(void *arg)
{
    return arg;
}

static void *sleepy(void *arg)
{
    (void)arg;
    pz_sleep(60LL * 1000 * MS);
    return (void *)1;
}

static void *handle_main(void *arg)
{
    (void)arg;
    /* Join twice. */
    pz_task_t *t = pz_spawn(quick, (void *)5);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, 5);
    capture_stderr_begin();
    CHECK_EQ(pz_join(t, &r), -EINVAL);
    const char *msg = capture_stderr_end();
    CHECK(strstr(msg, "pz_join: stale task handle") != NULL);
    CHECK_EQ(pz_task_id(t), 0);

    /* The stale handle's memory now serves new tasks: every use of the
     * old handle is still refused, and the new tasks are untouched. */
    pz_task_t *fresh[64];
    for (int i = 0; i < 64; i++)
        fresh[i] = pz_spawn(sleepy, NULL);
    capture_stderr_begin();
    CHECK_EQ(pz_join(t, NULL), -EINVAL);
    CHECK_EQ(pz_detach(t), -EINVAL);
    pz_cancel(t);
    msg = capture_stderr_end_quiet();
    CHECK(strstr(msg, "pz_detach: stale task handle") != NULL);
    CHECK(strstr(msg, "pz_cancel: stale task handle") != NULL);
    for (int i = 0; i < 64; i++) {
        CHECK(pz_task_id(fresh[i]) != 0);
        pz_cancel(fresh[i]);
        CHECK_EQ(pz_join(fresh[i], &r), 0);
        CHECK_EQ((intptr_t)r, 1); /* ran to its end (its sleep was cancelled) */
    }

    /* Detach twice, and join after a detached task ended. */
    t = pz_spawn(quick, NULL);
    uint64_t id = pz_task_id(t);
    CHECK(id != 0);
    CHECK_EQ(pz_detach(t), 0);
    int64_t give_up = pz_now() + 30000 * MS;
    while (pz_task_id(t) == id && pz_now() < give_up) /* until it ended and was freed */
        pz_sleep(MS);
    CHECK_EQ(pz_task_id(t), 0);
    capture_stderr_begin();
    CHECK_EQ(pz_detach(t), -EINVAL);
    CHECK_EQ(pz_join(t, NULL), -EINVAL);
    msg = capture_stderr_end();
    CHECK(strstr(msg, "stale task handle") != NULL);

    /* Many rounds of spawn, join and a stale join, over reused memory. */
    capture_stderr_begin();
    for (int i = 0; i < SCALED(2000); i++) {
        pz_task_t *a = pz_spawn(quick, (void *)(intptr_t)i);
        CHECK_EQ(pz_join(a, &r), 0);
        CHECK_EQ((intptr_t)r, i);
        CHECK_EQ(pz_join(a, &r), -EINVAL);
    }
    capture_stderr_end_quiet();
    /* pz_self's handle is always the live task. */
    CHECK(pz_task_id(pz_self()) != 0);
    return NULL;
}

static void test_handles_detect_reuse(void **state)
{
    (void)state;
    run_in_runtime(2, handle_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handles_detect_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
