/* The runtime core: tasks, joins, yields, sleeps, cancels, the blocking
 * pool, errno across migration, idle CPU, stack overflow reports, misuse. */
#include "helpers.h"
#include "runtime/internal.h"
#include "runtime/kit.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

/* ---- spawn and join ---- */

static void *times_two_plus_one(void *arg)
{
    return (void *)((uintptr_t)arg * 2 + 1);
}

static void *spawn_join_many(void *arg)
{
    size_t n = (size_t)(uintptr_t)arg;
    pz_task_t **tasks = malloc(n * sizeof *tasks);
    CHECK((tasks) != NULL);
    for (size_t i = 0; i < n; i++) {
        tasks[i] = pz_spawn(times_two_plus_one, (void *)(uintptr_t)i);
        CHECK((tasks[i]) != NULL);
    }
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        CHECK_EQ(pz_join(tasks[i], &r), 0);
        CHECK_EQ((uintptr_t)r, i * 2 + 1);
    }
    free(tasks);
    return (void *)(uintptr_t)n;
}

static void test_spawn_join_100k(void **state)
{
    (void)state;
    size_t n = SCALED(100000);
    void *r = run_in_runtime(0, spawn_join_many, (void *)(uintptr_t)n);
    CHECK_EQ((uintptr_t)r, n);
}

static void *main_returns_arg(void *arg)
{
    return arg;
}

static void test_run_result_and_defaults(void **state)
{
    (void)state;
    void *r = NULL;
    CHECK_EQ(pz_run(NULL, main_returns_arg, (void *)0x1234, &r), 0);
    CHECK_EQ(r, (void *)0x1234);
    /* A second runtime after the first one ended. */
    CHECK_EQ(pz_run(NULL, main_returns_arg, (void *)0x99, NULL), 0);
    CHECK_EQ(pz_worker_count(), 0);
}

/* A tree: each node spawns `fanout` children down to depth 0 and returns
 * the number of nodes in its subtree. */
struct tree_arg {
    int depth;
    int fanout;
};

static void *tree_node(void *arg)
{
    struct tree_arg *a = arg;
    if (a->depth == 0)
        return (void *)1;
    struct tree_arg child = {a->depth - 1, a->fanout};
    pz_task_t *kids[16];
    for (int i = 0; i < a->fanout; i++) {
        kids[i] = pz_spawn(tree_node, &child);
        CHECK((kids[i]) != NULL);
    }
    uintptr_t sum = 1;
    for (int i = 0; i < a->fanout; i++) {
        void *r;
        CHECK_EQ(pz_join(kids[i], &r), 0);
        sum += (uintptr_t)r;
    }
    return (void *)sum;
}

static void test_nested_spawn(void **state)
{
    (void)state;
    struct tree_arg root = {4, 7}; /* 1 + 7 + 49 + 343 + 2401 nodes */
    void *r = run_in_runtime(0, tree_node, &root);
    CHECK_EQ((uintptr_t)r, 1 + 7 + 49 + 343 + 2401);
}

/* ---- yield ---- */

#define RR_TASKS 4
#define RR_ROUNDS 200
static int rr_log[RR_TASKS * RR_ROUNDS];
static int rr_len;

static void *rr_task(void *arg)
{
    int id = (int)(uintptr_t)arg;
    for (int i = 0; i < RR_ROUNDS; i++) {
        rr_log[rr_len++] = id;
        pz_yield();
    }
    return NULL;
}

static void *rr_main(void *arg)
{
    (void)arg;
    pz_task_t *t[RR_TASKS];
    for (int i = 0; i < RR_TASKS; i++)
        t[i] = pz_spawn(rr_task, (void *)(uintptr_t)i);
    for (int i = 0; i < RR_TASKS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    return NULL;
}

static void test_yield_round_robin(void **state)
{
    (void)state;
    rr_len = 0;
    run_in_runtime(1, rr_main, NULL);
    CHECK_EQ(rr_len, RR_TASKS * RR_ROUNDS);
    /* With one worker, every task runs once per round, in the same order. */
    for (int i = RR_TASKS; i < rr_len; i++)
        CHECK_EQ(rr_log[i], rr_log[i - RR_TASKS]);
    for (int i = 0; i < RR_TASKS; i++)
        for (int j = i + 1; j < RR_TASKS; j++)
            CHECK(rr_log[i] != rr_log[j]);
}

static void *yield_alone(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        pz_yield();
    return (void *)7;
}

static void test_yield_alone_returns(void **state)
{
    (void)state;
    CHECK_EQ((uintptr_t)run_in_runtime(2, yield_alone, NULL), 7);
}

/* ---- sleep ---- */

#define SLEEPERS 64
struct sleeper {
    int64_t deadline;
    int64_t started;
    int64_t woke;
    int order;
};
static _Atomic int wake_counter;

static void *sleeper_task(void *arg)
{
    struct sleeper *s = arg;
    s->started = pz_now();
    CHECK_EQ(pz_sleep_until(s->deadline), 0);
    s->woke = pz_now();
    s->order = atomic_fetch_add(&wake_counter, 1);
    return NULL;
}

/* arg: the smallest deadline gap (in slots of 4 ms) whose order must hold.
 * With one worker it is 1: strictly in deadline order.  With several, two
 * workers fire their own timers in parallel and a preempted one can be late
 * by a few ms, so only deadlines 20 ms apart must stay in order. */
static void *sleep_order_main(void *arg)
{
    int gap = (int)(uintptr_t)arg;
    static struct sleeper s[SLEEPERS];
    int perm[SLEEPERS];
    uint64_t rng = 12345;
    for (int i = 0; i < SLEEPERS; i++)
        perm[i] = i;
    for (int i = SLEEPERS - 1; i > 0; i--) {
        int j = (int)(test_rand(&rng) % (uint64_t)(i + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    /* The deadlines start `margin` from now.  A sleeper that first runs
     * after its deadline (spawning is slow under the sanitizers) wakes in
     * spawn order, not deadline order, which says nothing about the
     * timers: then the round does not count, and the next one starts
     * further ahead.  Nor does a round in which a sleeper ran later after
     * its deadline than the gap allows: its thread was off the CPU (on a
     * machine at a load of 30-50 a worker can be descheduled for 20 ms and
     * more), and then the order of its wake against one gap later is the
     * kernel's, not the timers'.  Such rounds are retried, up to 40.  (One
     * worker fires one heap in order, however late: there every round
     * counts.) */
    int64_t margin = 20 * 1000000LL;
    for (int round = 0;; round++) {
        CHECK(margin <= 1280 * 1000000LL);
        CHECK(round < 40);
        atomic_store(&wake_counter, 0);
        int64_t base = pz_now() + margin;
        pz_task_t *t[SLEEPERS];
        /* Spawned in shuffled order; deadlines 4 ms apart. */
        for (int i = 0; i < SLEEPERS; i++) {
            int k = perm[i];
            s[k].deadline = base + (int64_t)k * 4000000LL;
            t[i] = pz_spawn(sleeper_task, &s[k]);
        }
        for (int i = 0; i < SLEEPERS; i++)
            CHECK_EQ(pz_join(t[i], NULL), 0);
        bool valid = true;
        for (int k = 0; k < SLEEPERS; k++)
            if (s[k].started >= base - 1000000LL)
                valid = false;
        for (int k = 0; k < SLEEPERS; k++)
            CHECK(s[k].woke >= s[k].deadline); /* never early */
        if (!valid) {
            margin *= 4;
            continue;
        }
        for (int k = 0; gap > 1 && k < SLEEPERS; k++)
            if (s[k].woke - s[k].deadline >= (int64_t)gap * 4000000LL)
                valid = false;
        if (!valid)
            continue;
        for (int k = 0; k < SLEEPERS; k++)
            for (int j = k + gap; j < SLEEPERS; j++)
                CHECK(s[k].order < s[j].order); /* in deadline order */
        return NULL;
    }
}

static void test_sleep_order_one_worker(void **state)
{
    (void)state;
    run_in_runtime(1, sleep_order_main, (void *)1);
}

static void test_sleep_order_all_workers(void **state)
{
    (void)state;
    run_in_runtime(0, sleep_order_main, (void *)5);
}

static void *sleep_never_early_main(void *arg)
{
    (void)arg;
    uint64_t rng = 777;
    for (int i = 0; i < 200; i++) {
        int64_t ns = (int64_t)(test_rand(&rng) % 300000);
        int64_t start = pz_now();
        CHECK_EQ(pz_sleep(ns), 0);
        CHECK(pz_now() - start >= ns);
    }
    /* Deadlines in the past return at once. */
    CHECK_EQ(pz_sleep_until(pz_now() - 1000), 0);
    CHECK_EQ(pz_sleep(-5), 0);
    return NULL;
}

static void test_sleep_never_early(void **state)
{
    (void)state;
    run_in_runtime(2, sleep_never_early_main, NULL);
}

/* ---- cancel ---- */

static void *sleep_forever(void *arg)
{
    (void)arg;
    int r = pz_sleep_until(PZ_FOREVER);
    /* Cancel is sticky: later waits fail at once too. */
    int again = pz_sleep(1000000000LL);
    return (void *)(intptr_t)(r * 1000 + again);
}

static void *cancel_sleeping_main(void *arg)
{
    (void)arg;
    pz_task_t *t = pz_spawn(sleep_forever, NULL);
    wait_parked(t);
    pz_cancel(t);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED * 1000 + -ECANCELED);
    /* Cancelled before it ever ran. */
    t = pz_spawn(sleep_forever, NULL);
    pz_cancel(t);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED * 1000 + -ECANCELED);
    return NULL;
}

static void test_cancel_sleeping(void **state)
{
    (void)state;
    run_in_runtime(0, cancel_sleeping_main, NULL);
}

static void *joiner_task(void *arg)
{
    pz_task_t *target = arg;
    void *r = NULL;
    int rc = pz_join(target, &r);
    if (rc == -ECANCELED)
        return (void *)(intptr_t)-ECANCELED;
    CHECK_EQ(rc, 0);
    return r;
}

static void *cancel_joined_main(void *arg)
{
    (void)arg;
    /* Cancel the task being joined: the joiner gets its result. */
    pz_task_t *target = pz_spawn(sleep_forever, NULL);
    pz_task_t *joiner = pz_spawn(joiner_task, target);
    wait_parked(target);
    wait_parked(joiner);
    pz_cancel(target);
    void *r;
    CHECK_EQ(pz_join(joiner, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED * 1000 + -ECANCELED);

    /* Cancel the joiner: its join fails, the target runs on and can be
     * joined again. */
    target = pz_spawn(sleep_forever, NULL);
    joiner = pz_spawn(joiner_task, target);
    wait_parked(joiner);
    pz_cancel(joiner);
    CHECK_EQ(pz_join(joiner, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED);
    pz_cancel(target);
    CHECK_EQ(pz_join(target, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED * 1000 + -ECANCELED);
    return NULL;
}

static void test_cancel_joined(void **state)
{
    (void)state;
    run_in_runtime(0, cancel_joined_main, NULL);
}

static void *cancel_finished_main(void *arg)
{
    (void)arg;
    pz_task_t *t = pz_spawn(times_two_plus_one, (void *)20);
    pz_sleep(2000000); /* it has finished by now */
    pz_cancel(t);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((uintptr_t)r, 41);
    CHECK(!(pz_cancelled()));
    return NULL;
}

static void test_cancel_finished(void **state)
{
    (void)state;
    run_in_runtime(0, cancel_finished_main, NULL);
}

/* ---- blocking pool ---- */

static _Atomic int blocking_running, blocking_peak;

static void *blocking_work(void *arg)
{
    int now = atomic_fetch_add(&blocking_running, 1) + 1;
    int peak = atomic_load(&blocking_peak);
    while (now > peak && !atomic_compare_exchange_weak(&blocking_peak, &peak, now)) {
    }
    usleep(20000);
    atomic_fetch_sub(&blocking_running, 1);
    return (void *)((uintptr_t)arg + 1);
}

static void *blocking_caller(void *arg)
{
    void *r = NULL;
    CHECK_EQ(pz_blocking(blocking_work, arg, &r), 0);
    CHECK_EQ((uintptr_t)r, (uintptr_t)arg + 1);
    return r;
}

static _Atomic long ticks;
static void *ticker(void *arg)
{
    _Atomic bool *stop = arg;
    while (!atomic_load(stop)) {
        atomic_fetch_add(&ticks, 1);
        pz_sleep(1000000);
    }
    return NULL;
}

static void *blocking_many_main(void *arg)
{
    (void)arg;
    int n = SCALED(1000);
    pz_task_t **t = malloc((size_t)n * sizeof *t);
    _Atomic bool stop = false;
    atomic_store(&ticks, 0);
    pz_task_t *tick = pz_spawn(ticker, &stop);
    int64_t start = pz_now();
    for (int i = 0; i < n; i++)
        t[i] = pz_spawn(blocking_caller, (void *)(uintptr_t)i);
    for (int i = 0; i < n; i++) {
        void *r;
        CHECK_EQ(pz_join(t[i], &r), 0);
        CHECK_EQ((uintptr_t)r, (uintptr_t)i + 1);
    }
    int64_t elapsed = pz_now() - start;
    atomic_store(&stop, true);
    CHECK_EQ(pz_join(tick, NULL), 0);
    free(t);
    /* The pool grew: many calls ran at once, and workers stayed free for
     * the ticker meanwhile. */
    fprintf(stderr, "%d blocking calls of 20 ms took %.1f ms, %d at once at most\n", n, (double)elapsed / 1e6,
            atomic_load(&blocking_peak));
    CHECK(atomic_load(&blocking_peak) >= 4);
    CHECK(elapsed < (int64_t)n * 20000000LL / 2);
    CHECK(atomic_load(&ticks) >= 2);
    /* Outside a task, fn runs on the calling thread. */
    return NULL;
}

static void test_blocking_many(void **state)
{
    (void)state;
    run_in_runtime(2, blocking_many_main, NULL);
    void *r;
    CHECK_EQ(pz_blocking(times_two_plus_one, (void *)3, &r), 0);
    CHECK_EQ((uintptr_t)r, 7);
}

struct slow_job {
    _Atomic int started;
    _Atomic int ran;
    _Atomic int release; /* the job runs until this is set */
};

static void *blocking_slow(void *arg)
{
    struct slow_job *j = arg;
    atomic_store(&j->started, 1);
    while (!atomic_load(&j->release))
        usleep(1000);
    atomic_fetch_add(&j->ran, 1);
    return (void *)5;
}

static void *blocking_cancel_caller(void *arg)
{
    void *r = NULL;
    int rc = pz_blocking(blocking_slow, arg, &r);
    return (void *)(intptr_t)(rc == 0 ? (intptr_t)r : rc);
}

static void *blocking_cancel_main(void *arg)
{
    (void)arg;
    /* Cancelled while fn runs: the call still waits for fn and returns its
     * result, so the job on the task's stack outlives the pool's use. */
    struct slow_job running = {0, 0, 0};
    pz_task_t *t = pz_spawn(blocking_cancel_caller, &running);
    while (!atomic_load(&running.started))
        pz_sleep(100000);
    /* The pool has one thread (see the test) and it is busy now: a second
     * job queues, and cancelling its task takes it off the queue unrun. */
    struct slow_job queued = {0, 0, 1};
    pz_task_t *q = pz_spawn(blocking_cancel_caller, &queued);
    wait_parked(q);
    pz_cancel(q);
    void *r;
    CHECK_EQ(pz_join(q, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED);
    pz_cancel(t);
    pz_sleep(5000000);
    atomic_store(&running.release, 1);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, 5);
    CHECK_EQ(atomic_load(&running.ran), 1);
    CHECK_EQ(atomic_load(&queued.started), 0); /* never ran */
    return NULL;
}

static void test_blocking_cancel(void **state)
{
    (void)state;
    pz_config_t cfg = {.workers = 2, .blocking_threads_max = 1};
    CHECK_EQ(pz_run(&cfg, blocking_cancel_main, NULL, NULL), 0);
}

/* ---- errno across migration ---- */

static _Atomic int migrations;

static void *noop(void *arg)
{
    return arg;
}

static void *errno_task(void *arg)
{
    int mine = (int)(uintptr_t)arg;
    int last_worker = pz_worker_index();
    int moved = 0;
    /* Blocking calls resume through the injection queue's wake list,
     * where either worker may pick the task up, so tasks do move; go on
     * until this one has moved a few times. */
    for (int i = 0; i < 20000 && (i < 300 || moved < 5); i++) {
        write_errno(mine + i);
        switch (i % 3) {
        case 0:
            CHECK_EQ(pz_blocking(noop, NULL, NULL), 0);
            break;
        case 1:
            pz_yield();
            break;
        default:
            pz_sleep(1000);
        }
        CHECK_EQ(read_errno(), mine + i);
        int w = pz_worker_index();
        if (w != last_worker) {
            moved++;
            atomic_fetch_add(&migrations, 1);
        }
        last_worker = w;
    }
    return NULL;
}

static void *errno_main(void *arg)
{
    (void)arg;
    pz_task_t *t[16];
    for (int i = 0; i < 16; i++)
        t[i] = pz_spawn(errno_task, (void *)(uintptr_t)(i * 100000 + 1));
    for (int i = 0; i < 16; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    return NULL;
}

static void test_errno_migrates(void **state)
{
    (void)state;
    atomic_store(&migrations, 0);
    run_in_runtime(2, errno_main, NULL);
    /* The check means something only if tasks did move. */
    CHECK(atomic_load(&migrations) > 0);
}

/* ---- idle CPU ---- */

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void *idle_main(void *arg)
{
    double *used = arg;
    pz_sleep(50000000); /* let start-up settle */
    double before = cpu_seconds();
    pz_sleep(1000000000LL);
    *used = cpu_seconds() - before;
    return NULL;
}

static void test_idle_uses_no_cpu(void **state)
{
    (void)state;
    double used = 1;
    run_in_runtime(0, idle_main, &used);
    fprintf(stderr, "idle runtime used %.4f s of CPU in 1 s\n", used);
    CHECK(used < 0.02);
}

/* ---- stack overflow ---- */

static void *overflow_main(void *arg)
{
    (void)arg;
    pz_task_t *t = pz_spawn_with(overflow_task, NULL, &(pz_spawn_opts_t){.stack_size = 32768, .name = "deep-recursion"});
    pz_join(t, NULL);
    return NULL;
}

static void child_overflow(void)
{
    pz_run(NULL, overflow_main, NULL, NULL);
}

static void test_stack_overflow_report(void **state)
{
    (void)state;
    char out[8192];
    int status = run_child(child_overflow, out, sizeof out);
    fprintf(stderr, "child said: %s", out);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGABRT);
    CHECK((strstr(out, "plaza: stack overflow in task ")) != NULL);
    CHECK((strstr(out, "(deep-recursion)")) != NULL);
}

/* ---- misuse ---- */

static _Atomic bool detached_may_end;

static void *wait_for_flag(void *arg)
{
    (void)arg;
    while (!atomic_load(&detached_may_end))
        pz_sleep(1000000);
    return NULL;
}

static void *misuse_main(void *arg)
{
    (void)arg;
    /* A detached task that cannot end before we are done with its handle
     * (using a handle after detach is undefined once the task ends). */
    atomic_store(&detached_may_end, false);
    pz_task_t *t = pz_spawn(wait_for_flag, NULL);
    pz_detach(t);
    capture_stderr_begin();
    int r = pz_join(t, NULL);
    const char *msg = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK((strstr(msg, "is detached and cannot be joined")) != NULL);

    capture_stderr_begin();
    pz_detach(t);
    msg = capture_stderr_end();
    CHECK((strstr(msg, "already detached")) != NULL);
    atomic_store(&detached_may_end, true); /* it ends and frees itself */

    capture_stderr_begin();
    r = pz_join(pz_self(), NULL);
    msg = capture_stderr_end();
    CHECK_EQ(r, -EDEADLK);
    CHECK((strstr(msg, "joins itself")) != NULL);

    /* Two joiners of one task. */
    pz_task_t *target = pz_spawn(sleep_forever, NULL);
    pz_task_t *j1 = pz_spawn(joiner_task, target);
    for (;;) { /* until j1 is registered as the joiner */
        pz_task_t *tt = pz__task_peek(target); /* the struct behind the handle */
        pz__spin_lock(&tt->join_lock);
        bool joined = tt->joiner != NULL;
        pz__spin_unlock(&tt->join_lock);
        if (joined)
            break;
        pz_sleep(1000000);
    }
    capture_stderr_begin();
    r = pz_join(target, NULL);
    msg = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK((strstr(msg, "already being joined")) != NULL);
    pz_cancel(target);
    CHECK_EQ(pz_join(j1, NULL), 0);

    capture_stderr_begin();
    r = pz_run(NULL, main_returns_arg, NULL, NULL);
    msg = capture_stderr_end();
    CHECK_EQ(r, -EBUSY);
    CHECK((strstr(msg, "already running")) != NULL);

    capture_stderr_begin();
    pz_task_t *bad = pz_spawn(NULL, NULL);
    msg = capture_stderr_end();
    CHECK((bad) == NULL);
    CHECK((strstr(msg, "fn is NULL")) != NULL);
    return NULL;
}

static void test_misuse(void **state)
{
    (void)state;
    run_in_runtime(2, misuse_main, NULL);

    capture_stderr_begin();
    pz_task_t *t = pz_spawn(main_returns_arg, NULL);
    int r = pz_join((pz_task_t *)&r, NULL);
    const char *msg = capture_stderr_end();
    CHECK((t) == NULL);
    CHECK_EQ(r, -EPERM);
    CHECK((strstr(msg, "no runtime is running")) != NULL);

    capture_stderr_begin();
    pz_config_t cfg = {.workers = -3};
    r = pz_run(&cfg, main_returns_arg, NULL, NULL);
    msg = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK((strstr(msg, "invalid configuration")) != NULL);
    CHECK_EQ(pz_run(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK(strcmp(pz_strerror(-ETIMEDOUT), "deadline passed") == 0);
    CHECK(strcmp(pz_strerror(-ECANCELED), "task cancelled") == 0);
}

/* ---- names and ids ---- */

static void *name_task(void *arg)
{
    char *out = arg;
    snprintf(out, 64, "%s", pz_task_name(pz_self()));
    return out;
}

static void *names_main(void *arg)
{
    (void)arg;
    char na[64], nb[64];
    pz_task_t *a = pz_spawn_with(name_task, na, &(pz_spawn_opts_t){.name = "a-rather-long-task-name-that-gets-cut-here", .stack_size = 20000});
    pz_task_t *b = pz_spawn(name_task, nb);
    CHECK(pz_task_id(b) > pz_task_id(a));
    CHECK_EQ(pz_join(a, NULL), 0);
    CHECK_EQ(pz_join(b, NULL), 0);
    CHECK(strcmp(na, "a-rather-long-task-name-that-ge") == 0);
    CHECK(strcmp(nb, "") == 0);
    return NULL;
}

static void test_names(void **state)
{
    (void)state;
    run_in_runtime(2, names_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_result_and_defaults),
        cmocka_unit_test(test_spawn_join_100k),
        cmocka_unit_test(test_nested_spawn),
        cmocka_unit_test(test_yield_round_robin),
        cmocka_unit_test(test_yield_alone_returns),
        cmocka_unit_test(test_sleep_order_one_worker),
        cmocka_unit_test(test_sleep_order_all_workers),
        cmocka_unit_test(test_sleep_never_early),
        cmocka_unit_test(test_cancel_sleeping),
        cmocka_unit_test(test_cancel_joined),
        cmocka_unit_test(test_cancel_finished),
        cmocka_unit_test(test_blocking_many),
        cmocka_unit_test(test_blocking_cancel),
        cmocka_unit_test(test_errno_migrates),
        cmocka_unit_test(test_idle_uses_no_cpu),
        cmocka_unit_test(test_stack_overflow_report),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
