/* Task-local values (each task sees its own across switches, destructors
 * run at every task's end, cancelled ones and main's included, and may set
 * again) and task names by id. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>


static pz_local_key_t key, again_key;
static _Atomic long destroyed, again_destroyed;

static void destroy(void *v)
{
    free(v);
    atomic_fetch_add(&destroyed, 1);
}

static void destroy_again(void *v)
{
    atomic_fetch_add(&again_destroyed, 1);
    if ((intptr_t)v == 1)
        pz_local_set(again_key, (void *)2); /* one more round */
}

static void *own_value(void *arg)
{
    intptr_t i = (intptr_t)arg;
    CHECK(pz_local_get(key) == NULL);
    long *v = malloc(sizeof *v);
    *v = i;
    CHECK_EQ(pz_local_set(key, v), 0);
    for (int k = 0; k < 50; k++) {
        pz_yield();
        if (k % 10 == 0)
            pz_sleep(10000);
        CHECK_EQ(*(long *)pz_local_get(key), i);
    }
    if (i % 2)
        CHECK_EQ(pz_local_set(again_key, (void *)1), 0);
    return NULL;
}

static int cancelled_child(void *arg)
{
    CHECK_EQ(pz_local_set(key, malloc(8)), 0);
    (void)arg;
    return pz_sleep(60000 * MS);
}

static void *sleeper(void *arg)
{
    (void)arg;
    pz_sleep(60000 * MS);
    return NULL;
}

static void *local_main(void *arg)
{
    (void)arg;
    pz_task_t *t[100];
    for (intptr_t i = 0; i < 100; i++)
        t[i] = pz_spawn(own_value, (void *)i);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(pz_join(t[i], NULL), 0);
    CHECK_EQ(atomic_load(&destroyed), 100);
    CHECK_EQ(atomic_load(&again_destroyed), 100); /* 50 tasks, two rounds each */

    pz_group_t *g = pz_group_new(0);
    for (int i = 0; i < 20; i++)
        CHECK_EQ(pz_group_spawn(g, cancelled_child, NULL), 0);
    pz_sleep(MS);
    pz_group_cancel(g);
    CHECK_EQ(pz_group_wait(g), -ECANCELED);
    CHECK_EQ(atomic_load(&destroyed), 120);

    CHECK_EQ(pz_local_set(12345, NULL), -EINVAL);
    CHECK_EQ(pz_local_set(0, NULL), -EINVAL);

    /* Names by id. */
    pz_task_t *named = pz_spawn_with(sleeper, NULL, &(pz_spawn_opts_t){.name = "fetcher-7"});
    pz_task_t *anon = pz_spawn(sleeper, NULL);
    char buf[32];
    CHECK_EQ(pz_task_name_of(pz_task_id(named), buf, sizeof buf), 0);
    CHECK(strcmp(buf, "fetcher-7") == 0);
    char small[4];
    CHECK_EQ(pz_task_name_of(pz_task_id(named), small, sizeof small), 0);
    CHECK(strcmp(small, "fet") == 0);
    CHECK_EQ(pz_task_name_of(pz_task_id(anon), buf, sizeof buf), -ESRCH);
    CHECK_EQ(pz_task_name_of(pz_task_id(pz_self()), buf, sizeof buf), 0);
    CHECK(strcmp(buf, "main") == 0);
    uint64_t id = pz_task_id(named);
    pz_cancel(named);
    pz_cancel(anon);
    CHECK_EQ(pz_join(named, NULL), 0);
    CHECK_EQ(pz_join(anon, NULL), 0);
    CHECK_EQ(pz_task_name_of(id, buf, sizeof buf), -ESRCH);
    CHECK_EQ(pz_task_name_of(0, buf, sizeof buf), -EINVAL);

    /* main's own value: destroyed when main returns. */
    CHECK_EQ(pz_local_set(key, malloc(8)), 0);
    return NULL;
}

static void test_locals(void **state)
{
    (void)state;
    CHECK_EQ(pz_local_key(&key, destroy), 0);
    CHECK_EQ(pz_local_key(&again_key, destroy_again), 0);
    CHECK(key != again_key && key != 0);
    CHECK_EQ(pz_local_set(key, NULL), -EPERM); /* not in a task */
    CHECK(pz_local_get(key) == NULL);
    run_in_runtime(2, local_main, NULL);
    CHECK_EQ(atomic_load(&destroyed), 121);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
