/* Edges of the runtime, sync and io layers: deadlines already passed
 * (negative ones too) on thread-blocking waits, pz_wait_fd for either
 * event, a descriptor number that was closed when first used, a burst on
 * a warm blocking pool, pz_strerror of any int, writes to a pipe without
 * reader, fork while a runtime runs. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* TSan cannot start threads in the child of a multi-threaded fork, and
 * qemu-user (the static runner's build) fails an assertion doing it. */
#if defined(__SANITIZE_THREAD__) || defined(PLAZA_TEST_STATIC_RUNNER)
#define NO_THREADED_FORK 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NO_THREADED_FORK 1
#endif
#endif

/* ---- waits whose deadline has passed ---- */

/* A thread that holds a lock until told to let go, or for at most 3 s, so
 * that a wait that ignores its deadline returns 0 late instead of hanging
 * the test. */
struct holder {
    pz_mutex_t *m;
    pz_rwlock_t *rw;
    _Atomic int state; /* 1: holding; 2: let go */
};

static void *hold_thread(void *arg)
{
    struct holder *h = arg;
    if (h->m)
        pz_mutex_lock(h->m);
    else
        pz_rwlock_write(h->rw);
    atomic_store(&h->state, 1);
    int64_t until = pz_now() + 3000000000;
    while (atomic_load(&h->state) != 2 && pz_now() < until)
        usleep(1000);
    if (h->m)
        pz_mutex_unlock(h->m);
    else
        pz_rwlock_write_unlock(h->rw);
    return NULL;
}

static void start_holder(struct holder *h, pthread_t *th)
{
    atomic_store(&h->state, 0);
    CHECK_EQ(pthread_create(th, NULL, hold_thread, h), 0);
    while (atomic_load(&h->state) != 1)
        usleep(100);
}

static void stop_holder(struct holder *h, pthread_t th)
{
    atomic_store(&h->state, 2);
    pthread_join(th, NULL);
}

static void passed_deadlines(void)
{
    static pz_mutex_t m;
    static pz_rwlock_t rw;
    static pz_condvar_t cv;
    int64_t deadlines[] = {-1, INT64_MIN, 0, pz_now() - 1};
    for (size_t i = 0; i < sizeof deadlines / sizeof deadlines[0]; i++) {
        int64_t d = deadlines[i];
        struct holder h = {.m = &m};
        pthread_t th;
        start_holder(&h, &th);
        int64_t t0 = pz_now();
        CHECK_EQ(pz_mutex_lock_until(&m, d), -ETIMEDOUT);
        CHECK(pz_now() - t0 < 2000000000);
        stop_holder(&h, th);

        struct holder hw = {.rw = &rw};
        start_holder(&hw, &th);
        CHECK_EQ(pz_rwlock_write_until(&rw, d), -ETIMEDOUT);
        CHECK_EQ(pz_rwlock_read_until(&rw, d), -ETIMEDOUT);
        CHECK_EQ(pz_rwlock_upgradable_until(&rw, d), -ETIMEDOUT);
        CHECK_EQ(pz_rwlock_read_recursive_until(&rw, d), -ETIMEDOUT);
        stop_holder(&hw, th);

        /* Nobody notifies: only the deadline can end this wait. */
        pz_mutex_lock(&m);
        CHECK_EQ(pz_condvar_wait_until(&cv, &m, d), -ETIMEDOUT);
        pz_mutex_unlock(&m);
    }
}

static void test_passed_deadline_thread(void **state)
{
    (void)state;
    passed_deadlines();
}

static void *passed_deadlines_task(void *arg)
{
    (void)arg;
    passed_deadlines();
    return NULL;
}

static void test_passed_deadline_task(void **state)
{
    (void)state;
    run_in_runtime(2, passed_deadlines_task, NULL);
}

/* ---- pz_wait_fd for either event ---- */

struct either {
    int fd, peer;
    _Atomic int phase;
    int result;
};

static void *wait_either_task(void *arg)
{
    struct either *e = arg;
    atomic_store(&e->phase, 1);
    e->result = pz_wait_fd(e->fd, PZ_READABLE | PZ_WRITABLE, pz_now() + 10000000000);
    return NULL;
}

static void *wait_either_main(void *arg)
{
    struct either *e = arg;
    pz_task_t *t = pz_spawn(wait_either_task, e);
    while (atomic_load(&e->phase) != 1)
        pz_sleep(1000000);
    pz_sleep(50000000); /* let it park (a later drain works as well) */
    /* Drain the peer: fd becomes writable, never readable. */
    char buf[65536];
    while (read(e->peer, buf, sizeof buf) > 0) {
    }
    CHECK_EQ(pz_join(t, NULL), 0);
    return NULL;
}

static void test_wait_fd_either(void **state)
{
    (void)state;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    while (write(sv[0], buf, sizeof buf) > 0) {
    }
    struct either e = {.fd = sv[0], .peer = sv[1]};
    run_in_runtime(2, wait_either_main, &e);
    CHECK_EQ(e.result, PZ_WRITABLE);
    close(sv[0]);
    close(sv[1]);
}

/* ---- a number that was closed when first used ---- */

struct late_writer {
    int fd;
    int64_t at;
};

static void *late_write(void *arg)
{
    struct late_writer *l = arg;
    while (pz_now() < l->at)
        usleep(1000);
    ssize_t w = write(l->fd, "x", 1);
    (void)w;
    return NULL;
}

static void *closed_number_main(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0); /* blocking */
    int num = dup(sv[0]);
    CHECK(num >= 0);
    close(num);
    char c;
    CHECK_EQ(pz_read(num, &c, 1, pz_now() + 100000000), -EBADF);
    CHECK_EQ(dup2(sv[0], num), num);
    /* Data comes only after 3 s (so a read that ignores its deadline
     * ends rather than hangs). */
    struct late_writer lw = {sv[1], pz_now() + 3000000000};
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, late_write, &lw), 0);
    int64_t t0 = pz_now();
    ssize_t r = pz_read(num, &c, 1, t0 + 100000000);
    int64_t took = pz_now() - t0;
    CHECK_EQ(r, -ETIMEDOUT);
    CHECK(took >= 100000000);
    CHECK(took < 2000000000);
    CHECK_EQ(pz_read(num, &c, 1, pz_now() + 10000000000), 1);
    pthread_join(th, NULL);
    pz_close(num);
    close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void test_closed_number_leaves_no_state(void **state)
{
    (void)state;
    run_in_runtime(2, closed_number_main, NULL);
}

/* ---- a burst on a warm blocking pool ---- */

enum { BURST = 32 };
static _Atomic int burst_running;
static _Atomic bool burst_gave_up;

/* Waits until all BURST jobs run at once (each on a pool thread of its
 * own), or gives up after 2 s; true if they all met. */
static void *burst_job(void *arg)
{
    (void)arg;
    atomic_fetch_add(&burst_running, 1);
    int64_t until = pz_now() + 2000000000;
    while (atomic_load(&burst_running) < BURST && !atomic_load(&burst_gave_up) && pz_now() < until)
        usleep(1000);
    bool met = atomic_load(&burst_running) >= BURST;
    if (!met)
        atomic_store(&burst_gave_up, true);
    return (void *)(uintptr_t)met;
}

static void *quick(void *arg)
{
    return arg;
}

static void *burst_task(void *arg)
{
    (void)arg;
    void *met = NULL;
    CHECK_EQ(pz_blocking(burst_job, NULL, &met), 0);
    return met;
}

static void *burst_main(void *arg)
{
    (void)arg;
    /* Warm: one pool thread, idle now. */
    CHECK_EQ(pz_blocking(quick, NULL, NULL), 0);
    atomic_store(&burst_running, 0);
    atomic_store(&burst_gave_up, false);
    pz_task_t *t[BURST];
    for (int i = 0; i < BURST; i++)
        t[i] = pz_spawn(burst_task, NULL);
    int met = 0;
    for (int i = 0; i < BURST; i++) {
        void *r = NULL;
        CHECK_EQ(pz_join(t[i], &r), 0);
        met += r != NULL;
    }
    CHECK_EQ(met, BURST);
    return NULL;
}

static void test_blocking_burst_on_warm_pool(void **state)
{
    (void)state;
    run_in_runtime(2, burst_main, NULL);
}

/* ---- pz_strerror of any int ---- */

static void test_strerror_any_int(void **state)
{
    (void)state;
    int codes[] = {INT_MIN, INT_MIN + 1, -1, 0, 1, INT_MAX, -ETIMEDOUT};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = pz_strerror(codes[i]);
        CHECK(s != NULL && s[0] != '\0');
    }
    CHECK_EQ(strcmp(pz_strerror(INT_MIN), "not an error code"), 0);
}

/* ---- a pipe without reader ---- */

static void *pipe_main(void *arg)
{
    (void)arg;
    int p[2];
    CHECK_EQ(pipe(p), 0);
    close(p[0]);
    CHECK_EQ(pz_write(p[1], "x", 1, pz_now() + 1000000000), -EPIPE);
    struct iovec iov = {"y", 1};
    CHECK_EQ(pz_writev(p[1], &iov, 1, pz_now() + 1000000000), -EPIPE);
    sigset_t pending;
    sigpending(&pending);
    CHECK(!sigismember(&pending, SIGPIPE));
    pz_close(p[1]);
    return NULL;
}

static void child_pipe(void)
{
    /* From a task, then from a plain thread. */
    run_in_runtime(1, pipe_main, NULL);
    pipe_main(NULL);
    fprintf(stderr, "pipe writes survived\n");
}

static void test_pipe_write_without_reader(void **state)
{
    (void)state;
    char out[4096];
    int status = run_child(child_pipe, out, sizeof out);
    fprintf(stderr, "child said: %s", out);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    CHECK(strstr(out, "pipe writes survived") != NULL);
}

/* ---- fork while a runtime runs ---- */
#ifndef NO_THREADED_FORK

static void *add_one(void *arg)
{
    return (void *)((uintptr_t)arg + 1);
}

static void *child_main(void *arg)
{
    void *r = NULL;
    CHECK_EQ(pz_blocking(add_one, arg, &r), 0);
    pz_task_t *t = pz_spawn(add_one, r);
    CHECK_EQ(pz_join(t, &r), 0);
    return r;
}

static void *fork_main(void *arg)
{
    (void)arg;
    /* A warm blocking pool, and the fork from a task. */
    CHECK_EQ(pz_blocking(quick, NULL, NULL), 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(20); /* a child that hangs fails the test instead */
        CHECK(pz_self() == NULL);
        void *r = NULL;
        int e = pz_run(NULL, child_main, (void *)40, &r);
        _exit(e == 0 && r == (void *)42 ? 0 : 3);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    return (void *)(intptr_t)status;
}

static void test_fork_child_starts_a_runtime(void **state)
{
    (void)state;
    int status = (int)(intptr_t)run_in_runtime(2, fork_main, NULL);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_passed_deadline_thread),
        cmocka_unit_test(test_passed_deadline_task),
        cmocka_unit_test(test_wait_fd_either),
        cmocka_unit_test(test_closed_number_leaves_no_state),
        cmocka_unit_test(test_blocking_burst_on_warm_pool),
        cmocka_unit_test(test_strerror_any_int),
        cmocka_unit_test(test_pipe_write_without_reader),
#ifndef NO_THREADED_FORK
        cmocka_unit_test(test_fork_child_starts_a_runtime),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
