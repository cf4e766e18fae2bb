/* Per-waiter progress of pz_mutex, counted in acquisitions by others
 * rather than in time.
 *
 * The claim (include/plaza/sync.h, src/sync/mutex.c): a waiter that has
 * waited PZ__MUTEX_FAIR_NS since it began to wait in its lock call is
 * handed the lock by the first unlock that takes it from the queue, so
 * once it is queued other threads take the lock at most once for each
 * waiter queued ahead of it.  The case that used to defeat the lot's
 * "waited 1 ms" (counted from the current park) is forced here: the victim
 * has waited long, but has just been woken without the lock and parked
 * again (what happens when a running thread beats it to the lock), so its
 * current park is fresh.
 *
 * Each round: the driver (a plain thread) takes the mutex; the victim (a
 * plain thread) parks behind it; the driver waits until the lot's clock
 * says the victim has waited PZ__MUTEX_FAIR_NS; it wakes the victim
 * without the lock, through the parking lot as an unlock whose waiter
 * then lost the race to a barger would, and waits until it has parked
 * again; in the second case K queueing bargers (threads that call
 * pz_mutex_lock) then park behind it; it wakes the victim (the head of
 * the queue) so once more, and it parks again at the tail.  Then the
 * bargers hammer (threads spinning on trylock, tasks that trylock and
 * yield), and the driver unlocks and at once tries to take the mutex back,
 * again and again, as a barger.  The victim must get the lock before any
 * other thread or task has taken it more than K times (K = 0: it must be
 * the very next holder).
 *
 * Why the old rule fails this (models/sync_mutex.md has the cycle): the
 * lot's clock is the coarse one, which stands still within a tick.  The
 * driver does the two wakes and the unlock within one tick when it can
 * (it waits for a fresh tick first, and says how many rounds made it): the
 * second wake consults the bucket's random interval, which cannot come due
 * again within that tick, and the victim's current park began in it, so
 * an unlock that counted from the current park would wake the victim
 * without the lock, for the driver or a barger to take.  Under the rule
 * in force (from the start of the wait) none of that matters: the hand-off to the
 * victim does not depend on the tick, the scheduler or the number of cores.
 *
 * Every wait here is for a state (the lot's queue length, a count, the
 * clock), with a one-minute deadlock guard; the barging threads and tasks
 * hammer only while the driver unlocks, so the set-up is not starved of a
 * core on a busy machine. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define GUARD (60 * 1000 * MS)
#define QUEUERS 2     /* K of the second case */
#define HAMMER_THREADS 2
#define HAMMER_TASKS 2

static pz_mutex_t m;
/* Under m: */
static long others_acq; /* acquisitions by anyone but the victim */
static long victim_acq;
static uint64_t work;

static _Atomic bool stop;
static _Atomic bool hammer;            /* the bargers hammer now */
static _Atomic long hammer_tries;      /* their trylock attempts */
static _Atomic long queuers_go;        /* round in which the queueing bargers run */
static _Atomic bool queuers_on;        /* they keep locking while set */
static _Atomic int queuers_idle;       /* queueing bargers between rounds */

/* The lot's clock (pz__clock_coarse reads the same one). */
static int64_t coarse_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void others_section(void)
{
    others_acq++;
    for (int i = 0; i < 200; i++)
        work = work * 6364136223846793005ull + 1;
}

static void *hammer_thread(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        if (!atomic_load_explicit(&hammer, memory_order_relaxed)) {
            sched_yield();
            continue;
        }
        atomic_fetch_add_explicit(&hammer_tries, 1, memory_order_relaxed);
        if (pz_mutex_trylock(&m)) {
            others_section();
            pz_mutex_unlock(&m);
        }
    }
    return NULL;
}

static void *hammer_task(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        if (!atomic_load_explicit(&hammer, memory_order_relaxed)) {
            pz_sleep(50 * US);
            continue;
        }
        atomic_fetch_add_explicit(&hammer_tries, 1, memory_order_relaxed);
        if (pz_mutex_trylock(&m)) {
            others_section();
            pz_mutex_unlock(&m);
        }
        pz_yield();
    }
    return NULL;
}

static bool queuers_released(void *arg)
{
    return atomic_load(&queuers_go) >= *(long *)arg || atomic_load(&stop);
}

/* A queueing barger: in the rounds that use it, locks and unlocks for as
 * long as queuers_on is set (it parks whenever the mutex is held). */
static void *queuer_thread(void *arg)
{
    (void)arg;
    for (long r = 1;; r++) {
        atomic_fetch_add(&queuers_idle, 1);
        wait_until_true(queuers_released, &r, 10 * GUARD);
        atomic_fetch_sub(&queuers_idle, 1);
        if (atomic_load(&stop))
            return NULL;
        while (atomic_load(&queuers_on)) {
            pz_mutex_lock(&m);
            others_section();
            pz_mutex_unlock(&m);
        }
    }
}

struct victim {
    _Atomic long go;   /* round to run */
    _Atomic long done; /* last round finished */
    long others_at;    /* others_acq when it got the lock */
};
static struct victim v;

static bool victim_go(void *arg)
{
    return atomic_load(&v.go) >= *(long *)arg;
}

static void *victim_thread(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long r = 1; r <= rounds; r++) {
        wait_until_true(victim_go, &r, GUARD);
        pz_mutex_lock(&m);
        v.others_at = others_acq;
        victim_acq++;
        pz_mutex_unlock(&m);
        atomic_store(&v.done, r);
    }
    return NULL;
}

static bool lot_has(void *arg)
{
    return lot_waiters(&m) >= *(int *)arg;
}

static bool lot_empty(void *arg)
{
    (void)arg;
    return lot_waiters(&m) == 0 && atomic_load(&queuers_idle) == QUEUERS;
}

static bool fair_ns_passed(void *arg)
{
    return coarse_now() >= *(int64_t *)arg + PZ__MUTEX_FAIR_NS;
}

static bool tick_passed(void *arg)
{
    return coarse_now() != *(int64_t *)arg;
}

static bool hammering(void *arg)
{
    return atomic_load(&hammer_tries) >= *(long *)arg;
}

struct driver {
    long rounds;     /* per case */
    long clean;      /* rounds whose wakes and unlock shared one tick */
    long max_others; /* the most acquisitions by others before the victim, per case */
    long max_others_queued;
};

/* Wakes the first waiter without the lock, as an unlock whose waiter lost
 * the race would (the byte stays LOCKED|PARKED: we hold the mutex, and the
 * victim parks again), and waits until it has parked again. */
static void wake_without_lock(int queued)
{
    CHECK_EQ(pz_unpark_one(&m, NULL, NULL).unparked, 1);
    wait_until_true(lot_has, &queued, GUARD);
}

static void *driver_thread(void *arg)
{
    struct driver *d = arg;
    long round = 0;
    for (int queuers = 0; queuers <= QUEUERS; queuers += QUEUERS) {
        for (long i = 0; i < d->rounds; i++) {
            round++;
            pz_mutex_lock(&m);
            atomic_store(&v.go, round);
            int one = 1, all = 1 + queuers;
            wait_until_true(lot_has, &one, GUARD);
            CHECK_EQ(lot_waiters(&m), 1);
            /* The victim began to wait (its spin over) before it parked,
             * so before this clock reading. */
            int64_t c1 = coarse_now();
            wait_until_true(fair_ns_passed, &c1, GUARD);
            /* Two wakes without the lock and the unlock within one tick,
             * if the machine lets us (see the head): the first wake
             * finds the victim alone; the queueing bargers park behind it
             * before the second, which sends it behind them. */
            int64_t tick = coarse_now();
            wait_until_true(tick_passed, &tick, GUARD);
            tick = coarse_now();
            wake_without_lock(1);
            if (queuers) {
                atomic_store(&queuers_on, true);
                atomic_store(&queuers_go, round);
                wait_until_true(lot_has, &all, GUARD);
            }
            wake_without_lock(all);
            bool clean = coarse_now() == tick;
            CHECK_EQ(lot_waiters(&m), all);
            long before = others_acq;
            long tries = atomic_load(&hammer_tries) + HAMMER_THREADS + HAMMER_TASKS;
            atomic_store(&hammer, true);
            wait_until_true(hammering, &tries, GUARD);
            clean = clean && coarse_now() == tick;
            pz_mutex_unlock(&m);
            /* Barge in as soon as the mutex is free, until the victim has
             * had it. */
            int64_t give_up = pz_now() + GUARD;
            while (atomic_load(&v.done) < round) {
                CHECK(pz_now() < give_up);
                if (pz_mutex_trylock(&m)) {
                    others_section();
                    pz_mutex_unlock(&m);
                }
            }
            atomic_store(&hammer, false);
            long others = v.others_at - before;
            if (queuers) {
                atomic_store(&queuers_on, false);
                wait_until_true(lot_empty, NULL, GUARD);
                if (others > d->max_others_queued)
                    d->max_others_queued = others;
            } else if (others > d->max_others) {
                d->max_others = others;
            }
            if (others > queuers)
                fprintf(stderr, "round %ld: %ld acquisitions by others before the victim, %d waiters ahead of it%s\n",
                        round, others, queuers, clean ? "" : " (wakes and unlock in different ticks)");
            CHECK(others <= queuers);
            d->clean += clean;
        }
    }
    return NULL;
}

static bool driver_finished(void *arg)
{
    return atomic_load((_Atomic bool *)arg);
}

struct driver_run {
    struct driver d;
    _Atomic bool finished;
};

static void *driver_main(void *arg)
{
    struct driver_run *run = arg;
    driver_thread(&run->d);
    atomic_store(&run->finished, true);
    return NULL;
}

static void *progress_main(void *arg)
{
    int workers = (int)(intptr_t)arg;
    memset(&m, 0, sizeof m);
    others_acq = victim_acq = 0;
    atomic_store(&stop, false);
    atomic_store(&hammer, false);
    atomic_store(&hammer_tries, 0);
    atomic_store(&queuers_go, 0);
    atomic_store(&queuers_on, false);
    atomic_store(&queuers_idle, 0);
    atomic_store(&v.go, 0);
    atomic_store(&v.done, 0);

    static struct driver_run run;
    memset(&run, 0, sizeof run);
    run.d.rounds = SCALED(20);
    pthread_t ht[HAMMER_THREADS], qt[QUEUERS], vt, dt;
    pz_task_t *tasks[HAMMER_TASKS];
    for (int i = 0; i < HAMMER_THREADS; i++)
        CHECK_EQ(pthread_create(&ht[i], NULL, hammer_thread, NULL), 0);
    for (int i = 0; i < HAMMER_TASKS; i++)
        tasks[i] = pz_spawn(hammer_task, NULL);
    for (int i = 0; i < QUEUERS; i++)
        CHECK_EQ(pthread_create(&qt[i], NULL, queuer_thread, NULL), 0);
    CHECK_EQ(pthread_create(&vt, NULL, victim_thread, (void *)(intptr_t)(2 * run.d.rounds)), 0);
    CHECK_EQ(pthread_create(&dt, NULL, driver_main, &run), 0);
    /* This task waits by yielding, so the hammering tasks keep its
     * worker. */
    wait_until_true(driver_finished, &run.finished, 20 * GUARD);

    atomic_store(&stop, true);
    CHECK_EQ(pthread_join(dt, NULL), 0);
    CHECK_EQ(pthread_join(vt, NULL), 0);
    for (int i = 0; i < HAMMER_THREADS; i++)
        CHECK_EQ(pthread_join(ht[i], NULL), 0);
    for (int i = 0; i < QUEUERS; i++)
        CHECK_EQ(pthread_join(qt[i], NULL), 0);
    for (int i = 0; i < HAMMER_TASKS; i++)
        CHECK_EQ(pz_join(tasks[i], NULL), 0);
    fprintf(stderr,
            "pz_mutex, %d worker(s): %ld rounds alone and %ld behind %d queued waiters; the victim, woken twice "
            "without the lock after waiting %d us, got it after at most %ld and %ld acquisitions by others "
            "(bound 0 and %d); %ld of %ld rounds had both wakes and the unlock in one clock tick; %ld acquisitions "
            "by others in all\n",
            workers, run.d.rounds, run.d.rounds, QUEUERS, PZ__MUTEX_FAIR_NS / 1000, run.d.max_others,
            run.d.max_others_queued, QUEUERS, run.d.clean, 2 * run.d.rounds, others_acq);
    CHECK_EQ(victim_acq, 2 * run.d.rounds);
    CHECK(others_acq > 0);
    CHECK_EQ(atomic_load(&m.state), 0);
    return NULL;
}

static void test_mutex_progress_1_worker(void **state)
{
    (void)state;
    run_in_runtime(1, progress_main, (void *)(intptr_t)1);
}

static void test_mutex_progress_2_workers(void **state)
{
    (void)state;
    run_in_runtime(2, progress_main, (void *)(intptr_t)2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_progress_1_worker),
        cmocka_unit_test(test_mutex_progress_2_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
