/* The sync locks, one behaviour at a time: pz_mutex try/timeouts/misuse
 * reports, pz_rwlock modes, upgrades, downgrades, timeouts and the
 * recursive read, pz_condvar timeouts, no spurious wake-ups and misuse,
 * pz_once.  Concurrency at scale is in test_sync_stress.c. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void sleep_ms(int ms)
{
    usleep((useconds_t)ms * 1000);
}

/* ---- pz_mutex ---- */

static void test_mutex_trylock(void **state)
{
    (void)state;
    pz_mutex_t m = PZ_MUTEX_INIT;
    CHECK(pz_mutex_trylock(&m));
    CHECK(pz_mutex_is_locked(&m));
    CHECK(!pz_mutex_trylock(&m));
    pz_mutex_unlock(&m);
    CHECK(!pz_mutex_is_locked(&m));
    CHECK(pz_mutex_trylock(&m));
    pz_mutex_unlock_fair(&m);
    CHECK_EQ(atomic_load(&m.state), 0);
}

/* Holds the mutex from `locked` until told to `release`. */
struct holder {
    pz_mutex_t *m;
    _Atomic int release;
    _Atomic int locked;
};

static void *hold_mutex(void *arg)
{
    struct holder *h = arg;
    pz_mutex_lock(h->m);
    atomic_store(&h->locked, 1);
    while (!atomic_load(&h->release))
        sched_yield();
    pz_mutex_unlock(h->m);
    return NULL;
}

static void test_mutex_lock_until(void **state)
{
    (void)state;
    pz_mutex_t m = PZ_MUTEX_INIT;
    struct holder h = {&m, 0, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, hold_mutex, &h), 0);
    while (!atomic_load(&h.locked))
        sched_yield();
    /* Expires: the holder keeps it until told. */
    int64_t start = pz_now();
    CHECK_EQ(pz_mutex_lock_until(&m, start + 30 * MS), -ETIMEDOUT);
    CHECK(pz_now() - start >= 30 * MS);
    CHECK(pz_mutex_is_locked(&m));
    /* Does not expire: the holder lets go while we wait. */
    atomic_store(&h.release, 1);
    CHECK_EQ(pz_mutex_lock_until(&m, pz_now() + 10000 * MS), 0);
    pz_mutex_unlock(&m);
    pthread_join(t, NULL);
    /* A deadline in the past on a free mutex still locks it. */
    CHECK_EQ(pz_mutex_lock_until(&m, 0), 0);
    pz_mutex_unlock(&m);
    CHECK_EQ(atomic_load(&m.state), 0);
}

static void test_mutex_unlock_unlocked_reported(void **state)
{
    (void)state;
    pz_mutex_t m = PZ_MUTEX_INIT;
    capture_stderr_begin();
    pz_mutex_unlock(&m);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "plaza: ") != NULL);
    CHECK(strstr(out, "not locked") != NULL);
    CHECK_EQ(atomic_load(&m.state), 0);
}

static pz_mutex_t suspend_mutex;

static void *suspend_holding(void *arg)
{
    (void)arg;
    pz_mutex_lock(&suspend_mutex);
    pz_sleep(1000000); /* suspends (a yield with nothing else to run does not) */
    pz_mutex_unlock(&suspend_mutex);
    return NULL;
}

static void test_mutex_held_across_suspend_reported(void **state)
{
    (void)state;
    char addr[32];
    snprintf(addr, sizeof addr, "%p", (void *)&suspend_mutex);
    capture_stderr_begin();
    run_in_runtime(1, suspend_holding, NULL);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "suspends while holding") != NULL);
    CHECK(strstr(out, "pz_mutex") != NULL);
    CHECK(strstr(out, addr) != NULL);
}

/* ---- pz_rwlock ---- */

static void test_rwlock_modes(void **state)
{
    (void)state;
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    pz_rwlock_read(&rw);
    CHECK(pz_rwlock_try_read(&rw));
    CHECK(!pz_rwlock_try_write(&rw));
    CHECK(pz_rwlock_try_upgradable(&rw));  /* beside readers */
    CHECK(!pz_rwlock_try_upgradable(&rw)); /* but only one */
    CHECK(!pz_rwlock_try_upgrade(&rw));    /* readers inside */
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_read_unlock(&rw);
    CHECK(pz_rwlock_try_upgrade(&rw));
    CHECK(!pz_rwlock_try_read(&rw));
    CHECK(!pz_rwlock_try_upgradable(&rw));
    pz_rwlock_downgrade_to_upgradable(&rw);
    CHECK(pz_rwlock_try_read(&rw));
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_upgrade(&rw);
    pz_rwlock_downgrade(&rw);
    CHECK(pz_rwlock_try_read(&rw));
    CHECK(pz_rwlock_try_upgradable(&rw));
    pz_rwlock_upgradable_downgrade(&rw);
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
    pz_rwlock_write(&rw);
    CHECK(!pz_rwlock_try_read(&rw));
    pz_rwlock_write_unlock_fair(&rw);
    pz_rwlock_upgradable(&rw);
    pz_rwlock_upgradable_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
}

struct rw_waiter {
    pz_rwlock_t *rw;
    int mode; /* 0 write, 1 read */
    _Atomic int state; /* 1 waiting, 2 acquired */
};

static void *rw_wait(void *arg)
{
    struct rw_waiter *w = arg;
    atomic_store(&w->state, 1);
    if (w->mode == 0) {
        pz_rwlock_write(w->rw);
        atomic_store(&w->state, 2);
        pz_rwlock_write_unlock(w->rw);
    } else {
        pz_rwlock_read(w->rw);
        atomic_store(&w->state, 2);
        pz_rwlock_read_unlock(w->rw);
    }
    return NULL;
}

static void test_rwlock_writer_blocks_new_readers(void **state)
{
    (void)state;
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    pz_rwlock_read(&rw);
    struct rw_waiter w = {&rw, 0, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, rw_wait, &w), 0);
    /* Wait until the writer has claimed the lock. */
    while (!(atomic_load(&rw.state) & PZ__RW_WRITER))
        sched_yield();
    /* A new plain reader is kept out (the writer does not starve)... */
    CHECK(!pz_rwlock_try_read(&rw));
    CHECK_EQ(pz_rwlock_read_until(&rw, pz_now() + 20 * MS), -ETIMEDOUT);
    /* ...but a recursive reader gets in past the waiting writer. */
    pz_rwlock_read_recursive(&rw);
    CHECK_EQ(atomic_load(&w.state), 1);
    pz_rwlock_read_unlock(&rw);
    sleep_ms(10);
    CHECK_EQ(atomic_load(&w.state), 1);
    pz_rwlock_read_unlock(&rw);
    pthread_join(t, NULL);
    CHECK_EQ(atomic_load(&w.state), 2);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
}

static void test_rwlock_timeouts(void **state)
{
    (void)state;
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    /* A write lock that gives up while a reader stays inside lets readers
     * in again. */
    pz_rwlock_read(&rw);
    CHECK_EQ(pz_rwlock_write_until(&rw, pz_now() + 20 * MS), -ETIMEDOUT);
    CHECK(pz_rwlock_try_read(&rw));
    pz_rwlock_read_unlock(&rw);
    /* Upgrade gives up and keeps the upgradable lock. */
    CHECK_EQ(pz_rwlock_upgradable_until(&rw, pz_now() + 20 * MS), 0);
    CHECK_EQ(pz_rwlock_upgrade_until(&rw, pz_now() + 20 * MS), -ETIMEDOUT);
    CHECK(!pz_rwlock_try_upgradable(&rw));
    CHECK(pz_rwlock_try_read(&rw));
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(pz_rwlock_upgrade_until(&rw, pz_now() + 20 * MS), 0);
    /* Write held: every mode times out. */
    CHECK_EQ(pz_rwlock_read_until(&rw, pz_now() + 10 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_rwlock_read_recursive_until(&rw, pz_now() + 10 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_rwlock_upgradable_until(&rw, pz_now() + 10 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_rwlock_write_until(&rw, pz_now() + 10 * MS), -ETIMEDOUT);
    pz_rwlock_write_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
    /* A waiter that does not time out. */
    pz_rwlock_write(&rw);
    struct rw_waiter w = {&rw, 1, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, rw_wait, &w), 0);
    while (atomic_load(&w.state) == 0)
        sched_yield();
    sleep_ms(20); /* a chance for a wrong entry to show (only) */
    CHECK_EQ(atomic_load(&w.state), 1);
    pz_rwlock_write_unlock(&rw);
    pthread_join(t, NULL);
    CHECK_EQ(atomic_load(&w.state), 2);
    CHECK_EQ(pz_rwlock_read_until(&rw, pz_now() + 10000 * MS), 0);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
}

/* A writer that records its thread id, then write-locks and unlocks. */
struct tid_writer {
    pz_rwlock_t *rw;
    _Atomic int tid;
    _Atomic int state; /* 2 once it got the lock */
};

static void *tid_writer_main(void *arg)
{
    struct tid_writer *w = arg;
    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    pz_rwlock_write(w->rw);
    atomic_store(&w->state, 2);
    pz_rwlock_write_unlock(w->rw);
    return NULL;
}

/* Waits until thread tid sleeps in futex(2) (its park), as
 * /proc/self/task/<tid>/syscall shows, for at most 2 s: where that file
 * cannot be read, or shows the host's calls (qemu-user), the test below
 * still checks the lock, only perhaps not the interleaving it aims at. */
static void wait_in_futex(int tid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    int64_t give_up = pz_now() + 2000 * MS;
    while (pz_now() < give_up) {
        FILE *f = fopen(path, "r");
        if (!f) {
            sleep_ms(20);
            return;
        }
        long nr = -1;
        int got = fscanf(f, "%ld", &nr); /* "running" while it runs */
        fclose(f);
        if (got == 1 && nr == SYS_futex)
            return;
        sched_yield();
    }
}

/* A reader passing through: a read lock adds itself to the count with one
 * fetch-and-add and, finding WRITER, takes itself away again.  Here the
 * test takes those two steps itself (the first on the word, the second
 * with pz__rwlock_read_back_out), so each interleaving below happens for
 * certain rather than by luck. */
static void test_rwlock_readers_passing_through(void **state)
{
    (void)state;
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    /* A writer inside with a reader passing through: a recursive reader
     * stays out (the count is not zero, but WRITING says the writer is
     * in), and the write unlock keeps the count without a report. */
    pz_rwlock_write(&rw);
    atomic_fetch_add(&rw.state, PZ__RW_ONE_READER);
    CHECK_EQ(pz_rwlock_read_recursive_until(&rw, pz_now() + 5 * MS), -ETIMEDOUT);
    CHECK(!pz_rwlock_try_read(&rw));
    capture_stderr_begin();
    pz_rwlock_write_unlock(&rw);
    CHECK_EQ(strlen(capture_stderr_end()), 0);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, PZ__RW_ONE_READER);
    pz__rwlock_read_back_out(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
    /* The same for a downgrade. */
    pz_rwlock_write(&rw);
    atomic_fetch_add(&rw.state, PZ__RW_ONE_READER);
    capture_stderr_begin();
    pz_rwlock_downgrade(&rw);
    CHECK_EQ(strlen(capture_stderr_end()), 0);
    pz__rwlock_read_back_out(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, PZ__RW_ONE_READER);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
    /* The last reader out is one passing through: it wakes the writer
     * parked for the readers to leave.  A reader is inside; a writer
     * claims and parks; a reader passes in; the first leaves (not the
     * last); the one passing through backs out to a count of zero. */
    pz_rwlock_read(&rw);
    struct tid_writer w = {&rw, 0, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, tid_writer_main, &w), 0);
    while (!(atomic_load(&rw.state) & PZ__RW_WRITER_PARKED))
        sched_yield();
    wait_in_futex(atomic_load(&w.tid));
    atomic_fetch_add(&rw.state, PZ__RW_ONE_READER);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&w.state), 0);
    pz__rwlock_read_back_out(&rw);
    pthread_join(t, NULL); /* hangs if the back-out woke nobody */
    CHECK_EQ(atomic_load(&w.state), 2);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
}

/* Read slots: once a reader finds another one counted (or, after that,
 * while the sharing score it set is above 0), the slots open and a read
 * lock goes through a slot of the thread's line, leaving the word's count
 * alone.  A writer (or upgrader) claims WRITER, closing the slots,
 * and moves their holds into the count before it waits for the readers;
 * the readers whose holds moved then leave through the count.  Each step
 * below is taken on one thread or waited for, so each interleaving is
 * certain. */

/* A nested read opens the slots (the second reader finds the first
 * counted, or the first finds the sharing score above 0); the read after
 * it holds the lock through a slot. */
static void open_slots_and_read(pz_rwlock_t *rw)
{
    pz_rwlock_read(rw);
    pz_rwlock_read(rw);
    pz_rwlock_read_unlock(rw);
    pz_rwlock_read_unlock(rw);
    pz_rwlock_read(rw);
}

static void test_rwlock_read_slots(void **state)
{
    (void)state;
    const uintptr_t full = PZ__RW_SHARE_MASK; /* the sharing score at 7 */
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    pz_rwlock_read(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_ONE_READER); /* alone, no score: the count */
    pz_rwlock_read(&rw); /* finds a reader counted: opens the slots, the score full */
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full | 2 * PZ__RW_ONE_READER);
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full);
    /* Through a slot: the word does not change. */
    pz_rwlock_read(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full);
    CHECK(pz_rwlock_try_read(&rw));
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full);
    pz_rwlock_read_unlock(&rw);
    /* A try of the write lock revokes the slot, finds its reader, and
     * gives WRITER up again: the hold is now counted in the word. */
    CHECK(!pz_rwlock_try_write(&rw));
    CHECK_EQ(atomic_load(&rw.state), full | PZ__RW_ONE_READER);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state), full);
    /* A writer that waits for a reader whose hold was in a slot.  With the
     * score above 0 the first reader alone opens the slots again. */
    open_slots_and_read(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full);
    struct tid_writer w = {&rw, 0, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, tid_writer_main, &w), 0);
    while (!(atomic_load(&rw.state) & PZ__RW_WRITER_PARKED))
        sched_yield();
    CHECK_EQ(atomic_load(&rw.state) & (PZ__RW_READERS | PZ__RW_SLOTS | PZ__RW_REVOKING | PZ__RW_WRITING),
             PZ__RW_ONE_READER);
    CHECK_EQ(atomic_load(&w.state), 0);
    pz_rwlock_read_unlock(&rw); /* the last reader out wakes the writer */
    pthread_join(t, NULL);
    CHECK_EQ(atomic_load(&w.state), 2);
    CHECK_EQ(atomic_load(&rw.state), full); /* the write unlock keeps the score */
    /* An upgradable reader beside a reader in a slot: try_upgrade revokes
     * the slot and fails; once that reader leaves it upgrades. */
    open_slots_and_read(&rw);
    pz_rwlock_upgradable(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | full | PZ__RW_ONE_READER | PZ__RW_UPGRADABLE);
    CHECK(!pz_rwlock_try_upgrade(&rw));
    CHECK_EQ(atomic_load(&rw.state), full | 2 * PZ__RW_ONE_READER | PZ__RW_UPGRADABLE);
    pz_rwlock_read_unlock(&rw);
    CHECK(pz_rwlock_try_upgrade(&rw));
    pz_rwlock_write_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state), full);
    /* The score falls by one at each revocation that finds the slots
     * empty: a lone reader opens them while it is above 0 (each round's
     * read), and at 0 it no longer does; the lock is then all zero. */
    for (uintptr_t left = 7; left > 0; left--) {
        CHECK_EQ(atomic_load(&rw.state), left * PZ__RW_SHARE_ONE);
        pz_rwlock_read(&rw);
        CHECK_EQ(atomic_load(&rw.state), PZ__RW_SLOTS | left * PZ__RW_SHARE_ONE | PZ__RW_ONE_READER);
        pz_rwlock_read_unlock(&rw);
        pz_rwlock_write(&rw); /* claims from a word with SLOTS: revokes, finds nothing */
        CHECK_EQ(atomic_load(&rw.state), PZ__RW_WRITE_LOCKED | (left - 1) * PZ__RW_SHARE_ONE);
        pz_rwlock_write_unlock(&rw);
    }
    CHECK_EQ(atomic_load(&rw.state), 0);
    pz_rwlock_read(&rw);
    CHECK_EQ(atomic_load(&rw.state), PZ__RW_ONE_READER);
    pz_rwlock_read_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state), 0);
}

static void test_rwlock_misuse_reported(void **state)
{
    (void)state;
    pz_rwlock_t rw = PZ_RWLOCK_INIT;
    capture_stderr_begin();
    pz_rwlock_read_unlock(&rw);
    pz_rwlock_write_unlock(&rw);
    pz_rwlock_upgradable_unlock(&rw);
    pz_rwlock_upgradable(&rw);
    pz_rwlock_read_unlock(&rw); /* the upgradable reader is not a plain one */
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "plaza: pz_rwlock_read_unlock") != NULL);
    CHECK(strstr(out, "plaza: pz_rwlock_write_unlock") != NULL);
    CHECK(strstr(out, "plaza: pz_rwlock_upgradable_unlock") != NULL);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, PZ__RW_ONE_READER | PZ__RW_UPGRADABLE);
    pz_rwlock_upgradable_unlock(&rw);
    CHECK_EQ(atomic_load(&rw.state) & ~PZ__RW_HINTS, 0);
}

static pz_rwlock_t suspend_rw;

static void *suspend_holding_rw(void *arg)
{
    (void)arg;
    pz_rwlock_read(&suspend_rw);
    pz_sleep(1000000);
    pz_rwlock_read_unlock(&suspend_rw);
    return NULL;
}

static void test_rwlock_held_across_suspend_reported(void **state)
{
    (void)state;
    char addr[32];
    snprintf(addr, sizeof addr, "%p", (void *)&suspend_rw);
    capture_stderr_begin();
    run_in_runtime(1, suspend_holding_rw, NULL);
    const char *out = capture_stderr_end();
    CHECK(strstr(out, "pz_rwlock") != NULL);
    CHECK(strstr(out, addr) != NULL);
}

/* ---- pz_condvar ---- */

static void test_condvar_wait_until_times_out(void **state)
{
    (void)state;
    pz_mutex_t m = PZ_MUTEX_INIT;
    pz_condvar_t cv = PZ_CONDVAR_INIT;
    CHECK(!pz_condvar_notify_one(&cv));
    CHECK(!pz_condvar_notify_all(&cv));
    pz_mutex_lock(&m);
    int64_t start = pz_now();
    CHECK_EQ(pz_condvar_wait_until(&cv, &m, start + 30 * MS), -ETIMEDOUT);
    CHECK(pz_now() - start >= 30 * MS);
    CHECK(pz_mutex_is_locked(&m)); /* returns with the mutex held */
    pz_mutex_unlock(&m);
    CHECK(atomic_load(&cv.mutex) == NULL);
    CHECK_EQ(atomic_load(&m.state), 0);
}

struct cv_waiter {
    pz_mutex_t *m;
    pz_condvar_t *cv;
    int64_t deadline;
    _Atomic int result;
    _Atomic int done;
};

static void *cv_wait_thread(void *arg)
{
    struct cv_waiter *w = arg;
    pz_mutex_lock(w->m);
    int r = pz_condvar_wait_until(w->cv, w->m, w->deadline);
    CHECK(pz_mutex_is_locked(w->m));
    pz_mutex_unlock(w->m);
    atomic_store(&w->result, r);
    atomic_store(&w->done, 1);
    return NULL;
}

/* Waiters only return 0 when notified: with the mutex hammered by other
 * threads (unlocks, hand-offs) and no notify, every wait times out. */
static void test_condvar_no_spurious_wakeup(void **state)
{
    (void)state;
    pz_mutex_t m = PZ_MUTEX_INIT;
    pz_condvar_t cv = PZ_CONDVAR_INIT;
    enum { N = 4 };
    struct cv_waiter w[N];
    pthread_t t[N];
    int64_t deadline = pz_now() + 100 * MS;
    for (int i = 0; i < N; i++) {
        w[i] = (struct cv_waiter){&m, &cv, deadline, 99, 0};
        CHECK_EQ(pthread_create(&t[i], NULL, cv_wait_thread, &w[i]), 0);
    }
    while (pz_now() < deadline + 20 * MS) {
        pz_mutex_lock(&m);
        pz_mutex_unlock_fair(&m);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ(atomic_load(&w[i].result), -ETIMEDOUT);
    }
    /* And a notified waiter returns 0 well before its deadline. */
    struct cv_waiter one = {&m, &cv, pz_now() + 10000 * MS, 99, 0};
    pthread_t t1;
    CHECK_EQ(pthread_create(&t1, NULL, cv_wait_thread, &one), 0);
    while (atomic_load(&cv.mutex) == NULL)
        sched_yield();
    pz_mutex_lock(&m); /* the waiter has released it: it is parked */
    pz_mutex_unlock(&m);
    CHECK(pz_condvar_notify_one(&cv));
    pthread_join(t1, NULL);
    CHECK_EQ(atomic_load(&one.result), 0);
    CHECK(atomic_load(&cv.mutex) == NULL);
}

static void test_condvar_two_mutexes_reported(void **state)
{
    (void)state;
    pz_mutex_t m1 = PZ_MUTEX_INIT, m2 = PZ_MUTEX_INIT;
    pz_condvar_t cv = PZ_CONDVAR_INIT;
    struct cv_waiter w = {&m1, &cv, pz_now() + 10000 * MS, 99, 0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, cv_wait_thread, &w), 0);
    while (atomic_load(&cv.mutex) == NULL)
        sched_yield();
    pz_mutex_lock(&m2);
    capture_stderr_begin();
    int r = pz_condvar_wait(&cv, &m2);
    const char *out = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK(pz_mutex_is_locked(&m2));
    CHECK(strstr(out, "plaza: pz_condvar_wait") != NULL);
    pz_mutex_unlock(&m2);
    pz_mutex_lock(&m1);
    pz_mutex_unlock(&m1);
    CHECK(pz_condvar_notify_all(&cv));
    pthread_join(t, NULL);
    CHECK_EQ(atomic_load(&w.result), 0);
}

/* ---- pz_once ---- */

static int once_runs;
static pz_once_t nested_once = PZ_ONCE_INIT;

static void count_run(void *arg)
{
    (void)arg;
    once_runs++;
}

static void nested_fn(void *arg)
{
    (void)arg;
    once_runs++;
    pz_once(&nested_once, nested_fn, NULL);
}

static void test_once_basic_and_nested(void **state)
{
    (void)state;
    pz_once_t o = PZ_ONCE_INIT;
    once_runs = 0;
    pz_once(&o, count_run, NULL);
    pz_once(&o, count_run, NULL);
    CHECK_EQ(once_runs, 1);
    once_runs = 0;
    capture_stderr_begin();
    pz_once(&nested_once, nested_fn, NULL);
    const char *out = capture_stderr_end();
    CHECK_EQ(once_runs, 1);
    CHECK(strstr(out, "plaza: pz_once") != NULL);
    pz_once(&nested_once, nested_fn, NULL);
    CHECK_EQ(once_runs, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_trylock),
        cmocka_unit_test(test_mutex_lock_until),
        cmocka_unit_test(test_mutex_unlock_unlocked_reported),
        cmocka_unit_test(test_mutex_held_across_suspend_reported),
        cmocka_unit_test(test_rwlock_modes),
        cmocka_unit_test(test_rwlock_writer_blocks_new_readers),
        cmocka_unit_test(test_rwlock_timeouts),
        cmocka_unit_test(test_rwlock_readers_passing_through),
        cmocka_unit_test(test_rwlock_read_slots),
        cmocka_unit_test(test_rwlock_misuse_reported),
        cmocka_unit_test(test_rwlock_held_across_suspend_reported),
        cmocka_unit_test(test_condvar_wait_until_times_out),
        cmocka_unit_test(test_condvar_no_spurious_wakeup),
        cmocka_unit_test(test_condvar_two_mutexes_reported),
        cmocka_unit_test(test_once_basic_and_nested),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
