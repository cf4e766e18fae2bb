/*
 * pz_wait_input: waiting for input on a descriptor that other code reads.
 *
 * The cases: input already there (the wait returns at once and consumes
 * nothing), none before the deadline, input that comes while a task waits,
 * an end of stream, cancel, pz_close while waiting, bad descriptors, a pipe,
 * a plain thread.  tests/test_wait_fd_stress.c races it against a writer
 * thread in the pattern it exists for (libpq's).
 */
#include <plaza.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#define MSEC 1000000LL

static void *wait_forever(void *arg)
{
    return (void *)(intptr_t)pz_wait_input((int)(intptr_t)arg, PZ_FOREVER);
}

static void *cases_main(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);

    /* Input already there: at once, and nothing is consumed. */
    CHECK_EQ(write(sv[1], "abc", 3), 3);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + SEC), 0);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + SEC), 0);
    char buf[8];
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, pz_now() + SEC), 3);

    /* None before the deadline. */
    int64_t t0 = pz_now();
    CHECK_EQ(pz_wait_input(sv[0], t0 + 20 * MSEC), -ETIMEDOUT);
    CHECK(pz_now() - t0 >= 20 * MSEC);

    /* Input that comes while a task waits wakes it; the byte is still there. */
    pz_task_t *t = pz_spawn(wait_forever, (void *)(intptr_t)sv[0]);
    CHECK(t != NULL);
    wait_parked(t);
    CHECK_EQ(write(sv[1], "x", 1), 1);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, 0);
    CHECK_EQ(recv(sv[0], buf, sizeof buf, MSG_DONTWAIT), 1);

    /* Cancel. */
    t = pz_spawn(wait_forever, (void *)(intptr_t)sv[0]);
    wait_parked(t);
    pz_cancel(t);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED);

    /* The end of the stream counts as input (the reader's read sees it). */
    t = pz_spawn(wait_forever, (void *)(intptr_t)sv[0]);
    wait_parked(t);
    close(sv[1]);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, 0);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + SEC), 0);
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, pz_now() + SEC), 0);
    pz_close(sv[0]);

    /* pz_close while a task waits. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    t = pz_spawn(wait_forever, (void *)(intptr_t)sv[0]);
    wait_parked(t);
    pz_close(sv[0]);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -EBADF);
    close(sv[1]);

    /* Bad descriptors. */
    CHECK_EQ(pz_wait_input(-1, pz_now() + SEC), -EBADF);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + SEC), -EBADF); /* closed above */

    /* A pipe. */
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ(pz_wait_input(p[0], pz_now() + 10 * MSEC), -ETIMEDOUT);
    t = pz_spawn(wait_forever, (void *)(intptr_t)p[0]);
    wait_parked(t);
    CHECK_EQ(write(p[1], "y", 1), 1);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, 0);
    CHECK_EQ(pz_read(p[0], buf, sizeof buf, pz_now() + SEC), 1);
    pz_close(p[0]);
    close(p[1]);
    return NULL;
}

static void test_cases(void **state)
{
    (void)state;
    run_in_runtime(2, cases_main, NULL);
}

static void test_plain_thread(void **state)
{
    (void)state;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + 10 * MSEC), -ETIMEDOUT);
    CHECK_EQ(write(sv[1], "z", 1), 1);
    CHECK_EQ(pz_wait_input(sv[0], pz_now() + SEC), 0);
    char b;
    CHECK_EQ(recv(sv[0], &b, 1, MSG_DONTWAIT), 1);
    close(sv[0]);
    close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_plain_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
