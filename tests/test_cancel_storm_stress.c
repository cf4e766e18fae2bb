/* A storm of cancels on one address of the parking lot: 100 000 tasks
 * park on it, all are cancelled and joined.  Each cancelled waiter leaves
 * the queue by itself; with a queue that must be walked to find it, the
 * storm is quadratic (minutes), with the doubly linked queue it takes well
 * under a second per 100 000.  The bound checked is generous: this is a
 * smoke check that the storm ends, the figure is printed. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "arch/arch.h"

/* TSan counts every task as a thread (its fiber), at most 8128 at once. */
#if defined(__SANITIZE_THREAD__)
#define TSAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TSAN_FIBERS 1
#endif
#endif

static char the_lock;
static _Atomic long parked;

static bool count_in(void *ctx)
{
    (void)ctx;
    atomic_fetch_add(&parked, 1);
    return true;
}

static void *waiter(void *arg)
{
    int r = pz_park(&the_lock, PZ_FOREVER, &(pz_park_opts_t){.validate = count_in}, NULL);
    return r == -ECANCELED ? arg : NULL;
}

struct storm {
    long n;
    double seconds;
};

static void *storm_main(void *arg)
{
    struct storm *s = arg;
    pz_task_t **t = malloc((size_t)s->n * sizeof *t);
    CHECK(t != NULL);
    atomic_store(&parked, 0);
    for (long i = 0; i < s->n; i++) {
        t[i] = pz_spawn(waiter, (void *)(uintptr_t)(i + 1));
        CHECK(t[i] != NULL);
    }
    while (atomic_load(&parked) < s->n)
        pz_sleep(1000000);
    int64_t t0 = pz_now();
    /* Cancel from the middle out, so that leaving waiters are neither
     * all at the head nor all at the tail. */
    for (long i = 0; i < s->n; i++)
        pz_cancel(t[(i * 7919) % s->n]);
    for (long i = 0; i < s->n; i++) {
        void *r = NULL;
        CHECK_EQ(pz_join(t[i], &r), 0);
        CHECK_EQ((uintptr_t)r, (uintptr_t)(i + 1));
    }
    s->seconds = (double)(pz_now() - t0) / 1e9;
    /* Nobody is left on the address. */
    CHECK_EQ(pz_unpark_all(&the_lock, 0), 0);
    free(t);
    return NULL;
}

static void test_cancel_storm(void **state)
{
    (void)state;
#ifdef TSAN_FIBERS
    struct storm s = {.n = 4000};
#else
    struct storm s = {.n = SCALED(100000)};
#endif
    /* Without guard regions (kernels before 6.13) each started task's
     * stack takes two memory areas: stay under vm.max_map_count 65530. */
    if (pz__stack_guard_kind() != PZ__GUARD_MADVISE && s.n > 20000)
        s.n = 20000;
    run_in_runtime(2, storm_main, &s);
    fprintf(stderr, "%ld waiters on one address cancelled and joined in %.2f s\n", s.n, s.seconds);
    CHECK(s.seconds < 60);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cancel_storm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
