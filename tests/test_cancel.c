/* The cancellation rule (include/plaza/task.h): a cancelled task's
 * suspending waits return -ECANCELED, waits that complete at once
 * succeed, and inside a shield nothing is cancelled, so a cancelled task
 * can release its async lock, join its children and finish a blocking
 * call; the same rule for every primitive. */
#include "helpers.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


static pz_async_mutex_t lock = PZ_ASYNC_MUTEX_INIT;
static _Atomic int stage;
static _Atomic int blocking_ran;

/* The children wait until the holder lets them go, so that its cancelled
 * join below always finds them running (a timed wait raced it on a busy
 * machine). */
static pz_semaphore_t kids_go = PZ_SEMAPHORE_INIT(0);

static void *child(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_semaphore_acquire(&kids_go, 1), 0);
    return (void *)42;
}

static void *slow_blocking(void *arg)
{
    (void)arg;
    usleep(10000);
    atomic_store(&blocking_ran, 1);
    return (void *)7;
}

static void *holder(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&lock), 0);
    pz_task_t *kids[8];
    for (int i = 0; i < 8; i++)
        kids[i] = pz_spawn(child, NULL);
    atomic_store(&stage, 1);
    CHECK_EQ(pz_sleep(60 * SEC), -ECANCELED);
    CHECK(pz_cancelled());
    /* Outside a shield a join that would wait is cancelled at once... */
    void *r = NULL;
    CHECK_EQ(pz_join(kids[0], &r), -ECANCELED);
    /* ...inside one, the task joins its children, and a blocking call runs
     * and is waited for. */
    pz_shield_begin();
    CHECK_EQ(pz_semaphore_release(&kids_go, 8), 0);
    for (int i = 0; i < 8; i++) {
        CHECK_EQ(pz_join(kids[i], &r), 0);
        CHECK_EQ((intptr_t)r, 42);
    }
    CHECK_EQ(pz_blocking(slow_blocking, NULL, &r), 0);
    CHECK_EQ((intptr_t)r, 7);
    CHECK_EQ(atomic_load(&blocking_ran), 1);
    /* A deadline still bounds a shielded wait. */
    CHECK_EQ(pz_sleep_until(pz_now() + MS), 0);
    pz_shield_end();
    CHECK_EQ(pz_async_mutex_unlock(&lock), 0);
    /* After the shield the next suspending wait is cancelled again. */
    CHECK_EQ(pz_sleep(60 * SEC), -ECANCELED);
    return NULL;
}

static void *cleanup_main(void *arg)
{
    (void)arg;
    pz_task_t *t = pz_spawn(holder, NULL);
    while (!atomic_load(&stage))
        pz_sleep(MS);
    pz_cancel(t);
    CHECK_EQ(pz_join(t, NULL), 0);
    CHECK(!pz_async_mutex_is_locked(&lock));
    CHECK_EQ(pz_async_mutex_lock(&lock), 0);
    pz_async_mutex_unlock(&lock);
    return NULL;
}

static void test_cancelled_task_cleans_up(void **state)
{
    (void)state;
    run_in_runtime(2, cleanup_main, NULL);
}

/* ---- one rule for every primitive ---- */

static pz_async_mutex_t m2 = PZ_ASYNC_MUTEX_INIT;
static pz_async_rwlock_t rw = PZ_ASYNC_RWLOCK_INIT;
static pz_semaphore_t sem = PZ_SEMAPHORE_INIT(1);
static pz_notify_t note = PZ_NOTIFY_INIT;
static pz_chan_t *ch;
static int sv[2];
static _Atomic int release_now;

static void *blocker(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&m2), 0);
    CHECK_EQ(pz_async_rwlock_write(&rw), 0);
    CHECK_EQ(pz_semaphore_acquire(&sem, 1), 0);
    atomic_store(&stage, 1);
    while (!atomic_load(&release_now))
        pz_sleep(MS);
    pz_sleep(5 * MS); /* the shielded waits below are parked by now, or soon */
    pz_semaphore_release(&sem, 1);
    pz_async_rwlock_write_unlock(&rw);
    pz_async_mutex_unlock(&m2);
    int one = 1;
    CHECK_EQ(pz_chan_send(ch, &one), 0);
    pz_notify_one(&note);
    CHECK_EQ(write(sv[1], "x", 1), 1);
    return NULL;
}

static void *rule_task(void *arg)
{
    (void)arg;
    pz_cancel(pz_self());
    /* Would suspend: cancelled, and nothing taken. */
    CHECK_EQ(pz_async_mutex_lock(&m2), -ECANCELED);
    CHECK_EQ(pz_async_rwlock_read(&rw), -ECANCELED);
    CHECK_EQ(pz_semaphore_acquire(&sem, 1), -ECANCELED);
    CHECK_EQ(pz_semaphore_available(&sem), 0);
    int item;
    CHECK_EQ(pz_chan_recv(ch, &item), -ECANCELED);
    CHECK_EQ(pz_notify_wait(&note), -ECANCELED);
    char c;
    CHECK_EQ(pz_read(sv[0], &c, 1, PZ_FOREVER), -ECANCELED);
    CHECK_EQ(pz_wait_fd(sv[0], PZ_READABLE, PZ_FOREVER), -ECANCELED);
    CHECK_EQ(pz_sleep(SEC), -ECANCELED);
    CHECK_EQ(pz_signal_wait(PZ_SIGMASK(SIGUSR1), PZ_FOREVER), -ECANCELED);
    /* Completes at once: succeeds although cancelled. */
    pz_async_mutex_t free_m = PZ_ASYNC_MUTEX_INIT;
    CHECK_EQ(pz_async_mutex_lock(&free_m), 0);
    CHECK_EQ(pz_async_mutex_unlock(&free_m), 0);
    pz_chan_t *full = pz_chan_create(sizeof(int), 1);
    int v = 5;
    CHECK_EQ(pz_chan_send(full, &v), 0);
    CHECK_EQ(pz_chan_recv(full, &item), 0);
    CHECK_EQ(item, 5);
    pz_chan_destroy(full);
    /* Shielded: every one of them waits and gets what it waits for. */
    pz_shield_begin();
    atomic_store(&release_now, 1);
    CHECK_EQ(pz_async_mutex_lock(&m2), 0);
    CHECK_EQ(pz_async_rwlock_read(&rw), 0);
    CHECK_EQ(pz_semaphore_acquire(&sem, 1), 0);
    CHECK_EQ(pz_chan_recv(ch, &item), 0);
    CHECK_EQ(pz_notify_wait(&note), 0);
    CHECK_EQ(pz_read(sv[0], &c, 1, PZ_FOREVER), 1);
    pz_shield_begin(); /* nests */
    pz_shield_end();
    CHECK_EQ(pz_sleep(MS), 0);
    pz_shield_end();
    CHECK_EQ(pz_sleep(MS), -ECANCELED);
    pz_semaphore_release(&sem, 1);
    pz_async_rwlock_read_unlock(&rw);
    pz_async_mutex_unlock(&m2);
    capture_stderr_begin();
    pz_shield_end(); /* unmatched: reported, ignored */
    const char *err = capture_stderr_end();
    CHECK(strstr(err, "not in a shield") != NULL);
    return NULL;
}

static void *rule_main(void *arg)
{
    (void)arg;
    ch = pz_chan_create(sizeof(int), 4);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pz_task_t *b = pz_spawn(blocker, NULL);
    while (!atomic_load(&stage))
        pz_sleep(MS);
    pz_task_t *t = pz_spawn(rule_task, NULL);
    CHECK_EQ(pz_join(t, NULL), 0);
    CHECK_EQ(pz_join(b, NULL), 0);
    pz_chan_destroy(ch);
    pz_close(sv[0]);
    pz_close(sv[1]);
    return NULL;
}

static void test_one_rule_for_every_wait(void **state)
{
    (void)state;
    atomic_store(&stage, 0);
    run_in_runtime(2, rule_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cancelled_task_cleans_up),
        cmocka_unit_test(test_one_rule_for_every_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
