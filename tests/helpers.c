#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

void *run_in_runtime(int workers, pz_fn fn, void *arg)
{
    void *result = NULL;
    pz_config_t cfg = {.workers = workers};
    int r = pz_run(&cfg, fn, arg, &result);
    CHECK_EQ(r, 0);
    return result;
}

__attribute__((noinline)) int read_errno(void)
{
    return errno;
}

__attribute__((noinline)) void write_errno(int v)
{
    errno = v;
}

int run_child(void (*fn)(void), char *buf, size_t cap)
{
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    /* A plain fork, no exec: the child is this program, between two
     * runtimes, so it starts one of its own from a clean state.  (No exec
     * so that emulated builds, which cannot exec a foreign binary, work.) */
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fds[0], buf + used, cap - 1 - used);
        if (n <= 0)
            break;
        used += (size_t)n;
        if (used == cap - 1)
            break;
    }
    buf[used] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
}

static int saved_stderr = -1;
static FILE *capture_file;
static char captured[8192];

void capture_stderr_begin(void)
{
    fflush(stderr);
    capture_file = tmpfile();
    CHECK(capture_file != NULL);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fileno(capture_file), STDERR_FILENO);
}

const char *capture_stderr_end(void)
{
    capture_stderr_end_quiet();
    fputs(captured, stderr); /* still show it in the test log */
    return captured;
}

const char *capture_stderr_end_quiet(void)
{
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
    rewind(capture_file);
    size_t n = fread(captured, 1, sizeof captured - 1, capture_file);
    captured[n] = '\0';
    fclose(capture_file);
    capture_file = NULL;
    return captured;
}

/* A failure while stderr is captured goes to the real stderr as well, or
 * it would vanish with the capture file. */
static void failure_message(const char *msg)
{
    fputs(msg, stderr);
    fflush(stderr);
    int fd = saved_stderr;
    if (fd >= 0 && write(fd, msg, strlen(msg)) < 0)
        fd = -1;
}

void check_failed(const char *what, const char *file, int line)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s:%d: check failed: %s\n", file, line, what);
    failure_message(msg);
    abort();
}

void check_failed_eq(const char *a, const char *b, long long va, long long vb, const char *file, int line)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s:%d: check failed: %s == %s (%lld != %lld)\n", file, line, a, b, va, vb);
    failure_message(msg);
    abort();
}

#ifdef PLAZA_TEST_STATIC_RUNNER
int plaza_run_tests(const struct CMUnitTest *tests, size_t n)
{
    /* A failing test aborts the program (CHECK), so reaching the end of a
     * test means it passed. */
    for (size_t i = 0; i < n; i++) {
        printf("[ RUN      ] %s\n", tests[i].name);
        fflush(stdout);
        void *state = NULL;
        tests[i].test_func(&state);
        printf("[       OK ] %s\n", tests[i].name);
        fflush(stdout);
    }
    printf("%zu passed, 0 failed\n", n);
    return 0;
}
#endif
