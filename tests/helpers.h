/* Shared helpers of the test programs. */
#ifndef PZ_TEST_HELPERS_H
#define PZ_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef PLAZA_TEST_STATIC_RUNNER
/* The aarch64 build runs under qemu-user, whose 7.2 release hangs in a
 * dynamically linked glibc's first pthread_create on this host; so that
 * build links statically, and Debian ships cmocka only as a shared library.
 * The test programs use cmocka solely as a runner (all checks are CHECK
 * below), so that build gets this minimal runner with the same interface. */
struct CMUnitTest {
    const char *name;
    void (*test_func)(void **state);
};
#define cmocka_unit_test(f) {#f, f}
int plaza_run_tests(const struct CMUnitTest *tests, size_t n);
#define cmocka_run_group_tests(tests, setup, teardown) \
    plaza_run_tests(tests, sizeof(tests) / sizeof((tests)[0]))
#else
#include <cmocka.h>
#endif

#include "plaza.h"

/* Sizes of stress loops are divided by this (emulated builds are slow). */
#ifndef PLAZA_TEST_SCALE
#define PLAZA_TEST_SCALE 1
#endif
#define SCALED(n) ((n) / PLAZA_TEST_SCALE > 0 ? (n) / PLAZA_TEST_SCALE : 1)

/* Puts back the fault handlers the program had before cmocka's (helpers.c
 * says why); run_in_runtime does it, tests that call pz_run themselves call
 * it first. */
void test_restore_fault_handlers(void);

/* Runs fn(arg) as the main task of a runtime with `workers` workers and
 * asserts that pz_run succeeded; returns main's result. */
void *run_in_runtime(int workers, pz_fn fn, void *arg);

/* Runs fn in a forked child, captures its stderr in buf and returns its
 * wait status. */
int run_child(void (*fn)(void), char *buf, size_t cap);

/* Redirects stderr into a buffer between begin and end (for misuse reports). */
void capture_stderr_begin(void);
const char *capture_stderr_end(void);
/* The same, without copying what was captured to the log (for many reports
 * of the same kind); returns its first 8 KiB. */
const char *capture_stderr_end_quiet(void);

/* A small fast random generator, one state per caller. */
static inline uint64_t test_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Reads errno through a call the compiler cannot fold into the caller, so a
 * task moved to another thread reads its current thread's errno. */
int read_errno(void);
void write_errno(int v);

/* Checks usable from any thread or task (cmocka's asserts jump back to the
 * test's own stack, which a task on a worker thread must not do): a failed
 * check prints where and what, then aborts the test program. */
void check_failed(const char *what, const char *file, int line);
void check_failed_eq(const char *a, const char *b, long long va, long long vb, const char *file, int line);
#define CHECK(c)                                   \
    do {                                           \
        if (!(c))                                  \
            check_failed(#c, __FILE__, __LINE__);  \
    } while (0)
#define CHECK_EQ(a, b)                                                      \
    do {                                                                    \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);     \
        if (check_a_ != check_b_)                                           \
            check_failed_eq(#a, #b, check_a_, check_b_, __FILE__, __LINE__); \
    } while (0)

#define US 1000LL
#define MS 1000000LL
#define SEC 1000000000LL

/* Spawns n tasks running fn(argf(i)) (or fn(NULL)); join_n joins them,
 * checks that each returned 0 from pz_join, and frees the array. */
pz_task_t **spawn_n(int n, pz_fn fn, void *(*argf)(int));
void join_n(pz_task_t **t, int n);
/* i as the argument pointer. */
void *index_arg(int i);

/* A task body that recurses until it overflows any stack (512 bytes a
 * frame): the stack overflow tests run it. */
void *overflow_task(void *arg);

/* Waits, from a task (yielding) or a plain thread (sched_yield), until
 * done(arg) is true; fails the test after `limit_ns` (a deadlock guard,
 * far beyond what any load makes the wait, not a timing assumption). */
void wait_until_true(bool (*done)(void *), void *arg, int64_t limit_ns);

/* Waits until task t is parked: off its stack in a wait (a lock's queue,
 * a channel's, a sleep), so that a test can act on a waiter it knows is
 * queued instead of sleeping and hoping it got there.  A task that parks
 * more than once (spins, parks, is woken, parks again) counts at each. */
void wait_parked(pz_task_t *t);
/* The number of waiters (tasks or threads) queued in the parking lot on
 * addr now; wait_lot_waiters waits until there are at least n. */
int lot_waiters(const void *addr);
void wait_lot_waiters(const void *addr, int n);

/* ---- the cooperative budget when nobody parks ----
 * 64 tasks on 2 workers take a short section of a lock with some work
 * between, in three rounds; see tests/test_async_mutex_stress.c and
 * tests/test_async_rwlock_stress.c for what each lock's checks prove. */
/* Operations per task and round: 8000, fewer in slow builds (a TSan
 * build, scale 4, took 113 s a round with 8000 and 34 s with 2000, on a
 * busy machine; the checks compare parts of one round, which stay
 * comparable). */
#define NB_ITERS (8000 / (PLAZA_TEST_SCALE * PLAZA_TEST_SCALE) > 800 ? 8000 / (PLAZA_TEST_SCALE * PLAZA_TEST_SCALE) : 800)
#define NB_TASKS 64

struct budget_case {
    const char *what;
    void (*op)(uint64_t x); /* takes the lock and lets go */
    void (*reset)(void);    /* before each round */
    void (*check)(void);    /* after each round */
    bool check_spans;       /* else the longest operation */
};
/* The main task of the runtime: runs the rounds of the budget_case arg. */
void *budget_main(void *arg);

/* An async rwlock nobody holds or waits for: the word has at most its
 * hint bits, no read slot holds it, and no writer is counted as parked. */
#define CHECK_RWLOCK_IDLE(l)                                                            \
    do {                                                                                \
        CHECK_EQ(atomic_load(&(l)->state) & ~(uintptr_t)PZ__ARW_HINTS, 0);              \
        CHECK_EQ(pz_async_rwlock_readers(l), 0);                                        \
        CHECK_EQ(atomic_load(&(l)->parked_writers), 0);                                 \
    } while (0)

/* A call site as plaza's reports print it: "fn (file.c:" where the library
 * was built with libdw; otherwise an address ("0x..."). */
#ifdef PLAZA_TEST_HAVE_DW
#define SITE(fn, file) fn " (" file ":"
#else
#define SITE(fn, file) "0x"
#endif

#endif
