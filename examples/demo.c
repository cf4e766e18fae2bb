#define _DEFAULT_SOURCE
/*
 * A first plaza program: ten thousand tasks on a few worker threads.
 *
 * Each task sleeps a little (a stand-in for waiting on the network), does a
 * little work, and returns a number; one task runs a blocking call on the
 * blocking pool; the main task joins them all and checks the sum.  Run it
 * with `make demo`.
 */
#include <plaza.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define TASKS 10000

static void *fetch(void *arg)
{
    uintptr_t i = (uintptr_t)arg;
    /* Sleeping suspends only this task; its worker runs others meanwhile. */
    pz_sleep((int64_t)(i % 50) * 100000); /* 0 to 4.9 ms */
    return (void *)(i * i % 1000);
}

static void *slow_disk(void *arg)
{
    (void)arg;
    usleep(20000); /* a blocking call: it runs on the blocking pool */
    return (void *)42;
}

static void *app_main(void *arg)
{
    (void)arg;
    int64_t start = pz_now();
    pz_task_t **tasks = malloc(TASKS * sizeof *tasks);
    if (!tasks)
        return (void *)1;
    for (uintptr_t i = 0; i < TASKS; i++)
        tasks[i] = pz_spawn(fetch, (void *)i);

    void *disk = NULL;
    pz_blocking(slow_disk, NULL, &disk);

    uint64_t sum = 0, expected = 0;
    for (uintptr_t i = 0; i < TASKS; i++) {
        void *r;
        pz_join(tasks[i], &r);
        sum += (uintptr_t)r;
        expected += i * i % 1000;
    }
    free(tasks);
    double ms = (double)(pz_now() - start) / 1e6;
    printf("plaza demo: %d tasks on %d workers slept up to 4.9 ms each and finished in %.1f ms\n", TASKS,
           pz_worker_count(), ms);
    printf("plaza demo: sum of results %llu (expected %llu), blocking call returned %ld\n",
           (unsigned long long)sum, (unsigned long long)expected, (long)(intptr_t)disk);
    return (void *)(uintptr_t)(sum != expected || (intptr_t)disk != 42);
}

int main(void)
{
    void *failed = NULL;
    int r = pz_run(NULL, app_main, NULL, &failed);
    if (r != 0) {
        fprintf(stderr, "pz_run: %s\n", pz_strerror(r));
        return 1;
    }
    return failed ? 1 : 0;
}
