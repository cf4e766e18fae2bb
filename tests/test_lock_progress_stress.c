/* Per-waiter progress of the locks that claim it, counted in acquisitions
 * by others rather than in time.
 *
 * pz_async_mutex: a waiter that has tried for STARVE_NS (1 ms) turns on
 * starvation mode, and from then on the lock passes in queue order.  The
 * adversary is the worst one for a queued waiter: bargers that only ever
 * trylock (plain threads spinning on it, and tasks that yield between
 * tries), so they never queue and never turn on STARVING themselves; any
 * STARVING in the waiter word is the victim's.  Two checks:
 *
 *   forced: a holder keeps the mutex while the victim parks, and keeps it
 *   until the victim's waiter word shows STARVING with the victim queued
 *   (it gets there only by the 1 ms timer of a park that is not starving
 *   yet: waiting for that state, not for a time).  Then it unlocks with the
 *   bargers hammering: the victim must be the very next holder, zero
 *   barger acquisitions in between.
 *
 *   hammered: the victim locks and unlocks again and again while the
 *   bargers hammer, and gets the lock every time.  The bargers' sections
 *   that see STARVING between two of the victim's acquisitions are
 *   reported, not bounded: a barger can take the word in the instant
 *   between an unlock's release and its look at STARVING (then its own
 *   unlock hands over, or loses the same race), so their number depends
 *   on how the threads are scheduled.  On hardware it stays at a few;
 *   under qemu-user, whose atomics are slow, it once exceeded six.
 *
 * Both on a 1-worker and a 2-worker runtime, so that the victim's worker
 * is shared with barging tasks or not. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define STARVING_BIT ((uint32_t)PZ__AMUTEX_STARVING)

static pz_async_mutex_t am;
static _Atomic bool am_stop;
/* Under am: */
static long am_barger_acq;     /* barger sections */
static long am_seen_starving;  /* barger sections that saw STARVING since the victim's last one */
static long am_victim_acq;

static uint64_t am_work; /* under am */
static _Atomic long am_barger_sections; /* am_barger_acq, for readers outside am */

/* A section long enough (a few microseconds) that the mutex is held most
 * of the time while the bargers hammer, so the victim parks and starves. */
static void barger_section(void)
{
    am_barger_acq++;
    atomic_fetch_add_explicit(&am_barger_sections, 1, memory_order_relaxed);
    if (atomic_load_explicit(&am.waiters, memory_order_relaxed) & STARVING_BIT)
        am_seen_starving++;
    for (int i = 0; i < 4000; i++)
        am_work = am_work * 6364136223846793005ull + 1;
}

static void *barger_thread(void *arg)
{
    bool slow = arg != NULL;
    long k = 0;
    while (!atomic_load_explicit(&am_stop, memory_order_relaxed)) {
        if (pz_async_mutex_trylock(&am)) {
            barger_section();
            /* Now and then one barger holds the mutex for 1.5 ms, so that
             * a victim arriving meanwhile starves amid the hammering. */
            if (slow && ++k % 32 == 0) {
                int64_t end = pz_now() + 1500 * US;
                while (pz_now() < end)
                    ;
            }
            CHECK_EQ(pz_async_mutex_unlock(&am), 0);
        }
    }
    return NULL;
}

static void *barger_task(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&am_stop, memory_order_relaxed)) {
        if (pz_async_mutex_trylock(&am)) {
            barger_section();
            CHECK_EQ(pz_async_mutex_unlock(&am), 0);
        }
        pz_yield();
    }
    return NULL;
}

struct victim_round {
    _Atomic long go;        /* round to run */
    _Atomic long done;      /* last round finished */
    long barger_acq_at_acq; /* am_barger_acq when the victim got the lock */
};
static struct victim_round vr;

/* The victim of the forced rounds: one lock per round. */
static void *forced_victim(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long r = 1; r <= rounds; r++) {
        while (atomic_load(&vr.go) < r)
            pz_yield();
        CHECK_EQ(pz_async_mutex_lock(&am), 0);
        vr.barger_acq_at_acq = am_barger_acq;
        am_victim_acq++;
        CHECK_EQ(pz_async_mutex_unlock(&am), 0);
        atomic_store(&vr.done, r);
    }
    return NULL;
}

static bool victim_queued_starving(void *arg)
{
    (void)arg;
    return (atomic_load(&am.waiters) & STARVING_BIT) && lot_waiters(&am) == 1;
}

static bool victim_done(void *arg)
{
    return atomic_load(&vr.done) >= *(long *)arg;
}

static long hammer_max_seen, hammer_starved;

/* The victim of the hammered rounds. */
static void *hammered_victim(void *arg)
{
    long n = (long)(intptr_t)arg;
    for (long i = 0; i < n; i++) {
        /* Let a barger take the mutex first, so that the
         * victim comes to it while they hammer, not straight after its own
         * unlock. */
        long b = atomic_load(&am_barger_sections);
        while (atomic_load(&am_barger_sections) < b + 1)
            pz_yield();
        int64_t t0 = pz_now();
        CHECK_EQ(pz_async_mutex_lock(&am), 0);
        if (pz_now() - t0 > 1000 * US)
            hammer_starved++; /* for the report only: it may have starved */
        if (am_seen_starving > hammer_max_seen)
            hammer_max_seen = am_seen_starving;
        am_seen_starving = 0;
        am_victim_acq++;
        CHECK_EQ(pz_async_mutex_unlock(&am), 0);
    }
    return NULL;
}

static void *async_mutex_progress_main(void *arg)
{
    int workers = (int)(intptr_t)arg;
    memset(&am, 0, sizeof am);
    atomic_store(&am_stop, false);
    am_barger_acq = am_seen_starving = am_victim_acq = 0;
    hammer_max_seen = hammer_starved = 0;
    atomic_store(&vr.go, 0);
    atomic_store(&vr.done, 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, barger_thread, i ? &am : NULL), 0);
    pz_task_t *bt[2] = {pz_spawn(barger_task, NULL), pz_spawn(barger_task, NULL)};

    /* Forced rounds. */
    const long rounds = SCALED(20);
    pz_task_t *v = pz_spawn(forced_victim, (void *)(intptr_t)rounds);
    long handed = 0;
    for (long r = 1; r <= rounds; r++) {
        CHECK_EQ(pz_async_mutex_lock(&am), 0);
        atomic_store(&vr.go, r);
        /* The victim parks behind us, not starving; its park's 1 ms timer
         * brings it back starving, and it queues again with STARVING set.
         * This task is suspended meanwhile, so the victim does not spin. */
        wait_until_true(victim_queued_starving, NULL, 60 * 1000 * MS);
        long before = am_barger_acq;
        CHECK_EQ(pz_async_mutex_unlock(&am), 0);
        wait_until_true(victim_done, &r, 60 * 1000 * MS);
        /* Nobody took the lock between our unlock and the victim. */
        CHECK_EQ(vr.barger_acq_at_acq, before);
        handed++;
    }
    CHECK_EQ(pz_join(v, NULL), 0);

    /* Hammered rounds. */
    const long n = SCALED(1000);
    v = pz_spawn(hammered_victim, (void *)(intptr_t)n);
    CHECK_EQ(pz_join(v, NULL), 0);

    atomic_store(&am_stop, true);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pz_join(bt[i], NULL), 0);
    fprintf(stderr,
            "async mutex, %d worker(s): %ld forced starving waits, each served by the next unlock; %ld hammered "
            "acquisitions (%ld of them after waiting over 1 ms), at most %ld barger sections saw STARVING before one; "
            "%ld barger sections\n",
            workers, handed, n, hammer_starved, hammer_max_seen, am_barger_acq);
    CHECK_EQ(am_victim_acq, rounds + n);
    CHECK(am_barger_acq > 0);
    CHECK_EQ(atomic_load(&am.state), 0);
    CHECK_EQ(atomic_load(&am.waiters) & ~(uint32_t)(PZ__AMUTEX_CONTENDED | PZ__AMUTEX_FENCED), 0);
    return NULL;
}

static void test_async_mutex_progress_1_worker(void **state)
{
    (void)state;
    run_in_runtime(1, async_mutex_progress_main, (void *)(intptr_t)1);
}

static void test_async_mutex_progress_2_workers(void **state)
{
    (void)state;
    run_in_runtime(2, async_mutex_progress_main, (void *)(intptr_t)2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_mutex_progress_1_worker),
        cmocka_unit_test(test_async_mutex_progress_2_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
