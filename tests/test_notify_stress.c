/* Races of pz_notify: no lost notification. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- notify: no lost wake-up ---- */

static pz_notify_t nt;
static _Atomic long nt_value;

static void *nt_waiter(void *arg)
{
    long target = (long)(intptr_t)arg;
    uint64_t e = pz_notify_epoch(&nt);
    while (atomic_load(&nt_value) < target) {
        CHECK_EQ(pz_notify_wait_since(&nt, e, PZ_FOREVER), 0);
        e = pz_notify_epoch(&nt);
    }
    return NULL;
}

/* Ping-pong through notify_one: a lost notification would hang. */
static pz_notify_t ping, pong;
static _Atomic long pp_turn;

static void *pp_peer(void *arg)
{
    int me = (int)(intptr_t)arg;
    long rounds = SCALED(20000);
    pz_notify_t *mine = me ? &pong : &ping, *theirs = me ? &ping : &pong;
    for (long i = 0; i < rounds; i++) {
        while ((atomic_load(&pp_turn) & 1) != me)
            CHECK_EQ(pz_notify_wait(mine), 0);
        atomic_fetch_add(&pp_turn, 1);
        pz_notify_one(theirs);
    }
    return NULL;
}

static void *notify_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < SCALED(300); round++) {
        atomic_store(&nt_value, 0);
        pz_task_t *t[8];
        for (int i = 0; i < 8; i++)
            t[i] = pz_spawn(nt_waiter, (void *)(intptr_t)(1 + i % 2));
        if (round & 1)
            pz_yield();
        atomic_store(&nt_value, 1);
        pz_notify_all(&nt);
        if (round & 2)
            pz_yield();
        atomic_store(&nt_value, 2);
        pz_notify_all(&nt);
        for (int i = 0; i < 8; i++)
            CHECK_EQ(pz_join(t[i], NULL), 0);
    }
    pz_task_t *a = pz_spawn(pp_peer, (void *)0), *b = pz_spawn(pp_peer, (void *)1);
    CHECK_EQ(pz_join(a, NULL), 0);
    CHECK_EQ(pz_join(b, NULL), 0);
    CHECK_EQ(atomic_load(&pp_turn), 2 * SCALED(20000));
    return NULL;
}

static void test_notify_no_lost_wakeup(void **state)
{
    (void)state;
    run_in_runtime(2, notify_main, NULL);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_no_lost_wakeup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
