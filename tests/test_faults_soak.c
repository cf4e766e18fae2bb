/* Fault-injection soak (built with -DPLAZA_FAULTS=ON, or against the
 * fault-injecting copy of the library with -DPLAZA_FAULT_SOAK=ON): runtimes
 * one after another, each with tasks doing random sync-mutex sections,
 * semaphore holds, async mutex and rwlock sections suspended inside,
 * channel sends and receives, notify waits and notifies, blocking-pool
 * calls, socket echoes and sleeps, with random deadlines and a chaos task
 * cancelling them, while plaza's
 * platform wrappers fail stack mappings, allocations, thread creation,
 * poller registrations, eventfd/epoll creation and accepts at random and
 * cut reads and writes short (src/arch/fault.h).
 *
 * Invariants: no two tasks inside a mutex, no writer beside anyone in the
 * rwlock; the semaphore's permits are all back and the locks free at the
 * end; channel items conserved in number and sum; no notify wait returns 0
 * without a notify to answer it; every task that ran ended once and was joined once
 * with its own result, and a task that could not start (no stack) joins
 * with -ENOMEM and never ran; echoed bytes come back intact; every error
 * is one the call documents.  ASan's leak check runs at exit.
 *
 * PLAZA_SOAK_SECONDS (default 45) bounds the run; `make soak` runs long. */
#include "helpers.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "arch/fault.h"

enum { TASKS = 64, OPS = 24, PERMITS = 3, CHAN_CAP = 4 };

struct round {
    pz_mutex_t m;
    bool inside;
    long sections;
    /* the async primitives: a mutex and a rwlock held across a yield, a
     * channel whose items are counted and summed, a notify */
    pz_async_mutex_t am;
    _Atomic int am_inside;
    pz_async_rwlock_t arw;
    _Atomic int arw_readers, arw_writers;
    pz_chan_t ch;
    _Alignas(8) unsigned char ch_buf[PZ_CHAN_BUFFER_SIZE(sizeof(long), CHAN_CAP)];
    _Atomic long sent, received, sent_sum, received_sum;
    pz_notify_t nt;
    _Atomic long notifies, notified;
    pz_semaphore_t sem;
    _Atomic long holding;
    _Atomic int ran[TASKS];
    _Atomic long echoes, io_errors, blocking_refused;
    uint64_t seed;
};

static bool allowed_io_error(long r)
{
    if (r == -ETIMEDOUT || r == -ECANCELED || r == -ENOMEM || r == -EMFILE || r == -EAGAIN)
        return true;
    fprintf(stderr, "soak: unexpected I/O error %ld (%s)\n", r, pz_strerror((int)r));
    return false;
}

static void *square(void *arg)
{
    uintptr_t v = (uintptr_t)arg;
    return (void *)(v * v);
}

static void echo_once(struct round *r, uint64_t *seed)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
        return; /* the process's own limit: not plaza's business */
    unsigned char out[3000], in[3000];
    size_t n = 1 + test_rand(seed) % sizeof out;
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char)test_rand(seed);
    int64_t deadline = pz_now() + (int64_t)(test_rand(seed) % 20000000);
    ssize_t w = pz_write_all(sv[0], out, n, deadline);
    if (w < 0) {
        CHECK(allowed_io_error(w));
        atomic_fetch_add(&r->io_errors, 1);
    } else {
        CHECK_EQ(w, (long long)n);
        size_t got = 0;
        while (got < n) {
            ssize_t k = pz_read(sv[1], in + got, n - got, deadline);
            if (k < 0) {
                CHECK(allowed_io_error(k));
                atomic_fetch_add(&r->io_errors, 1);
                break;
            }
            CHECK(k > 0);
            got += (size_t)k;
        }
        if (got == n) {
            CHECK(memcmp(in, out, n) == 0);
            atomic_fetch_add(&r->echoes, 1);
        }
    }
    pz_close(sv[0]);
    pz_close(sv[1]);
}

/* Closes a connected socket with a reset, so that it leaves no TIME_WAIT
 * behind: thousands of connections a second would otherwise use up the
 * machine's ephemeral ports for a minute, for this soak and for every
 * test that runs after it. */
static void close_without_time_wait(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    pz_close(fd);
}

/* A connection through a loopback listener: accept may fail with -EMFILE
 * (injected, as at the process's limit) and is tried again, since the
 * connection waits in the backlog. */
static void accept_once(struct round *r)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 4) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) != 0) {
        close(lfd);
        return;
    }
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c < 0) {
        close(lfd);
        return;
    }
    int64_t deadline = pz_now() + 2000000000;
    int e = pz_connect(c, (struct sockaddr *)&a, sizeof a, deadline);
    if (e == 0) {
        int s = -EMFILE;
        for (int i = 0; i < 8 && s == -EMFILE; i++)
            s = pz_accept(lfd, NULL, NULL, deadline);
        if (s >= 0) {
            char x = 'a', y = 0;
            ssize_t w = pz_write(c, &x, 1, deadline);
            ssize_t k = w == 1 ? pz_read(s, &y, 1, deadline) : w;
            if (k == 1)
                CHECK_EQ(y, 'a');
            else
                CHECK(allowed_io_error(k));
            close_without_time_wait(s);
        } else {
            CHECK(allowed_io_error(s));
            atomic_fetch_add(&r->io_errors, 1);
        }
    } else if (e != -EADDRNOTAVAIL) {
        /* -EADDRNOTAVAIL: no ephemeral port left on the machine (other
         * programs' connections in TIME_WAIT): not plaza's business. */
        CHECK(allowed_io_error(e));
    }
    close_without_time_wait(c);
    pz_close(lfd);
}

struct task_arg {
    struct round *r;
    int index;
};

static void *soak_task(void *arg)
{
    struct task_arg *a = arg;
    struct round *r = a->r;
    CHECK_EQ(atomic_fetch_add(&r->ran[a->index], 1), 0);
    uint64_t seed = r->seed ^ ((uint64_t)a->index * 0x9E3779B97F4A7C15ull) ^ 1;
    for (int op = 0; op < OPS; op++) {
        int64_t deadline = pz_now() + (int64_t)(test_rand(&seed) % 3000000);
        switch (test_rand(&seed) % 10) {
        case 0:
            if (pz_mutex_lock_until(&r->m, deadline) == 0) {
                CHECK(!r->inside);
                r->inside = true;
                r->sections++;
                r->inside = false;
                pz_mutex_unlock(&r->m);
            }
            break;
        case 1: {
            int e = pz_semaphore_acquire_until(&r->sem, 1, deadline);
            if (e == 0) {
                CHECK(atomic_fetch_add(&r->holding, 1) < PERMITS);
                pz_sleep((int64_t)(test_rand(&seed) % 200000));
                atomic_fetch_sub(&r->holding, 1);
                CHECK_EQ(pz_semaphore_release(&r->sem, 1), 0);
            } else {
                CHECK(e == -ETIMEDOUT || e == -ECANCELED);
            }
            break;
        }
        case 2: {
            void *res = NULL;
            uintptr_t v = (uintptr_t)(test_rand(&seed) % 1000);
            int e = pz_blocking(square, (void *)v, &res);
            if (e == 0)
                CHECK_EQ((uintptr_t)res, v * v);
            else if (e == -EAGAIN)
                atomic_fetch_add(&r->blocking_refused, 1);
            else
                CHECK_EQ(e, -ECANCELED);
            break;
        }
        case 3:
            echo_once(r, &seed);
            break;
        case 4:
            accept_once(r);
            break;
        case 5: {
            int e = pz_async_mutex_lock_until(&r->am, deadline);
            if (e == 0) {
                CHECK_EQ(atomic_fetch_add(&r->am_inside, 1), 0);
                pz_yield(); /* suspended inside: others queue, time out, are cancelled */
                atomic_fetch_sub(&r->am_inside, 1);
                CHECK_EQ(pz_async_mutex_unlock(&r->am), 0);
            } else {
                CHECK(e == -ETIMEDOUT || e == -ECANCELED);
            }
            break;
        }
        case 6: {
            bool write = test_rand(&seed) % 4 == 0;
            int e = write ? pz_async_rwlock_write_until(&r->arw, deadline)
                          : pz_async_rwlock_read_until(&r->arw, deadline);
            if (e == 0 && write) {
                CHECK_EQ(atomic_fetch_add(&r->arw_writers, 1), 0);
                CHECK_EQ(atomic_load(&r->arw_readers), 0);
                pz_yield();
                atomic_fetch_sub(&r->arw_writers, 1);
                CHECK_EQ(pz_async_rwlock_write_unlock(&r->arw), 0);
            } else if (e == 0) {
                atomic_fetch_add(&r->arw_readers, 1);
                CHECK_EQ(atomic_load(&r->arw_writers), 0);
                pz_yield();
                atomic_fetch_sub(&r->arw_readers, 1);
                CHECK_EQ(pz_async_rwlock_read_unlock(&r->arw), 0);
            } else {
                CHECK(e == -ETIMEDOUT || e == -ECANCELED);
            }
            break;
        }
        case 7: {
            long v = (long)(test_rand(&seed) % 1000) + 1;
            if (test_rand(&seed) % 2) {
                int e = pz_chan_send_until(&r->ch, &v, deadline);
                if (e == 0) {
                    atomic_fetch_add(&r->sent, 1);
                    atomic_fetch_add(&r->sent_sum, v);
                } else {
                    CHECK(e == -ETIMEDOUT || e == -ECANCELED);
                }
            } else {
                long got = 0;
                int e = pz_chan_recv_until(&r->ch, &got, deadline);
                if (e == 0) {
                    CHECK(got >= 1 && got <= 1000);
                    atomic_fetch_add(&r->received, 1);
                    atomic_fetch_add(&r->received_sum, got);
                } else {
                    CHECK(e == -ETIMEDOUT || e == -ECANCELED);
                }
            }
            break;
        }
        case 8: {
            if (test_rand(&seed) % 2) {
                atomic_fetch_add(&r->notifies, 1);
                pz_notify_one(&r->nt);
            } else {
                int e = pz_notify_wait_until(&r->nt, deadline);
                if (e == 0)
                    atomic_fetch_add(&r->notified, 1);
                else
                    CHECK(e == -ETIMEDOUT || e == -ECANCELED);
            }
            break;
        }
        default: {
            int e = pz_sleep((int64_t)(test_rand(&seed) % 500000));
            CHECK(e == 0 || e == -ECANCELED);
            break;
        }
        }
    }
    return (void *)(uintptr_t)(a->index + 1000);
}

static void *round_main(void *arg)
{
    struct round *r = arg;
    struct task_arg args[TASKS];
    pz_task_t *tasks[TASKS];
    for (int i = 0; i < TASKS; i++) {
        args[i] = (struct task_arg){r, i};
        tasks[i] = pz_spawn(soak_task, &args[i]);
        /* NULL only without memory for the task struct, which plaza does
         * not inject: the spawn itself must work. */
        CHECK(tasks[i] != NULL);
    }
    uint64_t seed = r->seed;
    for (int i = 0; i < TASKS / 4; i++) {
        pz_sleep((int64_t)(test_rand(&seed) % 300000));
        pz_cancel(tasks[test_rand(&seed) % TASKS]);
    }
    for (int i = 0; i < TASKS; i++) {
        void *res = NULL;
        int e = pz_join(tasks[i], &res);
        if (e == 0) {
            CHECK_EQ(atomic_load(&r->ran[i]), 1);
            CHECK_EQ((uintptr_t)res, (uintptr_t)(i + 1000));
        } else {
            /* No stack could be mapped: it never ran. */
            CHECK_EQ(e, -ENOMEM);
            CHECK_EQ(atomic_load(&r->ran[i]), 0);
            CHECK(res == NULL);
        }
    }
    CHECK_EQ(atomic_load(&r->holding), 0);
    CHECK_EQ(pz_semaphore_available(&r->sem), PERMITS);
    CHECK(!pz_mutex_is_locked(&r->m));
    CHECK(!pz_async_mutex_is_locked(&r->am));
    CHECK_EQ(pz_async_rwlock_readers(&r->arw), 0);
    CHECK(pz_async_rwlock_try_write(&r->arw));
    CHECK_EQ(pz_async_rwlock_write_unlock(&r->arw), 0);
    /* Items conserved: what was sent is what was received plus what is
     * left in the buffer, in number and in sum. */
    long left = 0, left_sum = 0, v;
    while (pz_chan_try_recv(&r->ch, &v) == 0) {
        left++;
        left_sum += v;
    }
    CHECK_EQ(atomic_load(&r->sent), atomic_load(&r->received) + left);
    CHECK_EQ(atomic_load(&r->sent_sum), atomic_load(&r->received_sum) + left_sum);
    /* No wait returned 0 without a notify_one to answer it. */
    CHECK(atomic_load(&r->notified) <= atomic_load(&r->notifies));
    return (void *)(uintptr_t)0x5eed;
}

static void test_faults_soak(void **state)
{
    (void)state;
    test_restore_fault_handlers();
    const char *s = getenv("PLAZA_SOAK_SECONDS");
    double seconds = s ? atof(s) : 45;
    int64_t end = pz_now() + (int64_t)(seconds * 1e9);
    long rounds = 0, refused_runs = 0, echoes = 0, io_errors = 0, items = 0, notified = 0;
    static struct round r;
    while (pz_now() < end) {
        memset(&r, 0, sizeof r);
        pz_semaphore_init(&r.sem, PERMITS);
        CHECK_EQ(pz_chan_init(&r.ch, sizeof(long), CHAN_CAP, r.ch_buf, sizeof r.ch_buf), 0);
        r.seed = 0x1234567ull + (uint64_t)rounds * 7919;
        void *res = NULL;
        pz_config_t cfg = {.workers = 2};
        int e = pz_run(&cfg, round_main, &r, &res);
        if (e != 0) {
            /* A runtime that cannot get its poller, waker or threads
             * says so and runs nothing. */
            CHECK(e == -EMFILE || e == -ENOMEM || e == -EAGAIN);
            refused_runs++;
            continue;
        }
        CHECK_EQ((uintptr_t)res, 0x5eed);
        rounds++;
        echoes += atomic_load(&r.echoes);
        io_errors += atomic_load(&r.io_errors);
        items += atomic_load(&r.received);
        notified += atomic_load(&r.notified);
    }
    fprintf(stderr,
            "soak: %ld rounds of %d tasks (%ld runtimes refused), %ld echoes, %ld I/O errors, %ld channel items "
            "received, %ld notify waits answered; faults injected: "
            "mmap %ld, alloc %ld, thread %ld, poller %ld, eventfd %ld, accept %ld, short I/O %ld\n",
            rounds, TASKS, refused_runs, echoes, io_errors, items, notified, pz__faults_injected(PZ__FAULT_MMAP),
            pz__faults_injected(PZ__FAULT_MALLOC), pz__faults_injected(PZ__FAULT_THREAD),
            pz__faults_injected(PZ__FAULT_POLLER), pz__faults_injected(PZ__FAULT_EVENTFD),
            pz__faults_injected(PZ__FAULT_ACCEPT), pz__faults_injected(PZ__FAULT_IO));
    CHECK(rounds > 0);
    CHECK(echoes > 0);
    CHECK(items > 0);
    /* The run exercised the failure paths it is for. */
    CHECK(pz__faults_injected(PZ__FAULT_MMAP) + pz__faults_injected(PZ__FAULT_THREAD) > 0);
    CHECK(pz__faults_injected(PZ__FAULT_IO) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_faults_soak),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
