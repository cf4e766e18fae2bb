/* A program for the gdb helper's test (tests/gdb_test.sh): tasks stopped
 * in known waits, then a function gdb breaks in. */
#include <plaza.h>

#include <stdatomic.h>
#include <stdio.h>

static pz_async_mutex_t lock;
static _Atomic int waiting;

__attribute__((noinline)) void plaza_gdb_stop_here(void);
__attribute__((noinline)) void plaza_gdb_stop_here(void)
{
    __asm__ volatile("" ::: "memory");
}

static void *sleeper(void *arg)
{
    (void)arg;
    pz_sleep(60 * 1000000000ll);
    return NULL;
}

static void *locker(void *arg)
{
    (void)arg;
    atomic_fetch_add(&waiting, 1);
    if (pz_async_mutex_lock(&lock) == 0)
        pz_async_mutex_unlock(&lock);
    return NULL;
}

static void *gdb_main(void *arg)
{
    (void)arg;
    pz_async_mutex_lock(&lock);
    pz_task_t *s = pz_spawn_with(sleeper, NULL, &(pz_spawn_opts_t){.name = "gdb-sleeper"});
    pz_task_t *l = pz_spawn_with(locker, NULL, &(pz_spawn_opts_t){.name = "gdb-locker"});
    while (atomic_load(&waiting) < 1)
        pz_sleep(1000000);
    pz_sleep(50 * 1000000); /* both parked */
    plaza_gdb_stop_here();
    pz_async_mutex_unlock(&lock);
    pz_cancel(s);
    pz_join(s, NULL);
    pz_join(l, NULL);
    return NULL;
}

int main(void)
{
    return pz_run(&(pz_config_t){.workers = 2}, gdb_main, NULL, NULL) == 0 ? 0 : 1;
}
