/* Spare workers (src/runtime/spare.c): a worker thread blocked in a sync
 * lock behind a suspended holder, or in a system call, no longer stops the
 * runtime.  The monitor starts a spare thread for the runnable tasks,
 * reports why (naming the task and the lock), and the spare retires when
 * the blocked thread comes back.  Each test waits for states (a flag, a
 * count, the thread list), never for a time it hopes is long enough. */
#include "helpers.h"
#include "report_sink.h"
#include "arch/arch.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Threads of this process whose name starts with prefix. */
static int threads_named(const char *prefix)
{
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* it just exited */
        if (fgets(name, sizeof name, f) && !strncmp(name, prefix, strlen(prefix)))
            n++;
        fclose(f);
    }
    closedir(d);
    return n;
}

static bool no_spare_threads(void *arg)
{
    (void)arg;
    return threads_named("plaza-s") == 0;
}

/* ---- the new user's program: a pz_mutex held across pz_blocking ---- */

#define CLIENTS 4
static pz_mutex_t lock;
static _Atomic int inside;      /* tasks inside the critical section */
static _Atomic bool overlap;    /* two were inside at once */
static _Atomic bool holder_in;  /* the holder has the lock */
static long served;             /* under lock */

static void *slow_query(void *arg)
{
    (void)arg;
    usleep(30 * 1000); /* the database call */
    return NULL;
}

static void enter(void)
{
    if (atomic_fetch_add(&inside, 1) != 0)
        atomic_store(&overlap, true);
}

static void leave(void)
{
    atomic_fetch_sub(&inside, 1);
}

static void *refresher(void *arg)
{
    int rounds = (int)(intptr_t)arg;
    for (int i = 0; i < rounds; i++) {
        pz_mutex_lock(&lock);
        enter();
        atomic_store(&holder_in, true);
        CHECK_EQ(pz_blocking(slow_query, NULL, NULL), 0); /* the wrong thing: suspends holding a sync lock */
        served++;
        leave();
        pz_mutex_unlock(&lock);
        pz_yield();
    }
    return NULL;
}

static void *client(void *arg)
{
    (void)arg;
    for (int i = 0; i < 3; i++) {
        pz_mutex_lock(&lock);
        enter();
        served++;
        leave();
        pz_mutex_unlock(&lock);
        pz_yield();
    }
    return NULL;
}

static bool holder_has_it(void *arg)
{
    (void)arg;
    return atomic_load(&holder_in);
}

static void *new_user_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    served = 0;
    atomic_store(&holder_in, false);
    atomic_store(&overlap, false);
    pz_task_t *h = pz_spawn_with(refresher, (void *)(intptr_t)3, &(pz_spawn_opts_t){.name = "refresher"});
    CHECK(h != NULL);
    /* The clients come once the holder is inside: every one of them blocks
     * a worker thread behind a holder that is suspended. */
    wait_until_true(holder_has_it, NULL, 30 * SEC);
    pz_task_t *c[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        CHECK((c[i] = pz_spawn_with(client, NULL, &(pz_spawn_opts_t){.name = "client"})) != NULL);
    char lockname[96];
    snprintf(lockname, sizeof lockname, "pz_mutex %p held by task %llu, which no worker runs", (void *)&lock,
             (unsigned long long)pz_task_id(h));
    CHECK_EQ(pz_join(h, NULL), 0);
    for (int i = 0; i < CLIENTS; i++)
        CHECK_EQ(pz_join(c[i], NULL), 0);
    CHECK(!atomic_load(&overlap));
    CHECK_EQ(served, 3 + CLIENTS * 3);
    /* Why, once per episode, naming the blocked task, the lock and its
     * holder. */
    CHECK(sink_has("spare worker: worker "));
    CHECK(sink_has("(client) waits for pz_mutex "));
    CHECK(sink_has(lockname));
    CHECK(sink_has("use an async lock"));
    /* The spares retire once nothing blocks: the thread count goes back. */
    wait_until_true(no_spare_threads, NULL, 30 * SEC);
    pz_set_report(NULL, NULL);
    return (void *)1;
}

static void test_sync_lock_across_blocking_one_worker(void **state)
{
    (void)state;
    CHECK(run_in_runtime(1, new_user_main, NULL));
    CHECK_EQ(threads_named("plaza-s"), 0);
}

static void test_sync_lock_across_blocking_two_workers(void **state)
{
    (void)state;
    CHECK(run_in_runtime(2, new_user_main, NULL));
    CHECK_EQ(threads_named("plaza-s"), 0);
}

/* ---- a task blocked in a system call it makes directly ---- */

static int pipe_fd[2];
static _Atomic bool in_read;
static _Atomic long progress;
static _Atomic bool stop_runners;
static _Atomic long progress_seen_blocked; /* progress made while the reader was in read() */
static _Atomic bool spare_seen;

static void *reader(void *arg)
{
    (void)arg;
    char c;
    atomic_store(&in_read, true);
    ssize_t n = read(pipe_fd[0], &c, 1); /* not pz_read: it holds the worker */
    atomic_store(&in_read, false);
    CHECK_EQ(n, 1);
    return NULL;
}

static void *runner(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_runners)) {
        atomic_fetch_add(&progress, 1);
        pz_sleep(100 * 1000); /* 0.1 ms: a timer in some worker's heap */
    }
    return NULL;
}

/* A plain thread: once the reader sits in read(), it waits for the other
 * tasks to make progress (with spares they do, on a spare; without, they
 * cannot, on one worker), then writes the byte that ends the read. */
static void *writer_thread(void *arg)
{
    bool expect_progress = arg != NULL;
    while (!atomic_load(&in_read))
        usleep(1000);
    usleep(1000);
    long p0 = atomic_load(&progress);
    if (expect_progress) {
        int64_t limit = pz_now() + 30 * SEC;
        while (atomic_load(&progress) < p0 + 50 && pz_now() < limit)
            usleep(1000);
        if (threads_named("plaza-s") > 0)
            atomic_store(&spare_seen, true);
    } else {
        usleep(300 * 1000);
        if (threads_named("plaza-s") > 0)
            atomic_store(&spare_seen, true);
    }
    atomic_store(&progress_seen_blocked, atomic_load(&progress) - p0);
    CHECK(atomic_load(&in_read));
    CHECK_EQ(write(pipe_fd[1], "x", 1), 1);
    return NULL;
}

struct syscall_case {
    bool spares;
};

static void *syscall_main(void *arg)
{
    struct syscall_case *sc = arg;
    sink_reset();
    pz_set_report(collect, NULL);
    CHECK_EQ(pipe(pipe_fd), 0);
    atomic_store(&in_read, false);
    atomic_store(&progress, 0);
    atomic_store(&stop_runners, false);
    atomic_store(&spare_seen, false);
    pz_task_t *r[4];
    for (int i = 0; i < 4; i++)
        CHECK((r[i] = pz_spawn_with(runner, NULL, &(pz_spawn_opts_t){.name = "runner"})) != NULL);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, writer_thread, sc->spares ? (void *)1 : NULL), 0);
    pz_task_t *rd = pz_spawn_with(reader, NULL, &(pz_spawn_opts_t){.name = "reader"});
    CHECK_EQ(pz_join(rd, NULL), 0);
    pthread_join(th, NULL);
    atomic_store(&stop_runners, true);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pz_join(r[i], NULL), 0);
    close(pipe_fd[0]);
    close(pipe_fd[1]);
    if (sc->spares) {
        CHECK(atomic_load(&progress_seen_blocked) >= 50);
        CHECK(atomic_load(&spare_seen));
        CHECK(sink_has("spare worker: worker 0 is blocked: task "));
        CHECK(sink_has("(reader) has run "));
        if (pz__arch_syscall_numbers_native())
            CHECK(sink_has("system call read"));
        else /* under qemu-user the kernel shows the host's numbers */
            CHECK(sink_has("in a system call (number "));
        CHECK_EQ(sink_count("spare worker: worker 0 is blocked"), 1);
        wait_until_true(no_spare_threads, NULL, 30 * SEC);
    } else {
        /* One worker, no spare: nothing ran while it was blocked. */
        CHECK_EQ(atomic_load(&progress_seen_blocked), 0);
        CHECK(!atomic_load(&spare_seen));
        CHECK(!sink_has("spare worker"));
    }
    pz_set_report(NULL, NULL);
    return (void *)1;
}

static void test_blocked_system_call_others_progress(void **state)
{
    (void)state;
    struct syscall_case sc = {true};
    void *res = NULL;
    CHECK_EQ(pz_run(&(pz_config_t){.workers = 1}, syscall_main, &sc, &res), 0);
    CHECK(res);
    CHECK_EQ(threads_named("plaza-s"), 0);
}

static void test_spares_off(void **state)
{
    (void)state;
    struct syscall_case sc = {false};
    void *res = NULL;
    CHECK_EQ(pz_run(&(pz_config_t){.workers = 1, .spare_workers = -1}, syscall_main, &sc, &res), 0);
    CHECK(res);
}

/* ---- the cap: at most spare_workers spares, and it is said ---- */

static int cap_pipes[2][2];
static _Atomic int cap_in_read;
static _Atomic int cap_most_spares;

static void *cap_reader(void *arg)
{
    int i = (int)(intptr_t)arg;
    char c;
    atomic_fetch_add(&cap_in_read, 1);
    CHECK_EQ(read(cap_pipes[i][0], &c, 1), 1);
    return NULL;
}

/* Both readers block their threads (the worker, then the one spare);
 * the monitor says the cap is reached; never more than one spare runs. */
static void *cap_writer(void *arg)
{
    (void)arg;
    int64_t limit = pz_now() + 60 * SEC;
    while (!sink_has("but all 1 spare workers run already") && pz_now() < limit) {
        int n = threads_named("plaza-s");
        if (n > atomic_load(&cap_most_spares))
            atomic_store(&cap_most_spares, n);
        usleep(2000);
    }
    CHECK(sink_has("but all 1 spare workers run already"));
    CHECK_EQ(atomic_load(&cap_in_read), 2);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(write(cap_pipes[i][1], "x", 1), 1);
    return NULL;
}

static void *cap_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pipe(cap_pipes[i]), 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, cap_writer, NULL), 0);
    pz_task_t *r0 = pz_spawn(cap_reader, (void *)0);
    pz_task_t *r1 = pz_spawn(cap_reader, (void *)1);
    CHECK_EQ(pz_join(r0, NULL), 0);
    CHECK_EQ(pz_join(r1, NULL), 0);
    pthread_join(th, NULL);
    for (int i = 0; i < 2; i++) {
        close(cap_pipes[i][0]);
        close(cap_pipes[i][1]);
    }
    CHECK_EQ(atomic_load(&cap_most_spares), 1);
    CHECK(sink_has("(1 of at most 1 running)"));
    wait_until_true(no_spare_threads, NULL, 30 * SEC);
    pz_set_report(NULL, NULL);
    return (void *)1;
}

static void test_spare_cap(void **state)
{
    (void)state;
    void *res = NULL;
    CHECK_EQ(pz_run(&(pz_config_t){.workers = 1, .spare_workers = 1}, cap_main, NULL, &res), 0);
    CHECK(res);
}

/* ---- pz_run ends while a spare runs: it joins the spare ---- */

static int end_pipe[2];
static _Atomic bool end_in_read;
static _Atomic bool end_main_on_spare;
static _Atomic int end_spares_seen;

static void *end_reader(void *arg)
{
    (void)arg;
    char c;
    atomic_store(&end_in_read, true);
    CHECK_EQ(read(end_pipe[0], &c, 1), 1);
    return NULL;
}

static void *end_writer(void *arg)
{
    (void)arg;
    /* Until main has returned on the spare (pz_run is then stopping, and
     * waits for the worker this read blocks). */
    while (!atomic_load(&end_main_on_spare))
        usleep(1000);
    usleep(50 * 1000);
    CHECK_EQ(write(end_pipe[1], "x", 1), 1);
    return NULL;
}

static void *end_main(void *arg)
{
    (void)arg;
    pz_task_t *r = pz_spawn(end_reader, NULL);
    pz_detach(r);
    /* Main yields until it runs on a spare: the reader blocks the worker. */
    while (pz_worker_index() < pz_worker_count())
        pz_yield();
    atomic_store(&end_spares_seen, threads_named("plaza-s"));
    CHECK(atomic_load(&end_in_read));
    atomic_store(&end_main_on_spare, true);
    return (void *)1;
}

static void test_run_ends_with_a_spare(void **state)
{
    (void)state;
    CHECK_EQ(pipe(end_pipe), 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, end_writer, NULL), 0);
    void *res = NULL;
    pz_set_report(collect, NULL);
    CHECK_EQ(pz_run(&(pz_config_t){.workers = 1}, end_main, NULL, &res), 0);
    pz_set_report(NULL, NULL);
    CHECK(res);
    CHECK(atomic_load(&end_spares_seen) >= 1);
    CHECK_EQ(threads_named("plaza-s"), 0); /* pz_run joined it */
    pthread_join(th, NULL);
    close(end_pipe[0]);
    close(end_pipe[1]);
}

static void *nothing(void *arg)
{
    return arg;
}

static void test_bad_spare_config(void **state)
{
    (void)state;
    capture_stderr_begin();
    int r = pz_run(&(pz_config_t){.spare_workers = -2}, nothing, NULL, NULL);
    const char *err = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK(strstr(err, "spare_workers -2") != NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_lock_across_blocking_one_worker),
        cmocka_unit_test(test_sync_lock_across_blocking_two_workers),
        cmocka_unit_test(test_blocked_system_call_others_progress),
        cmocka_unit_test(test_spares_off),
        cmocka_unit_test(test_spare_cap),
        cmocka_unit_test(test_run_ends_with_a_spare),
        cmocka_unit_test(test_bad_spare_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
