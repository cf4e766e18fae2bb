/* The advisor's counting and sampling while its inline paths run.
 *
 * With the advisor on, an uncontended acquisition whose (lock, site) is
 * the thread's last and whose hold is not to be timed is counted inline,
 * by the slot's countdown (include/plaza/runtime.h); the rest goes out of
 * line.  These tests take each lock past its first timed holds (every
 * hold of a lock is timed until it has 64), so that the inline paths run,
 * and check:
 *
 *   counts      tasks on two workers and plain threads take many locks at
 *               two sites each, more (lock, site) pairs than a thread's
 *               slots, so slots change hands: every lock's acquisitions
 *               (and a pz_rwlock's shared ones) are exact, and about one
 *               hold in N (PLAZA_ADVISOR_SAMPLE=16 here) is timed.
 *   gave_up     a waiter whose lock call starts inline and whose first
 *               attempt fails (the lock is held) times out: the count and
 *               held-lock record the inline path wrote are undone (the
 *               acquisitions stay exact, and the waiter, which then
 *               sleeps, is not reported as suspending with a sync lock),
 *               for pz_mutex_lock_until and pz_rwlock_write_until.
 *
 *   contended   a task whose lock call starts inline finds the mutex held
 *               by a plain thread, which lets go only once the task's
 *               worker has parked on it, in every round: contended is the
 *               number of rounds and owner changes the number of handovers,
 *               the parked worker's time is in blocked_worker_ns; then the
 *               task takes other locks at one site, which most likely takes
 *               its slot for another pair (its acquisitions move to the
 *               lock's record) and the figures must not change.
 *
 *   owners      two threads take turns at a mutex: with every hold timed
 *               the owner changes are counted exactly; with one hold in
 *               16 timed, the sampled estimate is near the count; a lock
 *               one thread takes has one change, its first acquisition.
 *
 *   spin waits  a thread whose lock call finds the mutex held for a few
 *               microseconds more, in each of 1 000 rounds: most waits end
 *               in the pause-spin and only a sample of them is timed, each
 *               standing for PZ__WAIT_SAMPLE_GAP; the histogram holds about
 *               as many waits as were contended (and the weights
 *               themselves, through the hook: untimed, sampled, parked).
 *
 * After each, no hold is left timed (pz__observe_sw.timed_now, the count the
 * observed unlocks test before they call out, is back to 0).
 *
 * The waits are forced (the holder keeps the lock until the waiter's
 * attempt has ended); the sampling bounds are a factor of 2 either side
 * of the expected count, thousands of samples wide. */
#include "helpers.h"
#include "advisor_json.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAMPLE_N 16
#define LOCKS 96 /* two sites each: 192 pairs, over a thread's 128 slots */
#define TASKS 8
#define THREADS 3
#define ROUNDS_PER SCALED(400)
#define HOT_ITERS SCALED(40000)

static pz_mutex_t locks[LOCKS];
static pz_rwlock_t rw;
static pz_mutex_t hot;
static uint64_t counters[LOCKS], hot_counter, rw_value;
static _Atomic uint64_t rw_reads;

/* One pass over every lock, at two sites (the two lock calls), then the
 * hot mutex and the rwlock. */
static void workload(uint64_t seed)
{
    for (int r = 0; r < ROUNDS_PER; r++) {
        for (int i = 0; i < LOCKS; i++) {
            pz_mutex_t *m = &locks[(i + (int)seed) % LOCKS];
            if ((r + i) & 1) {
                pz_mutex_lock(m);
                counters[m - locks]++;
                pz_mutex_unlock(m);
            } else {
                CHECK_EQ(pz_mutex_lock_until(m, PZ_FOREVER), 0);
                counters[m - locks]++;
                pz_mutex_unlock(m);
            }
        }
    }
    uint64_t reads = 0;
    for (int i = 0; i < HOT_ITERS; i++) {
        pz_mutex_lock(&hot);
        hot_counter++;
        pz_mutex_unlock(&hot);
        if (i % 8 == 0) {
            pz_rwlock_write(&rw);
            rw_value++;
            pz_rwlock_write_unlock(&rw);
        } else {
            pz_rwlock_read(&rw);
            CHECK(rw_value <= (uint64_t)(TASKS + THREADS) * HOT_ITERS);
            pz_rwlock_read_unlock(&rw);
            reads++;
        }
    }
    atomic_fetch_add(&rw_reads, reads);
}

static void *count_task(void *arg)
{
    workload((uint64_t)(uintptr_t)arg);
    return NULL;
}

static void *count_thread(void *arg)
{
    workload((uint64_t)(uintptr_t)arg);
    return NULL;
}

static void *counts_main(void *arg)
{
    (void)arg;
    pz_task_t **t = spawn_n(TASKS, count_task, index_arg);
    join_n(t, TASKS);
    return NULL;
}

static void test_counts(void **state)
{
    (void)state;
    CHECK(setenv("PLAZA_ADVISOR_SAMPLE", "16", 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    char name[32];
    for (int i = 0; i < LOCKS; i++) {
        snprintf(name, sizeof name, "lock%d", i);
        CHECK(pz_lock_name(&locks[i], name) == 0);
    }
    CHECK(pz_lock_name(&hot, "hot") == 0);
    CHECK(pz_lock_name(&rw, "rw") == 0);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, count_thread, (void *)(uintptr_t)(TASKS + i)) == 0);
    run_in_runtime(2, counts_main, NULL);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(th[i], NULL) == 0);

    const int64_t takers = TASKS + THREADS;
    json_t *root = report_json();
    for (int i = 0; i < LOCKS; i++) {
        snprintf(name, sizeof name, "lock%d", i);
        json_t *l = named(root, "locks", name);
        CHECK_EQ(counters[i], (uint64_t)(takers * ROUNDS_PER));
        CHECK_EQ(num(l, "acquisitions", NULL), takers * ROUNDS_PER);
        CHECK(strcmp(str(l, "verdict"), "data") == 0);
        /* The sites' counts add up to the lock's. */
        json_t *sites = json_object_get(l, "sites");
        CHECK(json_array_size(sites) == 2);
        CHECK_EQ(num(json_array_get(sites, 0), "acquisitions", NULL) +
                     num(json_array_get(sites, 1), "acquisitions", NULL),
                 takers * ROUNDS_PER);
    }
    json_t *l = named(root, "locks", "hot");
    int64_t n = takers * HOT_ITERS;
    CHECK_EQ(hot_counter, (uint64_t)n);
    CHECK_EQ(num(l, "acquisitions", NULL), n);
    int64_t timed = num(l, "timed_holds", NULL);
    /* The first 64, then about one in SAMPLE_N. */
    fprintf(stderr, "hot: %lld acquisitions, %lld timed (expected about %lld)\n", (long long)n, (long long)timed,
            (long long)(64 + n / SAMPLE_N));
    CHECK(timed >= 64 + n / SAMPLE_N / 2);
    CHECK(timed <= 64 + 2 * n / SAMPLE_N);
    CHECK(strcmp(str(l, "verdict"), "data") == 0);

    l = named(root, "locks", "rw");
    int64_t reads = (int64_t)atomic_load(&rw_reads);
    CHECK_EQ(num(l, "acquisitions", NULL), n);
    CHECK_EQ(num(l, "shared", NULL), reads);
    CHECK_EQ((int64_t)rw_value, n - reads);
    CHECK(num(l, "timed_shared", NULL) >= reads / SAMPLE_N / 2);
    CHECK(strcmp(str(l, "verdict"), "data") == 0);
    json_decref(root);
    /* Every timed hold ended: the unlocks' filter is back to 0 (else every
     * later unlock would call out). */
    CHECK_EQ(atomic_load(&pz__observe_sw.timed_now), 0);
    pz_advisor_disable();
    CHECK(unsetenv("PLAZA_ADVISOR_SAMPLE") == 0);
}

/* ---- a failed first attempt on the inline path ---- */

#define WARM 200 /* the waiter's acquisitions before its waits: past the first timed holds */
#define WAITS 6

static pz_mutex_t wait_m;
static pz_rwlock_t wait_rw;
static _Atomic int held_round, tried_round, warmed;
static _Atomic int suspend_reports;

static void collect(const char *line, void *arg)
{
    (void)arg;
    if (strstr(line, "suspends while holding"))
        atomic_fetch_add(&suspend_reports, 1);
    fprintf(stderr, "plaza: %s\n", line);
}

/* A plain thread: it may wait while it holds the lock (only a task that
 * suspends with a sync lock is reported). */
static void *wait_holder(void *arg)
{
    bool use_rw = arg != NULL;
    while (!atomic_load(&warmed))
        sched_yield();
    for (int i = 1; i <= WAITS; i++) {
        if (use_rw)
            pz_rwlock_write(&wait_rw);
        else
            pz_mutex_lock(&wait_m);
        atomic_store(&held_round, i);
        while (atomic_load(&tried_round) != i)
            sched_yield();
        if (use_rw)
            pz_rwlock_write_unlock(&wait_rw);
        else
            pz_mutex_unlock(&wait_m);
    }
    return NULL;
}

/* The waiter takes the lock WARM times at the call of its timed-out
 * attempts (one call in a loop), so that the slot is its thread's last
 * and the countdown past the first timed holds (the sample rate is 1 in
 * 65536 here) when it finds the lock held. */
static void *wait_waiter(void *arg)
{
    bool use_rw = arg != NULL;
    for (int i = 1, done = 0; done < WAITS; i++) {
        bool warm = i <= WARM;
        if (!warm)
            while (atomic_load(&held_round) != done + 1)
                pz_yield();
        int64_t deadline = warm ? PZ_FOREVER : pz_now() + 1 * MS;
        int r = use_rw ? pz_rwlock_write_until(&wait_rw, deadline) : pz_mutex_lock_until(&wait_m, deadline);
        if (warm) {
            CHECK_EQ(r, 0);
            if (use_rw)
                pz_rwlock_write_unlock(&wait_rw);
            else
                pz_mutex_unlock(&wait_m);
            if (i == WARM)
                atomic_store(&warmed, 1);
            continue;
        }
        CHECK_EQ(r, -ETIMEDOUT);
        /* A suspension: reported if the failed attempt's hold had stayed
         * in the task's held-lock record. */
        pz_sleep(10 * US);
        atomic_store(&tried_round, ++done);
    }
    return NULL;
}

static void *gave_up_main(void *arg)
{
    pz_task_t *w = pz_spawn(wait_waiter, arg);
    CHECK(w);
    CHECK_EQ(pz_join(w, NULL), 0);
    return NULL;
}

static void run_waits(bool use_rw)
{
    atomic_store(&held_round, 0);
    atomic_store(&tried_round, 0);
    atomic_store(&warmed, 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, wait_holder, use_rw ? (void *)1 : NULL) == 0);
    run_in_runtime(2, gave_up_main, use_rw ? (void *)1 : NULL);
    CHECK(pthread_join(th, NULL) == 0);
}

static void test_gave_up_inline(void **state)
{
    (void)state;
    CHECK(setenv("PLAZA_ADVISOR_SAMPLE", "65536", 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    CHECK(pz_lock_name(&wait_m, "wait_m") == 0);
    CHECK(pz_lock_name(&wait_rw, "wait_rw") == 0);
    pz_set_report(collect, NULL);
    run_waits(false);
    run_waits(true);
    pz_set_report(NULL, NULL);
    CHECK_EQ(atomic_load(&suspend_reports), 0);

    json_t *root = report_json();
    const char *names[] = {"wait_m", "wait_rw"};
    for (int k = 0; k < 2; k++) {
        json_t *l = named(root, "locks", names[k]);
        CHECK_EQ(num(l, "acquisitions", NULL), WARM + WAITS);
        CHECK_EQ(num(l, "gave_up", NULL), WAITS);
        CHECK(num(l, "wait_ns", "max") >= 1 * MS * 9 / 10);
        CHECK(num(l, "timed_holds", NULL) >= 64);
    }
    json_decref(root);
    CHECK_EQ(atomic_load(&pz__observe_sw.timed_now), 0);
    pz_advisor_disable();
    CHECK(unsetenv("PLAZA_ADVISOR_SAMPLE") == 0);
}

/* ---- contended acquisitions and owner changes, forced ---- */

#define CONTENDED_ROUNDS 8
#define SPILL_LOCKS 600 /* one site: most likely takes every slot of the task's thread */

static pz_mutex_t cont_m;
static pz_mutex_t spill[SPILL_LOCKS];
static _Atomic int cont_held, cont_done, cont_warmed, cont_checked;

/* The figures of cont_m once the rounds are over (the spill after them
 * must not change them). */
static void check_contended_figures(void)
{
    json_t *root = report_json();
    json_t *l = named(root, "locks", "cont_m");
    CHECK_EQ(num(l, "acquisitions", NULL), WARM + 2 * CONTENDED_ROUNDS);
    CHECK_EQ(num(l, "contended", NULL), CONTENDED_ROUNDS);
    CHECK_EQ(num(l, "gave_up", NULL), 0);
    /* Owner changes are sampled with the timed holds (one in 65536 here
     * after the first 64): an estimate, bounded by the exclusive
     * acquisitions; test_owner_changes checks the counts themselves. */
    CHECK(num(l, "owner_changes", NULL) >= 1);
    CHECK(num(l, "owner_changes", NULL) <= WARM + 2 * CONTENDED_ROUNDS);
    CHECK(num(l, "owner_probes", NULL) >= 64);
    CHECK(num(l, "blocked_worker_ns", NULL) > 0);
    CHECK(num(l, "wait_ns", "max") > 0);
    /* The waits are in the sites' counts too (the task's; a compiler may
     * make more than one copy of a lock call, each its own site). */
    json_t *sites = json_object_get(l, "sites");
    CHECK(json_array_size(sites) >= 2);
    int64_t site_contended = 0;
    for (size_t i = 0; i < json_array_size(sites); i++)
        site_contended += num(json_array_get(sites, i), "contended", NULL);
    CHECK_EQ(site_contended, CONTENDED_ROUNDS);
    json_decref(root);
}

/* A plain thread: it holds the mutex until the task's worker thread has
 * parked on it (the PARKED bit, set by the waiter before it sleeps), so
 * that every round's acquisition by the task waits. */
static void *cont_holder(void *arg)
{
    (void)arg;
    while (!atomic_load(&cont_warmed))
        sched_yield();
    for (int i = 1; i <= CONTENDED_ROUNDS; i++) {
        pz_mutex_lock(&cont_m);
        atomic_store(&cont_held, i);
        while (!(atomic_load_explicit(&cont_m.state, memory_order_relaxed) & PZ__MUTEX_PARKED))
            sched_yield();
        pz_mutex_unlock(&cont_m);
        while (atomic_load(&cont_done) != i)
            sched_yield();
    }
    /* Before the task's spill: its acquisitions are in its thread's slot still.
     * (Here, not in the task: a report's first symbol lookup takes long
     * enough to be reported as a stall on a worker.) */
    check_contended_figures();
    atomic_store(&cont_checked, 1);
    return NULL;
}

/* The task takes the mutex WARM times at its one lock call first (past the
 * first timed holds: its slot is the thread's last, the call starts
 * inline), then once per round while the holder has it. */
static void *cont_waiter(void *arg)
{
    (void)arg;
    for (int i = 1, done = 0; done < CONTENDED_ROUNDS; i++) {
        bool warm = i <= WARM;
        if (!warm)
            while (atomic_load(&cont_held) != done + 1)
                pz_yield();
        pz_mutex_lock(&cont_m);
        pz_mutex_unlock(&cont_m);
        if (warm) {
            if (i == WARM)
                atomic_store(&cont_warmed, 1);
            continue;
        }
        atomic_store(&cont_done, ++done);
    }
    while (!atomic_load(&cont_checked))
        pz_sleep(1 * MS); /* the report takes a while: no busy wait on a worker */
    for (int i = 0; i < SPILL_LOCKS; i++) {
        pz_mutex_lock(&spill[i]);
        pz_mutex_unlock(&spill[i]);
    }
    return NULL;
}

static void *contended_main(void *arg)
{
    (void)arg;
    pz_task_t *w = pz_spawn(cont_waiter, NULL);
    CHECK(w);
    CHECK_EQ(pz_join(w, NULL), 0);
    return NULL;
}

static void test_contended_counts(void **state)
{
    (void)state;
    CHECK(setenv("PLAZA_ADVISOR_SAMPLE", "65536", 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    CHECK(pz_lock_name(&cont_m, "cont_m") == 0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, cont_holder, NULL) == 0);
    run_in_runtime(2, contended_main, NULL);
    CHECK(pthread_join(th, NULL) == 0);

    check_contended_figures();
    CHECK_EQ(atomic_load(&pz__observe_sw.timed_now), 0);
    pz_advisor_disable();
    CHECK(unsetenv("PLAZA_ADVISOR_SAMPLE") == 0);
}

/* ---- owner changes: exact while every hold is timed, else estimated ---- */

/* Two plain threads take turns at own_m, RUN acquisitions per turn (a
 * word says whose turn it is), TURNS turns in all: the owner changes
 * TURNS times (the first acquisition counts as one). */
#define OWN_RUN 8
#define OWN_TURNS SCALED(4000)
static pz_mutex_t own_locks[2], own_alone;
static pz_mutex_t *own_m; /* a lock's record outlives it: each round has its own */
static _Atomic int own_turn;
static uint64_t own_counter;

static void *own_taker(void *arg)
{
    int me = (int)(uintptr_t)arg;
    for (int t = me; t < OWN_TURNS; t += 2) {
        while (atomic_load(&own_turn) != t)
            sched_yield();
        for (int i = 0; i < OWN_RUN; i++) {
            pz_mutex_lock(own_m);
            own_counter++;
            pz_mutex_unlock(own_m);
        }
        atomic_store(&own_turn, t + 1);
    }
    return NULL;
}

static void owner_round(int round, const char *sample, const char *name)
{
    CHECK(setenv("PLAZA_ADVISOR_SAMPLE", sample, 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    own_m = &own_locks[round];
    CHECK(pz_lock_name(own_m, name) == 0);
    atomic_store(&own_turn, 0);
    own_counter = 0;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK(pthread_create(&th[i], NULL, own_taker, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < 2; i++)
        CHECK(pthread_join(th[i], NULL) == 0);
    CHECK_EQ(own_counter, (uint64_t)OWN_TURNS * OWN_RUN);
}

static void test_owner_changes(void **state)
{
    (void)state;
    /* Every hold timed: every acquisition arms the probe and the next one
     * reads it, so the count is exact. */
    owner_round(0, "1", "own_exact");
    json_t *root = report_json();
    json_t *l = named(root, "locks", "own_exact");
    CHECK_EQ(num(l, "acquisitions", NULL), (int64_t)OWN_TURNS * OWN_RUN);
    CHECK_EQ(num(l, "owner_changes", NULL), (int64_t)OWN_TURNS);
    CHECK_EQ(num(l, "owner_probes", NULL), (int64_t)OWN_TURNS * OWN_RUN);
    json_decref(root);
    pz_advisor_disable();

    /* One hold in 16 timed: each probe stands for the gap before it, and
     * the estimate is near the count (about OWN_TURNS * OWN_RUN / 16
     * probes, an eighth of them finding a change: the bounds are several
     * standard deviations wide). */
    owner_round(1, "16", "own_sampled");
    root = report_json();
    l = named(root, "locks", "own_sampled");
    int64_t est = num(l, "owner_changes", NULL), probes = num(l, "owner_probes", NULL);
    fprintf(stderr, "owner changes %d, estimated %lld from %lld probes\n", OWN_TURNS, (long long)est,
            (long long)probes);
    CHECK(probes >= (int64_t)OWN_TURNS * OWN_RUN / 16 / 2);
    CHECK(probes <= 64 + (int64_t)OWN_TURNS * OWN_RUN * 2 / 16);
    CHECK(est >= OWN_TURNS / 2);
    CHECK(est <= OWN_TURNS * 2);
    json_decref(root);

    /* One thread alone: the first acquisition is the only change, and no
     * probe finds another. */
    CHECK(pz_lock_name(&own_alone, "own_alone") == 0);
    for (int i = 0; i < 20000; i++) {
        pz_mutex_lock(&own_alone);
        pz_mutex_unlock(&own_alone);
    }
    root = report_json();
    l = named(root, "locks", "own_alone");
    CHECK_EQ(num(l, "owner_changes", NULL), 1);
    CHECK(num(l, "owner_probes", NULL) >= 64);
    json_decref(root);
    CHECK_EQ(atomic_load(&pz__observe_sw.timed_now), 0);
    pz_advisor_disable();
    CHECK(unsetenv("PLAZA_ADVISOR_SAMPLE") == 0);
}

/* ---- waits that end in the spin, timed as a sample ---- */

/* The sum of a lock's wait histogram ([value, count] pairs). */
static int64_t wait_hist_total(json_t *l)
{
    json_t *h = json_object_get(l, "wait_hist");
    CHECK(json_is_array(h));
    int64_t n = 0;
    size_t i;
    json_t *b;
    json_array_foreach(h, i, b)
    {
        CHECK(json_is_integer(json_array_get(b, 1)));
        n += json_integer_value(json_array_get(b, 1));
    }
    return n;
}

static pz_mutex_t weights_m, spin_m;
static uint64_t spin_counter;

/* The weights, through the hook a lock path calls: an untimed wait is
 * counted and nothing else, a sampled one counts PZ__WAIT_SAMPLE_GAP
 * times in the histogram, a parked one once. */
static void check_wait_weights(void)
{
    CHECK(pz_lock_name(&weights_m, "weights_m") == 0);
    const pz__lock_hooks *h = atomic_load(&pz__observe_sw.hooks);
    CHECK(h && h->acquired);
    static const char site;
    uint64_t self = pz__caller_id();
    /* Each followed by its release, as a lock's first holds are timed. */
    h->acquired(&weights_m, PZ__LOCK_MUTEX, &site, 0, PZ__LOCK_WAIT_UNTIMED, self);
    h->released(&weights_m, PZ__LOCK_MUTEX, 0, self);
    h->acquired(&weights_m, PZ__LOCK_MUTEX, &site, 4000, PZ__LOCK_WAIT_SAMPLED, self);
    h->released(&weights_m, PZ__LOCK_MUTEX, 0, self);
    h->acquired(&weights_m, PZ__LOCK_MUTEX, &site, 2000000, 0, self);
    h->released(&weights_m, PZ__LOCK_MUTEX, 0, self);
    json_t *root = report_json();
    json_t *l = named(root, "locks", "weights_m");
    CHECK_EQ(num(l, "acquisitions", NULL), 3);
    CHECK_EQ(num(l, "contended", NULL), 3);
    CHECK_EQ(wait_hist_total(l), (int64_t)PZ__WAIT_SAMPLE_GAP + 1);
    CHECK(num(l, "wait_ns", "max") >= 2000000);
    /* 3 acquisitions, 9 weighted waits: p50 is the sampled one's bucket,
     * not the untimed 0. */
    CHECK(num(l, "wait_ns", "p50") >= 3000);
    CHECK(num(l, "wait_ns", "p50") <= 5000);
    json_decref(root);
}

/* The waiter's side of a forced wait: in each round, once the holder has
 * the mutex, it says it is about to lock (announce = 2 * round + 1) and
 * takes the mutex, which the holder keeps until it has seen that and a few
 * microseconds more, so the first
 * attempt nearly always fails and the wait nearly always ends in the
 * pause-spin on a machine with a core to spare (on one with none, in a
 * yield or a park: timed, and counted once). */
#define SPIN_ROUNDS 1000
static _Atomic int spin_held, spin_announce, spin_round_done;

/* Puts the calling thread on the k-th CPU it may use, if it may use two
 * or more: the holder and the waiter on different CPUs, so that the
 * waiter's spin overlaps the holder's few microseconds (the kernel may
 * otherwise keep two threads that wake each other on one CPU; then every
 * wait yields).  spin_mask_before: the CPUs the test may use, read
 * before either is pinned (the waiter would inherit the holder's one);
 * the holder's mask is restored after the rounds. */
static cpu_set_t spin_mask_before;

static void spin_pin(int k)
{
    cpu_set_t one;
    if (CPU_COUNT(&spin_mask_before) < 2)
        return;
    CPU_ZERO(&one);
    for (int c = 0, seen = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &spin_mask_before) && seen++ == k) {
            CPU_SET(c, &one);
            break;
        }
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0);
}

static void *spin_waiter(void *arg)
{
    (void)arg;
    spin_pin(1);
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        while (atomic_load(&spin_held) != i + 1)
            sched_yield();
        atomic_store(&spin_announce, 2 * i + 1);
        pz_mutex_lock(&spin_m);
        spin_counter++;
        pz_mutex_unlock(&spin_m);
        atomic_store(&spin_round_done, i + 1);
    }
    return NULL;
}

static void spin_holder(void)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        pz_mutex_lock(&spin_m);
        spin_counter++;
        atomic_store(&spin_held, i + 1);
        /* A short spin first: a yield returns after microseconds, longer
         * than the waiter's pause-spin. */
        for (int n = 0; atomic_load(&spin_announce) != 2 * i + 1; n++)
            if (n > 2000)
                sched_yield();
        int64_t until = pz_now() + 300 + (i % 4) * 200; /* 0.3-0.9 us after the announcement */
        while (pz_now() < until) {
        }
        pz_mutex_unlock(&spin_m);
        while (atomic_load(&spin_round_done) != i + 1)
            sched_yield();
    }
}

static void test_spin_waits_sampled(void **state)
{
    (void)state;
    CHECK(setenv("PLAZA_ADVISOR_SAMPLE", "1024", 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    check_wait_weights();

    /* Rounds of a forced wait: a thousand or more contended acquisitions,
     * most of whose waits end in the pause-spin; one in
     * PZ__WAIT_SAMPLE_GAP of those is timed, standing for that many, and
     * those that yield or park count once.  So the histogram holds about
     * as many waits as there were contended acquisitions (unweighted, a
     * mostly-spinning lock's would hold about an eighth); the bounds are
     * five standard deviations wide or more. */
    CHECK(pz_lock_name(&spin_m, "spin_m") == 0);
    atomic_store(&spin_held, 0);
    atomic_store(&spin_announce, 0);
    atomic_store(&spin_round_done, 0);
    int64_t spin_t0 = pz_now();
    CHECK(pthread_getaffinity_np(pthread_self(), sizeof spin_mask_before, &spin_mask_before) == 0);
    spin_pin(0);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, spin_waiter, NULL) == 0);
    spin_holder();
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(pthread_setaffinity_np(pthread_self(), sizeof spin_mask_before, &spin_mask_before) == 0);
    json_t *root = report_json();
    json_t *l = named(root, "locks", "spin_m");
    CHECK_EQ(num(l, "acquisitions", NULL), 2 * SPIN_ROUNDS);
    int64_t contended = num(l, "contended", NULL), total = wait_hist_total(l);
    json_decref(root);
    fprintf(stderr, "spin_m: %lld contended of %d forced, %lld waits in the histogram, in %.1f ms\n", (long long)contended,
            SPIN_ROUNDS, (long long)total, (double)(pz_now() - spin_t0) / 1e6);
    CHECK_EQ(spin_counter, (uint64_t)2 * SPIN_ROUNDS);
    CHECK(contended >= SPIN_ROUNDS / 4);
    CHECK(contended <= SPIN_ROUNDS);
    CHECK(total >= contended * 6 / 10);
    CHECK(total <= contended * 16 / 10);
    CHECK_EQ(atomic_load(&pz__observe_sw.timed_now), 0);
    pz_advisor_disable();
    CHECK(unsetenv("PLAZA_ADVISOR_SAMPLE") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_gave_up_inline),
        cmocka_unit_test(test_contended_counts),
        cmocka_unit_test(test_owner_changes),
        cmocka_unit_test(test_spin_waits_sampled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
