/* Races of pz_semaphore: permits conserved through storms of timeouts and
 * cancels, and the fast paths against waiters. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- semaphore: permits conserved through timeouts and cancels ---- */

#define SEM_PERMITS 5
static pz_semaphore_t st_sem;
static _Atomic long st_held;

static void *sem_storm_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 2654435761u + 1;
    for (int i = 0; i < SCALED(300); i++) {
        uint64_t n = 1 + test_rand(&rng) % 3;
        int64_t dl = (test_rand(&rng) & 1) ? PZ_FOREVER : pz_now() + (int64_t)(test_rand(&rng) % 50) * US;
        int r = pz_semaphore_acquire_until(&st_sem, n, dl);
        if (r == -ECANCELED)
            return NULL;
        if (r != 0) {
            CHECK_EQ(r, -ETIMEDOUT);
            continue;
        }
        long h = atomic_fetch_add(&st_held, (long)n) + (long)n;
        CHECK(h <= SEM_PERMITS);
        if (test_rand(&rng) % 4 == 0)
            pz_yield();
        atomic_fetch_sub(&st_held, (long)n);
        CHECK_EQ(pz_semaphore_release(&st_sem, n), 0);
    }
    return NULL;
}

static void *sem_storm_main(void *arg)
{
    (void)arg;
    pz_semaphore_init(&st_sem, SEM_PERMITS);
    int n = 64;
    pz_task_t **t = spawn_n(n, sem_storm_task, index_arg);
    uint64_t rng = 99;
    for (int i = 0; i < 40; i++) {
        pz_sleep((int64_t)(test_rand(&rng) % 300) * US);
        pz_cancel(t[test_rand(&rng) % (uint64_t)n]);
    }
    join_n(t, n);
    CHECK_EQ(pz_semaphore_available(&st_sem), SEM_PERMITS);
    CHECK_EQ(atomic_load(&st_sem.state) & PZ__SEM_WAITERS, 0);
    return NULL;
}

static void test_semaphore_conservation(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++)
        run_in_runtime(2, sem_storm_main, NULL);
}

/* ---- semaphore: fast paths against waiters, few permits ----
 * Tasks and plain threads take 1-3 of 3 permits by try, by a wait that
 * must succeed (2 s is forever here: a lost wake-up shows as a timeout)
 * and by short waits that may time out, so that fast-path acquires and
 * releases meet parked waiters, the hand-out and timeouts in every order.
 * At the end every permit is back and the word holds nothing else. */
#define SF_PERMITS 3
static pz_semaphore_t sf_sem;
static _Atomic long sf_held, sf_taken;

static void *sf_worker(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 7919u + 3;
    for (int i = 0; i < SCALED(3000); i++) {
        uint64_t n = 1 + test_rand(&rng) % SF_PERMITS;
        int kind = (int)(test_rand(&rng) % 3), r;
        if (kind == 0) {
            for (long k = 1; (r = pz_semaphore_try_acquire(&sf_sem, n)) == -EAGAIN; k++) {
                if (pz_self())
                    pz_yield();
                else if (k % 16 == 0)
                    sched_yield();
            }
            CHECK_EQ(r, 0);
        } else if (kind == 1) {
            CHECK_EQ(pz_semaphore_acquire_until(&sf_sem, n, pz_now() + 2000 * MS), 0);
        } else {
            r = pz_semaphore_acquire_until(&sf_sem, n, pz_now() + (int64_t)(test_rand(&rng) % 30) * US);
            if (r == -ETIMEDOUT)
                continue;
            CHECK_EQ(r, 0);
        }
        CHECK(atomic_fetch_add(&sf_held, (long)n) + (long)n <= SF_PERMITS);
        atomic_fetch_add(&sf_taken, 1);
        atomic_fetch_sub(&sf_held, (long)n);
        CHECK_EQ(pz_semaphore_release(&sf_sem, n), 0);
    }
    return NULL;
}

static void *sem_fast_main(void *arg)
{
    (void)arg;
    pz_semaphore_init(&sf_sem, SF_PERMITS);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, sf_worker, (void *)(intptr_t)(100 + i)), 0);
    pz_task_t **t = spawn_n(16, sf_worker, index_arg);
    join_n(t, 16);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    CHECK(atomic_load(&sf_taken) > 0);
    CHECK_EQ(pz_semaphore_available(&sf_sem), SF_PERMITS);
    CHECK_EQ(atomic_load(&sf_sem.state), (uint64_t)SF_PERMITS << PZ__SEM_SHIFT);
    return NULL;
}

static void test_semaphore_fast_paths(void **state)
{
    (void)state;
    run_in_runtime(2, sem_fast_main, NULL);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_semaphore_conservation),
        cmocka_unit_test(test_semaphore_fast_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
