/* Races of pz_chan: every item received exactly once with many producers
 * and consumers, cancel storms, a buffered channel's waiters against the
 * other side's fast path, both queues at once, close against waiters and
 * against running senders and receivers, tasks and threads together. */
#include "helpers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- channels: exactly once, many producers and consumers ---- */

#define PRODUCERS 6
#define CONSUMERS 5
static pz_chan_t *mc;
static long mc_per;
static _Atomic uint32_t *mc_seen;
static _Atomic uint64_t mc_sum;
static _Atomic long mc_count;

static void *mc_producer(void *arg)
{
    long p = (long)(intptr_t)arg;
    for (long i = 0; i < mc_per; i++) {
        uint64_t v = (uint64_t)(p * mc_per + i);
        if (i % 7 == 0) {
            int r;
            while ((r = pz_chan_send_until(mc, &v, pz_now() + 20 * US)) == -ETIMEDOUT)
                ;
            CHECK_EQ(r, 0);
        } else if (i % 11 == 0) {
            while (pz_chan_try_send(mc, &v) == -EAGAIN)
                pz_yield();
        } else {
            CHECK_EQ(pz_chan_send(mc, &v), 0);
        }
    }
    return NULL;
}

/* Each consumer also checks that every producer's items reach it in the
 * order they were sent (a FIFO channel can interleave producers, never
 * reorder one). */
static void *mc_consumer(void *arg)
{
    long c = (long)(intptr_t)arg;
    uint64_t v;
    long last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++)
        last[p] = -1;
    for (long k = 0;; k++) {
        int r;
        if ((k + c) % 5 == 0)
            r = pz_chan_recv_until(mc, &v, pz_now() + 20 * US);
        else
            r = pz_chan_recv(mc, &v);
        if (r == -ETIMEDOUT)
            continue;
        if (r == -EPIPE)
            return NULL;
        CHECK_EQ(r, 0);
        CHECK(v < (uint64_t)(PRODUCERS * mc_per));
        CHECK(last[v / (uint64_t)mc_per] < (long)(v % (uint64_t)mc_per));
        last[v / (uint64_t)mc_per] = (long)(v % (uint64_t)mc_per);
        CHECK_EQ(atomic_fetch_add(&mc_seen[v], 1), 0);
        atomic_fetch_add(&mc_sum, v);
        atomic_fetch_add(&mc_count, 1);
    }
}

static void *mpmc_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    mc_per = SCALED(40000);
    long total = PRODUCERS * mc_per;
    mc_seen = calloc((size_t)total, sizeof *mc_seen);
    atomic_store(&mc_sum, 0);
    atomic_store(&mc_count, 0);
    mc = pz_chan_create(sizeof(uint64_t), cap);
    CHECK(mc != NULL);
    pz_task_t **c = spawn_n(CONSUMERS, mc_consumer, index_arg);
    pz_task_t **p = spawn_n(PRODUCERS, mc_producer, index_arg);
    join_n(p, PRODUCERS);
    pz_chan_close(mc);
    join_n(c, CONSUMERS);
    CHECK_EQ(atomic_load(&mc_count), total);
    CHECK_EQ(atomic_load(&mc_sum), (uint64_t)total * (uint64_t)(total - 1) / 2);
    for (long i = 0; i < total; i++)
        CHECK_EQ(mc_seen[i], 1);
    pz_chan_destroy(mc);
    free(mc_seen);
    return NULL;
}

static void test_chan_mpmc_exactly_once(void **state)
{
    (void)state;
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)64);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)3);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)1);
    run_in_runtime(2, mpmc_main, (void *)(intptr_t)0); /* rendezvous */
}

/* Cancel storm on a rendezvous channel: every send that succeeds was
 * received exactly once, and every receive matches a successful send. */
static pz_chan_t cs_ch;
static _Atomic long cs_sent, cs_recv;

static void *cs_sender(void *arg)
{
    long id = (long)(intptr_t)arg;
    for (long i = 0;; i++) {
        long v = id;
        int r = pz_chan_send_until(&cs_ch, &v, pz_now() + (i % 3) * 30 * US);
        if (r == 0)
            atomic_fetch_add(&cs_sent, 1);
        else if (r == -ECANCELED || r == -EPIPE)
            return NULL;
        else
            CHECK_EQ(r, -ETIMEDOUT);
    }
}

static void *cs_receiver(void *arg)
{
    (void)arg;
    for (long i = 0;; i++) {
        long v;
        int r = pz_chan_recv_until(&cs_ch, &v, pz_now() + (i % 4) * 25 * US);
        if (r == 0)
            atomic_fetch_add(&cs_recv, 1);
        else if (r == -ECANCELED || r == -EPIPE)
            return NULL;
        else
            CHECK_EQ(r, -ETIMEDOUT);
    }
}

static void *cancel_storm_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    uint64_t buf[PZ_CHAN_BUFFER_SIZE(sizeof(long), 3) / 8];
    atomic_store(&cs_sent, 0);
    atomic_store(&cs_recv, 0);
    CHECK_EQ(pz_chan_init(&cs_ch, sizeof(long), cap, cap ? buf : NULL, sizeof buf), 0);
    pz_task_t **s = spawn_n(8, cs_sender, index_arg);
    pz_task_t **r = spawn_n(8, cs_receiver, index_arg);
    uint64_t rng = 7;
    for (int i = 0; i < 12; i++) {
        pz_sleep(2 * MS);
        pz_cancel((i & 1) ? s[test_rand(&rng) % 8] : r[test_rand(&rng) % 8]);
    }
    pz_chan_close(&cs_ch);
    join_n(s, 8);
    join_n(r, 8);
    /* What the cancelled receivers left in the buffer is still there. */
    long v, left = 0;
    while (pz_chan_try_recv(&cs_ch, &v) == 0)
        left++;
    CHECK_EQ(pz_chan_try_recv(&cs_ch, &v), -EPIPE);
    CHECK(left <= (long)cap);
    CHECK(atomic_load(&cs_sent) > 0);
    CHECK_EQ(atomic_load(&cs_sent), atomic_load(&cs_recv) + left);
    CHECK_EQ(atomic_load(&cs_ch.waiting) & ~(uint32_t)(PZ__CHAN_SENDERS_WAIT | PZ__CHAN_RECEIVERS_WAIT), 0);
    CHECK(cs_ch.senders == NULL && cs_ch.receivers == NULL);
    return NULL;
}

static void test_chan_cancel_storm(void **state)
{
    (void)state;
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)0); /* rendezvous */
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)1);
    run_in_runtime(2, cancel_storm_main, (void *)(intptr_t)3);
}

/* ---- a buffered channel's waiters against the other side's fast path ----
 * One item in flight at a time, so every wake-up is needed.  A ping-pong
 * over two channels of capacity 1, whose echo side polls with try_recv and
 * answers at once, so its send lands while the other side is on its way
 * to waiting for the answer (receivers against pushes); then a sender that
 * sends as fast as it can into a channel of capacity 1 that a polling
 * receiver empties (senders against pops).  Random spins of 0-500 ns move
 * the two sides against each other.  A lost wake-up shows as a timeout:
 * nobody else would send or receive.  The window a waiter's last try
 * closes (between its first try and its setting the waiting bit) is a few
 * nanoseconds wide, and narrower still since a served waiter's bit stays
 * set: dropping that last try still passes here, so src/async/chan.c
 * argues it. */
static pz_chan_t *lw_a, *lw_b;

static void lw_spin(uint64_t *rng)
{
    int64_t end = pz_now() + (int64_t)(test_rand(rng) % 500);
    while (pz_now() < end)
        ;
}

/* A receive that polls; it yields now and then, in case both sides share
 * a worker. */
static void lw_poll_recv(pz_chan_t *ch, uint64_t *v)
{
    for (long n = 1;; n++) {
        int r = pz_chan_try_recv(ch, v);
        if (r == 0)
            return;
        CHECK_EQ(r, -EAGAIN);
        if (n % 256 == 0) {
            if (pz_self())
                pz_yield();
            else
                sched_yield();
        }
    }
}

static void *lw_echo(void *arg)
{
    uint64_t v;
    (void)arg;
    for (long i = 0; i < SCALED(20000); i++) {
        lw_poll_recv(lw_a, &v);
        CHECK_EQ(v, (uint64_t)i);
        CHECK_EQ(pz_chan_send_until(lw_b, &v, pz_now() + 2000 * MS), 0);
    }
    return NULL;
}

static void *lw_drain(void *arg)
{
    uint64_t rng = (uint64_t)(intptr_t)arg, v;
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        lw_poll_recv(lw_a, &v);
        CHECK_EQ(v, i);
        if (i % 2 == 0)
            lw_spin(&rng);
    }
    return NULL;
}

static void *lost_wakeup_main(void *arg)
{
    bool threads = arg != NULL;
    uint64_t rng = 3, v;
    lw_a = pz_chan_create(sizeof(uint64_t), 1);
    lw_b = pz_chan_create(sizeof(uint64_t), 1);
    CHECK(lw_a && lw_b);
    /* Ping-pong. */
    pthread_t th;
    pz_task_t *t = NULL;
    if (threads)
        CHECK_EQ(pthread_create(&th, NULL, lw_echo, NULL), 0);
    else
        t = pz_spawn(lw_echo, NULL);
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        CHECK_EQ(pz_chan_send_until(lw_a, &i, pz_now() + 2000 * MS), 0);
        lw_spin(&rng);
        CHECK_EQ(pz_chan_recv_until(lw_b, &v, pz_now() + 2000 * MS), 0);
        CHECK_EQ(v, i);
    }
    if (threads)
        CHECK_EQ(pthread_join(th, NULL), 0);
    else
        CHECK_EQ(pz_join(t, NULL), 0);
    /* A full channel. */
    if (threads)
        CHECK_EQ(pthread_create(&th, NULL, lw_drain, (void *)(intptr_t)12), 0);
    else
        t = pz_spawn(lw_drain, (void *)(intptr_t)12);
    for (uint64_t i = 0; i < (uint64_t)SCALED(20000); i++) {
        CHECK_EQ(pz_chan_send_until(lw_a, &i, pz_now() + 2000 * MS), 0);
        if (i % 3 == 0)
            lw_spin(&rng);
    }
    if (threads)
        CHECK_EQ(pthread_join(th, NULL), 0);
    else
        CHECK_EQ(pz_join(t, NULL), 0);
    pz_chan_destroy(lw_a);
    pz_chan_destroy(lw_b);
    return NULL;
}

static void test_chan_no_lost_wakeup(void **state)
{
    (void)state;
    run_in_runtime(2, lost_wakeup_main, NULL);
    run_in_runtime(2, lost_wakeup_main, (void *)1); /* the other side a thread */
}

/* ---- both queues at once ----
 * A channel of capacity 1 holds one item and three senders wait on it;
 * then four receivers start together and each takes one item.  There is an
 * item for every one of them, but while a receiver pops and serves the
 * queued senders, another can find the ring empty and queue: the waiters
 * of both sides are queued at once, and serving one side must look at the
 * other again.  A receiver left waiting beside an item shows as a
 * timeout.  Plain threads, so that preemption opens the windows. */
#define BQ_SENDERS 3
static pz_chan_t *bq_ch;
static _Atomic int bq_go;

static void *bq_sender(void *arg)
{
    (void)arg;
    long v = 2;
    CHECK_EQ(pz_chan_send_until(bq_ch, &v, pz_now() + 2000 * MS), 0);
    return NULL;
}

static void *bq_receiver(void *arg)
{
    (void)arg;
    long v;
    while (!atomic_load(&bq_go))
        ;
    CHECK_EQ(pz_chan_recv_until(bq_ch, &v, pz_now() + 2000 * MS), 0);
    return NULL;
}

static void *both_queues_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < SCALED(600); round++) {
        bq_ch = pz_chan_create(sizeof(long), 1);
        CHECK(bq_ch != NULL);
        long x = 1;
        CHECK_EQ(pz_chan_send(bq_ch, &x), 0);
        atomic_store(&bq_go, 0);
        pthread_t s[BQ_SENDERS], r[BQ_SENDERS + 1];
        for (int i = 0; i < BQ_SENDERS; i++)
            CHECK_EQ(pthread_create(&s[i], NULL, bq_sender, NULL), 0);
        pz_sleep(300 * US); /* the senders queue */
        for (int i = 0; i <= BQ_SENDERS; i++)
            CHECK_EQ(pthread_create(&r[i], NULL, bq_receiver, NULL), 0);
        atomic_store(&bq_go, 1);
        for (int i = 0; i <= BQ_SENDERS; i++)
            CHECK_EQ(pthread_join(r[i], NULL), 0);
        for (int i = 0; i < BQ_SENDERS; i++)
            CHECK_EQ(pthread_join(s[i], NULL), 0);
        CHECK_EQ(pz_chan_len(bq_ch), 0);
        pz_chan_destroy(bq_ch);
    }
    return NULL;
}

static void test_chan_both_queues(void **state)
{
    (void)state;
    run_in_runtime(2, both_queues_main, NULL);
}

/* ---- close against running senders and receivers ----
 * Senders and receivers (tasks and threads) run flat out on a small
 * buffered channel when it is closed.  Every send that returned 0 must be
 * received exactly once: a send completes before the close or fails, and
 * receivers drain the buffer before they see -EPIPE. */
static pz_chan_t *cr_ch;
static _Atomic long cr_sent, cr_recv;

static void *cr_sender(void *arg)
{
    (void)arg;
    long n = 0, v = 1;
    int r;
    while ((r = pz_chan_send(cr_ch, &v)) == 0)
        n++;
    CHECK_EQ(r, -EPIPE);
    atomic_fetch_add(&cr_sent, n);
    return NULL;
}

static void *cr_receiver(void *arg)
{
    (void)arg;
    long n = 0, v;
    int r;
    while ((r = pz_chan_recv(cr_ch, &v)) == 0) {
        CHECK_EQ(v, 1);
        n++;
    }
    CHECK_EQ(r, -EPIPE);
    atomic_fetch_add(&cr_recv, n);
    return NULL;
}

static void *close_race_main(void *arg)
{
    (void)arg;
    uint64_t rng = 5;
    for (int round = 0; round < SCALED(40); round++) {
        atomic_store(&cr_sent, 0);
        atomic_store(&cr_recv, 0);
        cr_ch = pz_chan_create(sizeof(long), 1 + (size_t)(round % 3));
        CHECK(cr_ch != NULL);
        pthread_t th[2];
        CHECK_EQ(pthread_create(&th[0], NULL, cr_sender, NULL), 0);
        CHECK_EQ(pthread_create(&th[1], NULL, cr_receiver, NULL), 0);
        pz_task_t **s = spawn_n(4, cr_sender, NULL);
        pz_task_t **r = spawn_n(3, cr_receiver, NULL);
        pz_sleep((int64_t)(test_rand(&rng) % 300) * US);
        pz_chan_close(cr_ch);
        join_n(s, 4);
        join_n(r, 3);
        CHECK_EQ(pthread_join(th[0], NULL), 0);
        CHECK_EQ(pthread_join(th[1], NULL), 0);
        CHECK_EQ(atomic_load(&cr_sent), atomic_load(&cr_recv));
        CHECK_EQ(pz_chan_len(cr_ch), 0);
        pz_chan_destroy(cr_ch);
    }
    return NULL;
}

static void test_chan_close_race(void **state)
{
    (void)state;
    run_in_runtime(2, close_race_main, NULL);
}

/* Close wakes every waiter: 100 receivers and 100 senders. */
static pz_chan_t cw_rx, cw_tx;

static void *cw_recv(void *arg)
{
    (void)arg;
    long v;
    CHECK_EQ(pz_chan_recv(&cw_rx, &v), -EPIPE);
    return NULL;
}

static void *cw_send(void *arg)
{
    (void)arg;
    long v = 1;
    CHECK_EQ(pz_chan_send(&cw_tx, &v), -EPIPE);
    return NULL;
}

/* A buffered channel (capacity 1) is filled first, so its senders wait;
 * its one item is still received after the close. */
static void *close_wakes_main(void *arg)
{
    size_t cap = (size_t)(intptr_t)arg;
    uint64_t rx_buf[2], tx_buf[2];
    long v = 9;
    CHECK_EQ(pz_chan_init(&cw_rx, sizeof(long), cap, rx_buf, sizeof rx_buf), 0);
    CHECK_EQ(pz_chan_init(&cw_tx, sizeof(long), cap, tx_buf, sizeof tx_buf), 0);
    if (cap)
        CHECK_EQ(pz_chan_send(&cw_tx, &v), 0);
    pz_task_t **r = spawn_n(100, cw_recv, NULL);
    pz_task_t **s = spawn_n(100, cw_send, NULL);
    for (int i = 0; i < 100; i++) {
        wait_parked(r[i]);
        wait_parked(s[i]);
    }
    pz_chan_close(&cw_rx);
    pz_chan_close(&cw_tx);
    join_n(r, 100);
    join_n(s, 100);
    if (cap) {
        v = 0;
        CHECK_EQ(pz_chan_recv(&cw_tx, &v), 0);
        CHECK_EQ(v, 9);
    }
    CHECK_EQ(pz_chan_recv(&cw_tx, &v), -EPIPE);
    return NULL;
}

static void test_chan_close_wakes_all(void **state)
{
    (void)state;
    run_in_runtime(2, close_wakes_main, (void *)(intptr_t)0);
    run_in_runtime(2, close_wakes_main, (void *)(intptr_t)1);
}

/* Tasks and plain threads on one channel. */
static void *thread_send(void *arg)
{
    (void)arg;
    for (uint64_t i = 0; i < (uint64_t)mc_per; i++) {
        uint64_t v = i;
        CHECK_EQ(pz_chan_send(mc, &v), 0);
    }
    return NULL;
}

static void *mixed_chan_main(void *arg)
{
    (void)arg;
    mc_per = SCALED(20000);
    mc = pz_chan_create(sizeof(uint64_t), 4);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, thread_send, NULL), 0);
    uint64_t sum = 0, v;
    for (long i = 0; i < 2 * mc_per; i++) {
        CHECK_EQ(pz_chan_recv(mc, &v), 0);
        sum += v;
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    CHECK_EQ(sum, (uint64_t)mc_per * (uint64_t)(mc_per - 1));
    pz_chan_destroy(mc);
    return NULL;
}

static void test_chan_threads_and_tasks(void **state)
{
    (void)state;
    run_in_runtime(2, mixed_chan_main, NULL);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chan_mpmc_exactly_once),
        cmocka_unit_test(test_chan_cancel_storm),
        cmocka_unit_test(test_chan_no_lost_wakeup),
        cmocka_unit_test(test_chan_both_queues),
        cmocka_unit_test(test_chan_close_race),
        cmocka_unit_test(test_chan_close_wakes_all),
        cmocka_unit_test(test_chan_threads_and_tasks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
