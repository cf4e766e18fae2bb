/*
 * A storm of signals (SIGUSR1 and SIGCHLD, with handlers installed without
 * SA_RESTART, so every interrupted system call fails with EINTR) sent to
 * the process and directed at plain threads while tasks and threads sit in
 * every kind of plaza wait.  No wait may return an error it was not asked
 * for (-EINTR above all), a timed-out wait must not return before its
 * deadline, and nothing sent may be lost.
 *
 * Workers block asynchronous signals (signal.h), so the process-directed
 * signals land on the thread that called pz_run and on the plain threads
 * below; the thread-directed ones interrupt those plain threads inside
 * their futex and poll waits.
 */
#include <plaza.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#define STORM_NS (1500 * MS / PLAZA_TEST_SCALE)
#define NTHREADS 3

static _Atomic long handled;
static _Atomic bool stop;
static pthread_t waiters[NTHREADS];
static _Atomic int nwaiters;

static void on_signal(int sig)
{
    (void)sig;
    atomic_fetch_add_explicit(&handled, 1, memory_order_relaxed);
}

static void *storm(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        kill(getpid(), SIGUSR1);
        kill(getpid(), SIGCHLD);
        int n = atomic_load(&nwaiters);
        for (int i = 0; i < n; i++)
            pthread_kill(waiters[i], SIGUSR1);
        usleep(50);
    }
    return NULL;
}

/* A timed wait's result: 0, or -ETIMEDOUT no earlier than its deadline. */
static void check_timed(int r, int64_t deadline)
{
    if (r == -ETIMEDOUT)
        CHECK(pz_now() >= deadline);
    else
        CHECK_EQ(r, 0);
}

static pz_mutex_t sync_m;
static pz_async_mutex_t async_m;
static pz_semaphore_t sem;
static pz_chan_t ch;
static long chan_buf[64];
static _Atomic long sent, received;
static int pair[2];
static _Atomic long bytes_read;

/* Holds both mutexes now and then, so that waits on them time out or
 * succeed after a real wait. */
static void *holder(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        CHECK_EQ(pz_async_mutex_lock(&async_m), 0);
        pz_mutex_lock(&sync_m);
        int64_t until = pz_now() + 300 * US;
        while (pz_now() < until) {
        }
        pz_mutex_unlock(&sync_m);
        CHECK_EQ(pz_sleep(300 * US), 0);
        CHECK_EQ(pz_async_mutex_unlock(&async_m), 0);
        CHECK_EQ(pz_sleep(200 * US), 0);
    }
    return NULL;
}

/* Tasks: sleeps, async lock waits with deadlines, semaphore waits. */
static void *task_waits(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int64_t t0 = pz_now();
        CHECK_EQ(pz_sleep(200 * US), 0);
        CHECK(pz_now() - t0 >= 200 * US);
        int64_t d = pz_now() + 250 * US;
        int r = pz_async_mutex_lock_until(&async_m, d);
        check_timed(r, d);
        if (r == 0)
            CHECK_EQ(pz_async_mutex_unlock(&async_m), 0);
        d = pz_now() + 100 * US;
        r = pz_semaphore_acquire_until(&sem, 1, d);
        check_timed(r, d);
        if (r == 0)
            CHECK_EQ(pz_semaphore_release(&sem, 1), 0);
    }
    return NULL;
}

static void *producer(void *arg)
{
    (void)arg;
    for (long i = 1; !atomic_load(&stop); i++) {
        int64_t d = pz_now() + 5 * MS;
        int r = pz_chan_send_until(&ch, &i, d);
        check_timed(r, d);
        if (r == 0)
            atomic_fetch_add(&sent, 1);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        long v;
        int64_t d = pz_now() + 5 * MS;
        int r = pz_chan_recv_until(&ch, &v, d);
        if (r == -EPIPE)
            return NULL; /* closed and drained */
        check_timed(r, d);
        if (r == 0) {
            CHECK(v > 0);
            atomic_fetch_add(&received, 1);
        }
    }
}

/* Plain threads: a sync lock with deadlines, the async mutex from a
 * thread, a thread sleep, and a socket read with bytes arriving. */
static void *plain_thread(void *arg)
{
    int which = (int)(intptr_t)arg;
    while (!atomic_load(&stop)) {
        int64_t d = pz_now() + 200 * US;
        int r;
        switch (which) {
        case 0:
            r = pz_mutex_lock_until(&sync_m, d);
            check_timed(r, d);
            if (r == 0)
                pz_mutex_unlock(&sync_m);
            break;
        case 1:
            r = pz_async_mutex_lock_until(&async_m, d);
            check_timed(r, d);
            if (r == 0)
                CHECK_EQ(pz_async_mutex_unlock(&async_m), 0);
            {
                int64_t t0 = pz_now();
                CHECK_EQ(pz_sleep(100 * US), 0);
                CHECK(pz_now() - t0 >= 100 * US);
            }
            break;
        default: {
            char b[64];
            d = pz_now() + 2 * MS;
            ssize_t n = pz_read(pair[0], b, sizeof b, d);
            if (n == -ETIMEDOUT)
                CHECK(pz_now() >= d);
            else
                CHECK(n > 0);
            if (n > 0)
                atomic_fetch_add(&bytes_read, n);
        }
        }
    }
    return NULL;
}

static void *writer(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop)) {
        CHECK_EQ(pz_write_all(pair[1], "abcdefgh", 8, pz_now() + SEC), 8);
        n += 8;
        CHECK_EQ(pz_sleep(100 * US), 0);
    }
    return (void *)(intptr_t)n;
}

static void *storm_main(void *arg)
{
    (void)arg;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
    pz_semaphore_init(&sem, 1);
    CHECK_EQ(pz_chan_init(&ch, sizeof(long), 16, chan_buf, sizeof chan_buf), 0);

    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_EQ(pthread_create(&th[i], NULL, plain_thread, (void *)(intptr_t)i), 0);
        waiters[i] = th[i];
    }
    atomic_store(&nwaiters, NTHREADS);
    pthread_t st;
    CHECK_EQ(pthread_create(&st, NULL, storm, NULL), 0);

    pz_task_t *tasks[8];
    int nt = 0;
    tasks[nt++] = pz_spawn(holder, NULL);
    tasks[nt++] = pz_spawn(task_waits, NULL);
    tasks[nt++] = pz_spawn(task_waits, NULL);
    tasks[nt++] = pz_spawn(producer, NULL);
    tasks[nt++] = pz_spawn(producer, NULL);
    pz_task_t *cons = pz_spawn(consumer, NULL);
    pz_task_t *wr = pz_spawn(writer, NULL);
    for (int i = 0; i < nt; i++)
        CHECK(tasks[i] != NULL);

    /* The storm lasts STORM_NS and until 200 signals were handled: on a busy
     * machine or under an emulator the storm thread may get few slices. */
    CHECK_EQ(pz_sleep(STORM_NS), 0);
    int64_t limit = pz_now() + 60 * SEC;
    while (atomic_load(&handled) < 200 && pz_now() < limit)
        CHECK_EQ(pz_sleep(5 * MS), 0);
    atomic_store(&stop, true);
    for (int i = 0; i < nt; i++)
        CHECK_EQ(pz_join(tasks[i], NULL), 0);
    void *written = NULL;
    CHECK_EQ(pz_join(wr, &written), 0);
    pz_chan_close(&ch);
    CHECK_EQ(pz_join(cons, NULL), 0);
    atomic_store(&nwaiters, 0);
    pthread_join(st, NULL);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    /* The bytes still in the socket are read here: none was lost. */
    char b[256];
    ssize_t n;
    while ((n = pz_read(pair[0], b, sizeof b, pz_now())) > 0)
        atomic_fetch_add(&bytes_read, n);

    fprintf(stderr, "signal storm: %ld signals handled; %ld items sent, %ld received; %ld bytes written, %ld read\n",
            atomic_load(&handled), atomic_load(&sent), atomic_load(&received), (long)(intptr_t)written,
            atomic_load(&bytes_read));
    CHECK(atomic_load(&handled) > 100);
    CHECK_EQ(atomic_load(&sent), atomic_load(&received));
    CHECK(atomic_load(&sent) > 0);
    CHECK_EQ(atomic_load(&bytes_read), (long)(intptr_t)written);
    pz_close(pair[0]);
    pz_close(pair[1]);
    return NULL;
}

static void test_signal_storm(void **state)
{
    (void)state;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: interrupted calls fail with EINTR */
    CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);
    CHECK_EQ(sigaction(SIGCHLD, &sa, NULL), 0);
    run_in_runtime(2, storm_main, NULL);
    signal(SIGUSR1, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signal_storm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
