/* Spare workers under stress: many tasks on every worker take sync locks
 * (pz_mutex and pz_rwlock, with and without deadlines) and often hold them
 * across pz_blocking or a yield (the wrong thing the spares exist for),
 * some block their thread in a plain system call; spares come and go.
 * Checked: mutual exclusion (no two writers, no reader beside a writer),
 * every successful acquisition counted exactly once, every task joined,
 * and no spare thread left once the runtime is quiet again. */
#include "helpers.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOCKS 3
#define TASKS SCALED(48)
#define ROUNDS SCALED(40)

static pz_mutex_t mutex[LOCKS];
static long mutex_count[LOCKS];       /* under mutex[i] */
static _Atomic int mutex_inside[LOCKS];
static pz_rwlock_t rw;
static _Atomic int rw_writers, rw_readers;
static long rw_count;                  /* under rw, written by writers */
static _Atomic long taken, timed_out;
static _Atomic bool broken;
static _Atomic int spare_reports;

static void quiet(const char *line, void *arg)
{
    (void)arg;
    if (!strncmp(line, "spare worker:", 13))
        atomic_fetch_add(&spare_reports, 1);
}

static void *nap(void *arg)
{
    usleep((useconds_t)(uintptr_t)arg);
    return NULL;
}

/* Inside a critical section: sometimes suspend (across the blocking
 * pool, or a yield), sometimes block the thread. */
static void dawdle(uint64_t *rng)
{
    switch (test_rand(rng) % 6) {
    case 0:
        CHECK_EQ(pz_blocking(nap, (void *)(uintptr_t)(test_rand(rng) % 3000), NULL), 0);
        break;
    case 1:
        pz_yield();
        break;
    case 2:
        usleep((useconds_t)(test_rand(rng) % 500));
        break;
    default:
        break;
    }
}

static void *worker_task(void *arg)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull * ((uint64_t)(uintptr_t)arg + 1);
    for (int r = 0; r < ROUNDS; r++) {
        uint64_t pick = test_rand(&rng) % 10;
        int64_t deadline = test_rand(&rng) % 2 ? PZ_FOREVER : pz_now() + (int64_t)(test_rand(&rng) % 5) * MS;
        if (pick < 6) {
            int i = (int)(test_rand(&rng) % LOCKS);
            if (pz_mutex_lock_until(&mutex[i], deadline) != 0) {
                atomic_fetch_add(&timed_out, 1);
                continue;
            }
            if (atomic_fetch_add(&mutex_inside[i], 1) != 0)
                atomic_store(&broken, true);
            mutex_count[i]++;
            dawdle(&rng);
            atomic_fetch_sub(&mutex_inside[i], 1);
            pz_mutex_unlock(&mutex[i]);
            atomic_fetch_add(&taken, 1);
        } else if (pick < 8) {
            if (pz_rwlock_write_until(&rw, deadline) != 0) {
                atomic_fetch_add(&timed_out, 1);
                continue;
            }
            if (atomic_fetch_add(&rw_writers, 1) != 0 || atomic_load(&rw_readers) != 0)
                atomic_store(&broken, true);
            rw_count++;
            dawdle(&rng);
            atomic_fetch_sub(&rw_writers, 1);
            pz_rwlock_write_unlock(&rw);
            atomic_fetch_add(&taken, 1);
        } else if (pick < 9) {
            if (pz_rwlock_read_until(&rw, deadline) != 0) {
                atomic_fetch_add(&timed_out, 1);
                continue;
            }
            atomic_fetch_add(&rw_readers, 1);
            if (atomic_load(&rw_writers) != 0)
                atomic_store(&broken, true);
            dawdle(&rng);
            atomic_fetch_sub(&rw_readers, 1);
            pz_rwlock_read_unlock(&rw);
        } else {
            /* A plain blocking call, no lock: past the stall threshold now
             * and then, which is a spare's other reason. */
            usleep((useconds_t)(test_rand(&rng) % 8 == 0 ? 120000 : 200));
        }
    }
    return NULL;
}

static int spare_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[300], name[64] = "";
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(name, sizeof name, f) && !strncmp(name, "plaza-s", 7))
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

static bool no_spares(void *arg)
{
    (void)arg;
    return spare_threads() == 0;
}

static void *stress_main(void *arg)
{
    (void)arg;
    pz_task_t **t = spawn_n(TASKS, worker_task, index_arg);
    join_n(t, TASKS);
    CHECK(!atomic_load(&broken));
    long sum = rw_count;
    for (int i = 0; i < LOCKS; i++)
        sum += mutex_count[i];
    CHECK_EQ(sum, atomic_load(&taken));
    /* Every lock is free again. */
    for (int i = 0; i < LOCKS; i++) {
        CHECK(pz_mutex_trylock(&mutex[i]));
        pz_mutex_unlock(&mutex[i]);
    }
    CHECK(pz_rwlock_try_write(&rw));
    pz_rwlock_write_unlock(&rw);
    wait_until_true(no_spares, NULL, 60 * SEC);
    return (void *)1;
}

static void run(int workers)
{
    memset(mutex_count, 0, sizeof mutex_count);
    rw_count = 0;
    atomic_store(&taken, 0);
    atomic_store(&timed_out, 0);
    atomic_store(&spare_reports, 0);
    pz_set_report(quiet, NULL);
    CHECK(run_in_runtime(workers, stress_main, NULL));
    pz_set_report(NULL, NULL);
    CHECK_EQ(spare_threads(), 0);
    fprintf(stderr, "%d worker(s): %ld sections, %ld timed out, %d spare episode(s) reported\n", workers,
            atomic_load(&taken), atomic_load(&timed_out), atomic_load(&spare_reports));
}

static void test_spares_one_worker(void **state)
{
    (void)state;
    run(1);
}

static void test_spares_two_workers(void **state)
{
    (void)state;
    run(2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spares_one_worker),
        cmocka_unit_test(test_spares_two_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
