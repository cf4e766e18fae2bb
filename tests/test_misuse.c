/* Misuse of the sync locks: an unlock by a task or thread that does not
 * hold the lock is reported and refused, so nobody else gets in while the
 * holder is inside; bad arguments get -EINVAL or a report, never a crash. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* src/sync/held.c: switches the holder check of threads on or off, as
 * PLAZA_SYNC_CHECK=1 does at start. */
void pz__sync_check_set(int on);

/* A plain thread holds a lock (mutex, read or write side of an rwlock)
 * until told to let go. */
enum hold_kind { HOLD_MUTEX, HOLD_READ };
struct holder {
    enum hold_kind kind;
    pz_mutex_t *m;
    pz_rwlock_t *rw;
    _Atomic int state; /* 1 holding, 2 let go */
};

static void *hold_thread(void *arg)
{
    struct holder *h = arg;
    if (h->kind == HOLD_MUTEX)
        pz_mutex_lock(h->m);
    else
        pz_rwlock_read(h->rw);
    atomic_store(&h->state, 1);
    while (atomic_load(&h->state) != 2)
        usleep(500);
    if (h->kind == HOLD_MUTEX)
        pz_mutex_unlock(h->m);
    else
        pz_rwlock_read_unlock(h->rw);
    return NULL;
}

static pthread_t start_holder(struct holder *h)
{
    pthread_t th;
    atomic_store(&h->state, 0);
    CHECK_EQ(pthread_create(&th, NULL, hold_thread, h), 0);
    while (atomic_load(&h->state) != 1)
        usleep(100);
    return th;
}

static void stop_holder(struct holder *h, pthread_t th)
{
    atomic_store(&h->state, 2);
    pthread_join(th, NULL);
}

/* Tries the stray unlocks while the holder is inside, then checks that a
 * third party still cannot get in. */
static void stray_unlocks(const char *who)
{
    static pz_mutex_t m;
    static pz_rwlock_t rw;
    struct holder hm = {.kind = HOLD_MUTEX, .m = &m};
    pthread_t th = start_holder(&hm);
    capture_stderr_begin();
    pz_mutex_unlock(&m);
    pz_mutex_unlock_fair(&m);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "pz_mutex_unlock: ") != NULL);
    CHECK(strstr(out, who) != NULL);
    CHECK(pz_mutex_is_locked(&m));
    CHECK(!pz_mutex_trylock(&m)); /* the third party stays out */
    stop_holder(&hm, th);
    CHECK(pz_mutex_trylock(&m));
    pz_mutex_unlock(&m);

    struct holder hr = {.kind = HOLD_READ, .rw = &rw};
    th = start_holder(&hr);
    capture_stderr_begin();
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_write_unlock(&rw);
    out = capture_stderr_end();
    CHECK(strstr(out, "pz_rwlock_read_unlock: ") != NULL);
    CHECK(strstr(out, "pz_rwlock_write_unlock") != NULL);
    CHECK(!pz_rwlock_try_write(&rw)); /* the reader is still inside */
    stop_holder(&hr, th);
    CHECK(pz_rwlock_try_write(&rw));
    pz_rwlock_write_unlock(&rw);
}

static void *stray_task(void *arg)
{
    (void)arg;
    pz_task_t *self = pz_self();
    char who[64];
    snprintf(who, sizeof who, "task %llu (stray)", (unsigned long long)pz_task_id(self));
    stray_unlocks(who);
    return NULL;
}

static void *stray_main(void *arg)
{
    (void)arg;
    pz_task_t *t = pz_spawn_with(stray_task, NULL, &(pz_spawn_opts_t){.name = "stray"});
    CHECK_EQ(pz_join(t, NULL), 0);
    return NULL;
}

/* Always on for tasks: a task that holds no sync lock is no holder. */
static void test_stray_unlock_by_task(void **state)
{
    (void)state;
    run_in_runtime(2, stray_main, NULL);
}

/* Threads: with the check switched on. */
static void test_stray_unlock_by_thread_checked(void **state)
{
    (void)state;
    pz__sync_check_set(1);
    stray_unlocks("calling thread (PLAZA_SYNC_CHECK)");
    /* The holder's own locks and unlocks pass, nested and out of order. */
    static pz_mutex_t a, b;
    static pz_rwlock_t rw;
    capture_stderr_begin();
    pz_mutex_lock(&a);
    pz_mutex_lock(&b);
    pz_rwlock_read(&rw);
    pz_mutex_unlock(&a);
    pz_rwlock_read_unlock(&rw);
    pz_mutex_unlock(&b);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "plaza:") == NULL);
    CHECK(!pz_mutex_is_locked(&a) && !pz_mutex_is_locked(&b));
    pz__sync_check_set(0);
}

/* A task that holds one lock and unlocks another: the count alone cannot
 * tell, the check can. */
static void *other_lock_task(void *arg)
{
    (void)arg;
    static pz_mutex_t mine, theirs;
    struct holder h = {.kind = HOLD_MUTEX, .m = &theirs};
    pthread_t th = start_holder(&h);
    pz_mutex_lock(&mine);
    capture_stderr_begin();
    pz_mutex_unlock(&theirs);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "not held by the calling task") != NULL);
    CHECK(pz_mutex_is_locked(&theirs));
    pz_mutex_unlock(&mine);
    CHECK(!pz_mutex_is_locked(&mine));
    stop_holder(&h, th);
    return NULL;
}

static void *other_lock_main(void *arg)
{
    (void)arg;
    pz__sync_check_set(1);
    pz_task_t *t = pz_spawn(other_lock_task, NULL);
    CHECK_EQ(pz_join(t, NULL), 0);
    pz__sync_check_set(0);
    return NULL;
}

static void test_stray_unlock_holding_another(void **state)
{
    (void)state;
    run_in_runtime(2, other_lock_main, NULL);
}

/* pz_once with a NULL function: reported, nothing runs, the once can
 * still run a real function later. */
static int once_ran;

static void once_fn(void *arg)
{
    once_ran += (int)(intptr_t)arg;
}

static void test_once_null_function(void **state)
{
    (void)state;
    static pz_once_t o = PZ_ONCE_INIT;
    capture_stderr_begin();
    pz_once(&o, NULL, NULL);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "pz_once: once ") != NULL);
    pz_once(&o, once_fn, (void *)(intptr_t)5);
    pz_once(&o, once_fn, (void *)(intptr_t)5);
    CHECK_EQ(once_ran, 5);
}

/* ---- bad arguments: each documented answer ---- */

static void *noop(void *arg)
{
    return arg;
}

static void *bad_args_main(void *arg)
{
    (void)arg;
    capture_stderr_begin();
    CHECK(pz_spawn(NULL, NULL) == NULL);
    CHECK(pz_spawn_with(noop, NULL, &(pz_spawn_opts_t){.stack_size = (size_t)1 << 31}) == NULL);
    CHECK_EQ(pz_join(NULL, NULL), -EINVAL);
    pz_detach(NULL);
    pz_cancel(NULL);
    CHECK_EQ(pz_blocking(NULL, NULL, NULL), -EINVAL);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "pz_spawn: fn is NULL") != NULL);
    CHECK_EQ(pz_sleep(-5), 0);
    CHECK_EQ(pz_sleep_until(-1), 0);

    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    CHECK_EQ(pz_wait_fd(sv[0], 0, PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_wait_fd(sv[0], PZ_READABLE | 8, PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_wait_fd(-1, PZ_READABLE, PZ_FOREVER), -EBADF);
    CHECK_EQ(pz_read(-3, NULL, 1, PZ_FOREVER), -EBADF);
    /* A deadline that has passed: one try, no wait. */
    char c;
    int64_t t0 = pz_now();
    CHECK_EQ(pz_read(sv[0], &c, 1, -1), -ETIMEDOUT);
    CHECK_EQ(pz_read(sv[0], &c, 1, INT64_MIN), -ETIMEDOUT);
    CHECK_EQ(pz_wait_fd(sv[0], PZ_READABLE, -1), -ETIMEDOUT);
    CHECK(pz_now() - t0 < 1000000000);
    /* What the system call says about a bad buffer or count. */
    CHECK_EQ(write(sv[1], "ab", 2), 2);
    CHECK_EQ(pz_read(sv[0], NULL, 2, PZ_FOREVER), -EFAULT);
    struct iovec iov = {"x", 1};
    CHECK_EQ(pz_writev(sv[1], &iov, -1, PZ_FOREVER), -EINVAL);
    pz_close(sv[0]);
    pz_close(sv[1]);
    return NULL;
}

static void test_bad_arguments(void **state)
{
    (void)state;
    capture_stderr_begin();
    CHECK_EQ(pz_run(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK_EQ(pz_run(&(pz_config_t){.workers = -1}, noop, NULL, NULL), -EINVAL);
    CHECK_EQ(pz_run(&(pz_config_t){.blocking_threads_max = -2}, noop, NULL, NULL), -EINVAL);
    capture_stderr_end();
    run_in_runtime(2, bad_args_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stray_unlock_by_task),
        cmocka_unit_test(test_stray_unlock_by_thread_checked),
        cmocka_unit_test(test_stray_unlock_holding_another),
        cmocka_unit_test(test_once_null_function),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
