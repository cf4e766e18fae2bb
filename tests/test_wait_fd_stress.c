/*
 * pz_wait_fd against a writer on another thread that makes the descriptor
 * readable at every instant of the wait, the moments between the wait's
 * own look at the kernel and its snapshot of the poller's readiness bits
 * included: no readiness edge may be lost (a lost one shows as a wait that
 * runs into its deadline while a byte sits in the socket).
 *
 * The same for pz_wait_input in the pattern it exists for, libpq's: the
 * reader reads the socket with its own non-blocking recv calls on one
 * descriptor and waits through pz_wait_input on a duplicate of it.  The
 * waits that return with nothing to read (the event was for a byte the
 * reader had already taken) are counted and allowed.
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

static int pair[2];
static _Atomic int consumed;
static _Atomic bool writer_stop;
static int watched; /* pz_wait_input's: a duplicate of pair[0] */

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

static void *reader(void *arg)
{
    int events = (int)(intptr_t)arg;
    int timeouts = 0;
    for (int i = 0; i < ROUNDS; i++) {
        int r = pz_wait_fd(pair[0], events, pz_now() + 2 * SEC);
        if (r == -ETIMEDOUT) {
            timeouts++;
        } else {
            CHECK(r > 0 && (r & PZ_READABLE));
        }
        char c;
        ssize_t n = pz_read(pair[0], &c, 1, pz_now() + 2 * SEC);
        CHECK_EQ(n, 1);
        atomic_fetch_add(&consumed, 1);
    }
    CHECK_EQ(timeouts, 0);
    return NULL;
}

static void *app(void *arg)
{
    int events = (int)(intptr_t)arg;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    atomic_store(&consumed, 0);
    atomic_store(&writer_stop, false);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, writer, NULL), 0);
    /* The first byte, then one per byte read. */
    CHECK_EQ(write(pair[1], "x", 1), 1);
    pz_task_t *t = pz_spawn(reader, (void *)(intptr_t)events);
    CHECK(t != NULL);
    CHECK_EQ(pz_join(t, NULL), 0);
    atomic_store(&writer_stop, true);
    pthread_join(th, NULL);
    pz_close(pair[0]);
    close(pair[1]);
    return NULL;
}

static void test_wait_readable_loses_no_edge(void **state)
{
    (void)state;
    run_in_runtime(2, app, (void *)(intptr_t)PZ_READABLE);
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
        cmocka_unit_test(test_wait_readable_loses_no_edge),
        cmocka_unit_test(test_other_reader_loses_no_edge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
