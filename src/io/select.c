/*
 * pz_select (include/plaza/select.h).
 *
 * One select is one task park, one `fired` word on the task's stack and
 * one waiter node per case in that case's own queue: a channel's sender or
 * receiver queue (src/async/chan.c), the parking-lot queue of a notify
 * (src/park/park.c), a descriptor's readiness waiters in the runtime's
 * driver (src/runtime/driver.c), a task's joiner slot (src/runtime/task.c).  The rule that makes it cancel-safe: whoever would
 * move something to or from the select (a channel handing over an item or
 * taking one, a notify_one handing over its notification) first sets
 * `fired` from -1 to that case's index, under the lock of its queue, and
 * skips the node if it cannot; so exactly one case can take anything.
 * Wakers that move nothing (a readiness event, a joined task ending, a
 * timer, a cancel, the select itself) also close `fired` (or find it
 * closed), and the select then tries its cases again.  The task park only
 * wakes the task: the outcome is read from `fired`, never from why the park
 * ended.
 *
 * Rounds: (1) try every case without waiting, from a rotating start; the
 * first that goes through is the answer.  (2) Otherwise prepare the park,
 * queue a node in every case (validating, under each queue's lock, that
 * the case is still not ready, or noting that it is), then look once more
 * at each channel (a Dekker pair with the other side's change, as in
 * chan.c); if anything looked ready, close `fired` ourselves so the park
 * returns at once.  (3) Park.  (4) Close `fired` if nobody did, take every
 * node out of its queue (under its lock: a waker that won is done with it
 * by then), and either return the case that fired with something moved,
 * or start again at (1).
 */
#define _GNU_SOURCE
#include "io_internal.h"
#include "plaza/select.h"

#include <poll.h>
#include <string.h>

#include "../async/chan_internal.h"
#include "../async/semaphore_internal.h"
#include "../park/lot.h"
#include "../runtime/kit.h"

enum { FIRED_NONE = -1, FIRED_SELF = -2, FIRED_TIMEOUT = -3, FIRED_CANCEL = -4, FIRED_WAKE = -5 };

/* pz_notify's word (include/plaza/async.h). */
#define NOTIFY_PERMIT 1u
#define NOTIFY_WAITERS 2u
#define NOTIFY_EPOCH_SHIFT 2

struct sel_case {
    union {
        pz__chan_waiter chan;
        pz__waiter lot[2];
        pz__io_waiter io[2]; /* FD: the driver's readiness waiters */
    } node;
    bool queued[2];
    pz__io_source *src;
    pz_task_t *task; /* JOIN: the task behind the handle */
    bool joiner;     /* JOIN: we are in its joiner slot */
    bool ready;      /* a validation found it ready */
    struct pz__sem_wait semw; /* ACQUIRE */
};

/* ---- trying a case ---- */

/* try_case for a descriptor. */
static bool try_fd(pz_sel_t *c)
{
    pz__runtime *rt;
    pz__io_source *src = pz__io_source_register(c->fd, &rt);
    uint64_t bits = ((c->events & PZ_READABLE) ? PZ__IO_READ : 0) | ((c->events & PZ_WRITABLE) ? PZ__IO_WRITE : 0);
    for (;;) {
        uint64_t seen = src ? atomic_load_explicit(&src->readiness, memory_order_acquire) : 0;
        bool polled = src && atomic_load_explicit(&src->kind, memory_order_acquire) == PZ__SRC_POLLED;
        /* Every bit asked is clear: someone found the descriptor not ready
         * that way (EAGAIN, this poll, or a read that emptied a stream) and
         * no event has come since; an event that comes now sets a bit
         * before it looks for waiters, and the node is queued under the
         * source's lock after a check of the bits (pz__driver_enqueue), so
         * trusting the word loses no wake-up and saves a poll(2).  A
         * source registered just now has both bits set (io.c); after an
         * end of stream (ENDED) the kernel is asked every time. */
        if (polled && !(seen & (bits | PZ__IO_CLOSED | PZ__IO_ENDED)))
            return false;
        struct pollfd p = {.fd = c->fd, .events = (short)(((c->events & PZ_READABLE) ? POLLIN : 0) |
                                                          ((c->events & PZ_WRITABLE) ? POLLOUT : 0))};
        if (poll(&p, 1, 0) > 0) {
            if (p.revents & POLLNVAL) {
                c->result = -EBADF;
                return true;
            }
            int ready = 0;
            if (p.revents & (POLLIN | POLLHUP | POLLERR))
                ready |= c->events & PZ_READABLE;
            if (p.revents & (POLLOUT | POLLHUP | POLLERR))
                ready |= c->events & PZ_WRITABLE;
            if (ready) {
                c->result = ready;
                return true;
            }
        }
        if (src && (seen & PZ__IO_CLOSED)) {
            c->result = -EBADF;
            return true;
        }
        /* Not writable and the poller does not watch writability yet: ask
         * it to, then look again (src/runtime/driver.c: WRITE may be
         * cleared only in a word with WATCH_WRITE set). */
        if (polled && (bits & seen & PZ__IO_WRITE) && !(seen & PZ__IO_WATCH_WRITE)) {
            int r = pz__driver_watch_write(rt, src);
            if (r < 0) {
                c->result = r;
                return true;
            }
            continue;
        }
        /* Not ready: clear the readiness bits the poller left, unless an
         * event came since the snapshot (as io.c's loop does), so that the
         * queued node sleeps until the next edge. */
        if (src && (seen & bits))
            atomic_compare_exchange_strong_explicit(&src->readiness, &seen, seen & ~bits, memory_order_acq_rel,
                                                    memory_order_acquire);
        return false;
    }
}

/* Returns true if case c went through (its result stored). */
static bool try_case(pz_sel_t *c)
{
    int r;
    switch (c->kind) {
    case PZ__SEL_RECV:
        r = pz_chan_try_recv(c->obj, c->item);
        break;
    case PZ__SEL_SEND:
        r = pz_chan_try_send(c->obj, c->item);
        break;
    case PZ__SEL_FD:
        return try_fd(c);
    case PZ__SEL_NOTIFY: {
        pz_notify_t *n = c->obj;
        uint64_t st = atomic_load_explicit(&n->state, memory_order_acquire);
        for (;;) {
            if ((st >> NOTIFY_EPOCH_SHIFT) != (c->epoch & (UINT64_MAX >> NOTIFY_EPOCH_SHIFT))) {
                c->result = 0;
                return true;
            }
            if (!(st & NOTIFY_PERMIT))
                return false;
            if (atomic_compare_exchange_weak_explicit(&n->state, &st, st & ~(uint64_t)NOTIFY_PERMIT,
                                                      memory_order_acquire, memory_order_acquire)) {
                c->result = 0;
                return true;
            }
        }
    }
    case PZ__SEL_JOIN: {
        pz_task_t *t = pz__task_peek(c->obj);
        if (!t) {
            c->result = pz_join(c->obj, c->item); /* reports the stale handle */
            return true;
        }
        pz__spin_lock(&t->join_lock);
        bool done = t->done, bad = t->detached || (t->joiner && t->joiner != pz__current_task());
        pz__spin_unlock(&t->join_lock);
        if (!done && !bad)
            return false;
        c->result = pz_join(c->obj, c->item); /* returns at once, or reports the misuse */
        return true;
    }
    case PZ__SEL_DEADLINE:
        if (pz_now() < c->deadline)
            return false;
        c->result = 0;
        return true;
    case PZ__SEL_ACQUIRE:
        r = pz_semaphore_try_acquire(c->obj, c->n);
        break;
    default:
        return false;
    }
    if (r == -EAGAIN)
        return false;
    c->result = r;
    return true;
}

/* ---- queueing and leaving ---- */

struct notify_ctx {
    pz_sel_t *c;
    struct sel_case *s;
};

/* As notify.c's validation, without taking the permit: a newer epoch or
 * a permit means ready; otherwise WAITERS is set (by CAS on the whole
 * word, which fails if a notify_all came in between). */
static bool notify_not_ready(void *ctx)
{
    struct notify_ctx *x = ctx;
    pz_notify_t *n = x->c->obj;
    uint64_t st = atomic_load_explicit(&n->state, memory_order_acquire);
    for (;;) {
        if ((st >> NOTIFY_EPOCH_SHIFT) != (x->c->epoch & (UINT64_MAX >> NOTIFY_EPOCH_SHIFT)) ||
            (st & NOTIFY_PERMIT)) {
            x->s->ready = true;
            return false;
        }
        if ((st & NOTIFY_WAITERS) ||
            atomic_compare_exchange_weak_explicit(&n->state, &st, st | NOTIFY_WAITERS, memory_order_acquire,
                                                  memory_order_acquire))
            return true;
    }
}

static void notify_left(void *ctx, bool was_last)
{
    pz_notify_t *n = ctx;
    if (was_last)
        atomic_fetch_and_explicit(&n->state, ~(uint64_t)NOTIFY_WAITERS, memory_order_relaxed);
}

static void lot_node(pz__waiter *w, pz_task_t *self, uint64_t gen, _Atomic int *fired, int branch)
{
    memset(w, 0, sizeof *w);
    w->task = self;
    w->gen = gen;
    w->fired = fired;
    w->branch = branch;
}

static void enqueue_case(pz_sel_t *c, struct sel_case *s, int k, pz_task_t *self, uint64_t gen, _Atomic int *fired)
{
    switch (c->kind) {
    case PZ__SEL_RECV:
    case PZ__SEL_SEND: {
        pz__chan_waiter *w = &s->node.chan;
        memset(w, 0, sizeof *w);
        w->item = c->item;
        w->task = self;
        w->gen = gen;
        w->fired = fired;
        w->branch = k;
        pz__chan_sel_enqueue(c->obj, w, c->kind == PZ__SEL_SEND);
        s->queued[0] = true;
        break;
    }
    case PZ__SEL_FD: {
        pz__runtime *rt = NULL;
        s->src = pz__io_source_register(c->fd, &rt);
        if (!s->src) {
            s->ready = true; /* try_case reports what is wrong */
            break;
        }
        atomic_fetch_add_explicit(&rt->io_waiters, 1, memory_order_seq_cst);
        const uint64_t bits[2] = {PZ__IO_READ, PZ__IO_WRITE};
        const int evs[2] = {PZ_READABLE, PZ_WRITABLE};
        for (int i = 0; i < 2; i++) {
            if (!(c->events & evs[i]))
                continue;
            pz__io_waiter *w = &s->node.io[i];
            memset(w, 0, sizeof *w);
            w->task = self;
            w->gen = gen;
            w->bit = bits[i];
            w->fired = fired;
            w->branch = k;
            s->queued[i] = pz__driver_enqueue(s->src, w);
            if (!s->queued[i])
                s->ready = true;
        }
        break;
    }
    case PZ__SEL_NOTIFY: {
        struct notify_ctx x = {c, s};
        lot_node(&s->node.lot[0], self, gen, fired, k);
        s->queued[0] = pz__lot_enqueue(c->obj, &s->node.lot[0], notify_not_ready, &x);
        break;
    }
    case PZ__SEL_ACQUIRE:
        lot_node(&s->node.lot[0], self, gen, fired, k);
        s->semw.n = c->n;
        s->queued[0] = pz__sem_sel_enqueue(c->obj, &s->semw, &s->node.lot[0]);
        s->ready = !s->queued[0];
        break;
    case PZ__SEL_JOIN: {
        pz_task_t *t = pz__task_peek(c->obj);
        s->task = t;
        if (!t) {
            s->ready = true;
            break;
        }
        pz__spin_lock(&t->join_lock);
        if (t->done || t->detached || t->joiner) {
            s->ready = true;
        } else {
            /* pz__task_finish claims this park when t ends. */
            t->joiner = self;
            t->joiner_gen = gen;
            s->joiner = true;
        }
        pz__spin_unlock(&t->join_lock);
        break;
    }
    default:
        break;
    }
}

/* Returns the result of a channel or semaphore node (PENDING if it was
 * still queued). */
static int leave_case(pz_sel_t *c, struct sel_case *s, pz_task_t *self, bool fired_here)
{
    int r = PENDING;
    switch (c->kind) {
    case PZ__SEL_ACQUIRE:
        if (s->queued[0])
            r = pz__sem_sel_leave(&s->semw, &s->node.lot[0], fired_here);
        break;
    case PZ__SEL_RECV:
    case PZ__SEL_SEND:
        if (s->queued[0])
            r = pz__chan_sel_leave(c->obj, &s->node.chan, c->kind == PZ__SEL_SEND);
        break;
    case PZ__SEL_FD:
        for (int i = 0; i < 2; i++)
            if (s->queued[i])
                pz__driver_leave(s->src, &s->node.io[i]);
        if (s->src) {
            pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
            atomic_fetch_sub_explicit(&rt->io_waiters, 1, memory_order_relaxed);
        }
        break;
    case PZ__SEL_NOTIFY:
        if (s->queued[0])
            pz__lot_leave(&s->node.lot[0], notify_left, c->obj);
        break;
    case PZ__SEL_JOIN:
        if (s->joiner) {
            pz__spin_lock(&s->task->join_lock);
            if (s->task->joiner == self)
                s->task->joiner = NULL;
            pz__spin_unlock(&s->task->join_lock);
        }
        break;
    default:
        break;
    }
    s->queued[0] = s->queued[1] = false;
    return r;
}

int pz_select(pz_sel_t *cases, int n, int64_t deadline)
{
    if (!cases || n < 1 || n > PZ_SELECT_MAX)
        return -EINVAL;
    pz_task_t *self = pz__current_task();
    if (!self)
        return -EPERM;
    int64_t park_deadline = deadline;
    for (int k = 0; k < n; k++) {
        pz_sel_t *c = &cases[k];
        c->result = 0;
        if (c->kind < PZ__SEL_RECV || c->kind > PZ__SEL_ACQUIRE)
            return -EINVAL;
        if (c->kind == PZ__SEL_ACQUIRE && (!c->obj || c->n > PZ_SEMAPHORE_MAX_PERMITS))
            return -EINVAL;
        if ((c->kind == PZ__SEL_RECV || c->kind == PZ__SEL_SEND) && !c->obj)
            return -EINVAL;
        if ((c->kind == PZ__SEL_NOTIFY || c->kind == PZ__SEL_JOIN) && !c->obj)
            return -EINVAL;
        if (c->kind == PZ__SEL_FD && (c->fd < 0 || !(c->events & (PZ_READABLE | PZ_WRITABLE))))
            return -EINVAL;
        if (c->kind == PZ__SEL_DEADLINE && c->deadline < park_deadline)
            park_deadline = c->deadline;
        for (int j = 0; j < k; j++) {
            /* One side per channel: a select never pairs with itself. */
            if ((c->kind == PZ__SEL_RECV || c->kind == PZ__SEL_SEND) &&
                (cases[j].kind == PZ__SEL_RECV || cases[j].kind == PZ__SEL_SEND) && cases[j].obj == c->obj &&
                cases[j].kind != c->kind)
                return -EINVAL;
        }
    }
    struct sel_case st[PZ_SELECT_MAX];
    unsigned start = (unsigned)((uint64_t)pz_now() >> 6) % (unsigned)n;
    for (;;) {
        /* (1) */
        for (int i = 0; i < n; i++) {
            int k = (int)((start + (unsigned)i) % (unsigned)n);
            if (try_case(&cases[k]))
                return k;
        }
        if (deadline != PZ_FOREVER && pz_now() >= deadline)
            return -ETIMEDOUT;
        start = (start + 1) % (unsigned)n;

        /* (2) */
        _Atomic int fired;
        atomic_init(&fired, FIRED_NONE);
        memset(st, 0, sizeof st[0] * (size_t)n);
        pz__wait_note(PZ__WAIT_SELECT, cases);
        uint64_t gen = pz__park_prepare(false);
        bool ready = false;
        for (int k = 0; k < n; k++) {
            enqueue_case(&cases[k], &st[k], k, self, gen, &fired);
            ready = ready || st[k].ready;
        }
        for (int k = 0; k < n && !ready; k++)
            if (cases[k].kind == PZ__SEL_RECV || cases[k].kind == PZ__SEL_SEND)
                ready = pz__chan_sel_ready(cases[k].obj, cases[k].kind == PZ__SEL_SEND);
        if (ready) {
            int none = FIRED_NONE;
            atomic_compare_exchange_strong(&fired, &none, FIRED_SELF);
            pz__task_claim(self, gen, PZ__WAKE_ABORT);
        }

        /* (3) */
        int r = pz__park_commit(NULL, NULL, park_deadline);

        /* (4) */
        int none = FIRED_NONE;
        atomic_compare_exchange_strong(&fired, &none,
                                       r == -ETIMEDOUT ? FIRED_TIMEOUT : r == -ECANCELED ? FIRED_CANCEL : FIRED_WAKE);
        int f = atomic_load(&fired);
        int fired_result = PENDING;
        for (int k = 0; k < n; k++) {
            int lr = leave_case(&cases[k], &st[k], self, k == f);
            if (k == f)
                fired_result = lr;
        }
        if (f >= 0) {
            pz_sel_t *c = &cases[f];
            if (c->kind == PZ__SEL_NOTIFY) {
                c->result = 0; /* woken by a notify: it was ours */
                return f;
            }
            if ((c->kind == PZ__SEL_RECV || c->kind == PZ__SEL_SEND || c->kind == PZ__SEL_ACQUIRE) &&
                fired_result != -EAGAIN) {
                c->result = fired_result;
                return f;
            }
            /* A readiness event, or a channel that moved nothing: try again. */
        } else if (f == FIRED_CANCEL) {
            return -ECANCELED;
        }
    }
}
