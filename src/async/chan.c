/*
 * pz_chan.  Layout in include/plaza/async.h.
 *
 * The ring (buffered channels).  A position is lap | index: index counts
 * cells from 0 to capacity - 1, and lap is a multiple of one_lap (the
 * smallest power of two above capacity), so moving past the last cell
 * adds one_lap and clears the index.  tail is the position the next send
 * fills, head the one the next receive empties.  Each cell's stamp says
 * whose turn it is:
 *   stamp == p           empty, for the send at position p;
 *   stamp == p + 1       full, for the receive at position p;
 * A send at tail t CASes tail to the next position, copies the item in and
 * stores stamp t + 1 (release); a receive at head h CASes head, copies the
 * item out and stores stamp h + one_lap, the position that fills the cell
 * one lap later.  A CAS claims a cell, the stamp publishes it, so a sender
 * and a receiver never touch one cell at the same time.  Full: the cell at
 * tail still holds the previous lap's item and head + one_lap == tail.
 * Empty: the cell at head is not filled yet and tail == head (if tail has
 * moved, a sender has claimed the cell and is copying: wait for it).
 * Close sets PZ__CHAN_CLOSED in tail, which fails every later CAS of a
 * send: a send either claimed its cell before the close or fails.
 *
 * Waiting.  A send that finds the ring full, or a receive that finds it
 * empty, takes the channel's spin lock, sets its side's bit in the waiting
 * word by a seq_cst read-modify-write, and tries once more; only then does
 * it queue a node on its stack and park.  A send that filled a cell loads
 * the waiting word after its seq_cst CAS of tail; a receiver's last try
 * loads tail with a seq_cst load.  That is a Dekker pair: either the
 * sender sees the receivers' bit and serves the queues, or the receiver's
 * try sees tail moved and does not park.  The same holds with the sides
 * swapped (head, the senders' bit).  Serving is done under the lock: take
 * an item out of the ring for the first queued receiver, put the first
 * queued sender's item in, and again, until neither moves (a move on one
 * side changes the ring for the other, and is followed by no load of the
 * waiting word); each served node is unlinked, its result stored and its
 * task's park claimed.  The bits are
 * set and cleared under the lock only, and cleared when a queue empties;
 * a stale bit costs a look under the lock, never a lost wake-up.
 *
 * A send or receive whose unlocked CAS of tail or head loses to another
 * worker backs off in a long round before it looks again
 * (LOST_CAS_ROUND): a matter of timing, not of the protocol.
 *
 * Everything else (both waiter queues, the whole of a rendezvous channel)
 * is guarded by the lock, held for a copy and a few pointer moves, never
 * across a wait.  A waiter does not go through the parking lot: the lock
 * already orders everything, so a task waiter parks with the runtime's
 * task park directly (its park callback releases the channel lock once the
 * task is off its stack and marked PARKED), and a thread waiter sleeps on
 * a futex in its node.  (Parking in the lot would add a bucket lock and a
 * hash look-up under the channel lock for every wait, and the lot's
 * callbacks may not take the channel lock, which the hand-off needs; the
 * two kinds of sleep, the task claim and the futex, are the runtime's
 * own, shared with the lot.)  Whoever completes a waiter (a matching sender or
 * receiver, or close) does so under the channel lock: it unlinks the node,
 * copies the item, stores the result, and claims the task's park (or, for
 * a thread, clears the futex word and wakes it) before releasing the lock;
 * a claimed task is made runnable after the lock is released, and the
 * node is not touched after that.  So a node is only ever completed while
 * its waiter is still inside this file.
 *
 * Cancel-safety: a waiter whose park ended by deadline or cancel takes the
 * channel lock and looks at its node.  Still queued: it unlinks itself and
 * fails, having sent or received nothing.  Already completed (its item was
 * put in the ring or handed over, or an item was copied into its
 * destination, at that instant): it keeps the outcome and returns it (0),
 * so no item is lost or duplicated.
 */
#define _GNU_SOURCE
#include "plaza/async.h"
#include "plaza/park.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/internal.h"
#include "chan_internal.h"
#include "deadline.h"
#include "observe.h"
#include "spin.h"

#define CLOSED PZ__CHAN_CLOSED
#define SENDERS_WAIT PZ__CHAN_SENDERS_WAIT
#define RECEIVERS_WAIT PZ__CHAN_RECEIVERS_WAIT
#define STAMP_SIZE 8


static void chan_lock(pz_chan_t *ch)
{
    unsigned round = 0;
    for (;;) {
        if (!atomic_exchange_explicit(&ch->lock, 1, memory_order_acquire))
            return;
        do
            pz__backoff(&round);
        while (atomic_load_explicit(&ch->lock, memory_order_relaxed));
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

/* Items are copied with their size known at run time; the common small
 * sizes get a fixed-size copy instead of a call. */
static inline void copy_item(void *dst, const void *src, size_t n)
{
    switch (n) {
    case 4:
        memcpy(dst, src, 4);
        break;
    case 8:
        memcpy(dst, src, 8);
        break;
    case 16:
        memcpy(dst, src, 16);
        break;
    default:
        memcpy(dst, src, n);
    }
}

static inline size_t cell_size_for(size_t item_size)
{
    return STAMP_SIZE + ((item_size + 7) & ~(size_t)7);
}

int pz_chan_init(pz_chan_t *ch, size_t item_size, size_t capacity, void *buffer, size_t buffer_size)
{
    if (!ch || item_size == 0 || item_size > SIZE_MAX / 2)
        return -EINVAL;
    size_t cell = cell_size_for(item_size);
    if (capacity) {
        if (!buffer || ((uintptr_t)buffer & 7) || capacity > (1ull << 40) || capacity > SIZE_MAX / cell ||
            buffer_size < capacity * cell)
            return -EINVAL;
    }
    memset(ch, 0, sizeof *ch);
    ch->item_size = item_size;
    ch->cell_size = cell;
    ch->capacity = capacity;
    ch->cells = buffer;
    ch->one_lap = 1;
    while (ch->one_lap <= capacity)
        ch->one_lap <<= 1;
    for (size_t i = 0; i < capacity; i++)
        atomic_init((_Atomic uint64_t *)(ch->cells + i * cell), (uint64_t)i);
    atomic_init(&ch->tail, 0);
    atomic_init(&ch->head, 0);
    atomic_init(&ch->waiting, 0);
    atomic_init(&ch->lock, 0);
    return 0;
}

pz_chan_t *pz_chan_create(size_t item_size, size_t capacity)
{
    if (item_size == 0 || item_size > SIZE_MAX / 2 || (capacity && capacity > SIZE_MAX / cell_size_for(item_size)))
        return NULL;
    size_t bytes = capacity * cell_size_for(item_size);
    pz_chan_t *ch = malloc(sizeof *ch);
    void *buf = capacity ? malloc(bytes) : NULL;
    if (!ch || (capacity && !buf) || pz_chan_init(ch, item_size, capacity, buf, bytes) != 0) {
        free(ch);
        free(buf);
        return NULL;
    }
    ch->owns_buffer = true;
    return ch;
}

void pz_chan_destroy(pz_chan_t *ch)
{
    if (!ch)
        return;
    if (ch->owns_buffer)
        free(ch->cells);
    free(ch);
}

static inline _Atomic uint64_t *cell_stamp(pz_chan_t *ch, uint64_t pos)
{
    return (_Atomic uint64_t *)(ch->cells + (pos & (ch->one_lap - 1)) * ch->cell_size);
}

static inline unsigned char *cell_item(pz_chan_t *ch, uint64_t pos)
{
    return ch->cells + (pos & (ch->one_lap - 1)) * ch->cell_size + STAMP_SIZE;
}

/* The position after pos. */
static inline uint64_t next_pos(pz_chan_t *ch, uint64_t pos)
{
    uint64_t index = pos & (ch->one_lap - 1);
    return index + 1 < ch->capacity ? pos + 1 : (pos & ~(ch->one_lap - 1)) + ch->one_lap;
}

/* The back-off of a lock-free send (receive) whose CAS of tail (head) lost
 * to another one: one round of src/async/spin.h, its longest (1024
 * cpu_relax, about 14 us on x86), each time.  The CAS is strong, so a loss means
 * that a task on another worker moved the same end of the ring between our
 * load and our CAS.  With tasks of both sides on both workers, retrying at
 * once had every send and receive take the end's line, its cell's line and
 * the other end's line from the other core; waiting out a long round
 * leaves the other worker to run the ring on lines it keeps, as one worker
 * alone does.  `chan_mpmc producers=4 consumers=4 workers=2 cap=1024`
 * (alternating runs under chrt -f 1): 31-42 ns/item before, 19.5 starting
 * at 256 cpu_relax, 16.4 starting at 1024; the 4x1, 1x1, cap=16 and
 * ping-pong rows unchanged.  Only the first, unlocked try backs off: the
 * exact tries run under the channel lock, where a wait would hold up every
 * waiter and server.  Timing only: every CAS may do what it did before. */
#define LOST_CAS_ROUND PZ__ASYNC_SPIN_MAX_SHIFT

/* One send into the ring: 0, -EAGAIN (full) or -EPIPE (closed).  Full is
 * decided by a seq_cst load of head when exact (the last try before
 * parking, after the seq_cst read-modify-write of the waiting word: a
 * Dekker pair with a receive's CAS of head and load of the waiting word),
 * by a relaxed one otherwise: a send that races with a receive may then
 * fail where it could have succeeded, as if it had come a moment
 * earlier. */
static int ring_push(pz_chan_t *ch, const void *item, bool exact)
{
    unsigned spins = 0;
    uint64_t tail = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    for (;;) {
        if (tail & CLOSED)
            return -EPIPE;
        _Atomic uint64_t *stamp = cell_stamp(ch, tail);
        uint64_t st = atomic_load_explicit(stamp, memory_order_acquire);
        if (st == tail) {
            if (atomic_compare_exchange_strong_explicit(&ch->tail, &tail, next_pos(ch, tail), memory_order_seq_cst,
                                                        memory_order_relaxed)) {
                copy_item(cell_item(ch, tail), item, ch->item_size);
                atomic_store_explicit(stamp, tail + 1, memory_order_release);
                return 0;
            }
            if (!exact) {
                pz__async_backoff(LOST_CAS_ROUND);
                tail = atomic_load_explicit(&ch->tail, memory_order_relaxed);
            }
            continue; /* tail holds the newest value */
        }
        if (st + ch->one_lap == tail + 1) {
            /* The cell holds the previous lap's item: full, unless a
             * receiver has claimed it and is copying it out. */
            uint64_t head = atomic_load_explicit(&ch->head, exact ? memory_order_seq_cst : memory_order_relaxed);
            if (head + ch->one_lap == tail)
                return -EAGAIN;
        }
        /* A cell another thread has claimed and is copying (or a CAS that
         * lost to it): nanoseconds, unless that thread was preempted
         * between its CAS and its stamp store. */
        pz__backoff(&spins);
        tail = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    }
}

/* One receive from the ring: 0, -EAGAIN (empty) or -EPIPE (empty and
 * closed); exact as for ring_push. */
static int ring_pop(pz_chan_t *ch, void *item, bool exact)
{
    unsigned spins = 0;
    uint64_t head = atomic_load_explicit(&ch->head, memory_order_relaxed);
    for (;;) {
        _Atomic uint64_t *stamp = cell_stamp(ch, head);
        uint64_t st = atomic_load_explicit(stamp, memory_order_acquire);
        if (st == head + 1) {
            if (atomic_compare_exchange_strong_explicit(&ch->head, &head, next_pos(ch, head), memory_order_seq_cst,
                                                        memory_order_relaxed)) {
                copy_item(item, cell_item(ch, head), ch->item_size);
                atomic_store_explicit(stamp, head + ch->one_lap, memory_order_release);
                return 0;
            }
            if (!exact) {
                pz__async_backoff(LOST_CAS_ROUND);
                head = atomic_load_explicit(&ch->head, memory_order_relaxed);
            }
            continue;
        }
        if (st == head) {
            /* Not filled in this lap: empty, unless a sender has claimed
             * the cell and is copying its item in. */
            uint64_t tail = atomic_load_explicit(&ch->tail, exact ? memory_order_seq_cst : memory_order_relaxed);
            if ((tail & ~CLOSED) == head)
                return (tail & CLOSED) ? -EPIPE : -EAGAIN;
        }
        pz__backoff(&spins); /* as in ring_push */
        head = atomic_load_explicit(&ch->head, memory_order_relaxed);
    }
}

size_t pz_chan_len(pz_chan_t *ch)
{
    if (!ch)
        return 0;
    if (!ch->capacity)
        return 0;
    for (;;) {
        uint64_t tail = atomic_load_explicit(&ch->tail, memory_order_seq_cst) & ~CLOSED;
        uint64_t head = atomic_load_explicit(&ch->head, memory_order_seq_cst);
        if ((atomic_load_explicit(&ch->tail, memory_order_seq_cst) & ~CLOSED) != tail)
            continue;
        uint64_t hi = head & (ch->one_lap - 1), ti = tail & (ch->one_lap - 1);
        if (hi < ti)
            return ti - hi;
        if (hi > ti)
            return ch->capacity - hi + ti;
        return tail == head ? 0 : ch->capacity;
    }
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

/* Under the lock: unlinks the first waiter of a queue and completes it
 * with result; a claimed task's node is linked into *claimed (a claimed
 * task does not run, so its node stays valid until ready_all). */
static void finish_first(pz__chan_waiter **head, pz__chan_waiter **tail, int result, pz__chan_waiter **claimed)
{
    pz__chan_waiter *w = *head;
    unlink_node(head, tail, w);
    if (complete(w, result)) {
        w->next = *claimed;
        *claimed = w;
    }
}

/* After the lock is released: makes the collected tasks runnable. */
static void ready_all(pz__chan_waiter *claimed)
{
    while (claimed) {
        pz__chan_waiter *next = claimed->next;
        ready(claimed->task);
        claimed = next;
    }
}

/* Under the lock: the first waiter of a queue that may be served.  A
 * select node (chan_internal.h) is served only if this call wins its
 * select's fired word, before anything moves; one whose select has fired
 * on another branch, timed out or been cancelled is unlinked (LOST) and
 * the next one is looked at.  A node returned is served by the caller
 * (completed, with an item or a result) before the lock is released. */
static pz__chan_waiter *live_first(pz__chan_waiter **head, pz__chan_waiter **tail)
{
    for (;;) {
        pz__chan_waiter *w = *head;
        if (!w || !w->fired)
            return w;
        int none = -1;
        if (atomic_compare_exchange_strong_explicit(w->fired, &none, w->branch, memory_order_acq_rel,
                                                    memory_order_acquire))
            return w;
        unlink_node(head, tail, w);
        w->result = PZ__CHAN_LOST;
    }
}

/* Under the lock: clears a side's waiting bit if its queue is empty.  A
 * bit is set before its side queues anyone and cleared only here, so it
 * is set whenever someone waits.  A bit left set with nobody queued costs
 * the next operation of the other side one look under the lock, which
 * clears it; so serving the last waiter leaves the bit alone (a
 * ping-pong's receiver would set it again at once). */
static void clear_bit_if_empty(pz_chan_t *ch, pz__chan_waiter *queue, uint32_t bit)
{
    if (!queue && (atomic_load_explicit(&ch->waiting, memory_order_relaxed) & bit))
        atomic_fetch_and_explicit(&ch->waiting, ~bit, memory_order_relaxed);
}

/* Parks w (already queued) with the lock held; returns the outcome with the
 * lock released. */
static int wait_node(pz_chan_t *ch, pz__chan_waiter *w, pz__chan_waiter **head, pz__chan_waiter **tail, uint32_t bit,
                     int64_t deadline)
{
    int r;
    pz_task_t *self = pz__current_task();
    pz__wait_note(head == &ch->senders ? PZ__WAIT_CHAN_SEND : PZ__WAIT_CHAN_RECV, ch);
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
        int64_t until = deadline == PZ_FOREVER ? -1 : pz__async_deadline(deadline);
        r = 0;
        pz__thread_wait_begin(ch);
        while (atomic_load_explicit(&w->futex, memory_order_acquire) != 0) {
            int fr = pz__futex_wait(&w->futex, 1, until);
            if (until >= 0 && (fr == -ETIMEDOUT || pz__clock_now() >= deadline)) {
                r = -ETIMEDOUT;
                break;
            }
        }
        pz__thread_wait_end();
        if (r == 0)
            return w->result;
    }
    chan_lock(ch);
    if (w->result == PENDING) {
        unlink_node(head, tail, w);
        clear_bit_if_empty(ch, *head, bit);
        chan_unlock(ch);
        return r;
    }
    r = w->result; /* completed at the same instant: keep it */
    chan_unlock(ch);
    return r;
}

/* After an operation changed the ring and saw the other side's bit: under
 * the lock, gives queued receivers items from the ring and puts queued
 * senders' items into it, until neither moves.  Both queues can hold
 * waiters at once (a receiver that found the ring empty a moment before
 * a queued sender's item went in), and serving one side changes the ring
 * for the other, so both are looked at again after every move: a ring
 * change made here is followed by no load of the waiting word, so nobody
 * else would.  A bit is cleared only if its queue was empty on arrival
 * (see clear_bit_if_empty).  Claimed tasks are linked through their nodes
 * (a claimed task does not run, so its node stays valid) and made
 * runnable once the lock is released. */
static void serve(pz_chan_t *ch)
{
    pz__chan_waiter *claimed = NULL;
    chan_lock(ch);
    bool rx_seen = ch->receivers != NULL, tx_seen = ch->senders != NULL;
    for (bool moved = true; moved;) {
        moved = false;
        int r;
        pz__chan_waiter *w;
        /* A select node won by live_first is finished either way: with
         * what moved, or with -EAGAIN (nothing moved; it tries again). */
        if ((w = live_first(&ch->receivers, &ch->receivers_tail)) &&
            ((r = ring_pop(ch, w->item, true)) != -EAGAIN || w->fired)) {
            finish_first(&ch->receivers, &ch->receivers_tail, r, &claimed);
            moved = true;
        }
        if ((w = live_first(&ch->senders, &ch->senders_tail)) &&
            ((r = ring_push(ch, w->item, true)) != -EAGAIN || w->fired)) {
            finish_first(&ch->senders, &ch->senders_tail, r, &claimed);
            moved = true;
        }
    }
    if (!rx_seen)
        clear_bit_if_empty(ch, ch->receivers, RECEIVERS_WAIT);
    if (!tx_seen)
        clear_bit_if_empty(ch, ch->senders, SENDERS_WAIT);
    chan_unlock(ch);
    ready_all(claimed);
}

/* Under the lock: whether the ring is empty, so that a send may hand its
 * item straight to a queued receiver without passing an item already in
 * the ring. */
static bool ring_empty(pz_chan_t *ch)
{
    return (atomic_load_explicit(&ch->tail, memory_order_seq_cst) & ~CLOSED) ==
           atomic_load_explicit(&ch->head, memory_order_relaxed);
}

/* One send or receive through the ring, waiting if it is full or empty:
 * try; if that fails, under the lock set this side's bit (seq_cst, the
 * Dekker half) and try once more; then queue and park.  A transfer that
 * went through serves the other side if its bit is set.  Inlined into
 * both callers, so that each keeps only its own side. */
static inline __attribute__((always_inline)) int ring_transfer(pz_chan_t *ch, void *item, bool send, int64_t deadline,
                                                               bool try_only)
{
    uint32_t mine = send ? SENDERS_WAIT : RECEIVERS_WAIT, theirs = send ? RECEIVERS_WAIT : SENDERS_WAIT;
    pz__chan_waiter **head = send ? &ch->senders : &ch->receivers;
    pz__chan_waiter **tail = send ? &ch->senders_tail : &ch->receivers_tail;
    int r = send ? ring_push(ch, item, false) : ring_pop(ch, item, false);
    if (r == -EAGAIN && !try_only) {
        chan_lock(ch);
        atomic_fetch_or_explicit(&ch->waiting, mine, memory_order_seq_cst);
        r = send ? ring_push(ch, item, true) : ring_pop(ch, item, true);
        if (r == -EAGAIN) {
            pz__chan_waiter w = {.item = item, .result = PENDING};
            push_back(head, tail, &w);
            return wait_node(ch, &w, head, tail, mine, deadline);
        }
        clear_bit_if_empty(ch, *head, mine);
        chan_unlock(ch);
    }
    if (r == 0 && (atomic_load_explicit(&ch->waiting, memory_order_seq_cst) & theirs))
        serve(ch);
    return r;
}

static int ring_send(pz_chan_t *ch, const void *item, int64_t deadline, bool try_only)
{
    if (atomic_load_explicit(&ch->waiting, memory_order_relaxed) & RECEIVERS_WAIT) {
        /* Receivers are waiting: give the item to the first one directly,
         * as a rendezvous does, rather than through the ring. */
        chan_lock(ch);
        pz__chan_waiter *rx = NULL;
        if (ring_empty(ch) && !(atomic_load_explicit(&ch->tail, memory_order_relaxed) & CLOSED))
            rx = live_first(&ch->receivers, &ch->receivers_tail);
        if (!rx) {
            clear_bit_if_empty(ch, ch->receivers, RECEIVERS_WAIT);
        } else {
            unlink_node(&ch->receivers, &ch->receivers_tail, rx);
            copy_item(rx->item, item, ch->item_size);
            pz_task_t *t = complete(rx, 0);
            chan_unlock(ch);
            ready(t);
            return 0;
        }
        chan_unlock(ch);
    }
    return ring_transfer(ch, (void *)(uintptr_t)item, true, deadline, try_only);
}

static int ring_recv(pz_chan_t *ch, void *item, int64_t deadline, bool try_only)
{
    return ring_transfer(ch, item, false, deadline, try_only);
}

/* Rendezvous: everything under the lock; closed is tail's CLOSED bit,
 * written under the lock too. */
static int rendezvous_send(pz_chan_t *ch, const void *item, int64_t deadline, bool try_only)
{
    chan_lock(ch);
    if (atomic_load_explicit(&ch->tail, memory_order_relaxed) & CLOSED) {
        chan_unlock(ch);
        return -EPIPE;
    }
    pz__chan_waiter *rx = live_first(&ch->receivers, &ch->receivers_tail);
    if (rx) {
        unlink_node(&ch->receivers, &ch->receivers_tail, rx);
        copy_item(rx->item, item, ch->item_size);
        pz_task_t *t = complete(rx, 0);
        chan_unlock(ch);
        ready(t);
        return 0;
    }
    if (try_only) {
        chan_unlock(ch);
        return -EAGAIN;
    }
    pz__chan_waiter w = {.item = (void *)(uintptr_t)item, .result = PENDING};
    push_back(&ch->senders, &ch->senders_tail, &w);
    return wait_node(ch, &w, &ch->senders, &ch->senders_tail, 0, deadline);
}

static int rendezvous_recv(pz_chan_t *ch, void *item, int64_t deadline, bool try_only)
{
    chan_lock(ch);
    pz__chan_waiter *tx = live_first(&ch->senders, &ch->senders_tail);
    if (tx) {
        unlink_node(&ch->senders, &ch->senders_tail, tx);
        copy_item(item, tx->item, ch->item_size);
        pz_task_t *t = complete(tx, 0);
        chan_unlock(ch);
        ready(t);
        return 0;
    }
    if (atomic_load_explicit(&ch->tail, memory_order_relaxed) & CLOSED) {
        chan_unlock(ch);
        return -EPIPE;
    }
    if (try_only) {
        chan_unlock(ch);
        return -EAGAIN;
    }
    pz__chan_waiter w = {.item = item, .result = PENDING};
    push_back(&ch->receivers, &ch->receivers_tail, &w);
    return wait_node(ch, &w, &ch->receivers, &ch->receivers_tail, 0, deadline);
}

static int send_impl(pz_chan_t *ch, const void *item, int64_t deadline, bool try_only)
{
    if (!ch || !item || !ch->item_size)
        return -EINVAL; /* no channel, no item, or a channel never initialised */
    return ch->capacity ? ring_send(ch, item, deadline, try_only) : rendezvous_send(ch, item, deadline, try_only);
}

static int recv_impl(pz_chan_t *ch, void *item, int64_t deadline, bool try_only)
{
    if (!ch || !item || !ch->item_size)
        return -EINVAL;
    return ch->capacity ? ring_recv(ch, item, deadline, try_only) : rendezvous_recv(ch, item, deadline, try_only);
}

/* The advisor (src/async/observe.h): while it is on, a send or receive
 * tries once without waiting, and only one that must wait is timed and
 * reported (a channel has no hold; its waits are what the advisor shows).
 * Trying first and then waiting is what the call does anyway. */
static __attribute__((noinline)) int transfer_observed(pz_chan_t *ch, void *item, int64_t deadline, bool send,
                                                       const void *site)
{
    int r = send ? send_impl(ch, item, deadline, true) : recv_impl(ch, item, deadline, true);
    if (r != -EAGAIN)
        return r;
    int64_t t0 = pz_now();
    r = send ? send_impl(ch, item, deadline, false) : recv_impl(ch, item, deadline, false);
    int64_t waited = pz_now() - t0;
    unsigned flags = send ? PZ__LOCK_SEND : 0;
    if (r == 0 || r == -EPIPE)
        pz__async_observe_acquired(ch, PZ__LOCK_CHAN, site, waited, flags);
    else if (r == -ETIMEDOUT || r == -ECANCELED)
        pz__async_observe_gave_up(ch, PZ__LOCK_CHAN, site, waited, flags, r);
    return r;
}

int pz_chan_send_until(pz_chan_t *ch, const void *item, int64_t deadline)
{
    if (PZ__ASYNC_OBSERVED())
        return transfer_observed(ch, (void *)(uintptr_t)item, deadline, true, __builtin_return_address(0));
    return send_impl(ch, item, deadline, false);
}

int pz_chan_send(pz_chan_t *ch, const void *item)
{
    if (PZ__ASYNC_OBSERVED())
        return transfer_observed(ch, (void *)(uintptr_t)item, PZ_FOREVER, true, __builtin_return_address(0));
    return send_impl(ch, item, PZ_FOREVER, false);
}

int pz_chan_try_send(pz_chan_t *ch, const void *item)
{
    return send_impl(ch, item, PZ_FOREVER, true);
}

int pz_chan_recv_until(pz_chan_t *ch, void *item, int64_t deadline)
{
    if (PZ__ASYNC_OBSERVED())
        return transfer_observed(ch, item, deadline, false, __builtin_return_address(0));
    return recv_impl(ch, item, deadline, false);
}

int pz_chan_recv(pz_chan_t *ch, void *item)
{
    if (PZ__ASYNC_OBSERVED())
        return transfer_observed(ch, item, PZ_FOREVER, false, __builtin_return_address(0));
    return recv_impl(ch, item, PZ_FOREVER, false);
}

int pz_chan_try_recv(pz_chan_t *ch, void *item)
{
    return recv_impl(ch, item, PZ_FOREVER, true);
}

void pz_chan_close(pz_chan_t *ch)
{
    if (!ch)
        return;
    /* Waiting senders fail (their items never entered the ring); each
     * waiting receiver gets an item still in the ring, or -EPIPE. */
    pz__chan_waiter *claimed = NULL;
    chan_lock(ch);
    atomic_fetch_or_explicit(&ch->tail, CLOSED, memory_order_seq_cst);
    while (live_first(&ch->senders, &ch->senders_tail))
        finish_first(&ch->senders, &ch->senders_tail, -EPIPE, &claimed);
    while (live_first(&ch->receivers, &ch->receivers_tail)) {
        int r = ch->capacity && ring_pop(ch, ch->receivers->item, true) == 0 ? 0 : -EPIPE;
        finish_first(&ch->receivers, &ch->receivers_tail, r, &claimed);
    }
    atomic_store_explicit(&ch->waiting, 0, memory_order_relaxed);
    chan_unlock(ch);
    ready_all(claimed);
}

/* ---- select (src/io/select.c; chan_internal.h) ---- */

void pz__chan_sel_enqueue(pz_chan_t *ch, pz__chan_waiter *w, bool send)
{
    w->result = PENDING;
    chan_lock(ch);
    if (ch->capacity)
        atomic_fetch_or_explicit(&ch->waiting, send ? SENDERS_WAIT : RECEIVERS_WAIT, memory_order_seq_cst);
    if (send)
        push_back(&ch->senders, &ch->senders_tail, w);
    else
        push_back(&ch->receivers, &ch->receivers_tail, w);
    chan_unlock(ch);
}

bool pz__chan_sel_ready(pz_chan_t *ch, bool send)
{
    bool ready;
    chan_lock(ch);
    uint64_t tail = atomic_load_explicit(&ch->tail, memory_order_seq_cst);
    if (tail & CLOSED) {
        ready = true;
    } else if (ch->capacity) {
        /* After this side's seq_cst bit (pz__chan_sel_enqueue): either
         * this load sees the other side's change, or that side saw the
         * bit and serves the queue. */
        uint64_t head = atomic_load_explicit(&ch->head, memory_order_seq_cst);
        ready = send ? head + ch->one_lap != tail : head != tail;
    } else {
        /* Rendezvous: under the lock, a partner that is not a select
         * already fired (our own nodes are never partners: a select has
         * one side per channel). */
        ready = false;
        for (pz__chan_waiter *p = send ? ch->receivers : ch->senders; p && !ready; p = p->next)
            ready = !p->fired || atomic_load_explicit(p->fired, memory_order_acquire) == -1;
    }
    chan_unlock(ch);
    return ready;
}

int pz__chan_sel_leave(pz_chan_t *ch, pz__chan_waiter *w, bool send)
{
    chan_lock(ch);
    int r = w->result;
    if (r == PENDING) {
        if (send) {
            unlink_node(&ch->senders, &ch->senders_tail, w);
            clear_bit_if_empty(ch, ch->senders, SENDERS_WAIT);
        } else {
            unlink_node(&ch->receivers, &ch->receivers_tail, w);
            clear_bit_if_empty(ch, ch->receivers, RECEIVERS_WAIT);
        }
    }
    chan_unlock(ch);
    return r;
}
