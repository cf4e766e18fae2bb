/* Scheduling under overload (src/runtime/sched.c, the policy at its top):
 * a task woken by its timer or by a finished blocking-pool job runs within
 * a few scheduling decisions however long the run queues are, and a flood
 * of such wake-ups does not starve the tasks in the run queues.
 *
 * Everything is counted in scheduling rounds, not in time: one worker, and
 * N tasks that yield in a loop and count one round per turn.  A queue of N
 * yielders takes N rounds to drain; the woken task must run within
 * MAX_ROUNDS of the round at which it became runnable.  Only one worker
 * advances the count, so a busy machine or a missing core changes how long
 * the test takes, never what it counts. */
#include "helpers.h"
#include "runtime/internal.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* More yielders than a local run queue holds, so its overflow is in play. */
#define YIELDERS 1000
/* The policy's bound for a task with nothing ahead of it in the wake list
 * is 2 decisions; one more for a decision that serves the overflow. */
#define MAX_ROUNDS 4

struct scene {
    _Atomic bool stop;
    _Atomic long rounds;        /* yielder turns so far */
    _Atomic int64_t deadline;   /* the sleeper's, INT64_MAX until it sleeps */
    _Atomic long ready_round;   /* the round the woken task became runnable, -1 unknown */
    _Atomic long ran_round;     /* the round the woken task ran, -1 not yet */
    bool watch_clock;           /* ready = the sleeper's deadline has passed */
    bool watch_wake_list;       /* ready = a task is in the wake list */
};

static void note_ready(struct scene *s, long round)
{
    long unknown = -1;
    atomic_compare_exchange_strong(&s->ready_round, &unknown, round);
}

static void *yielder(void *arg)
{
    struct scene *s = arg;
    while (!atomic_load(&s->stop)) {
        long r = atomic_fetch_add(&s->rounds, 1) + 1;
        if (atomic_load(&s->ran_round) < 0) {
            if (s->watch_clock && pz_now() >= atomic_load(&s->deadline))
                note_ready(s, r);
            pz__runtime *rt = atomic_load(&pz__rt);
            if (s->watch_wake_list && atomic_load(&rt->wake_len) > 0)
                note_ready(s, r);
        }
        pz_yield();
    }
    return NULL;
}

static pz_task_t **spawn_yielders(struct scene *s)
{
    pz_task_t **t = calloc(YIELDERS, sizeof *t);
    CHECK(t != NULL);
    for (int i = 0; i < YIELDERS; i++)
        CHECK((t[i] = pz_spawn(yielder, s)) != NULL);
    /* Every yielder has had a turn: the run queues are full of them. */
    while (atomic_load(&s->rounds) < 2 * YIELDERS)
        pz_yield();
    return t;
}

static void stop_yielders(struct scene *s, pz_task_t **t)
{
    atomic_store(&s->stop, true);
    for (int i = 0; i < YIELDERS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    free(t);
}

static void ran(struct scene *s)
{
    long r = atomic_load(&s->rounds);
    note_ready(s, r); /* nobody saw it runnable before it ran: no delay */
    atomic_store(&s->ran_round, r);
}

/* ---- a timer's task ---- */

static void *sleeper(void *arg)
{
    struct scene *s = arg;
    int64_t deadline = pz_now() + 3 * 1000000;
    atomic_store(&s->deadline, deadline);
    CHECK_EQ(pz_sleep_until(deadline), 0);
    ran(s);
    return NULL;
}

static void *timer_main(void *arg)
{
    struct scene *s = arg;
    pz_task_t **t = spawn_yielders(s);
    pz_task_t *sl = pz_spawn(sleeper, s);
    CHECK(sl != NULL);
    CHECK_EQ(pz_join(sl, NULL), 0);
    stop_yielders(s, t);
    return NULL;
}

static void check_scene(struct scene *s)
{
    long ready = atomic_load(&s->ready_round), at = atomic_load(&s->ran_round);
    CHECK(ready >= 0 && at >= ready);
    if (at - ready > MAX_ROUNDS) {
        fprintf(stderr, "the woken task became runnable at round %ld and ran at round %ld, behind %ld yielders' "
                        "turns (at most %d allowed; the run queue holds %d)\n",
                ready, at, at - ready, MAX_ROUNDS, YIELDERS);
        check_failed("at - ready <= MAX_ROUNDS", __FILE__, __LINE__);
    }
}

static void test_timer_wake_runs_before_queue_drains(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        struct scene s = {.deadline = INT64_MAX, .ready_round = -1, .ran_round = -1, .watch_clock = true};
        run_in_runtime(1, timer_main, &s);
        check_scene(&s);
    }
}

/* ---- a blocking-pool job's task ---- */

/* The job: returns once the yielders have gone round their queue twice
 * more, so the task is woken in the middle of a long queue. */
static void *job(void *arg)
{
    struct scene *s = arg;
    long until = atomic_load(&s->rounds) + 2 * YIELDERS;
    while (atomic_load(&s->rounds) < until) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return s;
}

static void *blocker(void *arg)
{
    struct scene *s = arg;
    void *r = NULL;
    CHECK_EQ(pz_blocking(job, s, &r), 0);
    CHECK(r == s);
    ran(s);
    return NULL;
}

static void *blocking_main(void *arg)
{
    struct scene *s = arg;
    pz_task_t **t = spawn_yielders(s);
    pz_task_t *b = pz_spawn(blocker, s);
    CHECK(b != NULL);
    CHECK_EQ(pz_join(b, NULL), 0);
    stop_yielders(s, t);
    return NULL;
}

static void test_blocking_wake_runs_before_queue_drains(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        struct scene s = {.deadline = INT64_MAX, .ready_round = -1, .ran_round = -1, .watch_wake_list = true};
        run_in_runtime(1, blocking_main, &s);
        check_scene(&s);
    }
}

/* ---- a flood of wake-ups does not starve the run queue ---- */

#define FLOODERS 200
#define FLOOD_SLEEPS 200

struct flood {
    _Atomic long sleeps;    /* wake-ups of the flooders so far */
    _Atomic long turns;     /* the yielder's turns while they flood */
    _Atomic int running;    /* flooders not finished */
};

/* Sleeps until a deadline already past, again and again: each time its
 * timer has expired, so each wake-up goes through the wake list. */
static void *flooder(void *arg)
{
    struct flood *f = arg;
    for (int i = 0; i < FLOOD_SLEEPS; i++) {
        CHECK_EQ(pz_sleep_until(pz_now() - 1), 0);
        atomic_fetch_add(&f->sleeps, 1);
    }
    atomic_fetch_sub(&f->running, 1);
    return NULL;
}

static void *lone_yielder(void *arg)
{
    struct flood *f = arg;
    while (atomic_load(&f->running) > 0) {
        atomic_fetch_add(&f->turns, 1);
        pz_yield();
    }
    return NULL;
}

static void *flood_main(void *arg)
{
    struct flood *f = arg;
    atomic_store(&f->running, FLOODERS);
    pz_task_t *y = pz_spawn(lone_yielder, f);
    pz_task_t *t[FLOODERS];
    for (int i = 0; i < FLOODERS; i++)
        CHECK((t[i] = pz_spawn(flooder, f)) != NULL);
    for (int i = 0; i < FLOODERS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    CHECK_EQ(pz_join(y, NULL), 0);
    return NULL;
}

static void test_wake_flood_leaves_run_queue_its_share(void **state)
{
    (void)state;
    struct flood f = {0};
    run_in_runtime(1, flood_main, &f);
    long sleeps = atomic_load(&f.sleeps), turns = atomic_load(&f.turns);
    CHECK_EQ(sleeps, (long)FLOODERS * FLOOD_SLEEPS);
    /* The policy gives the run queue one decision in 5 while the wake list
     * is not empty, so the yielder has about sleeps / 4 turns; it must
     * have a good part of them, where a fair queue of FLOODERS + 1 tasks
     * would give it sleeps / FLOODERS. */
    if (turns < sleeps / 16) {
        fprintf(stderr, "the yielder had %ld turns during %ld wake-ups (at least %ld expected)\n", turns, sleeps,
                sleeps / 16);
        check_failed("turns >= sleeps / 16", __FILE__, __LINE__);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_wake_runs_before_queue_drains),
        cmocka_unit_test(test_blocking_wake_runs_before_queue_drains),
        cmocka_unit_test(test_wake_flood_leaves_run_queue_its_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
