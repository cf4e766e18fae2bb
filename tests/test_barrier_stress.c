/* Races of pz_barrier: generations never mix. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- barrier generations ---- */

#define BAR_N 12
static pz_barrier_t gb;
static _Atomic int gb_phase[BAR_N];
static _Atomic int gb_leaders;

static void *gb_task(void *arg)
{
    int me = (int)(intptr_t)arg;
    int rounds = SCALED(1000);
    for (int r = 0; r < rounds; r++) {
        atomic_store(&gb_phase[me], r);
        int x = pz_barrier_wait(&gb);
        CHECK(x == 0 || x == PZ_BARRIER_LEADER);
        if (x == PZ_BARRIER_LEADER)
            atomic_fetch_add(&gb_leaders, 1);
        /* Everyone reached phase r before anyone passed. */
        for (int i = 0; i < BAR_N; i++)
            CHECK(atomic_load(&gb_phase[i]) >= r);
        if (r % 7 == me % 7)
            pz_yield();
    }
    return NULL;
}

static void *barrier_main(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_barrier_init(&gb, BAR_N), 0);
    join_n(spawn_n(BAR_N, gb_task, index_arg), BAR_N);
    CHECK_EQ(atomic_load(&gb_leaders), SCALED(1000));
    return NULL;
}

static void test_barrier_generations(void **state)
{
    (void)state;
    run_in_runtime(2, barrier_main, NULL);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_barrier_generations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
