/*
 * The idle path's wake-ups (src/runtime/sched.c): workers that keep going
 * to sleep, one in the poller and the others on their futex, while work
 * comes from everywhere at once: readiness of a socket answered by a plain
 * thread, a finished blocking-pool job, a pz_notify_one from a plain thread,
 * a timer, and tasks that spin so that the others search and steal.  No
 * wake-up may be lost: a task made runnable while every worker sleeps must
 * get a worker.
 *
 * A lost wake-up is caught as a state, not as a slow run: a watchdog thread
 * samples the runtime, and runnable work (a run queue, a LIFO slot, the
 * injection queue or wake list) seen while every worker thread is in the
 * sleepers' list, without a break for two seconds, fails the test (a worker
 * leaves the list before it is woken, so on a busy machine a slow wake-up
 * never looks like this).  Every operation's result is checked too.
 */
#include <plaza.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "runtime/internal.h"

#define CLIENTS 16
#define ROUNDS SCALED(1500)

enum { WANT_NONE, WANT_REPLY, WANT_NOTIFY };

struct client {
    int fd[2];             /* fd[0] the task's end, fd[1] the plain thread's */
    _Atomic int want;
    pz_notify_t notify;
    uint64_t seed;
    long ops[4];
};

static struct client clients[CLIENTS];
static _Atomic bool helper_stop, watchdog_stop;
static _Atomic long blocking_runs;

static void pause_a_little(uint64_t *seed)
{
    uint64_t r = test_rand(seed) % 8;
    if (r == 0) {
        /* Long enough for the workers to go to sleep. */
        struct timespec ts = {0, 30000};
        nanosleep(&ts, NULL);
    } else {
        for (volatile uint64_t spin = r * 500; spin; spin--) {
        }
    }
}

/* The plain thread: answers requests over the sockets and notifies. */
static void *helper(void *arg)
{
    (void)arg;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    while (!atomic_load(&helper_stop)) {
        bool any = false;
        for (int i = 0; i < CLIENTS; i++) {
            struct client *c = &clients[i];
            int want = atomic_load(&c->want);
            if (want == WANT_NONE)
                continue;
            any = true;
            pause_a_little(&seed);
            atomic_store(&c->want, WANT_NONE);
            if (want == WANT_REPLY) {
                char b;
                CHECK_EQ(read(c->fd[1], &b, 1), 1);
                b = (char)(b + 1);
                CHECK_EQ(write(c->fd[1], &b, 1), 1);
            } else {
                pz_notify_one(&c->notify);
            }
        }
        if (!any)
            sched_yield();
    }
    return NULL;
}

static bool stranded(pz__runtime *rt)
{
    int slots = pz__rt_slots(rt);
    if (atomic_load(&rt->nsleeping) != atomic_load(&rt->nthreads))
        return false;
    if (atomic_load(&rt->inject_len) > 0)
        return true;
    for (int i = 0; i < slots; i++)
        if (pz__runq_len(&rt->workers[i].runq) > 0 || atomic_load(&rt->workers[i].lifo))
            return true;
    return false;
}

static void *watchdog(void *arg)
{
    pz__runtime *rt = arg;
    int64_t since = 0;
    while (!atomic_load(&watchdog_stop)) {
        if (stranded(rt)) {
            int64_t now = pz_now();
            if (!since)
                since = now;
            else
                CHECK(now - since < 2 * SEC); /* runnable work, every worker asleep */
        } else {
            since = 0;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *job(void *arg)
{
    atomic_fetch_add(&blocking_runs, 1);
    return (void *)((uintptr_t)arg * 3);
}

static void *client_task(void *arg)
{
    struct client *c = arg;
    int64_t limit = 60 * SEC; /* a deadlock guard only: the watchdog catches a stranded task */
    for (int round = 0; round < ROUNDS; round++) {
        int op = (int)(test_rand(&c->seed) % 4);
        c->ops[op]++;
        switch (op) {
        case 0: { /* readiness from a plain thread's write */
            char b = (char)round, r = 0;
            CHECK_EQ(pz_write(c->fd[0], &b, 1, pz_now() + limit), 1);
            atomic_store(&c->want, WANT_REPLY);
            CHECK_EQ(pz_read(c->fd[0], &r, 1, pz_now() + limit), 1);
            CHECK_EQ(r, (char)(b + 1));
            break;
        }
        case 1: { /* a blocking-pool thread readies the task */
            void *res = NULL;
            CHECK_EQ(pz_blocking(job, (void *)(uintptr_t)round, &res), 0);
            CHECK_EQ((uintptr_t)res, (uintptr_t)round * 3);
            break;
        }
        case 2: /* a plain thread's pz_notify_one */
            atomic_store(&c->want, WANT_NOTIFY);
            CHECK_EQ(pz_notify_wait_until(&c->notify, pz_now() + limit), 0);
            break;
        default: /* a timer, or a spin that keeps this worker busy */
            if (test_rand(&c->seed) % 2)
                CHECK_EQ(pz_sleep((int64_t)(test_rand(&c->seed) % 50) * US), 0);
            else
                for (volatile int spin = (int)(test_rand(&c->seed) % 20000); spin; spin--) {
                }
            break;
        }
    }
    return NULL;
}

static void *app(void *arg)
{
    (void)arg;
    atomic_store(&helper_stop, false);
    atomic_store(&watchdog_stop, false);
    atomic_store(&blocking_runs, 0);
    for (int i = 0; i < CLIENTS; i++) {
        struct client *c = &clients[i];
        *c = (struct client){.seed = 0x1234567ull * (uint64_t)(i + 1) | 1};
        CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c->fd), 0);
    }
    pthread_t th, wd;
    CHECK_EQ(pthread_create(&th, NULL, helper, NULL), 0);
    CHECK_EQ(pthread_create(&wd, NULL, watchdog, atomic_load(&pz__rt)), 0);
    pz_task_t *t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        CHECK((t[i] = pz_spawn(client_task, &clients[i])) != NULL);
    long blocking_ops = 0, total = 0;
    for (int i = 0; i < CLIENTS; i++) {
        CHECK_EQ(pz_join(t[i], NULL), 0);
        blocking_ops += clients[i].ops[1];
        for (int k = 0; k < 4; k++)
            total += clients[i].ops[k];
    }
    atomic_store(&helper_stop, true);
    atomic_store(&watchdog_stop, true);
    pthread_join(th, NULL);
    pthread_join(wd, NULL);
    CHECK_EQ(total, (long)CLIENTS * ROUNDS);
    CHECK_EQ(atomic_load(&blocking_runs), blocking_ops);
    for (int i = 0; i < CLIENTS; i++) {
        pz_close(clients[i].fd[0]);
        close(clients[i].fd[1]);
    }
    return NULL;
}

static void test_idle_wake_two_workers(void **state)
{
    (void)state;
    run_in_runtime(2, app, NULL);
}

static void test_idle_wake_four_workers(void **state)
{
    (void)state;
    run_in_runtime(4, app, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_wake_two_workers),
        cmocka_unit_test(test_idle_wake_four_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
