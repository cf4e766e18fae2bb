#include "helpers.h"

#include "runtime/internal.h"
#include "runtime/kit.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* cmocka catches SIGSEGV, SIGBUS, SIGFPE and SIGILL around every test,
 * keeps the message for the test's summary and longjmps back to its runner
 * from whichever thread faulted.  A fault on a worker thread then ends the
 * program with a bare non-zero status and no message at all.  The tests use
 * cmocka only as a runner, so the handlers the program had before it (a
 * sanitizer's, which prints the stack, or the default action) are put back
 * before every runtime a test starts, and CMOCKA_TEST_ABORT makes cmocka
 * print and abort where its handler still runs. */
static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
static struct sigaction startup_handlers[sizeof fault_signals / sizeof fault_signals[0]];

__attribute__((constructor)) static void save_fault_handlers(void)
{
    for (size_t i = 0; i < sizeof fault_signals / sizeof fault_signals[0]; i++)
        sigaction(fault_signals[i], NULL, &startup_handlers[i]);
    setenv("CMOCKA_TEST_ABORT", "1", 0);
}

void test_restore_fault_handlers(void)
{
    for (size_t i = 0; i < sizeof fault_signals / sizeof fault_signals[0]; i++)
        sigaction(fault_signals[i], &startup_handlers[i], NULL);
}

void *run_in_runtime(int workers, pz_fn fn, void *arg)
{
    test_restore_fault_handlers();
    void *result = NULL;
    pz_config_t cfg = {.workers = workers};
    int r = pz_run(&cfg, fn, arg, &result);
    CHECK_EQ(r, 0);
    return result;
}

pz_task_t **spawn_n(int n, pz_fn fn, void *(*argf)(int))
{
    pz_task_t **t = malloc((size_t)n * sizeof *t);
    CHECK(t != NULL);
    for (int i = 0; i < n; i++) {
        t[i] = pz_spawn(fn, argf ? argf(i) : NULL);
        CHECK(t[i] != NULL);
    }
    return t;
}

void join_n(pz_task_t **t, int n)
{
    for (int i = 0; i < n; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    free(t);
}

void *index_arg(int i)
{
    return (void *)(intptr_t)i;
}

/* The limit only keeps the compiler from calling the recursion infinite. */
static volatile int recursion_limit = 1 << 30;

static __attribute__((noinline)) int recurse(volatile char *prev, int depth)
{
    volatile char buf[512];
    buf[0] = (char)depth;
    buf[511] = prev ? prev[0] : 0;
    if (depth >= recursion_limit)
        return buf[0];
    return recurse(buf, depth + 1) + buf[100];
}

void *overflow_task(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)recurse(NULL, 0);
}

void wait_until_true(bool (*done)(void *), void *arg, int64_t limit_ns)
{
    int64_t give_up = pz_now() + limit_ns;
    while (!done(arg)) {
        CHECK(pz_now() < give_up);
        if (pz_self())
            pz_yield();
        else
            sched_yield();
    }
}

/* A deadlock guard for the waits below: a minute is far beyond what any
 * load makes them take. */
#define WAIT_LIMIT (60000 * MS)

static bool task_parked(void *arg)
{
    /* A handle names its task through a generation tag (handle.c). */
    pz_task_t *t = pz__task_peek(arg);
    CHECK(t != NULL);
    uint64_t s = atomic_load_explicit(&t->park_state, memory_order_acquire);
    /* PARKED is stored after the task has switched off its stack, before
     * the park's callback releases the queue's lock: the waiter is queued
     * by then (every plaza wait queues itself before it suspends). */
    return PZ__PS_STATE(s) == PZ__PS_PARKED;
}

void wait_parked(pz_task_t *t)
{
    wait_until_true(task_parked, t, WAIT_LIMIT);
}

static pz_filter_op_t count_waiter(uintptr_t park_token, void *ctx)
{
    (void)park_token;
    ++*(int *)ctx;
    return PZ_FILTER_SKIP;
}

int lot_waiters(const void *addr)
{
    int n = 0;
    pz_unpark_filter(addr, count_waiter, NULL, &n);
    return n;
}

struct lot_wait {
    const void *addr;
    int n;
};

static bool lot_has(void *arg)
{
    struct lot_wait *w = arg;
    return lot_waiters(w->addr) >= w->n;
}

void wait_lot_waiters(const void *addr, int n)
{
    struct lot_wait w = {addr, n};
    wait_until_true(lot_has, &w, WAIT_LIMIT);
}

/* The budget harness.  64 tasks on 2 workers take a short section with
 * some work between, so that a task that finds the lock held wins it by
 * spinning and nobody parks.  Each time a task enters the lock's slow
 * path it counts against its budget and may yield; the tasks that keep
 * winning by the fast path must count too (at their unlock), or the one
 * that yielded waits until each of them has finished.  Each task times one operation in 16 (the longest
 * goes to bc_max_wait) and its run from first operation to last
 * (bc_span). */
static const struct budget_case *bc;
static _Atomic int64_t bc_max_wait;
static int64_t bc_span[NB_TASKS];

static void *budget_task(void *arg)
{
    uint64_t x = (uint64_t)(intptr_t)arg + 1;
    int64_t worst = 0, start = pz_now();
    for (int i = 0; i < NB_ITERS; i++) {
        int64_t t0 = (i & 15) == 0 ? pz_now() : 0;
        bc->op(x);
        if (t0 && pz_now() - t0 > worst)
            worst = pz_now() - t0;
        for (int k = 0; k < 100; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    bc_span[(intptr_t)arg] = pz_now() - start;
    int64_t cur = atomic_load(&bc_max_wait);
    while (worst > cur && !atomic_compare_exchange_weak(&bc_max_wait, &cur, worst))
        ;
    return (void *)(uintptr_t)x;
}

void *budget_main(void *arg)
{
    bc = arg;
    /* Neither check holds in every round on a shared machine.  A worker
     * thread preempted while its task holds the lock stretches that one
     * operation by the whole preemption (105 ms of a 490 ms round with one
     * core busy elsewhere); and a preempted worker stretches the round
     * while the tasks on the other worker run theirs to the end, so their
     * spans are short against it (median 44% of a 56 ms TSan round, one
     * core busy).  A lock without the budget step fails every round (the
     * tasks run one after another: median span 3%, longest operations a
     * quarter of the round), so rounds go on until two were good, up to
     * eight, and two must have been. */
    int good_rounds = 0;
    for (int round = 0; good_rounds < 2 && round < 8; round++) {
        bc->reset();
        atomic_store(&bc_max_wait, 0);
        int64_t t0 = pz_now();
        join_n(spawn_n(NB_TASKS, budget_task, index_arg), NB_TASKS);
        int64_t run = pz_now() - t0;
        int64_t sorted[NB_TASKS];
        memcpy(sorted, bc_span, sizeof sorted);
        for (int i = 1; i < NB_TASKS; i++)
            for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
                int64_t t = sorted[j];
                sorted[j] = sorted[j - 1];
                sorted[j - 1] = t;
            }
        fprintf(stderr, "%s: longest operation %.1f us of a %.1f ms round; task runs from %.0f%%, median %.0f%%\n", bc->what,
                (double)atomic_load(&bc_max_wait) / 1e3, (double)run / 1e6, 100.0 * (double)sorted[0] / (double)run,
                100.0 * (double)sorted[NB_TASKS / 2] / (double)run);
        bool good = bc->check_spans ? sorted[NB_TASKS / 2] > run / 2 : atomic_load(&bc_max_wait) < run / 8;
        if (good)
            good_rounds++;
        bc->check();
    }
    CHECK(good_rounds >= 2);
    return NULL;
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
