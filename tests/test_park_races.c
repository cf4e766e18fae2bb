/* The task park under races: an unpark that arrives before the park has
 * finished switching away, and unpark vs deadline vs cancel, where exactly
 * one may win and the parked task must learn which. */
#include "helpers.h"
#include "runtime/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A published park: the waker reads the task and generation from here. */
static _Atomic(pz_task_t *) slot_task;
static _Atomic uint64_t slot_gen;
static _Atomic bool stop_waker;
static _Atomic long early_claims;

static void *eager_waker(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop_waker)) {
        pz_task_t *t = atomic_exchange(&slot_task, NULL);
        if (!t) {
            pz__arch_cpu_relax();
            continue;
        }
        int c = pz__task_claim(t, atomic_load(&slot_gen), PZ__WAKE_UNPARK);
        CHECK(c != PZ__CLAIM_LOST); /* nobody else wakes this park */
        if (c == PZ__CLAIM_WON)
            atomic_fetch_add(&early_claims, 1); /* it was still switching away */
        else
            pz__task_ready(t, false);
        n++;
    }
    return (void *)n;
}

static void *parker(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long i = 0; i < rounds; i++) {
        uint64_t gen = pz__park_prepare(false);
        atomic_store(&slot_gen, gen);
        atomic_store(&slot_task, pz_self());
        CHECK_EQ(pz__park_commit(NULL, NULL, PZ_FOREVER), 0);
    }
    return NULL;
}

static void *unpark_before_park_main(void *arg)
{
    (void)arg;
    long rounds = SCALED(20000);
    atomic_store(&stop_waker, false);
    atomic_store(&early_claims, 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, eager_waker, NULL), 0);
    pz_task_t *t = pz_spawn(parker, (void *)(intptr_t)rounds);
    CHECK_EQ(pz_join(t, NULL), 0);
    atomic_store(&stop_waker, true);
    void *woke;
    pthread_join(th, &woke);
    CHECK_EQ((long)(intptr_t)woke, rounds);
    fprintf(stderr, "%ld of %ld unparks arrived before the park completed\n", atomic_load(&early_claims), rounds);
    return NULL;
}

static void test_unpark_before_park_completes(void **state)
{
    (void)state;
    run_in_runtime(2, unpark_before_park_main, NULL);
}

/* Tasks on all workers park and wake each other in a ring; the park
 * callback releases the baton only after the task is off its stack. */
struct ring {
    _Atomic(pz_task_t *) waiting;
    _Atomic uint64_t gen;
    _Atomic uint64_t checked; /* the generation the callback has finished */
};

static bool publish_after_switch(void *arg)
{
    struct ring *r = arg;
    pz_task_t *self = atomic_load(&r->waiting);
    /* We run on the next context: the parked task is not running. */
    CHECK(pz_self() != self);
    /* The task is off its stack: its park word left PARKING for this park.
     * (It may even be running again already: the deadline can fire on
     * another worker, claim it once it is PARKED and make it runnable
     * while this callback still runs; then the word shows RUNNING or a
     * later park.) */
    uint64_t s = atomic_load(&self->park_state);
    uint64_t gen = atomic_load(&r->gen);
    CHECK(!(PZ__PS_GEN(s) == gen && PZ__PS_STATE(s) == PZ__PS_PARKING));
    /* Last touch of r and the task: the task waits for this before it
     * parks again or returns (both may free what we read). */
    atomic_store(&r->checked, gen);
    return true;
}

static bool decline(void *arg)
{
    (void)arg;
    return false;
}

static void *callback_main(void *arg)
{
    (void)arg;
    struct ring r;
    atomic_store(&r.waiting, pz_self());
    atomic_store(&r.checked, 0);
    for (int i = 0; i < 1000; i++) {
        uint64_t gen = pz__park_prepare(false);
        atomic_store(&r.gen, gen);
        /* A deadline wakes it; the callback checks it ran off-stack.  The
         * deadline may resume us on another worker while the callback
         * still runs: wait for it to be done with r and with us. */
        CHECK_EQ(pz__park_commit(publish_after_switch, &r, pz_now() + 1000), -ETIMEDOUT);
        while (atomic_load(&r.checked) != gen)
            pz__arch_cpu_relax();
        pz__park_prepare(false);
        CHECK_EQ(pz__park_commit(decline, NULL, PZ_FOREVER), -EAGAIN);
    }
    return NULL;
}

static void test_park_callback_after_switch(void **state)
{
    (void)state;
    run_in_runtime(2, callback_main, NULL);
}

/* Three-way race.  One unparker thread serves every round, so its claim
 * lands at a random moment rather than after a thread start-up. */
struct race {
    _Atomic(pz_task_t *) task;
    _Atomic uint64_t gen;
    int64_t deadline;
    int64_t unpark_delay;
    int64_t published_at;
    int result;
    _Atomic int unpark_won;
    _Atomic bool unparker_done;
    _Atomic bool cancel_sent;
};

static _Atomic(struct race *) current_race;
static _Atomic bool races_over;

static void *race_parker(void *arg)
{
    struct race *r = arg;
    uint64_t gen = pz__park_prepare(false);
    r->published_at = pz_now();
    atomic_store(&r->gen, gen);
    atomic_store(&r->task, pz_self());
    r->result = pz__park_commit(NULL, NULL, r->deadline);
    return NULL;
}

static void spin_ns(int64_t ns)
{
    int64_t end = pz_now() + ns;
    while (pz_now() < end)
        pz__arch_cpu_relax();
}

static void *race_unparker(void *arg)
{
    (void)arg;
    while (!atomic_load(&races_over)) {
        struct race *r = atomic_load(&current_race);
        pz_task_t *t;
        if (!r || !(t = atomic_load(&r->task))) {
            pz__arch_cpu_relax();
            continue;
        }
        spin_ns(r->unpark_delay);
        /* The parked task cannot be joined (and freed) before
         * unparker_done is set, so t is valid here. */
        int c = pz__task_claim(t, atomic_load(&r->gen), PZ__WAKE_UNPARK);
        atomic_store(&r->unpark_won, c != PZ__CLAIM_LOST);
        if (c == PZ__CLAIM_WON_READY)
            pz__task_ready(t, false);
        atomic_store(&current_race, NULL);
        atomic_store(&r->unparker_done, true);
    }
    return NULL;
}

static void *race_main(void *arg)
{
    (void)arg;
    int rounds = SCALED(3000);
    int wins[3] = {0, 0, 0};
    uint64_t seed = 99;
    atomic_store(&races_over, false);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, race_unparker, NULL), 0);
    /* Calibrate: how long from spawn to the park being published.  The
     * race windows are a few times that, so every party can win on a fast
     * build and under a sanitizer's slowdown alike. */
    int64_t lat[21];
    for (int i = 0; i < 21; i++) {
        struct race r;
        memset(&r, 0, sizeof r);
        r.deadline = PZ_FOREVER;
        atomic_store(&current_race, &r);
        int64_t start = pz_now();
        pz_task_t *t = pz_spawn(race_parker, &r);
        while (!atomic_load(&r.unparker_done))
            pz_yield();
        CHECK_EQ(pz_join(t, NULL), 0);
        CHECK_EQ(r.result, 0);
        lat[i] = r.published_at - start;
    }
    for (int i = 1; i < 21; i++)
        for (int j = i; j > 0 && lat[j] < lat[j - 1]; j--) {
            int64_t x = lat[j];
            lat[j] = lat[j - 1];
            lat[j - 1] = x;
        }
    uint64_t window = (uint64_t)(lat[10] * 4 > 40000 ? lat[10] * 4 : 40000);
    /* A side may win no round when the machine is loaded (the unparker is
     * a plain thread the kernel may not run for a while, an emulator is
     * slow): then another batch runs with a window four times wider. */
    for (int attempt = 0; attempt < 4 && !(wins[0] > 0 && wins[1] > 0 && wins[2] > 0);
         attempt++, window *= 4) {
        fprintf(stderr, "race window %llu ns\n", (unsigned long long)window);
        for (int i = 0; i < rounds; i++) {
            struct race r;
            memset(&r, 0, sizeof r);
            r.deadline = pz_now() + (int64_t)(test_rand(&seed) % window);
            r.unpark_delay = (int64_t)(test_rand(&seed) % window);
            atomic_store(&current_race, &r);
            pz_task_t *t = pz_spawn(race_parker, &r);
            if (test_rand(&seed) % 2) {
                spin_ns((int64_t)(test_rand(&seed) % window));
                atomic_store(&r.cancel_sent, true);
                pz_cancel(t);
            }
            while (!atomic_load(&r.unparker_done))
                pz_yield();
            CHECK_EQ(pz_join(t, NULL), 0);
            /* Exactly one winner, and the parked task knows which. */
            switch (r.result) {
            case 0:
                CHECK(atomic_load(&r.unpark_won));
                wins[0]++;
                break;
            case -ETIMEDOUT:
                CHECK(!atomic_load(&r.unpark_won));
                wins[1]++;
                break;
            case -ECANCELED:
                CHECK(!atomic_load(&r.unpark_won));
                CHECK(atomic_load(&r.cancel_sent));
                wins[2]++;
                break;
            default:
                CHECK(!"unexpected park result");
            }
        }
        fprintf(stderr, "winners: unpark %d, deadline %d, cancel %d\n", wins[0], wins[1], wins[2]);
    }
    atomic_store(&races_over, true);
    pthread_join(th, NULL);
    /* Each side won some rounds, so every pairing was exercised. */
    CHECK(wins[0] > 0 && wins[1] > 0 && wins[2] > 0);
    return NULL;
}

static void test_unpark_deadline_cancel_race(void **state)
{
    (void)state;
    run_in_runtime(2, race_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unpark_before_park_completes),
        cmocka_unit_test(test_park_callback_after_switch),
        cmocka_unit_test(test_unpark_deadline_cancel_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
