/*
 * pz_wait_input: waiting for input on a descriptor that other code reads.
 *
 * The cases: input already there (the wait returns at once and consumes
 * nothing), none before the deadline, input that comes while a task waits,
 * an end of stream, cancel, pz_close while waiting, bad descriptors, a pipe,
 * a plain thread.  Then the pattern it exists for, libpq's: the reader reads
 * the socket with its own non-blocking recv calls on one descriptor, and
 * waits through pz_wait_input on a duplicate of it, while a writer on
 * another thread sends single bytes at random instants, the moments
 * between the wait's look and its snapshot of the readiness bits included.
 * No readiness edge may be lost: a lost one shows as a wait that runs into
 * its deadline while a byte sits in the socket.  The returns that find
 * nothing (the event was for a byte the reader had already taken) are
 * counted and allowed.
 */
#include <plaza.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#define ROUNDS (20000 / PLAZA_TEST_SCALE)
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

/* ---- another reader: libpq's pattern ---- */

static int pair[2];
static int watched; /* a duplicate of pair[0], the one the waits watch */
static _Atomic int consumed;
static _Atomic bool writer_stop;

static void *writer(void *arg)
{
    (void)arg;
    unsigned rng = 12345;
    int last = 0;
    while (!atomic_load(&writer_stop)) {
        if (atomic_load(&consumed) == last) {
            sched_yield();
            continue;
        }
        last = atomic_load(&consumed);
        rng = rng * 1103515245u + 12345u;
        for (volatile unsigned spin = (rng >> 16) % 3000; spin; spin--) {
        }
        CHECK_EQ(write(pair[1], "x", 1), 1);
    }
    return NULL;
}

static void *other_reader(void *arg)
{
    (void)arg;
    int timeouts = 0, empty = 0, waits = 0;
    for (int got = 0; got < ROUNDS;) {
        char c;
        ssize_t n = recv(pair[0], &c, 1, MSG_DONTWAIT);
        if (n == 1) {
            got++;
            atomic_fetch_add(&consumed, 1);
            continue;
        }
        CHECK(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        int r = pz_wait_input(watched, pz_now() + 2 * SEC);
        waits++;
        if (r == -ETIMEDOUT)
            timeouts++;
        else
            CHECK_EQ(r, 0);
        /* Did the wait return with nothing there?  (Allowed: the event was
         * for a byte taken meanwhile.) */
        if (r == 0 && recv(pair[0], &c, 1, MSG_DONTWAIT | MSG_PEEK) < 0)
            empty++;
    }
    CHECK_EQ(timeouts, 0);
    CHECK(waits > 0); /* else the waits were never tested */
    printf("# other reader: %d bytes, %d waits, %d returned with nothing to read\n", ROUNDS, waits, empty);
    return NULL;
}

static void *other_reader_main(void *arg)
{
    (void)arg;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    CHECK_EQ(fcntl(pair[0], F_SETFL, fcntl(pair[0], F_GETFL) | O_NONBLOCK), 0);
    watched = fcntl(pair[0], F_DUPFD_CLOEXEC, 0);
    CHECK(watched >= 0);
    atomic_store(&consumed, 0);
    atomic_store(&writer_stop, false);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, writer, NULL), 0);
    CHECK_EQ(write(pair[1], "x", 1), 1); /* the first byte, then one per byte read */
    pz_task_t *t = pz_spawn(other_reader, NULL);
    CHECK(t != NULL);
    CHECK_EQ(pz_join(t, NULL), 0);
    atomic_store(&writer_stop, true);
    pthread_join(th, NULL);
    pz_close(watched);
    close(pair[0]);
    close(pair[1]);
    return NULL;
}

static void test_other_reader_loses_no_edge(void **state)
{
    (void)state;
    run_in_runtime(2, other_reader_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_plain_thread),
        cmocka_unit_test(test_other_reader_loses_no_edge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
