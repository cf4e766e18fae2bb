/* Per-waiter progress of the locks that claim it, counted in acquisitions
 * by others rather than in time.
 *
 * pz_async_mutex: a waiter that has waited PZ__AMUTEX_FAIR_NS (1 ms) since
 * its first announce is long-waiting, and the unlock that finds it at the
 * head of the queue hands it the lock; an unlock that finds WOKEN set
 * serves it all the same once head_since (the start of the head's wait)
 * is that old.  No timer runs for it.  Three checks, each on a 1-worker and
 * a 2-worker runtime (the victim's worker shared with barging tasks or
 * not):
 *
 *   forced: a holder keeps the mutex while the victim parks, and keeps it
 *   until the victim is queued and has waited PZ__AMUTEX_FAIR_NS (a state
 *   of the clock, whatever the load).  Then it unlocks while bargers
 *   hammer trylock: the victim must be the very next holder.
 *
 *   hammered: the victim locks and unlocks again and again while the
 *   trylock bargers hammer.  The bargers never queue, so the only waiter
 *   ever queued is the victim and head_since is its since: a barger
 *   section that begins when head_since is long past can only follow an
 *   unlock that looked at the clock before then (and was then delayed
 *   before its release), at most one per acquisition of the victim.  The
 *   most such sections before one acquisition must stay within 2.
 *
 *   spinners: the victim parks behind two plain threads that lock and
 *   unlock without pause with pz_async_mutex_lock: each spins while the
 *   other holds (a thread holder counts as running) and owns WOKEN, and an
 *   unlock that sees WOKEN wakes nobody unless the head has waited
 *   PZ__AMUTEX_FAIR_NS.  The victim must get the lock in every round (with
 *   no timer, nothing else would wake it), and the barger sections that
 *   begin after head_since is long past stay within 3 (one per unlock that
 *   looked at the clock before and released after, and each of the two
 *   spinners may have parked ahead of the victim).  The rounds report how
 *   often a spinner section saw the victim parked and how many sections
 *   ended with PARKED | WOKEN, to show that the case happened. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

/* Whether head_since says the head of the queue has waited
 * PZ__AMUTEX_FAIR_NS, with a margin of 64 units (65 us) for the rounding
 * of the stamps. */
static bool head_long_waiting(pz_async_mutex_t *m)
{
    uint32_t h = atomic_load_explicit(&m->head_since, memory_order_relaxed);
    if (h <= PZ__AMUTEX_HEAD_UNKNOWN)
        return false;
    uint32_t now = (uint32_t)((uint64_t)pz_now() >> PZ__AMUTEX_SINCE_SHIFT);
    return now - h >= (uint32_t)(PZ__AMUTEX_FAIR_NS >> PZ__AMUTEX_SINCE_SHIFT) + 64;
}

static pz_async_mutex_t am;
static _Atomic bool am_stop;
/* Under am: */
static long am_barger_acq;  /* barger sections */
static long am_seen_long;   /* barger sections that began with the head long-waiting, since the victim's last one */
static long am_victim_acq;

static uint64_t am_work; /* under am */
static _Atomic long am_barger_sections; /* am_barger_acq, for readers outside am */

/* A section long enough (a few microseconds) that the mutex is held most
 * of the time while the bargers hammer, so the victim parks and starves. */
static void barger_section(void)
{
    am_barger_acq++;
    atomic_fetch_add_explicit(&am_barger_sections, 1, memory_order_relaxed);
    if (head_long_waiting(&am))
        am_seen_long++;
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

static bool victim_queued_long(void *arg)
{
    (void)arg;
    return lot_waiters(&am) == 1 && head_long_waiting(&am);
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
        if (am_seen_long > hammer_max_seen)
            hammer_max_seen = am_seen_long;
        am_seen_long = 0;
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
    am_barger_acq = am_seen_long = am_victim_acq = 0;
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
        /* The victim parks behind us at once (this task is suspended
         * meanwhile, so it does not spin) and stays queued, with no timer,
         * until it has waited PZ__AMUTEX_FAIR_NS. */
        wait_until_true(victim_queued_long, NULL, 60 * 1000 * MS);
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
            "async mutex, %d worker(s): %ld forced long waits, each served by the next unlock; %ld hammered "
            "acquisitions (%ld of them after waiting over 1 ms), at most %ld barger sections began with the head "
            "long-waiting before one; %ld barger sections\n",
            workers, handed, n, hammer_starved, hammer_max_seen, am_barger_acq);
    CHECK_EQ(am_victim_acq, rounds + n);
    CHECK(hammer_max_seen <= 2);
    CHECK(am_barger_acq > 0);
    CHECK_EQ(atomic_load(&am.state), 0);
    CHECK_EQ(atomic_load(&am.waiters) & ~(uint32_t)(PZ__AMUTEX_CONTENDED | PZ__AMUTEX_FENCED), 0);
    CHECK_EQ(atomic_load(&am.head_since), PZ__AMUTEX_HEAD_NONE);
    return NULL;
}

/* ---- the victim behind spinners that keep WOKEN ---- */

static pz_async_mutex_t sm;
static _Atomic bool sm_stop;
static _Atomic int sm_spinners_in; /* spinner threads that have taken the lock once this round */
/* Under sm: */
static long sm_seen_long;  /* spinner sections that began with the head long-waiting, this round */
static long sm_woken_seen; /* spinner sections that ended with WOKEN set while a waiter was parked */
static long sm_sections;
static uint64_t sm_work;
static bool sm_parked_seen;   /* a spinner section saw a waiter parked, this round */
static long sm_parked_rounds; /* rounds in which one did */
static _Atomic long sm_victim_done;

static void *spinner_thread(void *arg)
{
    (void)arg;
    bool in = false;
    while (!atomic_load_explicit(&sm_stop, memory_order_relaxed)) {
        CHECK_EQ(pz_async_mutex_lock(&sm), 0);
        if (head_long_waiting(&sm))
            sm_seen_long++;
        sm_sections++;
        for (int i = 0; i < 200; i++)
            sm_work = sm_work * 6364136223846793005ull + 1;
        uint32_t f = atomic_load_explicit(&sm.waiters, memory_order_relaxed);
        if (f & PZ__AMUTEX_PARKED)
            sm_parked_seen = true;
        if ((f & (PZ__AMUTEX_PARKED | PZ__AMUTEX_WOKEN)) == (PZ__AMUTEX_PARKED | PZ__AMUTEX_WOKEN))
            sm_woken_seen++;
        CHECK_EQ(pz_async_mutex_unlock(&sm), 0);
        if (!in) {
            in = true;
            atomic_fetch_add(&sm_spinners_in, 1);
        }
    }
    return NULL;
}


static void *spinner_victim(void *arg)
{
    long round = (long)(intptr_t)arg;
    CHECK_EQ(pz_async_mutex_lock(&sm), 0);
    atomic_store(&sm_stop, true); /* under sm: the spinners stop after their next section */
    CHECK_EQ(pz_async_mutex_unlock(&sm), 0);
    atomic_store(&sm_victim_done, round);
    return NULL;
}

static bool spinners_in(void *arg)
{
    (void)arg;
    return atomic_load(&sm_spinners_in) >= 2;
}

static void *spinners_main(void *arg)
{
    int workers = (int)(intptr_t)arg;
    memset(&sm, 0, sizeof sm);
    sm_woken_seen = sm_sections = sm_parked_rounds = 0;
    atomic_store(&sm_victim_done, 0);
    long max_seen = 0;
    const long rounds = SCALED(200);
    for (long r = 1; r <= rounds; r++) {
        atomic_store(&sm_stop, false);
        atomic_store(&sm_spinners_in, 0);
        sm_seen_long = 0;
        sm_parked_seen = false;
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            CHECK_EQ(pthread_create(&th[i], NULL, spinner_thread, NULL), 0);
        wait_until_true(spinners_in, NULL, 60 * 1000 * MS);
        /* The victim comes while they take the lock from each other: it
         * spins, and if it loses it parks; then each of them spins while
         * the other holds, owning WOKEN, and only the unlocks' look at
         * head_since serves the victim. */
        pz_task_t *v = pz_spawn(spinner_victim, (void *)(intptr_t)r);
        CHECK_EQ(pz_join(v, NULL), 0);
        for (int i = 0; i < 2; i++)
            CHECK_EQ(pthread_join(th[i], NULL), 0);
        if (sm_seen_long > max_seen)
            max_seen = sm_seen_long;
        if (sm_parked_seen)
            sm_parked_rounds++;
    }
    fprintf(stderr,
            "async mutex behind spinners, %d worker(s): %ld rounds (the victim seen parked in %ld), %ld spinner "
            "sections (%ld ended with a waiter parked and WOKEN set), at most %ld began with the head long-waiting "
            "before the victim's turn\n",
            workers, rounds, sm_parked_rounds, sm_sections, sm_woken_seen, max_seen);
    CHECK_EQ(atomic_load(&sm_victim_done), rounds);
    CHECK(max_seen <= 3);
    CHECK_EQ(atomic_load(&sm.state), 0);
    CHECK_EQ(atomic_load(&sm.waiters) & ~(uint32_t)(PZ__AMUTEX_CONTENDED | PZ__AMUTEX_FENCED), 0);
    CHECK_EQ(atomic_load(&sm.head_since), PZ__AMUTEX_HEAD_NONE);
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

static void test_async_mutex_spinners_1_worker(void **state)
{
    (void)state;
    run_in_runtime(1, spinners_main, (void *)(intptr_t)1);
}

static void test_async_mutex_spinners_2_workers(void **state)
{
    (void)state;
    run_in_runtime(2, spinners_main, (void *)(intptr_t)2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_async_mutex_progress_1_worker),
        cmocka_unit_test(test_async_mutex_progress_2_workers),
        cmocka_unit_test(test_async_mutex_spinners_1_worker),
        cmocka_unit_test(test_async_mutex_spinners_2_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
