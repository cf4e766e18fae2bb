/* Races of pz_async_mutex: mutual exclusion across 10 000 tasks with
 * suspensions inside the section, a storm of spinners, hand-offs, timeouts
 * and cancels, a fairness bound, the cooperative budget when nobody parks,
 * unlocks by callers that do not hold it, and the first waiter against the
 * plain-store unlock. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- mutual exclusion with suspensions inside ---- */

static pz_async_mutex_t ex_m;
static long ex_counter;
static bool ex_inside;

static void *ex_task(void *arg)
{
    int i = (int)(intptr_t)arg;
    for (int k = 0; k < 3; k++) {
        /* A few timed waits (each timeout walks the lot's queue, which
         * holds up to 10 000 waiters here). */
        if ((i + k) % 1000 == 0) {
            int r;
            while ((r = pz_async_mutex_lock_until(&ex_m, pz_now() + 20 * MS)) == -ETIMEDOUT)
                ;
            CHECK_EQ(r, 0);
        } else {
            CHECK_EQ(pz_async_mutex_lock(&ex_m), 0);
        }
        CHECK(!ex_inside);
        ex_inside = true;
        long c = ex_counter;
        if (i % 16 == 0)
            pz_yield();
        if (i % 500 == 0 && k == 0)
            pz_sleep(20 * US);
        ex_counter = c + 1;
        ex_inside = false;
        CHECK_EQ(pz_async_mutex_unlock(&ex_m), 0);
        if (i % 3 == 0)
            pz_yield();
    }
    return NULL;
}

static void *exclusion_main(void *arg)
{
    (void)arg;
    int n = SCALED(10000);
    join_n(spawn_n(n, ex_task, index_arg), n);
    CHECK_EQ(ex_counter, 3L * n);
    CHECK_EQ(atomic_load(&ex_m.state), 0);
    return NULL;
}

static void test_mutex_exclusion_10k(void **state)
{
    (void)state;
    run_in_runtime(0, exclusion_main, NULL);
}

/* ---- mutex storm: spinning, hand-offs, timeouts, cancels, threads ----
 *
 * Short sections from 64 tasks and 2 plain threads (so waiters spin on a
 * running holder, park, get woken with WOKEN and get fair hand-offs), with
 * random deadlines, trylocks and cancels.  Invariants: never two inside;
 * the counter equals the successful acquisitions; and at the end the word
 * is 0, so no WOKEN, PARKED or STARVING bit was left behind by a waiter
 * that timed out or was cancelled. */

static pz_async_mutex_t storm_m;
static long storm_counter;
static _Atomic bool storm_inside;
static _Atomic long storm_acquired;

static void storm_section(uint64_t *rng)
{
    CHECK(!atomic_exchange(&storm_inside, true));
    storm_counter++;
    if (test_rand(rng) % 64 == 0)
        pz_yield(); /* a holder that suspends: waiters must park, not spin */
    atomic_store(&storm_inside, false);
    atomic_fetch_add(&storm_acquired, 1);
    CHECK_EQ(pz_async_mutex_unlock(&storm_m), 0);
}

static void *storm_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 2654435761u + 7;
    for (int i = 0; i < SCALED(2000); i++) {
        int r;
        switch (test_rand(&rng) % 4) {
        case 0:
            r = pz_async_mutex_lock_until(&storm_m, pz_now() + (int64_t)(test_rand(&rng) % 50) * US);
            break;
        case 1:
            r = pz_async_mutex_trylock(&storm_m) ? 0 : -EBUSY;
            break;
        default:
            r = pz_async_mutex_lock(&storm_m);
            break;
        }
        if (r == -ECANCELED)
            return NULL;
        if (r == -ETIMEDOUT || r == -EBUSY)
            continue;
        CHECK_EQ(r, 0);
        storm_section(&rng);
    }
    return NULL;
}

static void *storm_thread(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg;
    for (int i = 0; i < SCALED(2000); i++) {
        int r = (i & 1) ? pz_async_mutex_lock(&storm_m)
                        : pz_async_mutex_lock_until(&storm_m, pz_now() + (int64_t)(test_rand(&rng) % 50) * US);
        if (r == -ETIMEDOUT)
            continue;
        CHECK_EQ(r, 0);
        storm_section(&rng);
    }
    return NULL;
}

static void *storm_main(void *arg)
{
    (void)arg;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, storm_thread, (void *)(intptr_t)(i + 1000)), 0);
    int n = 64;
    pz_task_t **t = spawn_n(n, storm_task, index_arg);
    uint64_t rng = 5;
    for (int i = 0; i < 20; i++) {
        pz_sleep((int64_t)(test_rand(&rng) % 200) * US);
        pz_cancel(t[test_rand(&rng) % (uint64_t)n]);
    }
    join_n(t, n);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ(storm_counter, atomic_load(&storm_acquired));
    CHECK_EQ(atomic_load(&storm_m.state), 0);
    return NULL;
}

static void test_mutex_storm(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++)
        run_in_runtime(2, storm_main, NULL);
}

/* ---- fairness: a waiter behind hammering bargers ---- */

static pz_async_mutex_t fair_m;
static _Atomic bool fair_stop;
static _Atomic int64_t fair_max_wait;

static void *barger(void *arg)
{
    (void)arg;
    uint64_t x = 1;
    while (!atomic_load_explicit(&fair_stop, memory_order_relaxed)) {
        CHECK_EQ(pz_async_mutex_lock(&fair_m), 0);
        for (int i = 0; i < 20; i++)
            x = x * 6364136223846793005ull + 1;
        CHECK_EQ(pz_async_mutex_unlock(&fair_m), 0);
    }
    return (void *)(uintptr_t)x;
}

static void *victim(void *arg)
{
    (void)arg;
    int64_t worst = 0;
    for (int i = 0; i < SCALED(200); i++) {
        int64_t t0 = pz_now();
        CHECK_EQ(pz_async_mutex_lock(&fair_m), 0);
        int64_t w = pz_now() - t0;
        if (w > worst)
            worst = w;
        CHECK_EQ(pz_async_mutex_unlock(&fair_m), 0);
        pz_sleep(50 * US);
    }
    atomic_store(&fair_max_wait, worst);
    return NULL;
}

static void *fairness_main(void *arg)
{
    (void)arg;
    pz_task_t *b[4];
    int64_t start = pz_now();
    for (int i = 0; i < 4; i++)
        b[i] = pz_spawn(barger, NULL);
    pz_task_t *v[2] = {pz_spawn(victim, NULL), pz_spawn(victim, NULL)};
    CHECK_EQ(pz_join(v[0], NULL), 0);
    int64_t w0 = atomic_load(&fair_max_wait);
    CHECK_EQ(pz_join(v[1], NULL), 0);
    int64_t w1 = atomic_load(&fair_max_wait);
    int64_t run = pz_now() - start;
    atomic_store(&fair_stop, true);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pz_join(b[i], NULL), 0);
    int64_t worst = w0 > w1 ? w0 : w1;
    fprintf(stderr, "fairness: longest wait behind 4 bargers %.1f us of a %.1f ms run\n", (double)worst / 1000.0,
            (double)run / 1e6);
    /* Eventual fairness hands over within ~1 ms of waiting.  The measured
     * wait also holds the time the victim's worker thread was not run at
     * all, which a busy machine can make a few hundred ms (361 ms seen in
     * a TSan build), so the bound is the larger of 1 s and half the run:
     * a starved victim waits for about the whole run (the bargers stop
     * only once both victims are done). */
    CHECK(worst < 1000 * MS || worst < run / 2);
    return NULL;
}

static void test_mutex_fairness_bound(void **state)
{
    (void)state;
    run_in_runtime(2, fairness_main, NULL);
}

/* ---- the budget when nobody ever parks (tests/helpers.c) ----
 * Tasks also yield when they lose a CAS, so they interleave either way,
 * and what shows is the longest operation: 8-25% of the round before the
 * first caller to find the mutex held marked it CONTENDED, 1.3-7% now.
 * The check: the longest operation is under an eighth of the round in two
 * rounds, of up to eight (a worker thread preempted by the system while
 * its task holds the lock makes that round's longest operation long).
 *
 * That needs the mutex CONTENDED, so that every unlock goes through the
 * path that counts against the budget.  Two workers meeting on the lock
 * mark it, but they meet only while both run at once, which a busy
 * machine with one core to spare may never allow (no task suspends inside
 * this section).  So each round forces the meeting first: the main task
 * holds the mutex while a probe task tries it, and lets go once the probe
 * has marked it.  The probe finds a running task holder and spins before
 * it parks, and CONTENDED must be set either way: at the slow path's
 * entry, else when it parks. */
static pz_async_mutex_t nb_m;
static long nb_counter;

static void nb_op(uint64_t x)
{
    (void)x;
    CHECK_EQ(pz_async_mutex_lock(&nb_m), 0);
    nb_counter++;
    CHECK_EQ(pz_async_mutex_unlock(&nb_m), 0);
}

static void *nb_probe(void *arg)
{
    nb_op((uint64_t)(uintptr_t)arg);
    return NULL;
}

static bool nb_marked(void *arg)
{
    (void)arg;
    return atomic_load(&nb_m.waiters) & PZ__AMUTEX_CONTENDED;
}

static void nb_reset(void)
{
    memset(&nb_m, 0, sizeof nb_m);
    nb_counter = 0;
    CHECK_EQ(pz_async_mutex_lock(&nb_m), 0);
    pz_task_t *probe = pz_spawn(nb_probe, NULL);
    CHECK(probe != NULL);
    wait_until_true(nb_marked, NULL, 60000 * MS);
    CHECK_EQ(pz_async_mutex_unlock(&nb_m), 0);
    CHECK_EQ(pz_join(probe, NULL), 0);
    CHECK_EQ(nb_counter, 1);
    nb_counter = 0;
}

static void nb_check(void)
{
    CHECK_EQ(nb_counter, (long)NB_TASKS * NB_ITERS);
    /* CONTENDED stays set once set. */
    CHECK(atomic_load(&nb_m.waiters) & PZ__AMUTEX_CONTENDED);
    CHECK_EQ(atomic_load(&nb_m.state), 0);
}

static void test_mutex_budget_without_parks(void **state)
{
    (void)state;
    static const struct budget_case mutex_case = {"mutex, no parks", nb_op, nb_reset, nb_check, false};
    run_in_runtime(2, budget_main, (void *)&mutex_case);
}
/* ---- unlocks by callers that do not hold the mutex, against holders ----
 * The unlock's ownership check reads the holder word while the mutex is
 * quiet and the lock word once it has had waiters (include/plaza/async.h
 * argues both are exact).  Here tasks and a plain thread that never lock
 * call unlock without pause (and now and then hold it properly, so that
 * their own ids have been in both words) while holders take and release
 * the mutex: first one holder (the mutex is mostly quiet), then 16 that
 * park.  Every stray unlock must return -EPERM and change nothing; one
 * that got through would let two holders in at once, or end with a count
 * short. */

static pz_async_mutex_t su_m;
static _Atomic bool su_stop;
static _Atomic long su_rejected;
static long su_counter;
static _Atomic int su_inside;

static _Atomic long su_stray_holds;

/* Holds the mutex now and then itself, so that its own id has been in the
 * holder word and the lock word before its stray unlocks. */
static void *su_stray(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load_explicit(&su_stop, memory_order_relaxed)) {
        if (n % 256 == 0) {
            CHECK_EQ(pz_async_mutex_lock(&su_m), 0);
            CHECK_EQ(atomic_fetch_add(&su_inside, 1), 0);
            su_counter++;
            CHECK_EQ(atomic_fetch_sub(&su_inside, 1), 1);
            CHECK_EQ(pz_async_mutex_unlock(&su_m), 0);
            atomic_fetch_add(&su_stray_holds, 1);
        }
        CHECK_EQ(pz_async_mutex_unlock(&su_m), -EPERM);
        n++;
        if (n % 64 == 0 && pz_self())
            pz_yield();
    }
    atomic_fetch_add(&su_rejected, n);
    return NULL;
}

static void *su_holder(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long k = 0; k < rounds; k++) {
        if (k % 3 == 0) {
            while (!pz_async_mutex_trylock(&su_m))
                pz_yield();
        } else {
            CHECK_EQ(pz_async_mutex_lock(&su_m), 0);
        }
        CHECK_EQ(atomic_fetch_add(&su_inside, 1), 0);
        su_counter++;
        if (k % 7 == 0)
            pz_yield();
        CHECK_EQ(atomic_fetch_sub(&su_inside, 1), 1);
        CHECK_EQ(pz_async_mutex_unlock(&su_m), 0);
    }
    return NULL;
}

static void *su_main(void *arg)
{
    int holders = (int)(intptr_t)arg;
    long rounds = SCALED(20000) / holders;
    memset(&su_m, 0, sizeof su_m);
    su_counter = 0;
    atomic_store(&su_stop, false);
    atomic_store(&su_rejected, 0);
    atomic_store(&su_stray_holds, 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, su_stray, NULL), 0);
    pz_task_t *stray[3];
    for (int i = 0; i < 3; i++)
        stray[i] = pz_spawn(su_stray, NULL);
    pz_task_t **h = malloc((size_t)holders * sizeof *h);
    CHECK(h != NULL);
    for (int i = 0; i < holders; i++)
        h[i] = pz_spawn(su_holder, (void *)(intptr_t)rounds);
    for (int i = 0; i < holders; i++)
        CHECK_EQ(pz_join(h[i], NULL), 0);
    free(h);
    atomic_store(&su_stop, true);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(pz_join(stray[i], NULL), 0);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_EQ(su_counter, rounds * holders + atomic_load(&su_stray_holds));
    CHECK(atomic_load(&su_rejected) > 0);
    CHECK_EQ(atomic_load(&su_m.state), 0);
    CHECK_EQ(atomic_load(&su_m.holder), 0);
    CHECK_EQ(atomic_load(&su_m.waiters) & (PZ__AMUTEX_PARKED | PZ__AMUTEX_WOKEN), 0);
    return NULL;
}

static void test_mutex_stray_unlocks(void **state)
{
    (void)state;
    /* Each rejected unlock prints a report: keep them out of the log. */
    capture_stderr_begin();
    run_in_runtime(0, su_main, (void *)(intptr_t)1);
    run_in_runtime(0, su_main, (void *)(intptr_t)16);
    const char *text = capture_stderr_end_quiet();
    CHECK(strstr(text, "not by the unlocking") != NULL);
}

/* ---- the first waiter of a mutex against an unlock by plain store ----
 * Until a mutex first has a waiter, unlock releases it with a plain store
 * and looks at the waiter word after; the first waiter pairs that with an
 * asymmetric fence (include/plaza/async.h).  Each round here takes a fresh
 * mutex: one thread holds it for a random 0-40 us, about as long as the
 * other spins before it parks, so first parks and plain-store unlocks meet
 * in every order.  A lost wake-up shows as a timed-out lock (the holder
 * has left, and nobody else will unlock).  The race the fence closes is a
 * few nanoseconds wide: removing the fence, or the unlock's second look,
 * still passes here on x86; src/async/mutex.c argues those. */

static pz_async_mutex_t fw_m;
static _Atomic long fw_round, fw_done, fw_released;

static void fw_busy(uint64_t ns)
{
    int64_t end = pz_now() + (int64_t)ns;
    while (pz_now() < end)
        ;
}

static void *fw_holder(void *arg)
{
    (void)arg;
    uint64_t rng = 99;
    for (long r = 1; r <= SCALED(4000); r++) {
        while (atomic_load(&fw_done) != r - 1)
            sched_yield();
        atomic_store(&fw_m.state, 0);
        atomic_store(&fw_m.waiters, 0);
        atomic_store(&fw_m.holder, 0);
        CHECK_EQ(pz_async_mutex_lock(&fw_m), 0);
        atomic_store(&fw_round, r);
        fw_busy(test_rand(&rng) % 40000);
        CHECK_EQ(pz_async_mutex_unlock(&fw_m), 0);
        atomic_store(&fw_released, r);
    }
    return NULL;
}

static void test_mutex_first_waiter(void **state)
{
    (void)state;
    pthread_t h;
    CHECK_EQ(pthread_create(&h, NULL, fw_holder, NULL), 0);
    long lost = 0;
    for (long r = 1; r <= SCALED(4000); r++) {
        while (atomic_load(&fw_round) != r)
            sched_yield();
        /* A timeout while the holder has not let go yet (its thread was
         * not run for 200 ms on a busy machine) says nothing: wait again.
         * One after it let go is a lost wake-up. */
        int e;
        while ((e = pz_async_mutex_lock_until(&fw_m, pz_now() + 200 * MS)) == -ETIMEDOUT &&
               atomic_load(&fw_released) != r)
            ;
        if (e == -ETIMEDOUT)
            lost++;
        else
            CHECK_EQ(pz_async_mutex_unlock(&fw_m), 0);
        atomic_store(&fw_done, r);
    }
    CHECK_EQ(pthread_join(h, NULL), 0);
    CHECK_EQ(lost, 0);
}


/* ---- a timed waiter that gives up passes its wake-up on ----
 * A waiter that gives up at its deadline after it set PARKED, or after it
 * took WOKEN on the queue's behalf, must wake a parked waiter on its way
 * out, or one can stay queued with the mutex free (src/async/mutex.c,
 * "Giving up").  The interleaving forced here: B is parked without a
 * deadline; C, with a deadline of up to 20 us, spins on the running
 * holder H and so owns WOKEN; H unlocks after C's last look at the lock
 * word and before C's CAS of the waiter word, sees WOKEN and wakes nobody;
 * C's CAS drops WOKEN and sets PARKED, its check under the bucket lock
 * finds the mutex free, its deadline has passed, and it returns.
 *
 * Three plain threads run in rounds: H takes the mutex, B parks behind it,
 * then C tries while H holds on and lets go at a moment aimed at the end
 * of C's spinning (learnt from earlier rounds, with a random offset of up
 * to 1.2 us).  Once H and C have returned the main thread looks: B queued
 * in the lot while the mutex is free is a lost wake-up, since nobody else
 * will unlock.  That check involves no timing (H and C have returned, so
 * any wake they made has happened); only how often the interleaving is
 * hit does.  Before the fix, 7 of 8 runs of the gcc build stranded B, after
 * 19 to 1061 rounds. */

static pz_async_mutex_t tw_m;
static int64_t tw_spin_ns; /* how long a waiter spins before it parks */
/* Round r: H may lock once tw_start is r, and let go (as C may try) once
 * tw_go is r. */
static _Atomic long tw_start, tw_go;
static _Atomic long tw_h_held, tw_h_done, tw_c_done, tw_b_done;
static _Atomic long tw_c_timeouts;
static _Atomic bool tw_stop;

/* Waits until *word reaches r; false if the run ends first. */
static bool tw_wait(_Atomic long *word, long r)
{
    while (atomic_load(word) < r) {
        if (atomic_load(&tw_stop))
            return false;
        sched_yield();
    }
    return true;
}

static void *tw_holder(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    uint64_t rng = 5;
    int64_t est = tw_spin_ns / 2; /* how long C owns WOKEN before it parks */
    for (long r = 1; r <= rounds; r++) {
        if (!tw_wait(&tw_start, r))
            break;
        CHECK_EQ(pz_async_mutex_lock(&tw_m), 0);
        atomic_store(&tw_h_held, r);
        /* Until the main thread has seen B parked and let C go. */
        if (!tw_wait(&tw_go, r)) {
            CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
            break;
        }
        /* C spins on us owning WOKEN, and gives it up (setting PARKED)
         * when its spinning ends.  The unlock must land just before that:
         * after C's last look at the lock word, before its CAS of the
         * waiter word.  So H aims: it learns how long C owns WOKEN (in the
         * rounds where it still holds the lock when C lets WOKEN go) and
         * lets go at a random point of the last 1.2 us before that. */
        bool spinning;
        while (!(spinning = atomic_load(&tw_m.waiters) & PZ__AMUTEX_WOKEN) && atomic_load(&tw_c_done) < r)
            ; /* until C spins (or has given up already) */
        int64_t woken_at = pz_now();
        /* One round in four holds on past the estimate, to learn it
         * again (also when it is too short, which the others cannot
         * see). */
        int64_t target = r % 4 == 0 ? woken_at + 3 * est : woken_at + est - 1200 + (int64_t)(test_rand(&rng) % 1500);
        int64_t cleared_at = 0, now;
        while ((now = pz_now()) < target) {
            if (!cleared_at && !(atomic_load_explicit(&tw_m.waiters, memory_order_relaxed) & PZ__AMUTEX_WOKEN))
                cleared_at = now;
        }
        if (spinning && cleared_at)
            est = (est * 7 + (cleared_at - woken_at)) / 8;
        CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
        atomic_store(&tw_h_done, r);
    }
    return NULL;
}

static void *tw_calibrate_holder(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&tw_m), 0);
    atomic_store(&tw_h_held, 1);
    while (!atomic_load(&tw_stop))
        ;
    CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
    return NULL;
}

static void *tw_timed(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    uint64_t rng = 11;
    for (long r = 1; r <= rounds; r++) {
        if (!tw_wait(&tw_go, r))
            break;
        int e = pz_async_mutex_lock_until(&tw_m, pz_now() + (int64_t)(test_rand(&rng) % 20000));
        if (e == 0) {
            CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
        } else {
            CHECK_EQ(e, -ETIMEDOUT);
            atomic_fetch_add(&tw_c_timeouts, 1);
        }
        atomic_store(&tw_c_done, r);
    }
    return NULL;
}

static void *tw_forever(void *arg)
{
    long rounds = (long)(intptr_t)arg;
    for (long r = 1; r <= rounds; r++) {
        if (!tw_wait(&tw_h_held, r))
            break;
        CHECK_EQ(pz_async_mutex_lock(&tw_m), 0);
        CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
        atomic_store(&tw_b_done, r);
    }
    return NULL;
}

static void test_mutex_timed_waiter_passes_wakeup(void **state)
{
    (void)state;
    /* How long a waiter spins on a running holder before it parks (its
     * lock_until then returns -ETIMEDOUT): the median of seven. */
    atomic_store(&tw_h_held, 0);
    atomic_store(&tw_stop, false);
    pthread_t cal;
    CHECK_EQ(pthread_create(&cal, NULL, tw_calibrate_holder, NULL), 0);
    while (!atomic_load(&tw_h_held))
        sched_yield();
    int64_t spin[7];
    for (int i = 0; i < 7; i++) {
        int64_t t0 = pz_now();
        CHECK_EQ(pz_async_mutex_lock_until(&tw_m, t0), -ETIMEDOUT);
        spin[i] = pz_now() - t0;
        for (int j = i; j > 0 && spin[j] < spin[j - 1]; j--) {
            int64_t x = spin[j];
            spin[j] = spin[j - 1];
            spin[j - 1] = x;
        }
    }
    atomic_store(&tw_stop, true);
    CHECK_EQ(pthread_join(cal, NULL), 0);
    atomic_store(&tw_stop, false);
    atomic_store(&tw_h_held, 0);
    tw_spin_ns = spin[3] > 1000 ? spin[3] : 1000;
    /* The run stops when its time is up. */
    long rounds = 1000000;
    pthread_t th[3];
    CHECK_EQ(pthread_create(&th[0], NULL, tw_holder, (void *)(intptr_t)rounds), 0);
    CHECK_EQ(pthread_create(&th[1], NULL, tw_timed, (void *)(intptr_t)rounds), 0);
    CHECK_EQ(pthread_create(&th[2], NULL, tw_forever, (void *)(intptr_t)rounds), 0);
    int64_t end = pz_now() + 3000 * MS / PLAZA_TEST_SCALE;
    long r, stranded = 0;
    for (r = 1; r <= rounds; r++) {
        atomic_store(&tw_start, r);
        while (atomic_load(&tw_h_held) < r)
            sched_yield();
        wait_lot_waiters(&tw_m, 1); /* B is parked */
        atomic_store(&tw_go, r);
        while (atomic_load(&tw_h_done) < r || atomic_load(&tw_c_done) < r)
            sched_yield();
        if (lot_waiters(&tw_m) > 0 && atomic_load(&tw_m.state) == 0) {
            fprintf(stderr, "round %ld: a waiter is queued on a free mutex (waiter word %#x)\n", r,
                    (unsigned)atomic_load(&tw_m.waiters));
            stranded++;
            /* Let B go, so that the threads can end. */
            CHECK_EQ(pz_async_mutex_lock(&tw_m), 0);
            CHECK_EQ(pz_async_mutex_unlock(&tw_m), 0);
        }
        while (atomic_load(&tw_b_done) < r)
            sched_yield();
        if (stranded || pz_now() >= end)
            break;
    }
    atomic_store(&tw_stop, true);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    fprintf(stderr, "timed waiters: %ld rounds, C timed out %ld times; a waiter spins %.1f us\n", r,
            atomic_load(&tw_c_timeouts), (double)tw_spin_ns / 1e3);
    CHECK_EQ(stranded, 0);
    CHECK(atomic_load(&tw_c_timeouts) > 0);
    CHECK_EQ(atomic_load(&tw_m.state), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_exclusion_10k),
        cmocka_unit_test(test_mutex_storm),
        cmocka_unit_test(test_mutex_fairness_bound),
        cmocka_unit_test(test_mutex_budget_without_parks),
        cmocka_unit_test(test_mutex_stray_unlocks),
        cmocka_unit_test(test_mutex_first_waiter),
        cmocka_unit_test(test_mutex_timed_waiter_passes_wakeup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
