/* The runtime under stress: thousands of tasks on all workers doing random
 * yields, sleeps, nested spawns and joins, blocking calls, while a chaos
 * task cancels them at random.  Invariants: every task ends exactly once and
 * is joined exactly once, its result is what it computed, cancelled tasks
 * see -ECANCELED, and the run finishes (no lost wake-up). */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic long ended, cancelled_seen, blocking_done;

static void *leaf(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg | 1;
    pz_sleep((int64_t)(test_rand(&seed) % 100000));
    return (void *)((uintptr_t)arg ^ 0x5a5a);
}

static void *block_fn(void *arg)
{
    return (void *)((uintptr_t)arg + 3);
}

struct worker_arg {
    uint64_t seed;
    uint64_t result;
};

static void *chaos_subject(void *arg)
{
    struct worker_arg *a = arg;
    uint64_t seed = a->seed;
    uint64_t acc = 0;
    bool saw_cancel = false;
    for (int op = 0; op < 40; op++) {
        switch (test_rand(&seed) % 5) {
        case 0:
            pz_yield();
            acc += 1;
            break;
        case 1: {
            int r = pz_sleep((int64_t)(test_rand(&seed) % 200000));
            if (r == -ECANCELED)
                saw_cancel = true;
            else
                CHECK_EQ(r, 0);
            acc += 2;
            break;
        }
        case 2: {
            uintptr_t v = (uintptr_t)(test_rand(&seed) & 0xffff);
            pz_task_t *c = pz_spawn(leaf, (void *)v);
            CHECK(c != NULL);
            void *res;
            int r = pz_join(c, &res);
            if (r == -ECANCELED) {
                saw_cancel = true;
                pz_cancel(c);
                pz_detach(c); /* cannot wait for it any more */
            } else {
                CHECK_EQ(r, 0);
                CHECK_EQ((uintptr_t)res, v ^ 0x5a5a);
            }
            acc += 3;
            break;
        }
        case 3: {
            void *res;
            int r = pz_blocking(block_fn, (void *)(uintptr_t)op, &res);
            if (r == -ECANCELED) {
                saw_cancel = true;
            } else {
                CHECK_EQ(r, 0);
                CHECK_EQ((uintptr_t)res, (uintptr_t)op + 3);
                atomic_fetch_add(&blocking_done, 1);
            }
            acc += 4;
            break;
        }
        default: {
            int r = pz_sleep_until(pz_now() - 1);
            CHECK(r == 0 || r == -ECANCELED);
            acc += 5;
        }
        }
    }
    if (saw_cancel) {
        CHECK(pz_cancelled());
        atomic_fetch_add(&cancelled_seen, 1);
    }
    a->result = acc;
    atomic_fetch_add(&ended, 1);
    return (void *)(uintptr_t)acc;
}

/* The monkey cancels only handles the main task has not joined yet; the
 * lock makes "read the handle and cancel it" one step against "clear the
 * handle before joining", so a cancel never touches a freed task. */
struct chaos {
    pz_task_t **tasks;
    int n;
    _Atomic bool stop;
    pthread_mutex_t lock;
};

static void *chaos_monkey(void *arg)
{
    struct chaos *c = arg;
    uint64_t seed = 4242;
    while (!atomic_load(&c->stop)) {
        pz_sleep((int64_t)(test_rand(&seed) % 300000));
        int victim = (int)(test_rand(&seed) % (uint64_t)c->n);
        pthread_mutex_lock(&c->lock);
        if (c->tasks[victim])
            pz_cancel(c->tasks[victim]);
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

static void *stress_main(void *arg)
{
    (void)arg;
    int n = SCALED(3000);
    struct chaos c = {calloc((size_t)n, sizeof(pz_task_t *)), n, false, PTHREAD_MUTEX_INITIALIZER};
    struct worker_arg *args = calloc((size_t)n, sizeof *args);
    pz_task_t *monkey = NULL;
    uint64_t seed = 1;
    for (int i = 0; i < n; i++) {
        args[i].seed = test_rand(&seed) | 1;
        pz_task_t *t = pz_spawn(chaos_subject, &args[i]);
        CHECK(t != NULL);
        pthread_mutex_lock(&c.lock);
        c.tasks[i] = t;
        pthread_mutex_unlock(&c.lock);
        if (i == n / 10) {
            monkey = pz_spawn(chaos_monkey, &c);
            CHECK(monkey != NULL);
        }
    }
    long joined = 0;
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&c.lock);
        pz_task_t *t = c.tasks[i];
        c.tasks[i] = NULL;
        pthread_mutex_unlock(&c.lock);
        void *r;
        CHECK_EQ(pz_join(t, &r), 0);
        CHECK_EQ((uintptr_t)r, args[i].result);
        joined++;
    }
    /* The monkey reads c, which lives on this task's stack: it must be
     * gone before we return. */
    atomic_store(&c.stop, true);
    CHECK_EQ(pz_join(monkey, NULL), 0);
    CHECK_EQ(joined, n);
    CHECK_EQ(atomic_load(&ended), n);
    fprintf(stderr, "%d tasks, %ld saw a cancel, %ld blocking calls\n", n, atomic_load(&cancelled_seen),
            atomic_load(&blocking_done));
    free(args);
    free(c.tasks);
    return NULL;
}

static void test_chaos(void **state)
{
    (void)state;
    atomic_store(&ended, 0);
    run_in_runtime(0, stress_main, NULL);
}

/* ---- reports while tasks end ----
 * A task that ends is hidden from reports (they skip it, and never read its
 * stack after that) and stays on the registry until it is joined.  A plain
 * thread dumps over and over while bursts of tasks start, park, end and
 * are joined on every worker (the sanitizers watch the reads of ended
 * tasks); then, once a burst has ended and before it is joined, a dump
 * must count none of its tasks. */

static _Atomic bool dumper_stop;
static _Atomic long dumps_made;

static int dump_count(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL);
    pz_dump(f);
    fclose(f);
    const char *end = strstr(buf, "end of dump: ");
    CHECK(end != NULL);
    int n = atoi(end + strlen("end of dump: "));
    free(buf);
    return n;
}

static void *dumper(void *arg)
{
    int most = *(int *)arg;
    while (!atomic_load(&dumper_stop)) {
        CHECK(dump_count() <= most); /* never a task of an earlier burst */
        atomic_fetch_add(&dumps_made, 1);
    }
    return NULL;
}

static _Atomic long burst_ended;

static void *churn_task(void *arg)
{
    if ((uintptr_t)arg % 3 == 0)
        pz_sleep(1000);
    else
        pz_yield();
    atomic_fetch_add(&burst_ended, 1);
    return (void *)((uintptr_t)arg * 7);
}

static void *churn_main(void *arg)
{
    (void)arg;
    enum { BURST = 64 };
    int rounds = SCALED(200);
    int most = BURST + 1; /* a burst and main */
    pthread_t th;
    atomic_store(&dumper_stop, false);
    atomic_store(&dumps_made, 0);
    CHECK_EQ(pthread_create(&th, NULL, dumper, &most), 0);
    pz_task_t *t[BURST];
    for (int r = 0; r < rounds; r++) {
        atomic_store(&burst_ended, 0);
        for (int i = 0; i < BURST; i++)
            CHECK((t[i] = pz_spawn(churn_task, (void *)(uintptr_t)(r * BURST + i))) != NULL);
        if (r % 16 == 0) {
            /* Every task of the burst has ended and none is joined: the
             * registry holds them all, and a dump counts main alone once
             * each has hidden itself (right after its function returns). */
            while (atomic_load(&burst_ended) < BURST)
                pz_sleep(100000);
            int n;
            int64_t give_up = pz_now() + 30 * SEC; /* a fixed bound, so a broken skip fails, not hangs */
            while ((n = dump_count()) > 1 && pz_now() < give_up)
                pz_sleep(100000);
            CHECK_EQ(n, 1);
        }
        for (int i = 0; i < BURST; i++) {
            void *res;
            CHECK_EQ(pz_join(t[i], &res), 0);
            CHECK_EQ((uintptr_t)res, (uintptr_t)(r * BURST + i) * 7);
        }
    }
    while (atomic_load(&dumps_made) < 3)
        pz_sleep(1000000);
    atomic_store(&dumper_stop, true);
    CHECK_EQ(pthread_join(th, NULL), 0);
    fprintf(stderr, "%d bursts of %d tasks, %ld dumps meanwhile\n", rounds, BURST, atomic_load(&dumps_made));
    return NULL;
}

static void test_reports_while_tasks_end(void **state)
{
    (void)state;
    run_in_runtime(0, churn_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chaos),
        cmocka_unit_test(test_reports_while_tasks_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
