/* Bad arguments to every call of include/plaza/runtime.h and
 * include/plaza/io.h, each as the headers' "Bad arguments" and
 * "Arguments" say: refused with the error named there (and reported where
 * they say so), never a crash, from a task and from a plain thread.
 * (Stale task handles: tests/test_handle.c; deadlines already passed:
 * tests/test_limits.c.) */
#include "helpers.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "plaza/io.h"

static void *ident(void *arg)
{
    return arg;
}

/* ---- runtime.h ---- */

static void test_run_bad_config(void **state)
{
    (void)state;
    const pz_config_t bad[] = {
        {.workers = -1},
        {.workers = 4097},
        {.blocking_threads_max = -1},
        {.spare_workers = -2},
        {.spare_workers = 4097},
        {.monitor = -2},
        {.stall_ms = -2},
        {.dump_signal = -1},
        {.dump_signal = NSIG},
        {.stack_size = ((size_t)1 << 30) + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *r = (void *)1;
        capture_stderr_begin();
        CHECK_EQ(pz_run(&bad[i], ident, NULL, &r), -EINVAL);
        CHECK(strstr(capture_stderr_end(), "invalid configuration") != NULL);
        CHECK(r == (void *)1); /* main never ran */
    }
    capture_stderr_begin();
    CHECK_EQ(pz_run(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK(strstr(capture_stderr_end(), "main is NULL") != NULL);
    /* The edges that are allowed: -1 where it means "off", NULL result. */
    pz_config_t ok = {.workers = 1, .monitor = -1, .stall_ms = -1, .spare_workers = -1, .dump_signal = 0};
    CHECK_EQ(pz_run(&ok, ident, NULL, NULL), 0);
    void *r = NULL;
    CHECK_EQ(pz_run(NULL, ident, (void *)7, &r), 0);
    CHECK(r == (void *)7);
}

static void *nested_run(void *arg)
{
    (void)arg;
    capture_stderr_begin();
    CHECK_EQ(pz_run(NULL, ident, NULL, NULL), -EBUSY);
    capture_stderr_end();
    return NULL;
}

static void test_run_while_running(void **state)
{
    (void)state;
    run_in_runtime(1, nested_run, NULL);
}

/* The calls of runtime.h that take a handle, a function or a time, from a
 * task (arg NULL) or from a plain thread. */
static void *task_calls(void *arg)
{
    bool in_task = arg == NULL;
    capture_stderr_begin();
    CHECK(pz_spawn(NULL, NULL) == NULL);
    CHECK(pz_spawn_with(NULL, NULL, NULL) == NULL);
    pz_spawn_opts_t huge = {.stack_size = SIZE_MAX};
    CHECK(pz_spawn_with(ident, NULL, &huge) == NULL);
    CHECK(capture_stderr_end()[0] != '\0');
    /* opts NULL and a NULL name are the defaults. */
    pz_task_t *t = pz_spawn_with(ident, (void *)3, NULL);
    pz_task_t *u = pz_spawn_with(ident, (void *)4, &(pz_spawn_opts_t){.name = NULL});
    CHECK_EQ(t != NULL, in_task);
    CHECK_EQ(u != NULL, in_task);
    if (in_task) {
        void *r = NULL;
        CHECK_EQ(pz_join(t, &r), 0);
        CHECK(r == (void *)3);
        CHECK_EQ(pz_join(u, NULL), 0);
    }
    capture_stderr_begin();
    CHECK_EQ(pz_join(NULL, NULL), -EINVAL);
    CHECK(strstr(capture_stderr_end(), "NULL") != NULL);
    CHECK_EQ(pz_detach(NULL), -EINVAL);
    pz_cancel(NULL);
    CHECK_EQ(pz_task_id(NULL), 0);
    CHECK_EQ(strcmp(pz_task_name(NULL), ""), 0);
    int64_t t0 = pz_now();
    CHECK_EQ(pz_sleep(-1), 0);
    CHECK_EQ(pz_sleep(INT64_MIN), 0);
    CHECK_EQ(pz_sleep_until(-5), 0);
    CHECK_EQ(pz_sleep_until(INT64_MIN), 0);
    CHECK(pz_now() - t0 < 10000 * MS); /* none of them waited (a guard, not a timing) */
    capture_stderr_begin();
    CHECK_EQ(pz_blocking(NULL, NULL, NULL), -EINVAL);
    CHECK(strstr(capture_stderr_end(), "fn is NULL") != NULL);
    CHECK_EQ(pz_blocking(ident, NULL, NULL), 0); /* result may be NULL */
    CHECK_EQ(strcmp(pz_strerror(1), "not an error code"), 0);
    CHECK(pz_strerror(INT_MIN) != NULL);
    CHECK(pz_strerror(0) != NULL);
    if (!in_task) {
        pz_yield();
        CHECK(!pz_cancelled());
        CHECK(pz_self() == NULL);
        CHECK_EQ(pz_worker_index(), -1);
    }
    return NULL;
}

static void test_task_calls(void **state)
{
    (void)state;
    run_in_runtime(2, task_calls, NULL);
    task_calls((void *)1); /* no runtime: a plain thread */
}

/* ---- io.h ---- */

static void *io_calls(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char b[8] = "abcdefg";
    struct iovec iov = {b, sizeof b};
    const size_t neg = (size_t)-1; /* a negative ssize_t passed as a size */
    int64_t now = pz_now();
    /* Sizes over SSIZE_MAX: -EINVAL before anything else, even on a bad
     * descriptor. */
    CHECK_EQ(pz_read(sv[0], b, neg, now), -EINVAL);
    CHECK_EQ(pz_write(sv[0], b, neg, now), -EINVAL);
    CHECK_EQ(pz_write_all(sv[0], b, neg, now), -EINVAL);
    CHECK_EQ(pz_recv(sv[0], b, (size_t)SSIZE_MAX + 1, 0, now), -EINVAL);
    CHECK_EQ(pz_send(sv[0], b, neg, 0, now), -EINVAL);
    CHECK_EQ(pz_read(-1, b, neg, now), -EINVAL);
    CHECK_EQ(pz_readv(sv[0], &iov, -1, now), -EINVAL);
    CHECK_EQ(pz_writev(sv[0], &iov, -1, now), -EINVAL);
    CHECK_EQ(pz_readv(sv[0], &iov, IOV_MAX + 1, now), -EINVAL);
    CHECK_EQ(pz_writev(sv[0], &iov, INT_MIN, now), -EINVAL);
    CHECK_EQ(pz_wait_fd(sv[0], 0, now), -EINVAL);
    CHECK_EQ(pz_wait_fd(sv[0], 4, now), -EINVAL);
    CHECK_EQ(pz_wait_fd(sv[0], PZ_READABLE | 8, now), -EINVAL);
    CHECK_EQ(pz_wait_fd(sv[0], -1, now), -EINVAL);
    /* Negative and unopened descriptors: -EBADF. */
    CHECK_EQ(pz_read(-1, b, 1, now), -EBADF);
    CHECK_EQ(pz_write(-2, b, 1, now), -EBADF);
    CHECK_EQ(pz_write_all(-3, b, 1, now), -EBADF);
    CHECK_EQ(pz_readv(-1, &iov, 1, now), -EBADF);
    CHECK_EQ(pz_writev(-1, &iov, 1, now), -EBADF);
    CHECK_EQ(pz_recv(-1, b, 1, 0, now), -EBADF);
    CHECK_EQ(pz_send(-1, b, 1, 0, now), -EBADF);
    CHECK_EQ(pz_accept(-1, NULL, NULL, now), -EBADF);
    CHECK_EQ(pz_connect(-1, NULL, 0, now), -EBADF);
    CHECK_EQ(pz_wait_fd(-1, PZ_READABLE, now), -EBADF);
    CHECK_EQ(pz_sock_port(-1), -EBADF);
    CHECK_EQ(pz_close(-1), -EBADF);
    CHECK_EQ(pz_close(INT_MAX), -EBADF);
    /* NULL buffers with a size: the kernel's -EFAULT once the call gets
     * there; a read with nothing to read times out first. */
    CHECK_EQ(pz_write(sv[0], NULL, 4, now), -EFAULT);
    CHECK_EQ(pz_write_all(sv[0], NULL, 4, now), -EFAULT);
    CHECK_EQ(pz_writev(sv[0], NULL, 1, now), -EFAULT);
    CHECK_EQ(pz_send(sv[0], NULL, 4, 0, now), -EFAULT);
    {
        /* qemu-user checks the buffer before it looks for data. */
        ssize_t r = pz_read(sv[1], NULL, 4, now);
        CHECK(r == -ETIMEDOUT || r == -EFAULT);
    }
    CHECK_EQ(pz_write(sv[0], b, 1, now), 1);
    CHECK_EQ(pz_read(sv[1], NULL, 4, now), -EFAULT);
    CHECK_EQ(pz_readv(sv[1], NULL, 1, now), -EFAULT);
    CHECK_EQ(pz_connect(sv[0], NULL, 16, now), -EFAULT);
    /* Zero sizes are calls of size 0. */
    CHECK_EQ(pz_write_all(sv[0], NULL, 0, now), 0);
    CHECK_EQ(pz_write(sv[0], b, 0, now), 0);
    /* Flags go to the system call: recv refuses some unknown bits. */
    CHECK_EQ(pz_recv(sv[1], b, 1, 0x7fffffff, now), -EINVAL);
    /* pz_accept with NULL addr and addrlen, on a socket that does not
     * listen: the kernel's -EINVAL. */
    CHECK_EQ(pz_accept(sv[0], NULL, NULL, now), -EINVAL);
    /* Addresses. */
    capture_stderr_begin();
    CHECK_EQ(pz_tcp_listen(NULL), -EINVAL);
    CHECK_EQ(pz_tcp_listen(""), -EINVAL);
    CHECK_EQ(pz_tcp_listen("127.0.0.1:65536"), -EINVAL);
    CHECK_EQ(pz_tcp_listen_addr(NULL, NULL, NULL), -EINVAL);
    CHECK_EQ(pz_tcp_dial(NULL, now), -EINVAL);
    CHECK_EQ(pz_tcp_dial("nocolon", now), -EINVAL);
    CHECK(strstr(capture_stderr_end(), "cannot parse address") != NULL);
    /* The address is stored only when both addr and addrlen are given. */
    int l1 = pz_tcp_listen_addr("127.0.0.1:0", NULL, NULL);
    CHECK(l1 >= 0);
    socklen_t len = 4;
    int l2 = pz_tcp_listen_addr("127.0.0.1:0", NULL, &len);
    CHECK(l2 >= 0);
    CHECK_EQ(len, 4);
    struct sockaddr_storage ss;
    len = 2; /* too small: truncated, and the full length is given back */
    int l3 = pz_tcp_listen_addr("127.0.0.1:0", (struct sockaddr *)&ss, &len);
    CHECK(l3 >= 0);
    CHECK_EQ(len, sizeof(struct sockaddr_in));
    CHECK(pz_sock_port(l3) > 0);
    CHECK_EQ(pz_sock_port(sv[0]), -EAFNOSUPPORT);
    /* A descriptor closed by pz_close is not open any more. */
    CHECK_EQ(pz_close(l1), 0);
    CHECK_EQ(pz_read(l1, b, 1, now), -EBADF);
    CHECK_EQ(pz_close(l1), -EBADF);
    CHECK_EQ(pz_close(l2), 0);
    CHECK_EQ(pz_close(l3), 0);
    CHECK_EQ(pz_close(sv[0]), 0);
    CHECK_EQ(pz_close(sv[1]), 0);
    return NULL;
}

static void test_io_calls(void **state)
{
    (void)state;
    run_in_runtime(2, io_calls, NULL);
    io_calls(NULL); /* outside a task: the same answers */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_bad_config),
        cmocka_unit_test(test_run_while_running),
        cmocka_unit_test(test_task_calls),
        cmocka_unit_test(test_io_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
