/* pz_select: every kind of case, deadlines, cancel, misuse; and a stress
 * of many tasks selecting over a channel (both sides), a descriptor, a
 * notify and deadlines, where every item must arrive exactly once although
 * other cases keep firing at the same instant. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MS 1000000LL
#define SEC 1000000000LL

static void *ret7(void *arg)
{
    (void)arg;
    pz_sleep(2 * MS);
    return (void *)7;
}

static pz_chan_t *late_ch;
static void *late_send(void *arg)
{
    (void)arg;
    pz_sleep(3 * MS);
    int v = 99;
    CHECK_EQ(pz_chan_send(late_ch, &v), 0);
    return NULL;
}

static pz_notify_t late_note = PZ_NOTIFY_INIT;
static void *late_notify(void *arg)
{
    (void)arg;
    pz_sleep(3 * MS);
    if (arg)
        pz_notify_all(&late_note);
    else
        pz_notify_one(&late_note);
    return NULL;
}

static void *basics_main(void *arg)
{
    (void)arg;
    pz_chan_t *a = pz_chan_create(sizeof(int), 2), *b = pz_chan_create(sizeof(int), 0);
    int v = 5, got = 0;
    CHECK_EQ(pz_chan_send(a, &v), 0);
    pz_sel_t c1[] = {PZ_SEL_RECV(b, &got), PZ_SEL_RECV(a, &got)};
    CHECK_EQ(pz_select(c1, 2, PZ_FOREVER), 1);
    CHECK_EQ(c1[1].result, 0);
    CHECK_EQ(got, 5);
    /* Nothing ready: the deadline case, or the select's own deadline. */
    pz_sel_t c2[] = {PZ_SEL_RECV(a, &got), PZ_SEL_DEADLINE(pz_now() + 2 * MS)};
    CHECK_EQ(pz_select(c2, 2, PZ_FOREVER), 1);
    pz_sel_t c3[] = {PZ_SEL_RECV(a, &got)};
    int64_t t0 = pz_now();
    CHECK_EQ(pz_select(c3, 1, t0 + 3 * MS), -ETIMEDOUT);
    CHECK(pz_now() - t0 >= 3 * MS);
    /* A send case into room. */
    v = 8;
    pz_sel_t c4[] = {PZ_SEL_RECV(b, &got), PZ_SEL_SEND(a, &v)};
    CHECK_EQ(pz_select(c4, 2, PZ_FOREVER), 1);
    CHECK_EQ(pz_chan_len(a), 1);
    CHECK_EQ(pz_chan_recv(a, &got), 0);
    CHECK_EQ(got, 8);
    /* Woken in the middle of the wait: a channel, a notify, a join, a fd. */
    late_ch = a;
    pz_task_t *s = pz_spawn(late_send, NULL);
    CHECK_EQ(pz_select(c3, 1, PZ_FOREVER), 0);
    CHECK_EQ(got, 99);
    CHECK_EQ(pz_join(s, NULL), 0);
    for (int all = 0; all < 2; all++) {
        uint64_t e = pz_notify_epoch(&late_note);
        pz_task_t *nt = pz_spawn(late_notify, (void *)(intptr_t)all);
        pz_sel_t c5[] = {PZ_SEL_RECV(a, &got), PZ_SEL_NOTIFY(&late_note, e)};
        CHECK_EQ(pz_select(c5, 2, pz_now() + 30 * SEC), 1);
        CHECK_EQ(pz_join(nt, NULL), 0);
    }
    void *res = NULL;
    pz_task_t *j = pz_spawn(ret7, NULL);
    pz_sel_t c6[] = {PZ_SEL_RECV(a, &got), PZ_SEL_JOIN(j, &res)};
    CHECK_EQ(pz_select(c6, 2, pz_now() + 30 * SEC), 1);
    CHECK_EQ((intptr_t)res, 7);
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pz_sel_t c7[] = {PZ_SEL_FD(sv[0], PZ_READABLE), PZ_SEL_DEADLINE(pz_now() + 2 * MS)};
    CHECK_EQ(pz_select(c7, 2, PZ_FOREVER), 1);
    CHECK_EQ(write(sv[1], "x", 1), 1);
    c7[1] = PZ_SEL_DEADLINE(pz_now() + 30 * SEC);
    CHECK_EQ(pz_select(c7, 2, PZ_FOREVER), 0);
    CHECK_EQ(c7[0].result, PZ_READABLE);
    /* Closed: the receive fires with -EPIPE. */
    pz_chan_close(b);
    pz_sel_t c8[] = {PZ_SEL_RECV(a, &got), PZ_SEL_RECV(b, &got)};
    CHECK_EQ(pz_select(c8, 2, PZ_FOREVER), 1);
    CHECK_EQ(c8[1].result, -EPIPE);
    /* Misuse. */
    pz_sel_t c9[] = {PZ_SEL_RECV(a, &got), PZ_SEL_SEND(a, &v)};
    CHECK_EQ(pz_select(c9, 2, PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_select(c9, 0, PZ_FOREVER), -EINVAL);
    CHECK_EQ(pz_select(NULL, 1, PZ_FOREVER), -EINVAL);
    /* Cancelled: a select that would wait returns -ECANCELED. */
    pz_cancel(pz_self());
    CHECK_EQ(pz_select(c3, 1, PZ_FOREVER), -ECANCELED);
    CHECK_EQ(pz_chan_send(a, &v), 0);
    CHECK_EQ(pz_select(c3, 1, PZ_FOREVER), 0); /* ready: completes */
    pz_close(sv[0]);
    pz_close(sv[1]);
    pz_chan_destroy(a);
    pz_chan_destroy(b);
    return NULL;
}

static void test_select_basics(void **state)
{
    (void)state;
    run_in_runtime(2, basics_main, NULL);
}

/* ---- semaphore cases ---- */

static pz_semaphore_t sem;
static void *late_release(void *arg)
{
    (void)arg;
    pz_sleep(3 * MS);
    pz_semaphore_release(&sem, 2);
    return NULL;
}

#define SEM_PERMITS 3
static _Atomic int in_use, max_in_use, sem_rounds;
static pz_chan_t *sem_ch;
static pz_semaphore_t racer;

static void *sem_racer(void *arg)
{
    uint64_t seed = (uint64_t)(intptr_t)arg * 13 + 5;
    int got;
    for (int i = 0; i < SCALED(2000); i++) {
        pz_sel_t c[] = {PZ_SEL_ACQUIRE(&racer, 1), PZ_SEL_RECV(sem_ch, &got),
                        PZ_SEL_DEADLINE(pz_now() + (int64_t)(test_rand(&seed) % 30) * 1000)};
        int k = pz_select(c, 3, PZ_FOREVER);
        if (k == 0) {
            CHECK_EQ(c[0].result, 0);
            int n = atomic_fetch_add(&in_use, 1) + 1;
            CHECK(n <= SEM_PERMITS);
            int m = atomic_load(&max_in_use);
            while (n > m && !atomic_compare_exchange_weak(&max_in_use, &m, n))
                ;
            if (test_rand(&seed) % 2)
                pz_yield();
            atomic_fetch_sub(&in_use, 1);
            pz_semaphore_release(&racer, 1);
            atomic_fetch_add(&sem_rounds, 1);
        }
    }
    return NULL;
}

static void *pinger(void *arg)
{
    (void)arg;
    /* Channel items that keep firing the other case at the same instant. */
    for (int i = 0; i < SCALED(4000); i++) {
        int v = i;
        if (pz_chan_send_until(sem_ch, &v, pz_now() + 100 * MS) < 0)
            break;
    }
    return NULL;
}

static void *semaphore_main(void *arg)
{
    (void)arg;
    pz_semaphore_init(&sem, 1);
    pz_chan_t *a = pz_chan_create(sizeof(int), 1);
    int got;
    pz_sel_t c1[] = {PZ_SEL_RECV(a, &got), PZ_SEL_ACQUIRE(&sem, 1)};
    CHECK_EQ(pz_select(c1, 2, PZ_FOREVER), 1);
    CHECK_EQ(pz_semaphore_available(&sem), 0);
    pz_task_t *t = pz_spawn(late_release, NULL);
    pz_sel_t c2[] = {PZ_SEL_RECV(a, &got), PZ_SEL_ACQUIRE(&sem, 2)};
    CHECK_EQ(pz_select(c2, 2, pz_now() + 30 * SEC), 1);
    CHECK_EQ(c2[1].result, 0);
    CHECK_EQ(pz_semaphore_available(&sem), 0);
    CHECK_EQ(pz_join(t, NULL), 0);
    pz_semaphore_close(&sem);
    CHECK_EQ(pz_select(c2, 2, PZ_FOREVER), 1);
    CHECK_EQ(c2[1].result, -EPIPE);

    /* Racing: no permit lost or made, however the cases collide. */
    pz_semaphore_init(&racer, SEM_PERMITS);
    sem_ch = pz_chan_create(sizeof(int), 0);
    pz_task_t *r[8];
    for (intptr_t i = 0; i < 8; i++)
        r[i] = pz_spawn(sem_racer, (void *)i);
    pz_task_t *p = pz_spawn(pinger, NULL);
    for (int i = 0; i < 8; i++)
        CHECK_EQ(pz_join(r[i], NULL), 0);
    pz_chan_close(sem_ch);
    CHECK_EQ(pz_join(p, NULL), 0);
    CHECK_EQ(pz_semaphore_available(&racer), SEM_PERMITS);
    CHECK(atomic_load(&max_in_use) <= SEM_PERMITS);
    CHECK(atomic_load(&sem_rounds) > 0);
    pz_chan_destroy(sem_ch);
    pz_chan_destroy(a);
    return NULL;
}

static void test_select_semaphore(void **state)
{
    (void)state;
    run_in_runtime(0, semaphore_main, NULL);
}

/* ---- stress ---- */

#define PRODUCERS 8
#define CONSUMERS 8
static int total;
static _Atomic unsigned char *seen;
static _Atomic int received, fd_fires, timeouts, send_timeouts;
static pz_chan_t *ch;
static int pipefd[2];
static pz_notify_t stop = PZ_NOTIFY_INIT;

static void *producer(void *arg)
{
    intptr_t p = (intptr_t)arg;
    uint64_t seed = (uint64_t)p * 31 + 7;
    for (int i = (int)p; i < total; i += PRODUCERS) {
        int item = i;
        for (;;) {
            /* The send races its deadline, and a fd byte now and then. */
            if (test_rand(&seed) % 4 == 0) {
                char b = 1;
                if (write(pipefd[1], &b, 1) < 0)
                    CHECK(errno == EAGAIN);
            }
            pz_sel_t c[] = {PZ_SEL_SEND(ch, &item), PZ_SEL_DEADLINE(pz_now() + (int64_t)(test_rand(&seed) % 50) * 1000)};
            int k = pz_select(c, 2, PZ_FOREVER);
            if (k == 0) {
                CHECK_EQ(c[0].result, 0);
                break;
            }
            CHECK_EQ(k, 1);
            atomic_fetch_add(&send_timeouts, 1); /* not sent: send it again */
        }
    }
    return NULL;
}

static void *consumer(void *arg)
{
    uint64_t seed = (uint64_t)(intptr_t)arg * 17 + 3;
    for (;;) {
        uint64_t e = pz_notify_epoch(&stop);
        if (atomic_load(&received) >= total)
            return NULL;
        int item = -1;
        pz_sel_t c[] = {
            PZ_SEL_RECV(ch, &item),
            PZ_SEL_FD(pipefd[0], PZ_READABLE),
            PZ_SEL_DEADLINE(pz_now() + (int64_t)(test_rand(&seed) % 100) * 1000),
            PZ_SEL_NOTIFY(&stop, e),
        };
        int k = pz_select(c, 4, PZ_FOREVER);
        switch (k) {
        case 0:
            CHECK_EQ(c[0].result, 0);
            CHECK(item >= 0 && item < total);
            CHECK_EQ(atomic_fetch_add(&seen[item], 1), 0); /* never twice */
            if (atomic_fetch_add(&received, 1) + 1 == total)
                pz_notify_all(&stop);
            break;
        case 1: {
            char buf[64];
            ssize_t n = read(pipefd[0], buf, sizeof buf);
            CHECK(n > 0 || errno == EAGAIN); /* another consumer may have drained it */
            atomic_fetch_add(&fd_fires, 1);
            break;
        }
        case 2:
            atomic_fetch_add(&timeouts, 1);
            break;
        case 3:
            break;
        default:
            CHECK(!"unexpected select result");
        }
    }
}

static void *stress_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    ch = pz_chan_create(sizeof(int), cap);
    CHECK_EQ(pipe2(pipefd, O_NONBLOCK | O_CLOEXEC), 0);
    pz_task_t *p[PRODUCERS], *c[CONSUMERS];
    for (intptr_t i = 0; i < CONSUMERS; i++)
        c[i] = pz_spawn(consumer, (void *)i);
    for (intptr_t i = 0; i < PRODUCERS; i++)
        p[i] = pz_spawn(producer, (void *)i);
    for (int i = 0; i < PRODUCERS; i++)
        CHECK_EQ(pz_join(p[i], NULL), 0);
    for (int i = 0; i < CONSUMERS; i++)
        CHECK_EQ(pz_join(c[i], NULL), 0);
    for (int i = 0; i < total; i++)
        CHECK_EQ(atomic_load(&seen[i]), 1); /* nothing lost, nothing twice */
    CHECK_EQ(pz_chan_len(ch), 0);
    fprintf(stderr, "select stress (capacity %zu): %d items, %d fd fires, %d receive deadlines, %d send deadlines\n",
            cap, total, atomic_load(&fd_fires), atomic_load(&timeouts), atomic_load(&send_timeouts));
    pz_close(pipefd[0]);
    pz_close(pipefd[1]);
    pz_chan_destroy(ch);
    return NULL;
}

static void run_stress(size_t cap)
{
    total = SCALED(10000);
    seen = calloc((size_t)total, 1);
    atomic_store(&received, 0);
    run_in_runtime(0, stress_main, (void *)(intptr_t)cap);
    free((void *)seen);
}

static void test_select_stress_buffered(void **state)
{
    (void)state;
    run_stress(4);
}

static void test_select_stress_rendezvous(void **state)
{
    (void)state;
    run_stress(0);
}

/* ---- a descriptor's readiness word ----
 * A read that returns fewer bytes than asked from a byte stream marks it
 * empty, and a select then waits for the next edge without asking the
 * kernel; these check every case where "fewer bytes" does not mean
 * "empty" and every way new readiness must still be seen. */

static int drip_fd;
static void *drip(void *arg)
{
    (void)arg;
    pz_yield();
    CHECK_EQ(write(drip_fd, "z", 1), 1);
    return NULL;
}

/* fds[0] is read by the task, fds[1] written. */
static void check_stream(int fds[2])
{
    char buf[64];
    CHECK_EQ(write(fds[1], "abc", 3), 3);
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 3); /* short: the stream is empty */
    pz_sel_t c1[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c1, 1, pz_now() + 20 * MS), -ETIMEDOUT);
    /* Data written while (or before) the select waits wakes it. */
    drip_fd = fds[1];
    pz_task_t *t = pz_spawn(drip, NULL);
    pz_sel_t c2[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c2, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(c2[0].result, PZ_READABLE);
    CHECK_EQ(pz_join(t, NULL), 0);
    /* Data written before the select, with no read in between. */
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 1);
    CHECK_EQ(write(fds[1], "de", 2), 2);
    pz_sel_t c3[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c3, 1, pz_now() + 5 * SEC), 0);
    /* A read that fills the buffer says nothing: the rest is seen. */
    CHECK_EQ(pz_read(fds[0], buf, 1, PZ_FOREVER), 1);
    pz_sel_t c4[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c4, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 1);
    /* End of stream after a short read: readable, and stays so after the
     * read that returns 0 (no edge follows an end). */
    CHECK_EQ(write(fds[1], "f", 1), 1);
    CHECK_EQ(close(fds[1]), 0);
    pz_sel_t c5[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c5, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 1);
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 0);
    pz_sel_t c6[] = {PZ_SEL_FD(fds[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c6, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_read(fds[0], buf, sizeof buf, PZ_FOREVER), 0);
    CHECK_EQ(pz_close(fds[0]), 0);
}

static void *readiness_main(void *arg)
{
    (void)arg;
    char buf[64];
    int sp[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    check_stream(sp);
    int pp[2];
    CHECK_EQ(pipe(pp), 0);
    check_stream(pp);

    /* A peek leaves the bytes where they are: still readable. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    CHECK_EQ(write(sp[1], "abc", 3), 3);
    CHECK_EQ(pz_recv(sp[0], buf, sizeof buf, MSG_PEEK, PZ_FOREVER), 3);
    pz_sel_t c1[] = {PZ_SEL_FD(sp[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c1, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_recv(sp[0], buf, sizeof buf, 0, PZ_FOREVER), 3);
    pz_sel_t c2[] = {PZ_SEL_FD(sp[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c2, 1, pz_now() + 20 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_close(sp[0]), 0);
    CHECK_EQ(close(sp[1]), 0);

    /* Datagrams: one per read, however many are queued. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_DGRAM, 0, sp), 0);
    CHECK_EQ(send(sp[1], "one", 3, 0), 3);
    CHECK_EQ(send(sp[1], "two", 3, 0), 3);
    CHECK_EQ(pz_read(sp[0], buf, sizeof buf, PZ_FOREVER), 3);
    pz_sel_t c3[] = {PZ_SEL_FD(sp[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c3, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_recv(sp[0], buf, sizeof buf, 0, PZ_FOREVER), 3);
    CHECK_EQ(memcmp(buf, "two", 3), 0);
    CHECK_EQ(pz_close(sp[0]), 0);
    CHECK_EQ(close(sp[1]), 0);

    /* readv asks for the total of its buffers. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    CHECK_EQ(write(sp[1], "abcdef", 6), 6);
    char x[4], y[4];
    struct iovec iov[2] = {{x, sizeof x}, {y, sizeof y}};
    CHECK_EQ(pz_readv(sp[0], iov, 2, PZ_FOREVER), 6);
    pz_sel_t c4[] = {PZ_SEL_FD(sp[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c4, 1, pz_now() + 20 * MS), -ETIMEDOUT);
    CHECK_EQ(write(sp[1], "abcdefgh", 8), 8);
    CHECK_EQ(pz_readv(sp[0], iov, 2, PZ_FOREVER), 8); /* full: proves nothing */
    CHECK_EQ(write(sp[1], "g", 1), 1);
    pz_sel_t c5[] = {PZ_SEL_FD(sp[0], PZ_READABLE)};
    CHECK_EQ(pz_select(c5, 1, pz_now() + 5 * SEC), 0);
    CHECK_EQ(pz_close(sp[0]), 0);
    CHECK_EQ(close(sp[1]), 0);
    return NULL;
}

static void test_select_fd_readiness(void **state)
{
    (void)state;
    run_in_runtime(1, readiness_main, NULL);
    run_in_runtime(2, readiness_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_basics),
        cmocka_unit_test(test_select_semaphore),
        cmocka_unit_test(test_select_stress_buffered),
        cmocka_unit_test(test_select_stress_rendezvous),
        cmocka_unit_test(test_select_fd_readiness),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
