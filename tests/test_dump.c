/* pz_dump names every kind of waiting task with what it waits on, for how
 * long and who holds the lock it wants; pz_set_report routes the lines;
 * the call sites are symbols with file:line, and a suspended task's
 * backtrace comes from its saved context (not under TSan, which the walk
 * would confuse: docs/debugging.md). */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static pz_mutex_t smutex;
static pz_async_mutex_t amutex;
static pz_chan_t chan;
static char chan_buf[PZ_CHAN_BUFFER_SIZE(sizeof(int), 4)];
static int sv[2];
static _Atomic int thread_has_lock, release_thread, release_blocking;
static pz_task_t *sleeper;

static void *lock_holder_thread(void *arg)
{
    (void)arg;
    pz_mutex_lock(&smutex);
    atomic_store(&thread_has_lock, 1);
    while (!atomic_load(&release_thread))
        usleep(1000);
    pz_mutex_unlock(&smutex);
    return NULL;
}

static void *mutex_waiter(void *arg)
{
    (void)arg;
    pz_mutex_lock(&smutex);
    pz_mutex_unlock(&smutex);
    return NULL;
}

static void *amutex_waiter(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_async_mutex_lock(&amutex), 0);
    pz_async_mutex_unlock(&amutex);
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    char c;
    CHECK_EQ(pz_read(sv[0], &c, 1, PZ_FOREVER), 1);
    return NULL;
}

static void *sleeper_fn(void *arg)
{
    (void)arg;
    pz_sleep(600 * SEC);
    return NULL;
}

static void *joiner(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_join(sleeper, NULL), 0);
    return NULL;
}

static void *chan_receiver(void *arg)
{
    (void)arg;
    int v;
    CHECK_EQ(pz_chan_recv(&chan, &v), 0);
    return NULL;
}

static void *blocking_job(void *arg)
{
    (void)arg;
    while (!atomic_load(&release_blocking))
        usleep(1000);
    return NULL;
}

static void *blocker(void *arg)
{
    (void)arg;
    CHECK_EQ(pz_blocking(blocking_job, NULL, NULL), 0);
    return NULL;
}

/* The report sink: lines collected into one buffer.  The sink may be
 * called from any thread (runtime.h): the monitor's reports (a stall, a
 * spare worker) can come while a task dumps, so the buffer has a lock, and
 * the checks read a copy (seen) taken under it: a report that took the
 * sink just before it was switched off may still be writing. */
static char sink[1 << 16], seen[1 << 16];
static size_t sink_len;
static int sink_lines, seen_lines;
static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;

static void collect(const char *line, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&sink_lock);
    size_t n = strlen(line);
    if (sink_len + n + 2 < sizeof sink) {
        memcpy(sink + sink_len, line, n);
        sink[sink_len + n] = '\n';
        sink_len += n + 1;
        sink[sink_len] = '\0';
    }
    sink_lines++;
    pthread_mutex_unlock(&sink_lock);
}

static void sink_reset(void)
{
    pthread_mutex_lock(&sink_lock);
    sink_len = 0;
    sink_lines = 0;
    sink[0] = '\0';
    pthread_mutex_unlock(&sink_lock);
}

/* Copies the sink into seen, for the checks. */
static void sink_take(void)
{
    pthread_mutex_lock(&sink_lock);
    memcpy(seen, sink, sink_len + 1);
    seen_lines = sink_lines;
    pthread_mutex_unlock(&sink_lock);
}

/* The line of the dump that starts with "task <id> (<name>)". */
static const char *task_line(const char *dump, pz_task_t *t, char *out, size_t cap)
{
    char head[64];
    snprintf(head, sizeof head, "plaza: task %llu (%s)", (unsigned long long)pz_task_id(t), pz_task_name(t));
    const char *p = strstr(dump, head);
    if (!p)
        return NULL;
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

struct expect {
    pz_task_t *t;
    const char *what;   /* in its line */
    const char *holder; /* ", held by ..." in its line, or NULL */
};

static char *dump_text(void)
{
    /* Static: the stream writes these after this function's frame. */
    static char *buf;
    static size_t len;
    buf = NULL;
    FILE *f = open_memstream(&buf, &len);
    pz_dump(f);
    fclose(f);
    return buf;
}

static bool all_seen(struct expect *e, int n, const char *dump)
{
    for (int i = 0; i < n; i++) {
        char line[512];
        if (!task_line(dump, e[i].t, line, sizeof line) || !strstr(line, e[i].what) ||
            (e[i].holder && !strstr(line, e[i].holder)))
            return false;
    }
    return true;
}

static pz_task_t *named(pz_fn fn, const char *name)
{
    return pz_spawn_with(fn, NULL, &(pz_spawn_opts_t){.name = name});
}

static void *dump_main(void *arg)
{
    (void)arg;
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    CHECK_EQ(pz_chan_init(&chan, sizeof(int), 4, chan_buf, sizeof chan_buf), 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, lock_holder_thread, NULL), 0);
    while (!atomic_load(&thread_has_lock))
        pz_sleep(MS);
    CHECK_EQ(pz_async_mutex_lock(&amutex), 0);
    char self_holder[64];
    snprintf(self_holder, sizeof self_holder, "held by task %llu", (unsigned long long)pz_task_id(pz_self()));

    sleeper = named(sleeper_fn, "sleeper");
    struct expect e[] = {
        {named(mutex_waiter, "mutex-waiter"), "blocked (its thread) in pz_mutex", "held by thread #"},
        {named(amutex_waiter, "amutex-waiter"), "waiting in pz_async_mutex", self_holder},
        {named(reader, "reader"), "waiting in fd read on fd", NULL},
        {sleeper, "waiting in sleep", NULL},
        {named(joiner, "joiner"), "waiting in join of task", NULL},
        {named(chan_receiver, "chan-receiver"), "waiting in pz_chan recv", NULL},
        {named(blocker, "blocker"), "waiting in blocking call", NULL},
    };
    int n = (int)(sizeof e / sizeof e[0]);
    char *dump = NULL;
    int64_t limit = pz_now() + 30 * SEC;
    for (;;) {
        free(dump);
        dump = dump_text();
        if (all_seen(e, n, dump))
            break;
        if (pz_now() > limit) {
            fprintf(stderr, "%s", dump);
            CHECK(!"the dump never named every waiting task");
        }
        pz_sleep(5 * MS);
    }
    fprintf(stderr, "%s", dump);
    /* Call sites are symbols with file:line, not module offsets. */
    CHECK(strstr(dump, "spawned at " SITE("dump_main", "test_dump.c")));
    /* The join names the sleeper's id. */
    char join_what[64];
    snprintf(join_what, sizeof join_what, "join of task %llu", (unsigned long long)pz_task_id(sleeper));
    CHECK(strstr(dump, join_what));
#ifdef PLAZA_TEST_HAVE_UNWIND
    /* A suspended task's stack, from its saved registers. */
    CHECK(strstr(dump, "sleeper_fn (test_dump.c:"));
    CHECK(strstr(dump, "chan_receiver (test_dump.c:"));
#endif
    free(dump);

    /* The same through the report sink. */
    pz_set_report(collect, NULL);
    pz_dump(NULL);
    pz_set_report(NULL, NULL);
    sink_take();
    CHECK(seen_lines > n);
    CHECK(strstr(seen, "task ") && strstr(seen, "end of dump"));
    CHECK(!strstr(seen, "plaza: ")); /* lines come without the prefix */

    /* Let everyone go. */
    pz_async_mutex_unlock(&amutex);
    atomic_store(&release_thread, 1);
    atomic_store(&release_blocking, 1);
    char c = 'x';
    CHECK_EQ(write(sv[1], &c, 1), 1);
    int v = 1;
    CHECK_EQ(pz_chan_send(&chan, &v), 0);
    pz_cancel(sleeper);
    for (int i = 0; i < n; i++)
        if (e[i].t != sleeper)
            CHECK_EQ(pz_join(e[i].t, NULL), 0);
    pthread_join(th, NULL);
    pz_close(sv[0]);
    close(sv[1]);
    return NULL;
}

static void test_dump_names_every_wait(void **state)
{
    (void)state;
    run_in_runtime(3, dump_main, NULL);
}

/* A task that ends holding a lock is reported with the lock and where it
 * was taken: a pz_mutex always, a pz_async_mutex with the debug switch. */
static pz_mutex_t left_sync;
static pz_async_mutex_t left_async;

static void *leaves_locked(void *arg)
{
    (void)arg;
    pz_mutex_lock(&left_sync);
    pz_mutex_unlock(&left_sync);
    pz_mutex_lock(&left_sync);
    CHECK_EQ(pz_async_mutex_lock(&left_async), 0);
    return NULL;
}

static void *leave_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    pz_task_t *t = pz_spawn_with(leaves_locked, NULL, &(pz_spawn_opts_t){.name = "leaver"});
    char who[96];
    snprintf(who, sizeof who, "task %llu (leaver) ended while holding 2 plaza lock(s)", (unsigned long long)pz_task_id(t));
    CHECK_EQ(pz_join(t, NULL), 0);
    pz_set_report(NULL, NULL);
    sink_take();
    fprintf(stderr, "%s", seen);
    CHECK(strstr(seen, who));
    char lock[96];
    snprintf(lock, sizeof lock, "pz_mutex %p, taken at " SITE("leaves_locked", "test_dump.c"), (void *)&left_sync);
    CHECK(strstr(seen, lock));
    /* The line may be the inline header's: the compiler's scopes for two
     * nested inline functions do not always cover the call. */
#ifdef PLAZA_TEST_HAVE_DW
    snprintf(lock, sizeof lock, "pz_async_mutex %p, taken at leaves_locked (", (void *)&left_async);
#else
    snprintf(lock, sizeof lock, "pz_async_mutex %p, taken at 0x", (void *)&left_async);
#endif
    CHECK(strstr(seen, lock));
    return NULL;
}

static void test_task_ending_with_locks_held(void **state)
{
    (void)state;
    pz_config_t cfg = {.workers = 2, .debug = true};
    CHECK_EQ(pz_run(&cfg, leave_main, NULL, NULL), 0);
    pz_mutex_unlock(&left_sync); /* from here, a thread: let it go for the test's end */
}

/* Reports made from a task with a small stack: the symbol lookups (libdw
 * reads the program's DWARF) need more stack than such a task has, so they
 * run on a stack of their own.  A 128 KiB task overflowed in them. */
static pz_mutex_t small_sync;

static void *small_stack_task(void *arg)
{
    char **dump = arg;
    *dump = dump_text();         /* pz_dump from the task */
    pz_mutex_lock(&small_sync);
    pz_sleep(1 * MS);            /* suspends holding a sync lock: reported */
    return NULL;                 /* ends holding it: reported */
}

static void *small_stack_main(void *arg)
{
    (void)arg;
    sink_reset();
    pz_set_report(collect, NULL);
    char *dump = NULL;
    pz_task_t *t = pz_spawn_with(small_stack_task, &dump,
                                 &(pz_spawn_opts_t){.name = "small", .stack_size = 32 * 1024});
    CHECK(t != NULL);
    unsigned long long id = (unsigned long long)pz_task_id(t); /* the handle is spent by the join */
    char who[96];
    snprintf(who, sizeof who, "task %llu (small) running", id);
    CHECK_EQ(pz_join(t, NULL), 0);
    pz_set_report(NULL, NULL);
    sink_take();
    fprintf(stderr, "%s", seen);
    CHECK(dump != NULL);
    if (!strstr(dump, who))
        fprintf(stderr, "%s", dump);
    CHECK(strstr(dump, who));
    CHECK(strstr(dump, "spawned at " SITE("small_stack_main", "test_dump.c")));
    free(dump);
    snprintf(who, sizeof who, "task %llu (small) suspends while holding 1 sync lock(s)", id);
    CHECK(strstr(seen, who));
    char lock[96];
    snprintf(lock, sizeof lock, "the lock was taken at " SITE("small_stack_task", "test_dump.c"));
    CHECK(strstr(seen, lock));
    snprintf(who, sizeof who, "task %llu (small) ended while holding 1 plaza lock(s)", id);
    CHECK(strstr(seen, who));
    return NULL;
}

static void test_reports_from_a_small_stack(void **state)
{
    (void)state;
    pz_config_t cfg = {.workers = 2};
    CHECK_EQ(pz_run(&cfg, small_stack_main, NULL, NULL), 0);
    pz_mutex_unlock(&small_sync); /* from here, a thread: let it go for the test's end */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dump_names_every_wait),
        cmocka_unit_test(test_task_ending_with_locks_held),
        cmocka_unit_test(test_reports_from_a_small_stack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
