/*
 * pz_chan.  Layout in include/plaza/async.h.
 *
 * Everything in the channel (ring, closed flag, both waiter queues) is
 * guarded by its spin lock, held for a copy and a few pointer moves, never
 * across a wait.  Invariants while the lock is free:
 *   - receivers wait only while the buffer is empty (len == 0);
 *   - senders wait only while the buffer is full (len == capacity; always
 *     so for a rendezvous channel, capacity 0);
 *   - nobody waits on a closed channel.
 *
 * A waiter is a pz__chan_waiter on its own stack, linked in the channel's
 * queue.  It does not go through the parking lot: the channel lock already
 * orders everything, so a task waiter parks with the runtime's task park
 * directly (its park callback releases the channel lock once the task is
 * off its stack and marked PARKED), and a thread waiter sleeps on a futex
 * in its node.  Whoever completes a waiter (a matching sender or receiver,
 * or close) does so under the channel lock: it unlinks the node, copies
 * the item, stores the result, and claims the task's park (or, for a
 * thread, clears the futex word and wakes it) before releasing the lock; a
 * claimed task is made runnable after the lock is released, and the node
 * is not touched after that.  So a node is only ever completed while its
 * waiter is still inside this file.  (Through the lot, each wait and wake
 * also took a bucket lock and read the clock: a task ping-pong cost about
 * 230 ns a round trip that way.)
 *
 * Cancel-safety: a waiter whose park ended by deadline or cancel takes the
 * channel lock and looks at its node.  Still queued: it unlinks itself and
 * fails, having sent or received nothing.  Already completed (its item was
 * taken, or an item was copied into its destination, at that instant): it
 * keeps the outcome and returns it (0), so no item is lost or duplicated.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/internal.h"

#define PENDING 1 /* a node's result while it is queued */

struct pz__chan_waiter {
    pz__chan_waiter *next, *prev;
    void *item;     /* a receiver's destination or a sender's source */
    int result;     /* PENDING, then 0 or -EPIPE; under the channel lock */
    pz_task_t *task;          /* the waiting task, NULL for a thread */
    uint64_t gen;             /* the task's park generation */
    _Atomic uint32_t futex;   /* a thread waiter sleeps while it is 1 */
};

static void chan_lock(pz_chan_t *ch)
{
    unsigned spins = 0, backoff = 1;
    for (;;) {
        if (!atomic_exchange_explicit(&ch->lock, 1, memory_order_acquire))
            return;
        do {
            if (++spins < 100) {
                for (unsigned i = 0; i < backoff; i++)
                    pz__arch_cpu_relax();
                if (backoff < 64)
                    backoff <<= 1;
            } else {
                sched_yield();
            }
        } while (atomic_load_explicit(&ch->lock, memory_order_relaxed));
    }
}

static void chan_unlock(pz_chan_t *ch)
{
    atomic_store_explicit(&ch->lock, 0, memory_order_release);
}

/* A task waiter's park callback: runs once the task is off its stack. */
static bool unlock_after_park(void *ctx)
{
    chan_unlock(ctx);
    return true;
}

int pz_chan_init(pz_chan_t *ch, size_t item_size, size_t capacity, void *buffer)
{
    if (!ch || item_size == 0 || (capacity && !buffer) || (capacity && item_size > SIZE_MAX / capacity))
        return -EINVAL;
    memset(ch, 0, sizeof *ch);
    atomic_init(&ch->lock, 0);
    ch->item_size = item_size;
    ch->capacity = capacity;
    ch->buffer = buffer;
    return 0;
}

pz_chan_t *pz_chan_create(size_t item_size, size_t capacity)
{
    if (item_size == 0 || (capacity && item_size > SIZE_MAX / capacity))
        return NULL;
    pz_chan_t *ch = malloc(sizeof *ch);
    void *buf = capacity ? malloc(item_size * capacity) : NULL;
    if (!ch || (capacity && !buf)) {
        free(ch);
        free(buf);
        return NULL;
    }
    pz_chan_init(ch, item_size, capacity, buf);
    ch->owns_buffer = true;
    return ch;
}

void pz_chan_destroy(pz_chan_t *ch)
{
    if (!ch)
        return;
    if (ch->owns_buffer)
        free(ch->buffer);
    free(ch);
}

size_t pz_chan_len(pz_chan_t *ch)
{
    chan_lock(ch);
    size_t n = ch->len;
    chan_unlock(ch);
    return n;
}

static void push_back(pz__chan_waiter **head, pz__chan_waiter **tail, pz__chan_waiter *w)
{
    w->next = NULL;
    w->prev = *tail;
    if (*tail)
        (*tail)->next = w;
    else
        *head = w;
    *tail = w;
}

static void unlink_node(pz__chan_waiter **head, pz__chan_waiter **tail, pz__chan_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        *head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        *tail = w->prev;
    w->next = w->prev = NULL;
}

/* Under the lock: finishes w (already unlinked) with result.  A thread
 * waiter is woken now; a task waiter's park is claimed and the task is
 * returned, to be made runnable with ready() once the lock is released (NULL
 * if there is nothing to do: a thread, or a task whose deadline or cancel
 * won the claim and which will find its result under the lock).  The node
 * must not be touched afterwards. */
static pz_task_t *complete(pz__chan_waiter *w, int result)
{
    w->result = result;
    pz_task_t *t = w->task;
    if (!t) {
        /* The thread may return as soon as it sees 0; the wake may then
         * hit a reused address, which futex users tolerate. */
        atomic_store_explicit(&w->futex, 0, memory_order_release);
        pz__futex_wake(&w->futex, 1);
        return NULL;
    }
    return pz__task_claim(t, w->gen, PZ__WAKE_UNPARK) == PZ__CLAIM_WON_READY ? t : NULL;
}

static void ready(pz_task_t *t)
{
    if (t)
        pz__task_ready(t, true);
}

static inline unsigned char *slot(pz_chan_t *ch, size_t i)
{
    size_t k = ch->head + i;
    if (k >= ch->capacity)
        k -= ch->capacity;
    return ch->buffer + k * ch->item_size;
}

/* Parks w (already queued) with the lock held; returns the outcome with the
 * lock released. */
static int wait_node(pz_chan_t *ch, pz__chan_waiter *w, pz__chan_waiter **head, pz__chan_waiter **tail,
                     int64_t deadline)
{
    int r;
    pz_task_t *self = pz__current_task();
    if (self) {
        w->task = self;
        w->gen = pz__park_prepare(false);
        r = pz__park_commit(unlock_after_park, ch, deadline);
        if (r == 0) {
            /* Completed under the lock; the claim (acq_rel on the park
             * word) orders its writes (result, copied item) before our
             * return. */
            return w->result;
        }
    } else {
        w->task = NULL;
        atomic_store_explicit(&w->futex, 1, memory_order_relaxed);
        chan_unlock(ch);
        int64_t until = deadline == PZ_FOREVER ? -1 : deadline;
        r = 0;
        while (atomic_load_explicit(&w->futex, memory_order_acquire) != 0) {
            int fr = pz__futex_wait(&w->futex, 1, until);
            if (until >= 0 && (fr == -ETIMEDOUT || pz__clock_now() >= deadline)) {
                r = -ETIMEDOUT;
                break;
            }
        }
        if (r == 0)
            return w->result;
    }
    chan_lock(ch);
    if (w->result == PENDING) {
        unlink_node(head, tail, w);
        chan_unlock(ch);
        return r;
    }
    r = w->result; /* completed at the same instant: keep it */
    chan_unlock(ch);
    return r;
}

static int send_impl(pz_chan_t *ch, const void *item, int64_t deadline, bool try_only)
{
    chan_lock(ch);
    if (ch->closed) {
        chan_unlock(ch);
        return -EPIPE;
    }
    pz__chan_waiter *rx = ch->receivers;
    if (rx) {
        unlink_node(&ch->receivers, &ch->receivers_tail, rx);
        memcpy(rx->item, item, ch->item_size);
        pz_task_t *t = complete(rx, 0);
        chan_unlock(ch);
        ready(t);
        return 0;
    }
    if (ch->len < ch->capacity) {
        memcpy(slot(ch, ch->len), item, ch->item_size);
        ch->len++;
        chan_unlock(ch);
        return 0;
    }
    if (try_only) {
        chan_unlock(ch);
        return -EAGAIN;
    }
    pz__chan_waiter w = {.item = (void *)(uintptr_t)item, .result = PENDING};
    push_back(&ch->senders, &ch->senders_tail, &w);
    return wait_node(ch, &w, &ch->senders, &ch->senders_tail, deadline);
}

static int recv_impl(pz_chan_t *ch, void *item, int64_t deadline, bool try_only)
{
    chan_lock(ch);
    if (ch->len) {
        memcpy(item, slot(ch, 0), ch->item_size);
        ch->head = ch->head + 1 == ch->capacity ? 0 : ch->head + 1;
        ch->len--;
        pz__chan_waiter *tx = ch->senders;
        pz_task_t *t = NULL;
        if (tx) {
            /* The buffer was full: the first waiting sender's item takes
             * the freed slot, keeping the order of sends. */
            unlink_node(&ch->senders, &ch->senders_tail, tx);
            memcpy(slot(ch, ch->len), tx->item, ch->item_size);
            ch->len++;
            t = complete(tx, 0);
        }
        chan_unlock(ch);
        ready(t);
        return 0;
    }
    pz__chan_waiter *tx = ch->senders;
    if (tx) {
        /* Rendezvous: take the item straight from the sender. */
        unlink_node(&ch->senders, &ch->senders_tail, tx);
        memcpy(item, tx->item, ch->item_size);
        pz_task_t *t = complete(tx, 0);
        chan_unlock(ch);
        ready(t);
        return 0;
    }
    if (ch->closed) {
        chan_unlock(ch);
        return -EPIPE;
    }
    if (try_only) {
        chan_unlock(ch);
        return -EAGAIN;
    }
    pz__chan_waiter w = {.item = item, .result = PENDING};
    push_back(&ch->receivers, &ch->receivers_tail, &w);
    return wait_node(ch, &w, &ch->receivers, &ch->receivers_tail, deadline);
}

int pz_chan_send_until(pz_chan_t *ch, const void *item, int64_t deadline)
{
    return send_impl(ch, item, deadline, false);
}

int pz_chan_send(pz_chan_t *ch, const void *item)
{
    return send_impl(ch, item, PZ_FOREVER, false);
}

int pz_chan_try_send(pz_chan_t *ch, const void *item)
{
    return send_impl(ch, item, PZ_FOREVER, true);
}

int pz_chan_recv_until(pz_chan_t *ch, void *item, int64_t deadline)
{
    return recv_impl(ch, item, deadline, false);
}

int pz_chan_recv(pz_chan_t *ch, void *item)
{
    return recv_impl(ch, item, PZ_FOREVER, false);
}

int pz_chan_try_recv(pz_chan_t *ch, void *item)
{
    return recv_impl(ch, item, PZ_FOREVER, true);
}

void pz_chan_close(pz_chan_t *ch)
{
    /* Claimed tasks are collected through their nodes' next links (a
     * claimed task does not run, so its node stays valid until it is made
     * runnable) and made runnable once the lock is released. */
    pz__chan_waiter *claimed = NULL;
    chan_lock(ch);
    ch->closed = true;
    pz__chan_waiter **queues[2][2] = {{&ch->senders, &ch->senders_tail}, {&ch->receivers, &ch->receivers_tail}};
    for (int q = 0; q < 2; q++) {
        while (*queues[q][0]) {
            pz__chan_waiter *w = *queues[q][0];
            unlink_node(queues[q][0], queues[q][1], w);
            if (complete(w, -EPIPE)) {
                w->next = claimed;
                claimed = w;
            }
        }
    }
    chan_unlock(ch);
    while (claimed) {
        pz__chan_waiter *next = claimed->next;
        ready(claimed->task);
        claimed = next;
    }
}
