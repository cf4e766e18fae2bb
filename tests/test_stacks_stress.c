/* Task stacks at scale, at the kernel's default vm.max_map_count (65530):
 * a million parked tasks with guarded 256 KiB stacks, each cancelled and
 * joined; the memory areas a guarded stack costs with each guard kind
 * (madvise guard regions, and the mprotect fallback forced through
 * PLAZA_STACK_GUARD); overflow reports on pooled stacks with both kinds; a
 * task that cannot get a stack makes its join fail with the cause. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arch/arch.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
/* TSan maps a few memory areas of its own for every task (its fiber). */
#if defined(__SANITIZE_THREAD__)
#define TSAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN_FIBERS 1
#endif
#endif

static long resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    long size = 0, resident = 0;
    CHECK_EQ(fscanf(f, "%ld %ld", &size, &resident), 2);
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static int memory_areas(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f != NULL);
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* ---- a million parked tasks ---- */

static _Atomic long parked_count;

static void *park_forever(void *arg)
{
    atomic_fetch_add(&parked_count, 1);
    int r = pz_sleep_until(PZ_FOREVER);
    return r == -ECANCELED ? arg : NULL;
}

struct many {
    long n;
    double rss_per_task;
    double cancel_join_s;
    int areas_parked;
};

static void *many_main(void *arg)
{
    struct many *m = arg;
    pz_task_t **tasks = malloc((size_t)m->n * sizeof *tasks);
    CHECK(tasks != NULL);
    memset(tasks, 0, (size_t)m->n * sizeof *tasks);
    atomic_store(&parked_count, 0);
    long before = resident_bytes();
    for (long i = 0; i < m->n; i++) {
        tasks[i] = pz_spawn(park_forever, (void *)(uintptr_t)(i + 1));
        CHECK(tasks[i] != NULL);
        if (i % 1024 == 0)
            pz_yield(); /* let the workers start them, so few wait unstarted */
    }
    /* Wait for a state, not a time: every task has started and is at its
     * park (give it a few yields to switch off its stack). */
    while (atomic_load(&parked_count) < m->n)
        pz_sleep(1000000);
    for (int i = 0; i < 10; i++)
        pz_sleep(1000000);
    long after = resident_bytes();
    m->rss_per_task = (double)(after - before) / (double)m->n;
    m->areas_parked = memory_areas();
    int64_t t0 = pz_now();
    for (long i = 0; i < m->n; i++)
        pz_cancel(tasks[i]);
    for (long i = 0; i < m->n; i++) {
        void *res = NULL;
        CHECK_EQ(pz_join(tasks[i], &res), 0);
        CHECK_EQ((uintptr_t)res, (uintptr_t)(i + 1));
    }
    m->cancel_join_s = (double)(pz_now() - t0) / 1e9;
    free(tasks);
    return NULL;
}

static void test_million_parked(void **state)
{
    (void)state;
#if defined(TSAN_FIBERS)
    long n = 5000;
#elif defined(SANITIZED)
    /* A sanitizer keeps per-task shadow and fiber state of its own. */
    long n = 20000;
#else
    long n = SCALED(1000000);
#endif
    /* Without guard regions (an older kernel, qemu-user) every guarded
     * stack takes two memory areas: stay well under 65530. */
    bool regions = pz__stack_guard_kind() == PZ__GUARD_MADVISE;
    if (!regions && n > 10000)
        n = 10000;
    struct many m = {.n = n};
    run_in_runtime(2, many_main, &m);
    fprintf(stderr, "%ld parked tasks: %.2f KiB resident per task, %d memory areas, cancel+join %.2f s\n", n,
            m.rss_per_task / 1024, m.areas_parked, m.cancel_join_s);
    /* Under the default vm.max_map_count of 65530 with room to spare. */
    CHECK(m.areas_parked < 40000);
    if (regions && n >= 64 * 1000)
        CHECK(m.areas_parked < n / 32); /* one area per chunk of 64 at most */
#if !defined(SANITIZED) && !defined(PLAZA_TEST_STATIC_RUNNER)
    /* Native builds only: a sanitizer or an emulator keeps memory of its
     * own per task or per mapping. */
    CHECK(m.rss_per_task <= 4.5 * 1024);
#endif
}

/* ---- memory areas per stack, each guard kind ---- */

static void *count_areas_main(void *arg)
{
    int *out = arg;
    enum { N = 2000 };
    static pz_task_t *tasks[N];
    atomic_store(&parked_count, 0);
    int before = memory_areas();
    for (int i = 0; i < N; i++)
        tasks[i] = pz_spawn(park_forever, (void *)(uintptr_t)(i + 1));
    while (atomic_load(&parked_count) < N)
        pz_sleep(1000000);
    out[0] = memory_areas() - before;
    for (int i = 0; i < N; i++)
        pz_cancel(tasks[i]);
    for (int i = 0; i < N; i++)
        CHECK_EQ(pz_join(tasks[i], NULL), 0);
    return NULL;
}

static void test_areas_per_stack(void **state)
{
    (void)state;
    int kind = pz__stack_guard_kind();
    int madv = 0, mprot = 0;
    run_in_runtime(2, count_areas_main, &madv);
    setenv("PLAZA_STACK_GUARD", "mprotect", 1);
    CHECK_EQ(pz__stack_guard_kind(), PZ__GUARD_MPROTECT);
    run_in_runtime(2, count_areas_main, &mprot);
    unsetenv("PLAZA_STACK_GUARD");
    fprintf(stderr, "2000 parked tasks: %d new memory areas (%s), %d (mprotect)\n", madv,
            kind == PZ__GUARD_MADVISE ? "madvise guards" : "mprotect: the kernel has no guard regions", mprot);
    CHECK(mprot >= 3 * 2000 / 2); /* two per stack, less a few merges */
#ifndef TSAN_FIBERS
    if (kind == PZ__GUARD_MADVISE)
        CHECK(madv < 2000 / 16);
#endif
}

/* ---- overflow of a pooled stack, each guard kind ---- */

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

static void *overflow_task(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)recurse(NULL, 0);
}

static void *quiet_task(void *arg)
{
    return arg;
}

static void *overflow_main(void *arg)
{
    (void)arg;
    /* Neighbours in the same chunk, below and above the one that overflows. */
    pz_task_t *a = pz_spawn(quiet_task, NULL);
    pz_task_t *t = pz_spawn_with(overflow_task, NULL, &(pz_spawn_opts_t){.name = "pooled-deep"});
    pz_join(a, NULL);
    pz_join(t, NULL);
    return NULL;
}

static void child_overflow(void)
{
    pz_run(NULL, overflow_main, NULL, NULL);
}

static void child_overflow_mprotect(void)
{
    setenv("PLAZA_STACK_GUARD", "mprotect", 1);
    pz_run(NULL, overflow_main, NULL, NULL);
}

static void check_overflow_report(void (*child)(void))
{
    char out[8192];
    int status = run_child(child, out, sizeof out);
    fprintf(stderr, "child said: %s", out);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGABRT);
    CHECK(strstr(out, "plaza: stack overflow in task ") != NULL);
    CHECK(strstr(out, "(pooled-deep); its stack is 262144 bytes") != NULL);
}

static void test_overflow_madvise_guard(void **state)
{
    (void)state;
    check_overflow_report(child_overflow);
}

static void test_overflow_mprotect_guard(void **state)
{
    (void)state;
    check_overflow_report(child_overflow_mprotect);
}

/* ---- a task that cannot get a stack ---- */

/* The failure is made with RLIMIT_AS, which the sanitizers cannot live
 * with (they reserve terabytes of shadow) and qemu-user (the static
 * runner's build) does not apply to its guest: those builds leave this
 * test out. */
#if !defined(SANITIZED) && !defined(PLAZA_TEST_STATIC_RUNNER)
#define TEST_NO_STACK 1
#endif
#ifdef TEST_NO_STACK

static void *returns_null(void *arg)
{
    (void)arg;
    return NULL;
}

static void *no_stack_main(void *arg)
{
    (void)arg;
    /* The address space limit lets no 512 MiB mapping through. */
    struct rlimit rl = {.rlim_cur = 0, .rlim_max = RLIM_INFINITY};
    CHECK_EQ(getrlimit(RLIMIT_AS, &rl), 0);
    struct rlimit low = {.rlim_cur = 256u << 20, .rlim_max = rl.rlim_max};
    CHECK_EQ(setrlimit(RLIMIT_AS, &low), 0);
    pz_task_t *t = pz_spawn_with(returns_null, NULL, &(pz_spawn_opts_t){.stack_size = 512u << 20, .name = "huge"});
    CHECK(t != NULL);
    void *res = (void *)1;
    int r = pz_join(t, &res);
    CHECK_EQ(setrlimit(RLIMIT_AS, &rl), 0);
    CHECK_EQ(r, -ENOMEM);
    CHECK(res == NULL);
    /* And a task that returns NULL normally joins with 0. */
    t = pz_spawn(returns_null, NULL);
    CHECK_EQ(pz_join(t, &res), 0);
    return NULL;
}

static void *never_runs(void *arg)
{
    (void)arg;
    fprintf(stderr, "main ran\n");
    return NULL;
}

static void child_no_stack(void)
{
    pz_run(NULL, no_stack_main, NULL, NULL);
    /* A runtime whose main task cannot get a stack returns the cause
     * instead of waiting for ever for main to end. */
    struct rlimit rl;
    CHECK_EQ(getrlimit(RLIMIT_AS, &rl), 0);
    struct rlimit low = {.rlim_cur = 256u << 20, .rlim_max = rl.rlim_max};
    CHECK_EQ(setrlimit(RLIMIT_AS, &low), 0);
    pz_config_t cfg = {.workers = 1, .stack_size = 512u << 20};
    int e = pz_run(&cfg, never_runs, NULL, NULL);
    CHECK_EQ(setrlimit(RLIMIT_AS, &rl), 0);
    CHECK_EQ(e, -ENOMEM);
    fprintf(stderr, "pz_run returned %d\n", e);
}

static void test_join_reports_missing_stack(void **state)
{
    (void)state;
    char out[8192];
    int status = run_child(child_no_stack, out, sizeof out);
    fprintf(stderr, "child said: %s", out);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    CHECK(strstr(out, "cannot map a 536870912-byte stack") != NULL);
    CHECK(strstr(out, "pz_run returned -12") != NULL);
    CHECK(strstr(out, "main ran") == NULL);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
#ifdef TEST_NO_STACK
        cmocka_unit_test(test_join_reports_missing_stack),
#endif
        cmocka_unit_test(test_overflow_madvise_guard),
        cmocka_unit_test(test_overflow_mprotect_guard),
        cmocka_unit_test(test_areas_per_stack),
        cmocka_unit_test(test_million_parked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
