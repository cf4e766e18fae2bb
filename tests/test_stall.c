/* The monitor reports a worker that runs one task too long without
 * switching (default threshold 100 ms), naming the task, the plaza locks
 * it holds and the system call its thread sits in; a task that computes
 * for 30 ms is not a stall. */
#include "helpers.h"
#include "report_sink.h"
#include "arch/arch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pz_mutex_t held;

static void *sleepy_holder(void *arg)
{
    (void)arg;
    pz_mutex_lock(&held);
    usleep(300 * 1000); /* the wrong thing: a blocking call on a worker, lock held */
    pz_mutex_unlock(&held);
    return NULL;
}

static void *stall_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    pz_task_t *t = pz_spawn_with(sleepy_holder, NULL, &(pz_spawn_opts_t){.name = "sleepy"});
    char who[64];
    snprintf(who, sizeof who, "stall: task %llu (sleepy)", (unsigned long long)pz_task_id(t));
    CHECK_EQ(pz_join(t, NULL), 0);
    CHECK(sink_has(who));
    if (pz__arch_syscall_numbers_native())
        CHECK(sink_has("its thread is in system call clock_nanosleep") || sink_has("its thread is in system call nanosleep"));
    else /* under qemu-user the kernel shows the host's numbers */
        CHECK(sink_has("its thread is in a system call (number "));
    char lock[64];
    snprintf(lock, sizeof lock, "it holds pz_mutex %p, taken at " SITE("sleepy_holder", "test_stall.c"), (void *)&held);
    CHECK(sink_has(lock));
    pz_set_report(NULL, NULL);
    return NULL;
}

static void test_blocking_call_with_lock_is_a_stall(void **state)
{
    (void)state;
    run_in_runtime(2, stall_main, NULL);
}

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * SEC + ts.tv_nsec;
}

static _Atomic int64_t compute_wall;

static void *computer(void *arg)
{
    (void)arg;
    int64_t w0 = pz_now(), c0 = thread_cpu_ns();
    volatile uint64_t x = 1;
    while (thread_cpu_ns() - c0 < 30 * MS)
        x = x * 6364136223846793005ull + 1;
    atomic_store(&compute_wall, pz_now() - w0);
    return NULL;
}

static void *compute_main(void *arg)
{
    (void)arg;
    pz_set_report(collect, NULL);
    /* The monitor judges a computing task by the CPU time its thread had,
     * not by wall time: 30 ms of CPU is no stall however long a busy
     * machine keeps the thread off its CPU (the wall time is printed). */
    for (int run = 0; run < 3; run++) {
        sink_reset();
        pz_task_t *t = pz_spawn_with(computer, NULL, &(pz_spawn_opts_t){.name = "computer"});
        CHECK_EQ(pz_join(t, NULL), 0);
        fprintf(stderr, "30 ms of CPU took %.1f ms of wall time\n", (double)atomic_load(&compute_wall) / MS);
        pz_sleep(200 * MS); /* two monitor periods after the end */
        if (sink_has("stall"))
            fprintf(stderr, "%s", sink);
        CHECK(!sink_has("stall"));
    }
    pz_set_report(NULL, NULL);
    return (void *)1;
}

static void test_short_compute_is_not_a_stall(void **state)
{
    (void)state;
    CHECK(run_in_runtime(2, compute_main, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocking_call_with_lock_is_a_stall),
        cmocka_unit_test(test_short_compute_is_not_a_stall),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
