/* The idle spin (pz_config_t.idle_spin_us, src/runtime/sched.c idle_spin):
 * out of range it is refused; when on, a worker whose task waits for a
 * partner's answer on another core takes the answer from the poller while
 * it spins instead of going to sleep for it; and a spin that does not pay
 * (the answer comes later than the spin lasts) is soon given up, and taken
 * up again once answers come quickly again.
 *
 * What is counted is the worker thread's voluntary context switches and
 * CPU time (getrusage RUSAGE_THREAD, read by the task on the runtime's only
 * worker): a worker that sleeps (in the poller or on its futex) makes one
 * voluntary switch per sleep; one that spins makes none and spends the
 * spin's time on its CPU.  The partner is a plain thread answering each
 * byte at once, or after a pause, so its answer comes within microseconds,
 * far inside the 1 ms spin, unless the machine deschedules it; the bounds
 * leave room for that. */
#include "helpers.h"
#include "runtime/internal.h"

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
    const int bad[] = {-2, 1001};
    for (int i = 0; i < 2; i++) {
        pz_config_t c = {.workers = 1, .idle_spin_us = bad[i]};
        capture_stderr_begin();
        int r = pz_run(&c, never_runs, NULL, NULL);
        const char *said = capture_stderr_end();
        CHECK_EQ(r, -EINVAL);
        CHECK(strstr(said, "idle_spin_us") != NULL);
    }
}

/* The partner answers a byte 's' (slow) after PAUSE_US, anything else at
 * once. */
#define PAUSE_US 5000

static void *echo_partner(void *arg)
{
    int fd = *(int *)arg;
    char b;
    while (read(fd, &b, 1) == 1) {
        if (b == 's')
            usleep(PAUSE_US);
        if (write(fd, &b, 1) != 1)
            break;
    }
    return NULL;
}

struct trips {
    int fd;
    long slow;        /* trips answered after PAUSE_US first, then... */
    long fast;        /* ...trips answered at once */
    long switches;    /* the worker's voluntary context switches over the last half of the fast trips */
    int64_t slow_cpu; /* the worker's CPU time over the second half of the slow trips, ns */
    int paid_slow;    /* the gate's average after the slow trips... */
    int paid_fast;    /* ...and after the fast ones */
};

static int spin_paid(void)
{
    return atomic_load_explicit(&atomic_load(&pz__rt)->idle_spin_paid, memory_order_relaxed);
}

static long voluntary_switches(void)
{
    struct rusage u;
    CHECK_EQ(getrusage(RUSAGE_THREAD, &u), 0);
    return u.ru_nvcsw;
}

static int64_t thread_cpu_ns(void)
{
    struct rusage u;
    CHECK_EQ(getrusage(RUSAGE_THREAD, &u), 0);
    return ((int64_t)u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1000;
}

/* n round trips of the byte b. */
static void trips(int fd, char b, long n)
{
    for (long i = 0; i < n; i++) {
        CHECK_EQ(pz_write(fd, &b, 1, PZ_FOREVER), 1);
        char got = 0;
        CHECK_EQ(pz_read(fd, &got, 1, PZ_FOREVER), 1);
        CHECK_EQ(got, b);
    }
}

static void *trips_main(void *arg)
{
    struct trips *t = arg;
    /* A few trips first: the descriptor's registration and the partner's
     * first wake-up are not what is measured. */
    trips(t->fd, 'x', 10);
    /* The first half of the slow trips takes the gate down (the spins are
     * taken to pay until some do not); the second half is measured. */
    trips(t->fd, 's', t->slow / 2);
    int64_t cpu = thread_cpu_ns();
    trips(t->fd, 's', t->slow - t->slow / 2);
    t->slow_cpu = thread_cpu_ns() - cpu;
    t->paid_slow = spin_paid();
    trips(t->fd, 'x', t->fast / 2);
    long before = voluntary_switches();
    trips(t->fd, 'x', t->fast - t->fast / 2);
    t->switches = voluntary_switches() - before;
    t->paid_fast = spin_paid();
    return NULL;
}

static struct trips run_trips(int spin_us, long slow, long fast)
{
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK), 0);
    pthread_t partner;
    CHECK_EQ(pthread_create(&partner, NULL, echo_partner, &sv[1]), 0);
    struct trips t = {.fd = sv[0], .slow = slow, .fast = fast, .switches = -1, .slow_cpu = -1};
    pz_config_t c = {.workers = 1, .idle_spin_us = spin_us};
    test_restore_fault_handlers();
    CHECK_EQ(pz_run(&c, trips_main, &t, NULL), 0);
    CHECK_EQ(shutdown(sv[0], SHUT_RDWR), 0);
    CHECK_EQ(pthread_join(partner, NULL), 0);
    close(sv[0]);
    close(sv[1]);
    return t;
}

static void test_spin_takes_answers_without_sleeping(void **state)
{
    (void)state;
    long without = run_trips(-1, 0, 2 * TRIPS).switches, with = run_trips(1000, 0, 2 * TRIPS).switches;
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

/* Answers that come PAUSE_US after the question, five times the spin: a
 * spin at every idle moment would cost its whole length each trip, and
 * none finds the answer.  The gate gives the spin up after a few, then
 * spins once in 16 idle moments: its average ends under the gate, and the
 * worker's CPU time over the second half of the slow trips (the first
 * half is where the gate comes down) stays under a third of a spin each
 * trip (a spin takes 1 ms of CPU unless the machine takes the worker's
 * core meanwhile, which only lowers it).  Not scaled down for slow
 * builds: 200 slow trips take a second anywhere.  Then answers come at
 * once, and the worker sleeps as rarely as in the test above: the probes
 * pay and the spin is taken up again, unless the answers are there before
 * the worker gets to its spin at all (then the average, printed, stays
 * where it was, and nothing depends on it). */
static void test_spin_that_does_not_pay_is_given_up(void **state)
{
    (void)state;
    const long slow = 200;
    struct trips t = run_trips(1000, slow, 2 * TRIPS);
    int64_t spin_each_trip = slow / 2 * 1000 * 1000;
    fprintf(stderr, "%ld trips answered after %d us: over the last %ld the worker used %.1f ms of CPU (%.1f ms if it "
            "spun 1 ms each trip), the gate's average %d/%d; then it slept %ld times in %ld trips answered at once, "
            "the average %d\n",
            slow, PAUSE_US, slow / 2, (double)t.slow_cpu / 1e6, (double)spin_each_trip / 1e6, t.paid_slow,
            PZ__IDLE_SPIN_ONE, t.switches, (long)TRIPS, t.paid_fast);
    CHECK(t.slow_cpu >= 0);
    CHECK(t.paid_slow < PZ__IDLE_SPIN_GATE);
    if (t.slow_cpu > spin_each_trip / 3)
        check_failed("slow_cpu <= spin_each_trip / 3", __FILE__, __LINE__);
    if (t.switches > TRIPS / 4)
        check_failed("switches <= TRIPS / 4 once answers come at once again", __FILE__, __LINE__);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_range_is_refused),
        cmocka_unit_test(test_spin_takes_answers_without_sleeping),
        cmocka_unit_test(test_spin_that_does_not_pay_is_given_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
