/* Races of the async primitives: mutual exclusion across 10 000 tasks with
 * suspensions inside the section, a fairness bound, permits conserved
 * through storms of timeouts and cancels, no lost notification, every
 * channel item received exactly once, close against waiters, barrier
 * generations and reader-writer exclusion with upgrades. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define US 1000ll
#define MS 1000000ll

static pz_task_t **spawn_n(int n, pz_fn fn, void *(*argf)(int))
{
    pz_task_t **t = malloc((size_t)n * sizeof *t);
    CHECK(t != NULL);
    for (int i = 0; i < n; i++) {
        t[i] = pz_spawn(fn, argf ? argf(i) : NULL);
        CHECK(t[i] != NULL);
    }
    return t;
}

static void join_n(pz_task_t **t, int n)
{
    for (int i = 0; i < n; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    free(t);
}

static void *index_arg(int i)
{
    return (void *)(intptr_t)i;
}

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
    for (int i = 0; i < 4; i++)
        b[i] = pz_spawn(barger, NULL);
    pz_task_t *v[2] = {pz_spawn(victim, NULL), pz_spawn(victim, NULL)};
    CHECK_EQ(pz_join(v[0], NULL), 0);
    int64_t w0 = atomic_load(&fair_max_wait);
    CHECK_EQ(pz_join(v[1], NULL), 0);
    int64_t w1 = atomic_load(&fair_max_wait);
    atomic_store(&fair_stop, true);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pz_join(b[i], NULL), 0);
    int64_t worst = w0 > w1 ? w0 : w1;
    fprintf(stderr, "fairness: longest wait behind 4 bargers %.1f us\n", (double)worst / 1000.0);
    /* Eventual fairness hands over within ~1 ms of waiting; allow for a
     * loaded or sanitised machine. */
    CHECK(worst < 200 * MS);
    return NULL;
}

static void test_mutex_fairness_bound(void **state)
{
    (void)state;
    run_in_runtime(2, fairness_main, NULL);
}

/* ---- the budget when nobody ever parks ----
 * 64 tasks on 2 workers take a short section with some work between, so
 * that a task that finds the lock held wins it by spinning and nobody
 * parks.  Each time a task enters the lock's slow path it counts against
 * its budget and may yield; the tasks that keep winning by the fast path
 * must count too (at their unlock), or the one that yielded waits until
 * each of them has finished.  The iterations are not scaled down for slow
 * builds: the budget's share of a task's run is what the checks see.
 *
 * The rwlock (one operation in 100 a write): readers that enter through
 * their worker's slot never reach the slow path, so only their unlocks can
 * count.  Before they did, tasks ran one after another: the median task
 * ran for 3% of the round, from its first operation to its last, against
 * 98-99% now.  The check: the median task's run is over half the round (a
 * preempted worker only makes runs longer).
 *
 * The mutex: tasks also yield when they lose a CAS, so they interleave
 * either way, and what shows is the longest operation: 8-25% of the round
 * before the first caller to find the mutex held marked it CONTENDED,
 * 1.3-7% now.  The checks: CONTENDED is set by the end of a round, and
 * the longest operation is under an eighth of the round in at least two of
 * three rounds (a worker thread preempted once by the system can make one
 * round's longest operation long). */
#define NB_ITERS 8000

struct budget_case {
    const char *what;
    void (*op)(uint64_t x); /* takes the lock and lets go */
    void (*reset)(void);
    void (*check)(void); /* after each round */
    bool check_spans;    /* else the longest operation */
};
static const struct budget_case *bc;
static _Atomic int64_t bc_max_wait;
static int64_t bc_span[64];

static void *budget_task(void *arg)
{
    uint64_t x = (uint64_t)(intptr_t)arg + 1;
    int64_t worst = 0, start = pz_now();
    for (int i = 0; i < NB_ITERS; i++) {
        int64_t t0 = (i & 15) == 0 ? pz_now() : 0;
        bc->op(x);
        if (t0 && pz_now() - t0 > worst)
            worst = pz_now() - t0;
        for (int k = 0; k < 100; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    bc_span[(intptr_t)arg] = pz_now() - start;
    int64_t cur = atomic_load(&bc_max_wait);
    while (worst > cur && !atomic_compare_exchange_weak(&bc_max_wait, &cur, worst))
        ;
    return (void *)(uintptr_t)x;
}

static void *budget_main(void *arg)
{
    bc = arg;
    int long_rounds = 0;
    for (int round = 0; round < 3; round++) {
        bc->reset();
        atomic_store(&bc_max_wait, 0);
        int64_t t0 = pz_now();
        join_n(spawn_n(64, budget_task, index_arg), 64);
        int64_t run = pz_now() - t0;
        int64_t sorted[64];
        memcpy(sorted, bc_span, sizeof sorted);
        for (int i = 1; i < 64; i++)
            for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
                int64_t t = sorted[j];
                sorted[j] = sorted[j - 1];
                sorted[j - 1] = t;
            }
        fprintf(stderr, "%s: longest operation %.1f us of a %.1f ms round; task runs from %.0f%%, median %.0f%%\n", bc->what,
                (double)atomic_load(&bc_max_wait) / 1e3, (double)run / 1e6, 100.0 * (double)sorted[0] / (double)run,
                100.0 * (double)sorted[32] / (double)run);
        if (bc->check_spans)
            CHECK(sorted[32] > run / 2);
        else if (atomic_load(&bc_max_wait) >= run / 8)
            long_rounds++;
        bc->check();
    }
    CHECK(long_rounds < 2);
    return NULL;
}

static pz_async_mutex_t nb_m;
static long nb_counter;

static void nb_op(uint64_t x)
{
    (void)x;
    CHECK_EQ(pz_async_mutex_lock(&nb_m), 0);
    nb_counter++;
    CHECK_EQ(pz_async_mutex_unlock(&nb_m), 0);
}

static void nb_reset(void)
{
    memset(&nb_m, 0, sizeof nb_m);
    nb_counter = 0;
}

static void nb_check(void)
{
    CHECK_EQ(nb_counter, 64L * NB_ITERS);
    /* Somebody found it held, so every unlock since went through the
     * path that counts against the budget. */
    CHECK(atomic_load(&nb_m.waiters) & PZ__AMUTEX_CONTENDED);
}

static void test_mutex_budget_without_parks(void **state)
{
    (void)state;
    static const struct budget_case mutex_case = {"mutex, no parks", nb_op, nb_reset, nb_check, false};
    run_in_runtime(2, budget_main, (void *)&mutex_case);
}

static pz_async_rwlock_t nbr_l;

static void nbr_op(uint64_t x)
{
    if (x % 100 == 0) {
        CHECK_EQ(pz_async_rwlock_write(&nbr_l), 0);
        CHECK_EQ(pz_async_rwlock_write_unlock(&nbr_l), 0);
    } else {
        CHECK_EQ(pz_async_rwlock_read(&nbr_l), 0);
        CHECK_EQ(pz_async_rwlock_read_unlock(&nbr_l), 0);
    }
}

static void nbr_reset(void)
{
}

static void nbr_check(void)
{
    CHECK_RWLOCK_IDLE(&nbr_l);
}

static void test_rwlock_budget_without_parks(void **state)
{
    (void)state;
    static const struct budget_case rwlock_case = {"rwlock, few parks", nbr_op, nbr_reset, nbr_check, true};
    run_in_runtime(2, budget_main, (void *)&rwlock_case);
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
static _Atomic long fw_round, fw_done;

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
            ;
        atomic_store(&fw_m.state, 0);
        atomic_store(&fw_m.waiters, 0);
        atomic_store(&fw_m.holder, 0);
        CHECK_EQ(pz_async_mutex_lock(&fw_m), 0);
        atomic_store(&fw_round, r);
        fw_busy(test_rand(&rng) % 40000);
        CHECK_EQ(pz_async_mutex_unlock(&fw_m), 0);
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
            ;
        int e = pz_async_mutex_lock_until(&fw_m, pz_now() + 200 * MS);
        if (e == -ETIMEDOUT)
            lost++;
        else
            CHECK_EQ(pz_async_mutex_unlock(&fw_m), 0);
        atomic_store(&fw_done, r);
    }
    CHECK_EQ(pthread_join(h, NULL), 0);
    CHECK_EQ(lost, 0);
}

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

/* ---- channels: exactly once, many producers and consumers ---- */

#define PRODUCERS 6
#define CONSUMERS 5
static pz_chan_t *mc;
static long mc_per;
static _Atomic uint32_t *mc_seen;
static _Atomic uint64_t mc_sum;
static _Atomic long mc_count;

static void *mc_producer(void *arg)
{
    long p = (long)(intptr_t)arg;
    for (long i = 0; i < mc_per; i++) {
        uint64_t v = (uint64_t)(p * mc_per + i);
        if (i % 7 == 0) {
            int r;
            while ((r = pz_chan_send_until(mc, &v, pz_now() + 20 * US)) == -ETIMEDOUT)
                ;
            CHECK_EQ(r, 0);
        } else if (i % 11 == 0) {
            while (pz_chan_try_send(mc, &v) == -EAGAIN)
                pz_yield();
        } else {
            CHECK_EQ(pz_chan_send(mc, &v), 0);
        }
    }
    return NULL;
}

/* Each consumer also checks that every producer's items reach it in the
 * order they were sent (a FIFO channel can interleave producers, never
 * reorder one). */
static void *mc_consumer(void *arg)
{
    long c = (long)(intptr_t)arg;
    uint64_t v;
    long last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++)
        last[p] = -1;
    for (long k = 0;; k++) {
        int r;
        if ((k + c) % 5 == 0)
            r = pz_chan_recv_until(mc, &v, pz_now() + 20 * US);
        else
            r = pz_chan_recv(mc, &v);
        if (r == -ETIMEDOUT)
            continue;
        if (r == -EPIPE)
            return NULL;
        CHECK_EQ(r, 0);
        CHECK(v < (uint64_t)(PRODUCERS * mc_per));
        CHECK(last[v / (uint64_t)mc_per] < (long)(v % (uint64_t)mc_per));
        last[v / (uint64_t)mc_per] = (long)(v % (uint64_t)mc_per);
        CHECK_EQ(atomic_fetch_add(&mc_seen[v], 1), 0);
        atomic_fetch_add(&mc_sum, v);
        atomic_fetch_add(&mc_count, 1);
    }
}

static void *mpmc_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    mc_per = SCALED(40000);
    long total = PRODUCERS * mc_per;
    mc_seen = calloc((size_t)total, sizeof *mc_seen);
    atomic_store(&mc_sum, 0);
    atomic_store(&mc_count, 0);
    mc = pz_chan_create(sizeof(uint64_t), cap);
    CHECK(mc != NULL);
    pz_task_t **c = spawn_n(CONSUMERS, mc_consumer, index_arg);
    pz_task_t **p = spawn_n(PRODUCERS, mc_producer, index_arg);
    join_n(p, PRODUCERS);
    pz_chan_close(mc);
    join_n(c, CONSUMERS);
    CHECK_EQ(atomic_load(&mc_count), total);
    CHECK_EQ(atomic_load(&mc_sum), (uint64_t)total * (uint64_t)(total - 1) / 2);
    for (long i = 0; i < total; i++)
        CHECK_EQ(mc_seen[i], 1);
    pz_chan_destroy(mc);
    free(mc_seen);
    return NULL;
}

static void test_chan_mpmc_exactly_once(void **state)
{
    (void)state;
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)64);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)3);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)1);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)0); /* rendezvous */
}

/* Cancel storm on a rendezvous channel: every send that succeeds was
 * received exactly once, and every receive matches a successful send. */
static pz_chan_t cs_ch;
static _Atomic long cs_sent, cs_recv;

static void *cs_sender(void *arg)
{
    long id = (long)(intptr_t)arg;
    for (long i = 0;; i++) {
        long v = id;
        int r = pz_chan_send_until(&cs_ch, &v, pz_now() + (i % 3) * 30 * US);
        if (r == 0)
            atomic_fetch_add(&cs_sent, 1);
        else if (r == -ECANCELED || r == -EPIPE)
            return NULL;
        else
            CHECK_EQ(r, -ETIMEDOUT);
    }
}

static void *cs_receiver(void *arg)
{
    (void)arg;
    for (long i = 0;; i++) {
        long v;
        int r = pz_chan_recv_until(&cs_ch, &v, pz_now() + (i % 4) * 25 * US);
        if (r == 0)
            atomic_fetch_add(&cs_recv, 1);
        else if (r == -ECANCELED || r == -EPIPE)
            return NULL;
        else
            CHECK_EQ(r, -ETIMEDOUT);
    }
}

static void *cancel_storm_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    uint64_t buf[PZ_CHAN_BUFFER_SIZE(sizeof(long), 3) / 8];
    atomic_store(&cs_sent, 0);
    atomic_store(&cs_recv, 0);
    CHECK_EQ(pz_chan_init(&cs_ch, sizeof(long), cap, cap ? buf : NULL, sizeof buf), 0);
    pz_task_t **s = spawn_n(8, cs_sender, index_arg);
    pz_task_t **r = spawn_n(8, cs_receiver, index_arg);
    uint64_t rng = 7;
    for (int i = 0; i < 12; i++) {
        pz_sleep(2 * MS);
        pz_cancel((i & 1) ? s[test_rand(&rng) % 8] : r[test_rand(&rng) % 8]);
    }
    pz_chan_close(&cs_ch);
    join_n(s, 8);
    join_n(r, 8);
    /* What the cancelled receivers left in the buffer is still there. */
    long v, left = 0;
    while (pz_chan_try_recv(&cs_ch, &v) == 0)
        left++;
    CHECK_EQ(pz_chan_try_recv(&cs_ch, &v), -EPIPE);
    CHECK(left <= (long)cap);
    CHECK(atomic_load(&cs_sent) > 0);
    CHECK_EQ(atomic_load(&cs_sent), atomic_load(&cs_recv) + left);
    CHECK_EQ(atomic_load(&cs_ch.waiting) & ~(uint32_t)(PZ__CHAN_SENDERS_WAIT | PZ__CHAN_RECEIVERS_WAIT), 0);
    CHECK(cs_ch.senders == NULL && cs_ch.receivers == NULL);
    return NULL;
}

static void test_chan_cancel_storm(void **state)
{
    (void)state;
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)0); /* rendezvous */
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)1);
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)3);
}

/* ---- a buffered channel's waiters against the other side's fast path ----
 * One item in flight at a time, so every wake-up is needed.  A ping-pong
 * over two channels of capacity 1, whose echo side polls with try_recv and
 * answers at once, so its send lands while the other side is on its way
 * to waiting for the answer (receivers against pushes); then a sender that
 * sends as fast as it can into a channel of capacity 1 that a polling
 * receiver empties (senders against pops).  Random spins of 0-500 ns move
 * the two sides against each other.  A lost wake-up shows as a timeout:
 * nobody else would send or receive.  The window a waiter's last try
 * closes (between its first try and its setting the waiting bit) is a few
 * nanoseconds wide, and narrower still since a served waiter's bit stays
 * set: dropping that last try still passes here, so src/async/chan.c
 * argues it. */
static pz_chan_t *lw_a, *lw_b;

static void lw_spin(uint64_t *rng)
{
    int64_t end = pz_now() + (int64_t)(test_rand(rng) % 500);
    while (pz_now() < end)
        ;
}

/* A receive that polls; it yields now and then, in case both sides share
 * a worker. */
static void lw_poll_recv(pz_chan_t *ch, uint64_t *v)
{
    for (long n = 1;; n++) {
        int r = pz_chan_try_recv(ch, v);
        if (r == 0)
            return;
        CHECK_EQ(r, -EAGAIN);
        if (n % 256 == 0) {
            if (pz_self())
                pz_yield();
            else
                sched_yield();
        }
    }
}

static void *lw_echo(void *arg)
{
    uint64_t v;
    (void)arg;
    for (long i = 0; i < SCALED(20000); i++) {
        lw_poll_recv(lw_a, &v);
        CHECK_EQ(v, (uint64_t)i);
        CHECK_EQ(pz_chan_send_until(lw_b, &v, pz_now() + 2000 * MS), 0);
    }
    return NULL;
}

static void *lw_drain(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg, v;
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        lw_poll_recv(lw_a, &v);
        CHECK_EQ(v, i);
        if (i % 2 == 0)
            lw_spin(&rng);
    }
    return NULL;
}

static void *lost_wakeup_main(void *arg)
{
    bool threads = arg != NULL;
    uint64_t rng = 3, v;
    lw_a = pz_chan_create(sizeof(uint64_t), 1);
    lw_b = pz_chan_create(sizeof(uint64_t), 1);
    CHECK(lw_a && lw_b);
    /* Ping-pong. */
    pthread_t th;
    pz_task_t *t = NULL;
    if (threads)
        CHECK_EQ(pthread_create(&th, NULL, lw_echo, NULL), 0);
    else
        t = pz_spawn(lw_echo, NULL);
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        CHECK_EQ(pz_chan_send_until(lw_a, &i, pz_now() + 2000 * MS), 0);
        lw_spin(&rng);
        CHECK_EQ(pz_chan_recv_until(lw_b, &v, pz_now() + 2000 * MS), 0);
        CHECK_EQ(v, i);
    }
    if (threads)
        CHECK_EQ(pthread_join(th, NULL), 0);
    else
        CHECK_EQ(pz_join(t, NULL), 0);
    /* A full channel. */
    if (threads)
        CHECK_EQ(pthread_create(&th, NULL, lw_drain, (void *)(intptr_t)12), 0);
    else
        t = pz_spawn(lw_drain, (void *)(intptr_t)12);
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        CHECK_EQ(pz_chan_send_until(lw_a, &i, pz_now() + 2000 * MS), 0);
        if (i % 3 == 0)
            lw_spin(&rng);
    }
    if (threads)
        CHECK_EQ(pthread_join(th, NULL), 0);
    else
        CHECK_EQ(pz_join(t, NULL), 0);
    pz_chan_destroy(lw_a);
    pz_chan_destroy(lw_b);
    return NULL;
}

static void test_chan_no_lost_wakeup(void **state)
{
    (void)state;
    run_in_runtime(2, lost_wakeup_main, NULL);
    run_in_runtime(2, lost_wakeup_main, (void *)1); /* the other side a thread */
}

/* ---- both queues at once ----
 * A channel of capacity 1 holds one item and three senders wait on it;
 * then four receivers start together and each takes one item.  There is an
 * item for every one of them, but while a receiver pops and serves the
 * queued senders, another can find the ring empty and queue: the waiters
 * of both sides are queued at once, and serving one side must look at the
 * other again.  A receiver left waiting beside an item shows as a
 * timeout.  Plain threads, so that preemption opens the windows. */
#define BQ_SENDERS 3
static pz_chan_t *bq_ch;
static _Atomic int bq_go;

static void *bq_sender(void *arg)
{
    (void)arg;
    long v = 2;
    CHECK_EQ(pz_chan_send_until(bq_ch, &v, pz_now() + 2000 * MS), 0);
    return NULL;
}

static void *bq_receiver(void *arg)
{
    (void)arg;
    long v;
    while (!atomic_load(&bq_go))
        ;
    CHECK_EQ(pz_chan_recv_until(bq_ch, &v, pz_now() + 2000 * MS), 0);
    return NULL;
}

static void *both_queues_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < SCALED(600); round++) {
        bq_ch = pz_chan_create(sizeof(long), 1);
        CHECK(bq_ch != NULL);
        long x = 1;
        CHECK_EQ(pz_chan_send(bq_ch, &x), 0);
        atomic_store(&bq_go, 0);
        pthread_t s[BQ_SENDERS], r[BQ_SENDERS + 1];
        for (int i = 0; i < BQ_SENDERS; i++)
            CHECK_EQ(pthread_create(&s[i], NULL, bq_sender, NULL), 0);
        pz_sleep(300 * US); /* the senders queue */
        for (int i = 0; i <= BQ_SENDERS; i++)
            CHECK_EQ(pthread_create(&r[i], NULL, bq_receiver, NULL), 0);
        atomic_store(&bq_go, 1);
        for (int i = 0; i <= BQ_SENDERS; i++)
            CHECK_EQ(pthread_join(r[i], NULL), 0);
        for (int i = 0; i < BQ_SENDERS; i++)
            CHECK_EQ(pthread_join(s[i], NULL), 0);
        CHECK_EQ(pz_chan_len(bq_ch), 0);
        pz_chan_destroy(bq_ch);
    }
    return NULL;
}

static void test_chan_both_queues(void **state)
{
    (void)state;
    run_in_runtime(2, both_queues_main, NULL);
}

/* ---- close against running senders and receivers ----
 * Senders and receivers (tasks and threads) run flat out on a small
 * buffered channel when it is closed.  Every send that returned 0 must be
 * received exactly once: a send completes before the close or fails, and
 * receivers drain the buffer before they see -EPIPE. */
static pz_chan_t *cr_ch;
static _Atomic long cr_sent, cr_recv;

static void *cr_sender(void *arg)
{
    (void)arg;
    long n = 0, v = 1;
    int r;
    while ((r = pz_chan_send(cr_ch, &v)) == 0)
        n++;
    CHECK_EQ(r, -EPIPE);
    atomic_fetch_add(&cr_sent, n);
    return NULL;
}

static void *cr_receiver(void *arg)
{
    (void)arg;
    long n = 0, v;
    int r;
    while ((r = pz_chan_recv(cr_ch, &v)) == 0) {
        CHECK_EQ(v, 1);
        n++;
    }
    CHECK_EQ(r, -EPIPE);
    atomic_fetch_add(&cr_recv, n);
    return NULL;
}

static void *close_race_main(void *arg)
{
    (void)arg;
    uint64_t rng = 5;
    for (int round = 0; round < SCALED(40); round++) {
        atomic_store(&cr_sent, 0);
        atomic_store(&cr_recv, 0);
        cr_ch = pz_chan_create(sizeof(long), 1 + (size_t)(round % 3));
        CHECK(cr_ch != NULL);
        pthread_t th[2];
        CHECK_EQ(pthread_create(&th[0], NULL, cr_sender, NULL), 0);
        CHECK_EQ(pthread_create(&th[1], NULL, cr_receiver, NULL), 0);
        pz_task_t **s = spawn_n(4, cr_sender, NULL);
        pz_task_t **r = spawn_n(3, cr_receiver, NULL);
        pz_sleep((int64_t)(test_rand(&rng) % 300) * US);
        pz_chan_close(cr_ch);
        join_n(s, 4);
        join_n(r, 3);
        CHECK_EQ(pthread_join(th[0], NULL), 0);
        CHECK_EQ(pthread_join(th[1], NULL), 0);
        CHECK_EQ(atomic_load(&cr_sent), atomic_load(&cr_recv));
        CHECK_EQ(pz_chan_len(cr_ch), 0);
        pz_chan_destroy(cr_ch);
    }
    return NULL;
}

static void test_chan_close_race(void **state)
{
    (void)state;
    run_in_runtime(2, close_race_main, NULL);
}

/* Close wakes every waiter: 100 receivers and 100 senders. */
static pz_chan_t cw_rx, cw_tx;

static void *cw_recv(void *arg)
{
    (void)arg;
    long v;
    CHECK_EQ(pz_chan_recv(&cw_rx, &v), -EPIPE);
    return NULL;
}

static void *cw_send(void *arg)
{
    (void)arg;
    long v = 1;
    CHECK_EQ(pz_chan_send(&cw_tx, &v), -EPIPE);
    return NULL;
}

/* A buffered channel (capacity 1) is filled first, so its senders wait;
 * its one item is still received after the close. */
static void *close_wakes_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    uint64_t rx_buf[2], tx_buf[2];
    long v = 9;
    CHECK_EQ(pz_chan_init(&cw_rx, sizeof(long), cap, rx_buf, sizeof rx_buf), 0);
    CHECK_EQ(pz_chan_init(&cw_tx, sizeof(long), cap, tx_buf, sizeof tx_buf), 0);
    if (cap)
        CHECK_EQ(pz_chan_send(&cw_tx, &v), 0);
    pz_task_t **r = spawn_n(100, cw_recv, NULL);
    pz_task_t **s = spawn_n(100, cw_send, NULL);
    pz_sleep(5 * MS);
    pz_chan_close(&cw_rx);
    pz_chan_close(&cw_tx);
    join_n(r, 100);
    join_n(s, 100);
    if (cap) {
        v = 0;
        CHECK_EQ(pz_chan_recv(&cw_tx, &v), 0);
        CHECK_EQ(v, 9);
    }
    CHECK_EQ(pz_chan_recv(&cw_tx, &v), -EPIPE);
    return NULL;
}

static void test_chan_close_wakes_all(void **state)
{
    (void)state;
    run_in_runtime(2, close_wakes_main, (void *)(intptr_t)0);
    run_in_runtime(2, close_wakes_main, (void *)(intptr_t)1);
}

/* Tasks and plain threads on one channel. */
static void *thread_send(void *arg)
{
    (void)arg;
    for (uint64_t i = 0; i < (uint64_t)mc_per; i++) {
        uint64_t v = i;
        CHECK_EQ(pz_chan_send(mc, &v), 0);
    }
    return NULL;
}

static void *mixed_chan_main(void *arg)
{
    (void)arg;
    mc_per = SCALED(20000);
    mc = pz_chan_create(sizeof(uint64_t), 4);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, thread_send, NULL), 0);
    uint64_t sum = 0, v;
    for (long i = 0; i < 2 * mc_per; i++) {
        CHECK_EQ(pz_chan_recv(mc, &v), 0);
        sum += v;
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ(sum, (uint64_t)mc_per * (uint64_t)(mc_per - 1));
    pz_chan_destroy(mc);
    return NULL;
}

static void test_chan_threads_and_tasks(void **state)
{
    (void)state;
    run_in_runtime(2, mixed_chan_main, NULL);
}

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

/* ---- rwlock: no writer beside readers; upgrades ---- */

static pz_async_rwlock_t rw;
static _Atomic long rw_readers, rw_writers;
static long rw_data;

static void *rw_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 7919 + 3;
    for (int i = 0; i < SCALED(2000); i++) {
        unsigned k = (unsigned)(test_rand(&rng) % 10);
        if (k < 6) {
            int r = (k == 0) ? pz_async_rwlock_read_until(&rw, pz_now() + 30 * US) : pz_async_rwlock_read(&rw);
            if (r == -ETIMEDOUT)
                continue;
            CHECK_EQ(r, 0);
            atomic_fetch_add(&rw_readers, 1);
            CHECK_EQ(atomic_load(&rw_writers), 0);
            if (k == 1)
                pz_yield();
            atomic_fetch_sub(&rw_readers, 1);
            CHECK_EQ(pz_async_rwlock_read_unlock(&rw), 0);
        } else if (k < 8) {
            int r = (k == 6) ? pz_async_rwlock_write_until(&rw, pz_now() + 30 * US) : pz_async_rwlock_write(&rw);
            if (r == -ETIMEDOUT)
                continue;
            CHECK_EQ(r, 0);
            CHECK_EQ(atomic_fetch_add(&rw_writers, 1), 0);
            CHECK_EQ(atomic_load(&rw_readers), 0);
            long d = rw_data;
            if (k == 7)
                pz_yield();
            rw_data = d + 1;
            atomic_fetch_sub(&rw_writers, 1);
            if (k == 7) {
                CHECK_EQ(pz_async_rwlock_downgrade(&rw), 0);
                CHECK_EQ(pz_async_rwlock_read_unlock(&rw), 0);
            } else {
                CHECK_EQ(pz_async_rwlock_write_unlock(&rw), 0);
            }
        } else {
            CHECK_EQ(pz_async_rwlock_upgradable_read(&rw), 0);
            atomic_fetch_add(&rw_readers, 1);
            CHECK_EQ(atomic_load(&rw_writers), 0);
            long d = rw_data;
            atomic_fetch_sub(&rw_readers, 1);
            int r = (k == 8) ? pz_async_rwlock_upgrade_until(&rw, pz_now() + 30 * US) : pz_async_rwlock_upgrade(&rw);
            if (r == -ETIMEDOUT) {
                CHECK_EQ(pz_async_rwlock_upgradable_unlock(&rw), 0);
                continue;
            }
            CHECK_EQ(r, 0);
            CHECK_EQ(atomic_fetch_add(&rw_writers, 1), 0);
            CHECK_EQ(atomic_load(&rw_readers), 0);
            CHECK_EQ(rw_data, d); /* nobody wrote since the upgradable read */
            rw_data = d + 1;
            atomic_fetch_sub(&rw_writers, 1);
            CHECK_EQ(pz_async_rwlock_write_unlock(&rw), 0);
        }
    }
    return NULL;
}

static void *rw_main(void *arg)
{
    (void)arg;
    join_n(spawn_n(48, rw_task, index_arg), 48);
    CHECK_RWLOCK_IDLE(&rw);
    return NULL;
}

/* ---- rwlock storm: barging, spinning, waiting writers, timeouts,
 * cancels and threads; the word ends at 0 (no waiting-writer count, WOKEN,
 * PARKED or STARVING left behind) ---- */

static pz_async_rwlock_t rs;
static _Atomic long rs_readers, rs_writers;

static void rs_read_section(uint64_t *rng)
{
    atomic_fetch_add(&rs_readers, 1);
    CHECK_EQ(atomic_load(&rs_writers), 0);
    if (test_rand(rng) % 64 == 0)
        pz_yield();
    atomic_fetch_sub(&rs_readers, 1);
    CHECK_EQ(pz_async_rwlock_read_unlock(&rs), 0);
}

static void rs_write_section(uint64_t *rng)
{
    CHECK_EQ(atomic_fetch_add(&rs_writers, 1), 0);
    CHECK_EQ(atomic_load(&rs_readers), 0);
    if (test_rand(rng) % 64 == 0)
        pz_yield();
    atomic_fetch_sub(&rs_writers, 1);
    CHECK_EQ(pz_async_rwlock_write_unlock(&rs), 0);
}

static int rs_deadline_or_forever(uint64_t *rng, int64_t *dl)
{
    *dl = (test_rand(rng) & 1) ? PZ_FOREVER : pz_now() + (int64_t)(test_rand(rng) % 50) * US;
    return 0;
}

static void *rs_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 2654435761u + 3;
    for (int i = 0; i < SCALED(1500); i++) {
        int64_t dl;
        rs_deadline_or_forever(&rng, &dl);
        unsigned what = (unsigned)(test_rand(&rng) % 10);
        int r;
        if (what < 7) {
            r = pz_async_rwlock_read_until(&rs, dl);
            if (r == 0)
                rs_read_section(&rng);
        } else if (what < 9) {
            r = pz_async_rwlock_write_until(&rs, dl);
            if (r == 0)
                rs_write_section(&rng);
        } else {
            r = pz_async_rwlock_upgradable_read_until(&rs, dl);
            if (r == 0) {
                atomic_fetch_add(&rs_readers, 1);
                CHECK_EQ(atomic_load(&rs_writers), 0);
                atomic_fetch_sub(&rs_readers, 1);
                int u = pz_async_rwlock_upgrade_until(&rs, pz_now() + (int64_t)(test_rand(&rng) % 50) * US);
                if (u == 0) {
                    rs_write_section(&rng);
                } else {
                    if (u != -ETIMEDOUT && u != -ECANCELED)
                        fprintf(stderr, "upgrade returned %d, state %#lx\n", u, (unsigned long)atomic_load(&rs.state));
                    CHECK(u == -ETIMEDOUT || u == -ECANCELED);
                    CHECK_EQ(pz_async_rwlock_upgradable_unlock(&rs), 0);
                }
            }
        }
        if (r == -ECANCELED)
            return NULL;
        CHECK(r == 0 || r == -ETIMEDOUT);
    }
    return NULL;
}

static void *rs_thread(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg;
    for (int i = 0; i < SCALED(1500); i++) {
        if (test_rand(&rng) % 4 == 0) {
            CHECK_EQ(pz_async_rwlock_write(&rs), 0);
            rs_write_section(&rng);
        } else {
            CHECK_EQ(pz_async_rwlock_read(&rs), 0);
            rs_read_section(&rng);
        }
    }
    return NULL;
}

static void *rs_main(void *arg)
{
    (void)arg;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, rs_thread, (void *)(intptr_t)(i + 77)), 0);
    int n = 64;
    pz_task_t **t = spawn_n(n, rs_task, index_arg);
    uint64_t rng = 11;
    for (int i = 0; i < 20; i++) {
        pz_sleep((int64_t)(test_rand(&rng) % 200) * US);
        pz_cancel(t[test_rand(&rng) % (uint64_t)n]);
    }
    join_n(t, n);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_RWLOCK_IDLE(&rs);
    return NULL;
}

static void test_rwlock_storm(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++)
        run_in_runtime(2, rs_main, NULL);
}

/* ---- rwlock hammer: tight loops, 10% writers, 64 tasks on 2 workers ----
 * The pattern of the async_rwlock benchmark, which found a lost wake-up
 * the storm above did not: a woken reader giving WOKEN back while the lock
 * was free and a parked writer was counted as waiting. */

static pz_async_rwlock_t rh;
static long rh_data[4];
static _Atomic long rh_writes;

static void *rh_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 2654435761u + 5;
    long writes = 0;
    long torn = 0;
    for (int i = 0; i < SCALED(40000); i++) {
        if (test_rand(&rng) % 10 == 0) {
            CHECK_EQ(pz_async_rwlock_write(&rh), 0);
            for (int k = 0; k < 4; k++)
                rh_data[k]++;
            CHECK_EQ(pz_async_rwlock_write_unlock(&rh), 0);
            writes++;
        } else {
            CHECK_EQ(pz_async_rwlock_read(&rh), 0);
            long a = rh_data[0], b = rh_data[1], c = rh_data[2], d = rh_data[3];
            pz_async_rwlock_read_unlock(&rh);
            torn += !(a == b && b == c && c == d);
        }
    }
    CHECK_EQ(torn, 0);
    atomic_fetch_add(&rh_writes, writes);
    return NULL;
}

static void *rh_main(void *arg)
{
    (void)arg;
    join_n(spawn_n(64, rh_task, index_arg), 64);
    CHECK_EQ(rh_data[0], atomic_load(&rh_writes));
    CHECK_RWLOCK_IDLE(&rh);
    return NULL;
}

static void test_rwlock_hammer(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        memset(rh_data, 0, sizeof rh_data);
        atomic_store(&rh_writes, 0);
        run_in_runtime(2, rh_main, NULL);
    }
}

/* ---- rwlock: a writer is not starved by a stream of readers ---- */

static pz_async_rwlock_t wf;
static _Atomic bool wf_stop;

static void *wf_reader(void *arg)
{
    (void)arg;
    /* Readers never contend with each other, so they take the fast path
     * and never suspend on their own; the yield now and then is the rest
     * of a real task's loop (without it, no task would ever let the
     * writer's timer fire: tasks are not preempted). */
    for (long k = 0; !atomic_load_explicit(&wf_stop, memory_order_relaxed); k++) {
        CHECK_EQ(pz_async_rwlock_read(&wf), 0);
        for (volatile int i = 0; i < 50; i++)
            ;
        CHECK_EQ(pz_async_rwlock_read_unlock(&wf), 0);
        if (k % 64 == 0)
            pz_yield();
    }
    return NULL;
}

static void *wf_main(void *arg)
{
    (void)arg;
    pz_task_t *r[6];
    for (int i = 0; i < 6; i++)
        r[i] = pz_spawn(wf_reader, NULL);
    int64_t worst = 0;
    for (int i = 0; i < SCALED(200); i++) {
        pz_sleep(20 * US);
        int64_t t0 = pz_now();
        CHECK_EQ(pz_async_rwlock_write(&wf), 0);
        int64_t w = pz_now() - t0;
        if (w > worst)
            worst = w;
        CHECK_EQ(pz_async_rwlock_write_unlock(&wf), 0);
    }
    atomic_store(&wf_stop, true);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(pz_join(r[i], NULL), 0);
    fprintf(stderr, "rwlock: longest writer wait behind 6 readers %.1f us\n", (double)worst / 1000.0);
    CHECK(worst < 200 * MS);
    CHECK_RWLOCK_IDLE(&wf);
    return NULL;
}

static void test_rwlock_writer_not_starved(void **state)
{
    (void)state;
    run_in_runtime(2, wf_main, NULL);
}

/* ---- rwlock read slots: holds in the slots and in the word ----
 * Readers on workers hold a shared lock through their worker's read slots
 * (src/async/rwlock.c).  Here tasks hold one to three locks at once across
 * yields and sleeps (so they move between workers while holding, and a
 * worker can run out of slots), writers revoke the slots, upgradable
 * readers close them, and plain threads read and write beside the tasks. */

#define SL_LOCKS 3
static pz_async_rwlock_t sl[SL_LOCKS];
static _Atomic long sl_readers[SL_LOCKS], sl_writers[SL_LOCKS];
static long sl_data[SL_LOCKS];
static _Atomic bool sl_stop;

static void sl_write(int j, bool pause)
{
    CHECK_EQ(atomic_fetch_add(&sl_writers[j], 1), 0);
    CHECK_EQ(atomic_load(&sl_readers[j]), 0);
    long d = sl_data[j];
    if (pause)
        pz_yield();
    sl_data[j] = d + 1;
    atomic_fetch_sub(&sl_writers[j], 1);
}

static void *sl_task(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg * 40503u + 11;
    for (int i = 0; i < SCALED(3000); i++) {
        unsigned k = (unsigned)(test_rand(&rng) % 16);
        if (k < 11) {
            /* In order, so that readers holding several wait for no cycle. */
            int n = 1 + (int)(k % SL_LOCKS);
            for (int j = 0; j < n; j++) {
                CHECK_EQ(pz_async_rwlock_read(&sl[j]), 0);
                atomic_fetch_add(&sl_readers[j], 1);
                CHECK_EQ(atomic_load(&sl_writers[j]), 0);
            }
            if (k % 4 == 0)
                pz_yield();
            else if (k % 4 == 1)
                pz_sleep((int64_t)(test_rand(&rng) % 20) * US);
            for (int j = n - 1; j >= 0; j--) {
                CHECK_EQ(atomic_load(&sl_writers[j]), 0);
                atomic_fetch_sub(&sl_readers[j], 1);
                CHECK_EQ(pz_async_rwlock_read_unlock(&sl[j]), 0);
            }
        } else if (k < 14) {
            int j = (int)(k % SL_LOCKS);
            if (k == 11) {
                if (!pz_async_rwlock_try_write(&sl[j]))
                    continue;
            } else if (pz_async_rwlock_write_until(&sl[j], pz_now() + 40 * US) != 0) {
                continue;
            }
            sl_write(j, k == 12);
            CHECK_EQ(pz_async_rwlock_write_unlock(&sl[j]), 0);
        } else {
            int j = (int)(k % SL_LOCKS);
            CHECK_EQ(pz_async_rwlock_upgradable_read(&sl[j]), 0);
            atomic_fetch_add(&sl_readers[j], 1);
            CHECK_EQ(atomic_load(&sl_writers[j]), 0);
            atomic_fetch_sub(&sl_readers[j], 1);
            CHECK_EQ(pz_async_rwlock_upgrade(&sl[j]), 0);
            sl_write(j, false);
            CHECK_EQ(pz_async_rwlock_write_unlock(&sl[j]), 0);
        }
    }
    return NULL;
}

static void *sl_thread(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg + 77;
    while (!atomic_load(&sl_stop)) {
        int j = (int)(test_rand(&rng) % SL_LOCKS);
        if (test_rand(&rng) % 4 == 0) {
            CHECK_EQ(pz_async_rwlock_write(&sl[j]), 0);
            sl_write(j, false);
            CHECK_EQ(pz_async_rwlock_write_unlock(&sl[j]), 0);
        } else {
            CHECK_EQ(pz_async_rwlock_read(&sl[j]), 0);
            atomic_fetch_add(&sl_readers[j], 1);
            CHECK_EQ(atomic_load(&sl_writers[j]), 0);
            atomic_fetch_sub(&sl_readers[j], 1);
            CHECK_EQ(pz_async_rwlock_read_unlock(&sl[j]), 0);
        }
    }
    return NULL;
}

static pz_barrier_t sl_held, sl_release;

static void *sl_holder(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_rwlock_read(&sl[0]), 0);
    pz_barrier_wait(&sl_held);
    pz_barrier_wait(&sl_release);
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), 0);
    return NULL;
}

static void *sl_main(void *arg)
{
    (void)arg;
    /* Twelve readers hold the lock at once: more than one worker's slots,
     * so some are in the slots and some in the word, and together they
     * are all counted. */
    pz_barrier_init(&sl_held, 13);
    pz_barrier_init(&sl_release, 13);
    pz_task_t **h = spawn_n(12, sl_holder, index_arg);
    pz_barrier_wait(&sl_held);
    CHECK_EQ(pz_async_rwlock_readers(&sl[0]), 12);
    uintptr_t word = atomic_load(&sl[0].state);
    CHECK(word & PZ__ARW_SLOTS);
    CHECK((word >> PZ__ARW_READER_SHIFT) < 12);
    CHECK(!pz_async_rwlock_try_write(&sl[0])); /* revokes: all in the word now */
    CHECK_EQ(atomic_load(&sl[0].state) >> PZ__ARW_READER_SHIFT, 12);
    CHECK_EQ(pz_async_rwlock_readers(&sl[0]), 12);
    pz_barrier_wait(&sl_release);
    join_n(h, 12);
    CHECK_RWLOCK_IDLE(&sl[0]);

    /* Slots open and empty: the lock is free for a writer. */
    CHECK_EQ(pz_async_rwlock_read(&sl[0]), 0);
    CHECK(pz_async_rwlock_try_read(&sl[0]));
    CHECK(atomic_load(&sl[0].state) & PZ__ARW_SLOTS);
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), 0);
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), 0);
    CHECK(pz_async_rwlock_try_write(&sl[0]));
    CHECK_EQ(pz_async_rwlock_write_unlock(&sl[0]), 0);
    CHECK_RWLOCK_IDLE(&sl[0]);

    /* An unlock nobody holds, with the slots open: reported, nothing lost. */
    CHECK_EQ(pz_async_rwlock_read(&sl[0]), 0);
    CHECK(pz_async_rwlock_try_read(&sl[0]));
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), 0);
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), 0);
    capture_stderr_begin();
    CHECK_EQ(pz_async_rwlock_read_unlock(&sl[0]), -EPERM);
    CHECK(strstr(capture_stderr_end(), "pz_async_rwlock_read_unlock") != NULL);
    CHECK_RWLOCK_IDLE(&sl[0]);

    /* The storm. */
    pthread_t th[2];
    atomic_store(&sl_stop, false);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, sl_thread, (void *)(intptr_t)i), 0);
    join_n(spawn_n(40, sl_task, index_arg), 40);
    atomic_store(&sl_stop, true);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    for (int j = 0; j < SL_LOCKS; j++) {
        CHECK_RWLOCK_IDLE(&sl[j]);
        CHECK_EQ(atomic_load(&sl_readers[j]), 0);
    }
    return NULL;
}

static void test_rwlock_read_slots(void **state)
{
    (void)state;
    run_in_runtime(4, sl_main, NULL);
}

/* ---- a plain thread walks the workers while runtimes come and go ----
 * Writers that revoke read slots, pz_async_rwlock_readers and spinners
 * that ask whether a holder runs all walk the running runtime's workers,
 * from any thread.  A plain thread does that here in a loop while the
 * main thread starts and ends short runtimes; the runtime must not be
 * freed under the walk (ASan reports it if it is). */

static pz_async_rwlock_t pin_l;
static _Atomic bool pin_stop;

static void *pin_thread(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load_explicit(&pin_stop, memory_order_relaxed)) {
        CHECK_EQ(pz_async_rwlock_write(&pin_l), 0);
        CHECK_EQ(pz_async_rwlock_write_unlock(&pin_l), 0);
        n += (long)pz_async_rwlock_readers(&pin_l);
    }
    return (void *)n;
}

static void *pin_reader(void *arg)
{
    (void)arg;
    for (int i = 0; i < 50; i++) {
        CHECK_EQ(pz_async_rwlock_read(&pin_l), 0);
        pz_yield();
        CHECK_EQ(pz_async_rwlock_read_unlock(&pin_l), 0);
    }
    return NULL;
}

static void *pin_main(void *arg)
{
    (void)arg;
    join_n(spawn_n(4, pin_reader, index_arg), 4);
    return NULL;
}

static void test_runtime_pinned_while_walked(void **state)
{
    (void)state;
    pthread_t th;
    atomic_store(&pin_stop, false);
    CHECK_EQ(pthread_create(&th, NULL, pin_thread, NULL), 0);
    for (int round = 0; round < SCALED(200); round++)
        run_in_runtime(2, pin_main, NULL);
    atomic_store(&pin_stop, true);
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK_RWLOCK_IDLE(&pin_l);
}

static void test_rwlock_exclusion(void **state)
{
    (void)state;
    run_in_runtime(2, rw_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_exclusion_10k),
        cmocka_unit_test(test_mutex_storm),
        cmocka_unit_test(test_mutex_fairness_bound),
        cmocka_unit_test(test_mutex_budget_without_parks),
        cmocka_unit_test(test_rwlock_budget_without_parks),
        cmocka_unit_test(test_mutex_first_waiter),
        cmocka_unit_test(test_mutex_stray_unlocks),
        cmocka_unit_test(test_semaphore_conservation),
        cmocka_unit_test(test_semaphore_fast_paths),
        cmocka_unit_test(test_notify_no_lost_wakeup),
        cmocka_unit_test(test_chan_mpmc_exactly_once),
        cmocka_unit_test(test_chan_cancel_storm),
        cmocka_unit_test(test_chan_close_wakes_all),
        cmocka_unit_test(test_chan_close_race),
        cmocka_unit_test(test_chan_no_lost_wakeup),
        cmocka_unit_test(test_chan_both_queues),
        cmocka_unit_test(test_chan_threads_and_tasks),
        cmocka_unit_test(test_barrier_generations),
        cmocka_unit_test(test_rwlock_exclusion),
        cmocka_unit_test(test_rwlock_storm),
        cmocka_unit_test(test_rwlock_hammer),
        cmocka_unit_test(test_rwlock_writer_not_starved),
        cmocka_unit_test(test_rwlock_read_slots),
        cmocka_unit_test(test_runtime_pinned_while_walked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
