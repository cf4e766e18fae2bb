/* The idle spin (pz_config_t.idle_spin_us, src/runtime/sched.c idle_spin):
 * out of range it is refused, and when on, a worker whose task waits for a
 * partner's answer on another core takes the answer from the poller while
 * it spins instead of going to sleep for it.
 *
 * What is counted is the worker thread's voluntary context switches
 * (getrusage RUSAGE_THREAD, read by the task on the runtime's only
 * worker): a worker that sleeps (in the poller or on its futex) makes one
 * per sleep; one that spins makes none.  The partner is a plain thread
 * answering each byte at once, so its answer comes within microseconds,
 * far inside the 1 ms spin, unless the machine deschedules it; the bound
 * leaves room for that. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define TRIPS SCALED(2000)

static void *never_runs(void *arg)
{
    return arg;
}

static void test_out_of_range_is_refused(void **state)
{
    (void)state;
    test_restore_fault_handlers();
    const int bad[] = {-1, 1001};
    for (int i = 0; i < 2; i++) {
        pz_config_t c = {.workers = 1, .idle_spin_us = bad[i]};
        capture_stderr_begin();
        int r = pz_run(&c, never_runs, NULL, NULL);
        const char *said = capture_stderr_end();
        CHECK_EQ(r, -EINVAL);
        CHECK(strstr(said, "idle_spin_us") != NULL);
    }
}

static void *echo_partner(void *arg)
{
    int fd = *(int *)arg;
    char b;
    while (read(fd, &b, 1) == 1)
        if (write(fd, &b, 1) != 1)
            break;
    return NULL;
}

struct trips {
    int fd;
    long switches; /* the worker's voluntary context switches over the trips */
};

static long voluntary_switches(void)
{
    struct rusage u;
    CHECK_EQ(getrusage(RUSAGE_THREAD, &u), 0);
    return u.ru_nvcsw;
}

static void *trips_main(void *arg)
{
    struct trips *t = arg;
    char b = 'x';
    /* A few trips first: the descriptor's registration and the partner's
     * first wake-up are not what is measured. */
    for (int i = 0; i < 10; i++) {
        CHECK_EQ(pz_write(t->fd, &b, 1, PZ_FOREVER), 1);
        CHECK_EQ(pz_read(t->fd, &b, 1, PZ_FOREVER), 1);
    }
    long before = voluntary_switches();
    for (long i = 0; i < TRIPS; i++) {
        CHECK_EQ(pz_write(t->fd, &b, 1, PZ_FOREVER), 1);
        CHECK_EQ(pz_read(t->fd, &b, 1, PZ_FOREVER), 1);
        CHECK_EQ(b, 'x');
    }
    t->switches = voluntary_switches() - before;
    return NULL;
}

static long run_trips(int spin_us)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK), 0);
    pthread_t partner;
    CHECK_EQ(pthread_create(&partner, NULL, echo_partner, &sv[1]), 0);
    struct trips t = {.fd = sv[0], .switches = -1};
    pz_config_t c = {.workers = 1, .idle_spin_us = spin_us};
    test_restore_fault_handlers();
    CHECK_EQ(pz_run(&c, trips_main, &t, NULL), 0);
    CHECK_EQ(shutdown(sv[0], SHUT_RDWR), 0);
    CHECK_EQ(pthread_join(partner, NULL), 0);
    close(sv[0]);
    close(sv[1]);
    return t.switches;
}

static void test_spin_takes_answers_without_sleeping(void **state)
{
    (void)state;
    long without = run_trips(0), with = run_trips(1000);
    fprintf(stderr, "%ld round trips: the worker slept %ld times without the idle spin, %ld with it\n", (long)TRIPS,
            without, with);
    /* Not asserted: without the spin, how often the answer is there before
     * the worker gets to the poller depends on the machine. */
    CHECK(with >= 0);
    if (with > TRIPS / 4) {
        fprintf(stderr, "with a 1 ms idle spin the worker slept %ld times in %ld trips (at most %ld expected)\n",
                with, (long)TRIPS, (long)TRIPS / 4);
        check_failed("with <= TRIPS / 4", __FILE__, __LINE__);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_range_is_refused),
        cmocka_unit_test(test_spin_takes_answers_without_sleeping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
