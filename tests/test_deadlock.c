/* The monitor reports plaza locks waited for in a cycle (two and three
 * async mutexes; a sync/async mix with a plain thread) within a second,
 * naming every participant, once per cycle; never a chain that moves; and
 * a runtime whose tasks all sleep with nothing to wake them.  Reports go
 * to a sink (pz_set_report) the tests read. */
#include "helpers.h"
#include "report_sink.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define TEST_SANITIZED 1
#endif
#endif
/* The report comes within about 0.3 s; the bound is far above it for a
 * loaded machine (and 5x slower sanitizer builds). */
#ifdef TEST_SANITIZED
#define REPORT_BOUND (5 * SEC)
#else
#define REPORT_BOUND (1 * SEC)
#endif

/* ---- async cycles ---- */

#define MAXN 3
static pz_async_mutex_t locks[MAXN];
static _Atomic int holding;
static _Atomic int cycle_cancelled;
static int cycle_n;

static void *cycle_member(void *arg)
{
    int i = (int)(intptr_t)arg;
    CHECK_EQ(pz_async_mutex_lock(&locks[i]), 0);
    atomic_fetch_add(&holding, 1);
    while (atomic_load(&holding) < cycle_n)
        pz_sleep(MS);
    /* Every member holds its own lock: now each wants the next one.  The
     * cycle ends by cancels, one member after another: a member cancelled
     * first lets go of its lock, and the member waiting for that lock may
     * take it before its own cancel lands (under qemu-user it did). */
    int r = pz_async_mutex_lock(&locks[(i + 1) % cycle_n]);
    CHECK(r == -ECANCELED || r == 0);
    if (r == 0)
        pz_async_mutex_unlock(&locks[(i + 1) % cycle_n]);
    else
        atomic_fetch_add(&cycle_cancelled, 1);
    pz_async_mutex_unlock(&locks[i]);
    return NULL;
}

static void *async_cycle_main(void *arg)
{
    cycle_n = (int)(intptr_t)arg;
    atomic_store(&holding, 0);
    atomic_store(&cycle_cancelled, 0);
    sink_reset();
    pz_set_report(collect, NULL);
    pz_task_t *t[MAXN];
    char names[MAXN][24];
    for (int i = 0; i < cycle_n; i++) {
        snprintf(names[i], sizeof names[i], "member-%d", i);
        t[i] = pz_spawn_with(cycle_member, (void *)(intptr_t)i, &(pz_spawn_opts_t){.name = names[i]});
    }
    while (atomic_load(&holding) < cycle_n)
        pz_sleep(MS);
    int64_t start = pz_now();
    while (!sink_has("end of deadlock report") && pz_now() - start < 30 * SEC)
        pz_sleep(MS);
    int64_t took = pz_now() - start;
    fprintf(stderr, "deadlock of %d reported after %.0f ms\n", cycle_n, (double)took / 1e6);
    CHECK(sink_has("deadlock:"));
    CHECK(took < REPORT_BOUND);
    /* Every member and every lock is named. */
    for (int i = 0; i < cycle_n; i++) {
        char who[64], lock[64];
        snprintf(who, sizeof who, "task %llu (member-%d) waits for", (unsigned long long)pz_task_id(t[i]), i);
        snprintf(lock, sizeof lock, "pz_async_mutex %p", (void *)&locks[(i + 1) % cycle_n]);
        CHECK(sink_has(who));
        CHECK(sink_has(lock));
    }
    /* Once per cycle, however long it lasts. */
    pz_sleep(500 * MS);
    CHECK_EQ(sink_count("deadlock:"), 1);
    for (int i = 0; i < cycle_n; i++)
        pz_cancel(t[i]);
    for (int i = 0; i < cycle_n; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    /* The cycle was broken by a cancel, not by a lock given up. */
    CHECK(atomic_load(&cycle_cancelled) >= 1);
    pz_set_report(NULL, NULL);
    return NULL;
}

static void test_two_async_mutexes(void **state)
{
    (void)state;
    run_in_runtime(2, async_cycle_main, (void *)(intptr_t)2);
}

static void test_three_async_mutexes(void **state)
{
    (void)state;
    run_in_runtime(2, async_cycle_main, (void *)(intptr_t)3);
}

/* ---- a sync/async mix: a plain thread and a task ---- */

static pz_mutex_t smutex;
static pz_async_mutex_t amutex;
static _Atomic int mix_stage;

static void *mix_thread(void *arg)
{
    (void)arg;
    pz_mutex_lock(&smutex);
    atomic_fetch_add(&mix_stage, 1);
    while (atomic_load(&mix_stage) < 2)
        usleep(1000);
    /* Blocks this thread until the deadline: the task holds it and wants
     * the pz_mutex this thread holds. */
    int64_t deadline = pz_now() + REPORT_BOUND + 2 * SEC;
    CHECK_EQ(pz_async_mutex_lock_until(&amutex, deadline), -ETIMEDOUT);
    pz_mutex_unlock(&smutex);
    return NULL;
}

static void *mix_task(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&amutex), 0);
    atomic_fetch_add(&mix_stage, 1);
    while (atomic_load(&mix_stage) < 2)
        pz_sleep(MS);
    pz_mutex_lock(&smutex); /* blocks its worker until the thread gives up */
    pz_mutex_unlock(&smutex);
    pz_async_mutex_unlock(&amutex);
    return NULL;
}

static void *mix_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, mix_thread, NULL), 0);
    pz_task_t *t = pz_spawn_with(mix_task, NULL, &(pz_spawn_opts_t){.name = "mixer"});
    while (atomic_load(&mix_stage) < 2)
        pz_sleep(MS);
    int64_t start = pz_now();
    while (!sink_has("end of deadlock report") && pz_now() - start < 30 * SEC)
        pz_sleep(MS);
    int64_t took = pz_now() - start;
    fprintf(stderr, "sync/async deadlock reported after %.0f ms\n", (double)took / 1e6);
    CHECK(sink_has("deadlock:"));
    CHECK(took < REPORT_BOUND);
    char who[64];
    snprintf(who, sizeof who, "task %llu (mixer) waits for pz_mutex", (unsigned long long)pz_task_id(t));
    CHECK(sink_has(who));
    CHECK(sink_has("waits for pz_async_mutex"));
    CHECK(sink_has("held by thread #"));
    CHECK(sink_has("held by task"));
    /* The pz_mutex held by the thread is named with its call site. */
    CHECK(sink_has("it holds pz_mutex"));
    CHECK(sink_has(SITE("mix_thread", "test_deadlock.c")));
    CHECK_EQ(pz_join(t, NULL), 0);
    pthread_join(th, NULL);
    CHECK_EQ(sink_count("deadlock:"), 1);
    pz_set_report(NULL, NULL);
    return NULL;
}

static void test_sync_async_mix(void **state)
{
    (void)state;
    run_in_runtime(2, mix_main, NULL);
}

/* ---- a chain that moves is not a deadlock ---- */

static pz_async_mutex_t chain[4];
static _Atomic bool chain_stop;

static void *chain_worker(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 7919 + 1;
    while (!atomic_load(&chain_stop)) {
        /* Always in index order: waits form chains, never cycles. */
        int a = (int)(test_rand(&rng) % 3);
        CHECK_EQ(pz_async_mutex_lock(&chain[a]), 0);
        CHECK_EQ(pz_async_mutex_lock(&chain[a + 1]), 0);
        pz_sleep((int64_t)(test_rand(&rng) % 20) * MS);
        pz_async_mutex_unlock(&chain[a + 1]);
        pz_async_mutex_unlock(&chain[a]);
    }
    return NULL;
}

static void *chain_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    pz_task_t **t = spawn_n(8, chain_worker, index_arg);
    pz_sleep(1500 * MS);
    atomic_store(&chain_stop, true);
    join_n(t, 8);
    CHECK(!sink_has("deadlock"));
    pz_set_report(NULL, NULL);
    return NULL;
}

static void test_progressing_chain_not_reported(void **state)
{
    (void)state;
    run_in_runtime(2, chain_main, NULL);
}

/* ---- all asleep ---- */

static pz_notify_t never;
static _Atomic bool rescued;

static void *rescuer(void *arg)
{
    (void)arg;
    /* A plain thread, in no plaza wait: the report must come, and then
     * this thread ends the hang. */
    int64_t start = pz_now();
    while (!(sink_has("are asleep") && sink_has("end of dump")) && pz_now() - start < 30 * SEC)
        usleep(1000);
    atomic_store(&rescued, true);
    pz_notify_one(&never);
    return NULL;
}

static void *sleeper(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_notify_wait(&never), 0);
    return NULL;
}

static void *asleep_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, rescuer, NULL), 0);
    pz_task_t *t = pz_spawn_with(sleeper, NULL, &(pz_spawn_opts_t){.name = "forgotten"});
    uint64_t id = pz_task_id(t);
    CHECK_EQ(pz_join(t, NULL), 0);
    pthread_join(th, NULL);
    CHECK(atomic_load(&rescued));
    CHECK(sink_has("all 2 task(s) are asleep"));
    char who[64];
    snprintf(who, sizeof who, "task %llu (forgotten) waiting in pz_notify", (unsigned long long)id);
    CHECK(sink_has(who));
    CHECK_EQ(sink_count("are asleep"), 1);
    pz_set_report(NULL, NULL);
    return NULL;
}

static void test_all_asleep(void **state)
{
    (void)state;
    run_in_runtime(2, asleep_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_async_mutexes),
        cmocka_unit_test(test_three_async_mutexes),
        cmocka_unit_test(test_sync_async_mix),
        cmocka_unit_test(test_progressing_chain_not_reported),
        cmocka_unit_test(test_all_asleep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
