/* Lock guards: every kind is released on every way out of its scope
 * (fall-through, return, break, goto), early release releases once, a
 * guard whose lock failed (cancel, deadline, closed semaphore) holds and
 * releases nothing. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>


static pz_mutex_t m;
static pz_rwlock_t rw;
static pz_async_mutex_t am = PZ_ASYNC_MUTEX_INIT;
static pz_async_rwlock_t arw = PZ_ASYNC_RWLOCK_INIT;
static pz_semaphore_t sem = PZ_SEMAPHORE_INIT(5);

static int early_return(int which)
{
    PZ_GUARD(pz_mutex, g1, &m);
    PZ_GUARD(pz_async_mutex, g2, &am);
    if (g2.err)
        return g2.err;
    PZ_GUARD(pz_semaphore, g3, &sem, 2);
    if (g3.err)
        return g3.err;
    CHECK(pz_mutex_is_locked(&m));
    CHECK(pz_async_mutex_is_locked(&am));
    CHECK_EQ(pz_semaphore_available(&sem), 3);
    if (which == 1)
        return 1;
    for (int i = 0; i < 3; i++) {
        PZ_GUARD(pz_async_rwlock_read, r, &arw);
        CHECK_EQ(r.err, 0);
        CHECK_EQ(pz_async_rwlock_readers(&arw), 1);
        if (i == 1)
            break;
    }
    CHECK_EQ(pz_async_rwlock_readers(&arw), 0);
    if (which == 2)
        goto out;
    {
        PZ_GUARD(pz_rwlock_write, w, &rw);
        CHECK(!pz_rwlock_try_read(&rw));
        PZ_GUARD(pz_async_rwlock_write, aw, &arw);
        CHECK_EQ(aw.err, 0);
        CHECK(!pz_async_rwlock_try_read(&arw));
    }
    {
        PZ_GUARD(pz_rwlock_read, r, &rw);
        CHECK(!pz_rwlock_try_write(&rw));
    }
out:
    return 0;
}

static void check_all_free(void)
{
    CHECK(!pz_mutex_is_locked(&m));
    CHECK(!pz_async_mutex_is_locked(&am));
    CHECK_EQ(pz_semaphore_available(&sem), 5);
    CHECK(pz_rwlock_try_write(&rw));
    pz_rwlock_write_unlock(&rw);
    CHECK_RWLOCK_IDLE(&arw);
}

static pz_async_mutex_t held = PZ_ASYNC_MUTEX_INIT;
static _Atomic int stage;

static void *hold(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&held), 0);
    atomic_store(&stage, 1);
    while (atomic_load(&stage) == 1)
        pz_sleep(MS);
    pz_async_mutex_unlock(&held);
    return NULL;
}

static void *guard_main(void *arg)
{
    (void)arg;
    for (int which = 0; which < 3; which++) {
        CHECK_EQ(early_return(which), which == 1 ? 1 : 0);
        check_all_free();
    }
    /* Early release: once, and the scope's end does nothing more. */
    {
        PZ_GUARD(pz_semaphore, g, &sem, 4);
        CHECK_EQ(pz_semaphore_available(&sem), 1);
        pz_guard_release(&g);
        CHECK_EQ(pz_semaphore_available(&sem), 5);
        pz_guard_release(&g);
        CHECK_EQ(pz_semaphore_available(&sem), 5);
    }
    CHECK_EQ(pz_semaphore_available(&sem), 5);
    /* Failed guards release nothing. */
    pz_task_t *h = pz_spawn(hold, NULL);
    while (!atomic_load(&stage))
        pz_sleep(MS);
    {
        PZ_GUARD_UNTIL(pz_async_mutex, g, pz_now() + MS, &held);
        CHECK_EQ(g.err, -ETIMEDOUT);
    }
    CHECK(pz_async_mutex_is_locked(&held)); /* still the holder's */
    pz_cancel(pz_self());
    {
        PZ_GUARD(pz_async_mutex, g, &held);
        CHECK_EQ(g.err, -ECANCELED);
        PZ_GUARD(pz_semaphore, s, &sem, 6);
        CHECK_EQ(s.err, -ECANCELED);
    }
    CHECK(pz_async_mutex_is_locked(&held));
    CHECK_EQ(pz_semaphore_available(&sem), 5);
    {
        /* The rule: a free lock is taken even by a cancelled task. */
        PZ_GUARD(pz_async_mutex, g, &am);
        CHECK_EQ(g.err, 0);
    }
    check_all_free();
    atomic_store(&stage, 2);
    pz_shield_begin();
    CHECK_EQ(pz_join(h, NULL), 0);
    {
        PZ_GUARD_UNTIL(pz_mutex, g, pz_now() + MS, &m);
        CHECK_EQ(g.err, 0);
    }
    pz_semaphore_close(&sem);
    {
        PZ_GUARD(pz_semaphore, s, &sem, 1);
        CHECK_EQ(s.err, -EPIPE);
    }
    pz_shield_end();
    CHECK(!pz_mutex_is_locked(&m));
    return NULL;
}

static void test_guards(void **state)
{
    (void)state;
    run_in_runtime(2, guard_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
