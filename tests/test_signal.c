/* Signals: waits from tasks (delivery, deadline, cancel, bad sets), that
 * no handler of the program ever runs on a worker or pool thread, and the
 * graceful-shutdown helper (first signal asks, second one kills). */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>



/* ---- a task receives a signal sent by another ---- */

static _Atomic int got;

static void *usr1_waiter(void *arg)
{
    (void)arg;
    uint64_t s = PZ_SIGMASK(SIGUSR1);
    atomic_store(&got, pz_signal_wait(s, pz_now() + 30 * SEC));
    return NULL;
}

static void *wait_main(void *arg)
{
    (void)arg;
    uint64_t s = PZ_SIGMASK(SIGUSR1);
    /* A wait that ends at once registers the set: from here on the signal
     * is blocked everywhere and stays pending until read. */
    CHECK_EQ(pz_signal_wait(s, pz_now()), -ETIMEDOUT);
    for (int round = 0; round < 20; round++) {
        atomic_store(&got, 0);
        pz_task_t *t = pz_spawn(usr1_waiter, NULL);
        if (round % 2)
            pz_sleep(MS); /* sometimes sent while the waiter waits, sometimes before */
        CHECK_EQ(kill(getpid(), SIGUSR1), 0);
        CHECK_EQ(pz_join(t, NULL), 0);
        CHECK_EQ(atomic_load(&got), SIGUSR1);
    }
    /* Nothing left pending. */
    CHECK_EQ(pz_signal_wait(s, pz_now() + MS), -ETIMEDOUT);
    return NULL;
}

static void test_signal_wait(void **state)
{
    (void)state;
    run_in_runtime(2, wait_main, NULL);
}

/* ---- deadline, cancel, bad sets ---- */

static void *cancel_waiter(void *arg)
{
    (void)arg;
    uint64_t s = PZ_SIGMASK(SIGUSR1);
    return (void *)(intptr_t)pz_signal_wait(s, PZ_FOREVER);
}

static void *errors_main(void *arg)
{
    (void)arg;
    uint64_t s = PZ_SIGMASK(SIGUSR1);
    int64_t t0 = pz_now();
    CHECK_EQ(pz_signal_wait(s, t0 + 20 * MS), -ETIMEDOUT);
    CHECK(pz_now() - t0 >= 20 * MS);
    pz_task_t *t = pz_spawn(cancel_waiter, NULL);
    pz_sleep(5 * MS);
    pz_cancel(t);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED);
    CHECK_EQ(pz_signal_wait(0, PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_signal_wait(PZ_SIGMASK(SIGKILL), PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_signal_wait(PZ_SIGMASK(SIGSEGV) | s, PZ_FOREVER), -EINVAL);
    return NULL;
}

static void test_signal_errors(void **state)
{
    (void)state;
    run_in_runtime(2, errors_main, NULL);
}

/* ---- a program's handler never runs on a runtime thread ---- */

static _Atomic long handled;
static _Atomic long handler_tid;
static _Atomic int wrong_thread;

static long main_tid;

static void on_usr2(int sig)
{
    (void)sig;
    long tid = (long)syscall(SYS_gettid);
    atomic_store(&handler_tid, tid);
    if (tid != main_tid)
        atomic_store(&wrong_thread, tid);
    atomic_fetch_add(&handled, 1);
}

static void *send_usr2(void *arg)
{
    (void)arg;
    long before = atomic_load(&handled);
    CHECK_EQ(kill(getpid(), SIGUSR2), 0);
    /* The handler runs on pz_run's thread: wait for it. */
    int64_t give_up = pz_now() + 30 * SEC;
    while (atomic_load(&handled) == before && pz_now() < give_up)
        pz_sleep(100000);
    CHECK(atomic_load(&handled) > before);
    return NULL;
}

static void *blocking_send(void *arg)
{
    (void)arg;
    /* On a blocking-pool thread, which must block signals too. */
    CHECK_EQ(kill(getpid(), SIGUSR2), 0);
    return NULL;
}

static void *handler_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 50; i++) {
        pz_task_t *t = pz_spawn(send_usr2, NULL);
        CHECK_EQ(pz_join(t, NULL), 0);
        long before = atomic_load(&handled);
        CHECK_EQ(pz_blocking(blocking_send, NULL, NULL), 0);
        int64_t give_up = pz_now() + 30 * SEC;
        while (atomic_load(&handled) == before && pz_now() < give_up)
            pz_sleep(100000);
        CHECK(atomic_load(&handled) > before);
    }
    return NULL;
}

static void test_handlers_stay_off_runtime_threads(void **state)
{
    (void)state;
    main_tid = (long)syscall(SYS_gettid);
    struct sigaction sa = {.sa_handler = on_usr2};
    sigemptyset(&sa.sa_mask);
    CHECK_EQ(sigaction(SIGUSR2, &sa, NULL), 0);
    run_in_runtime(2, handler_main, NULL);
    CHECK(atomic_load(&handled) >= 100);
    if (atomic_load(&wrong_thread)) {
        char path[64], name[32] = "";
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", atomic_load(&wrong_thread));
        FILE *f = fopen(path, "r");
        if (f) {
            if (!fgets(name, sizeof name, f))
                name[0] = '\0';
            fclose(f);
        }
        fprintf(stderr, "a handler ran on thread %d (%s)\n", atomic_load(&wrong_thread), name);
    }
    CHECK_EQ(atomic_load(&wrong_thread), 0);
    CHECK_EQ(atomic_load(&handler_tid), main_tid);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGUSR2, &sa, NULL);
}

/* ---- shutdown: the first SIGTERM asks, the second kills ---- */

static void *shutdown_main(void *arg)
{
    int sig = (int)(intptr_t)arg;
    CHECK_EQ(pz_shutdown_listen(), 0);
    CHECK(!pz_shutdown_requested());
    CHECK_EQ(pz_shutdown_wait(pz_now() + MS), -ETIMEDOUT);
    CHECK_EQ(kill(getpid(), sig), 0);
    CHECK_EQ(pz_shutdown_wait(pz_now() + 30 * SEC), 0);
    CHECK(pz_shutdown_requested());
    CHECK_EQ(pz_shutdown_signal(), sig);
    fprintf(stderr, "stop requested\n");
    CHECK_EQ(kill(getpid(), sig), 0);
    pz_sleep(30 * SEC); /* the second signal ends the process meanwhile */
    fprintf(stderr, "still alive\n");
    return NULL;
}

static void shutdown_child_term(void)
{
    run_in_runtime(2, shutdown_main, (void *)(intptr_t)SIGTERM);
}

static void shutdown_child_int(void)
{
    run_in_runtime(2, shutdown_main, (void *)(intptr_t)SIGINT);
}

static void test_shutdown_second_signal_kills(void **state)
{
    (void)state;
    char buf[4096];
    int st = run_child(shutdown_child_term, buf, sizeof buf);
    CHECK(strstr(buf, "stop requested") != NULL);
    CHECK(strstr(buf, "still alive") == NULL);
    CHECK(WIFSIGNALED(st));
    CHECK_EQ(WTERMSIG(st), SIGTERM);
    st = run_child(shutdown_child_int, buf, sizeof buf);
    CHECK(strstr(buf, "stop requested") != NULL);
    CHECK(WIFSIGNALED(st));
    CHECK_EQ(WTERMSIG(st), SIGINT);
}

/* ---- shutdown: every waiter sees one request; the next run starts clean ---- */

#define WAITERS 64
static _Atomic int woke;

static void *stop_waiter(void *arg)
{
    (void)arg;
    if (pz_shutdown_wait(pz_now() + 60 * SEC) == 0 && pz_shutdown_requested())
        atomic_fetch_add(&woke, 1);
    return NULL;
}

static void *request_main(void *arg)
{
    (void)arg;
    CHECK(!pz_shutdown_requested());
    pz_task_t *t[WAITERS];
    for (int i = 0; i < WAITERS; i++)
        t[i] = pz_spawn(stop_waiter, NULL);
    pz_sleep(2 * MS);
    pz_shutdown_request();
    for (int i = 0; i < WAITERS; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    CHECK_EQ(atomic_load(&woke), WAITERS);
    CHECK_EQ(pz_shutdown_signal(), 0);
    return NULL;
}

static void *fresh_main(void *arg)
{
    (void)arg;
    CHECK(!pz_shutdown_requested());
    CHECK_EQ(pz_shutdown_wait(pz_now() + MS), -ETIMEDOUT);
    return NULL;
}

static void test_shutdown_request(void **state)
{
    (void)state;
    run_in_runtime(2, request_main, NULL);
    run_in_runtime(2, fresh_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shutdown_second_signal_kills),
        cmocka_unit_test(test_signal_wait),
        cmocka_unit_test(test_signal_errors),
        cmocka_unit_test(test_handlers_stay_off_runtime_threads),
        cmocka_unit_test(test_shutdown_request),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
