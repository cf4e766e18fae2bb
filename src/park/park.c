/*
 * The parking lot: a global hash table of wait queues keyed by address.
 *
 * Table: an array of cache-line aligned buckets, each a spin lock and a FIFO
 * queue of waiters (intrusive nodes on the waiters' own stacks, so parking
 * allocates nothing; doubly linked, so a waiter that times out or is
 * cancelled leaves in constant time, however long the queue).  The table doubles when the number of parked waiters
 * passes PZ__LOAD_FACTOR per bucket.  Growing locks every bucket of the old
 * table, moves the waiters and publishes the new table; the old one is never
 * freed, because a parker may still hold a pointer to one of its buckets.
 * So a parker locks a bucket and then checks that the table is still the
 * current one, retrying if not (lock_bucket).  The tables of a process add
 * up to less than twice the final one.
 *
 * Waking a waiter (every path below):
 * - a thread waiter sleeps on node.futex while it is 1.  An unparker unlinks
 *   it and writes its token under the bucket lock, and after releasing the
 *   lock stores 0 in futex and calls futex_wake; from that store on it never
 *   touches the node again (the thread may return at once).  A thread whose
 *   deadline passes takes the bucket lock: if it is still queued it leaves
 *   and times out; if not, an unparker has it and it waits for the 0.  The
 *   wake may hit a stack that has moved on; a futex wake on such an address
 *   at worst wakes some other futex waiter spuriously, which every futex
 *   user must tolerate.
 * - a task waiter is claimed with pz__task_claim under the bucket lock.  A
 *   lost claim means a timer or a cancel won: the task is leaving and removes
 *   itself, so the unparker skips it and serves the next waiter.  Nothing is
 *   lost either way.  The task parks with the bucket lock held and releases
 *   it only after its park word says PARKED (release after switch), so a
 *   claim under the lock always wins PARKED and the unparker, not the task,
 *   decides when it runs: after its token is written.
 */
#define _GNU_SOURCE
#include "plaza/park.h"

#include <stdlib.h>
#include <string.h>

#include "../runtime/internal.h"
#include "lot.h"

#define PZ__LOAD_FACTOR 3
#define PZ__INITIAL_BUCKETS 256
/* A waiter that has waited this long gets the next hand-off (be_fair), and
 * random intervals of up to this long pass between forced fair hand-offs.
 * Both are measured with the coarse clock (pz__clock_coarse), read on every
 * park and unpark at a quarter of the cost of a precise read (a task
 * ping-pong through a channel went from about 300 to 235 ns a round trip).
 * With a clock that moves in ticks, a waiter counts as having waited this
 * long once a tick boundary has passed since it parked: every waiter that
 * has waited a whole tick (1-4 ms on Linux) qualifies, and one that parked
 * just before a boundary may qualify sooner, which costs one early hand-off
 * and nothing else. */
#define PZ__FAIR_NS 1000000


typedef struct pz__bucket {
    _Alignas(PZ__CACHELINE) pz__spin lock;
    pz__waiter *head, *tail;
    int64_t fair_at;  /* next forced fair hand-off */
    uint32_t seed;
} pz__bucket;

typedef struct pz__table {
    struct pz__table *outgrown; /* the table this one replaced, kept (see above) */
    size_t size; /* a power of two */
    unsigned bits;
    pz__bucket buckets[];
} pz__table;

static _Atomic(pz__table *) lot;
static _Atomic long parked_now;
static pz__spin create_lock;

static inline size_t hash_addr(const void *addr, unsigned bits)
{
    return (size_t)(((uint64_t)(uintptr_t)addr * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

static pz__table *table_new(size_t size)
{
    pz__table *t = aligned_alloc(PZ__CACHELINE, sizeof(pz__table) + size * sizeof(pz__bucket) + PZ__CACHELINE);
    if (!t)
        return NULL;
    memset(t, 0, sizeof(pz__table) + size * sizeof(pz__bucket));
    t->size = size;
    while (((size_t)1 << t->bits) < size)
        t->bits++;
    for (size_t i = 0; i < size; i++)
        t->buckets[i].seed = (uint32_t)(i * 2654435761u) | 1;
    return t;
}

/* In the child of a fork, a bucket lock may have been held by a thread
 * that did not follow: the child starts a fresh table (the old one is
 * left as it is) with nobody parked. */
static void lot_after_fork(void)
{
    atomic_store_explicit(&lot, NULL, memory_order_relaxed);
    atomic_store_explicit(&parked_now, 0, memory_order_relaxed);
    atomic_store_explicit(&create_lock.locked, 0, memory_order_relaxed);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, lot_after_fork);
}

static pz__table *get_table(void)
{
    pz__table *t = atomic_load_explicit(&lot, memory_order_acquire);
    if (t)
        return t;
    pthread_once(&atfork_once, atfork_register);
    pz__spin_lock(&create_lock);
    t = atomic_load_explicit(&lot, memory_order_acquire);
    if (!t) {
        t = table_new(PZ__INITIAL_BUCKETS);
        if (!t)
            abort(); /* no memory for 256 buckets: nothing sensible remains */
        atomic_store_explicit(&lot, t, memory_order_release);
    }
    pz__spin_unlock(&create_lock);
    return t;
}

static pz__bucket *lock_bucket(const void *addr)
{
    for (;;) {
        pz__table *t = get_table();
        pz__bucket *b = &t->buckets[hash_addr(addr, t->bits)];
        pz__spin_lock(&b->lock);
        if (atomic_load_explicit(&lot, memory_order_acquire) == t)
            return b;
        pz__spin_unlock(&b->lock);
    }
}

/* Locks the bucket of a waiter whose address may change under requeue. */
static pz__bucket *lock_waiter_bucket(pz__waiter *w)
{
    for (;;) {
        const void *addr = atomic_load_explicit(&w->addr, memory_order_acquire);
        pz__bucket *b = lock_bucket(addr);
        if (atomic_load_explicit(&w->addr, memory_order_relaxed) == addr)
            return b;
        pz__spin_unlock(&b->lock);
    }
}

/* Locks the buckets of two addresses in table order (so two requeues in
 * opposite directions cannot deadlock); returns them in argument order. */
static void lock_bucket_pair(const void *a1, const void *a2, pz__bucket **b1, pz__bucket **b2)
{
    for (;;) {
        pz__table *t = get_table();
        size_t h1 = hash_addr(a1, t->bits), h2 = hash_addr(a2, t->bits);
        pz__bucket *x = &t->buckets[h1], *y = &t->buckets[h2];
        if (h1 <= h2) {
            pz__spin_lock(&x->lock);
            if (x != y)
                pz__spin_lock(&y->lock);
        } else {
            pz__spin_lock(&y->lock);
            pz__spin_lock(&x->lock);
        }
        if (atomic_load_explicit(&lot, memory_order_acquire) == t) {
            *b1 = x;
            *b2 = y;
            return;
        }
        pz__spin_unlock(&x->lock);
        if (x != y)
            pz__spin_unlock(&y->lock);
    }
}

static void unlock_pair(pz__bucket *b1, pz__bucket *b2)
{
    pz__spin_unlock(&b1->lock);
    if (b1 != b2)
        pz__spin_unlock(&b2->lock);
}

static void enqueue(pz__bucket *b, pz__waiter *w);

static void grow(long waiters)
{
    for (;;) {
        pz__table *old = get_table();
        if ((long)old->size * PZ__LOAD_FACTOR >= waiters)
            return;
        for (size_t i = 0; i < old->size; i++)
            pz__spin_lock(&old->buckets[i].lock);
        if (atomic_load_explicit(&lot, memory_order_acquire) != old) {
            for (size_t i = 0; i < old->size; i++)
                pz__spin_unlock(&old->buckets[i].lock);
            continue;
        }
        size_t size = old->size * 2;
        while ((long)size * PZ__LOAD_FACTOR < waiters)
            size *= 2;
        pz__table *t = table_new(size);
        if (t) {
            /* Keep each address's waiters in order: walk every old queue
             * front to back and append. */
            for (size_t i = 0; i < old->size; i++) {
                pz__waiter *w = old->buckets[i].head;
                while (w) {
                    pz__waiter *next = w->next;
                    pz__bucket *nb = &t->buckets[hash_addr(atomic_load_explicit(&w->addr, memory_order_relaxed), t->bits)];
                    enqueue(nb, w);
                    w = next;
                }
                old->buckets[i].head = old->buckets[i].tail = NULL;
            }
            t->outgrown = old; /* still reachable: parkers may hold its buckets */
            atomic_store_explicit(&lot, t, memory_order_release);
        }
        for (size_t i = 0; i < old->size; i++)
            pz__spin_unlock(&old->buckets[i].lock);
        return;
    }
}

static void enqueue(pz__bucket *b, pz__waiter *w)
{
    PZ__ASSERT(!b->head == !b->tail); /* a queue has both ends or neither */
    w->next = NULL;
    w->prev = b->tail;
    if (b->tail)
        b->tail->next = w;
    else
        b->head = w;
    b->tail = w;
    w->queued = true;
    PZ__ASSERT(b->head && !b->tail->next);
}

/* Unlinks w from b's queue in constant time (the queue is doubly linked,
 * so a storm of cancelled waiters leaving one lock costs each of them the
 * same, whatever the queue's length). */
static void unlink_waiter(pz__bucket *b, pz__waiter *w)
{
    PZ__ASSERT(w->queued);
    PZ__ASSERT(w->prev ? w->prev->next == w : b->head == w);
    PZ__ASSERT(w->next ? w->next->prev == w : b->tail == w);
    if (w->prev)
        w->prev->next = w->next;
    else
        b->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        b->tail = w->prev;
    w->next = w->prev = NULL;
    w->queued = false;
    PZ__ASSERT(!b->head == !b->tail);
}

/* Removes w from b if it is still queued there; false if an unparker
 * took it. */
static bool remove_waiter(pz__bucket *b, pz__waiter *w)
{
    if (!w->queued)
        return false;
    unlink_waiter(b, w);
    return true;
}

static bool has_waiter(pz__bucket *b, const void *addr, pz__waiter *from)
{
    for (pz__waiter *x = from ? from : b->head; x; x = x->next)
        if (atomic_load_explicit(&x->addr, memory_order_relaxed) == addr)
            return true;
    return false;
}

/* The eventual-fairness clock of a bucket. */
static bool fair_now(pz__bucket *b, int64_t now, const pz__waiter *w)
{
    if (w && now - w->parked_at >= PZ__FAIR_NS)
        return true;
    bool armed = b->fair_at != 0;
    if (armed && now < b->fair_at)
        return false;
    b->seed ^= b->seed << 13;
    b->seed ^= b->seed >> 17;
    b->seed ^= b->seed << 5;
    b->fair_at = now + 1 + (int64_t)(b->seed % PZ__FAIR_NS);
    return armed; /* the first call only arms the clock */
}

/* Claims w for waking, under its bucket lock.  A task that lost its claim is
 * timing out or cancelled and removes itself.  Returns 0 (lost: skip w),
 * WAKE (won: the unparker wakes it after the unlock) or TAKEN (won, but
 * the unparker must not wake it nor touch the node after the unlock).
 *
 * A waiter of pz_park holds the bucket lock until it is PARKED, so a claim
 * under the lock always finds it PARKED: WAKE.  A select node (lot.h) is
 * queued by a task that goes on to queue other nodes before it parks, so
 * its claim is decided by the select's fired word first (one branch wins
 * it, for good); the task park is then claimed only to wake the task, and
 * whoever else claimed it (a timer, a cancel, the task itself) or the
 * task's own switch makes it runnable. */
enum { CLAIM_LOST = 0, CLAIM_TAKEN = 1, CLAIM_WAKE = 2 };
static int claim(pz__waiter *w)
{
    if (!w->task)
        return CLAIM_WAKE;
    if (w->fired) {
        int none = -1;
        if (!atomic_compare_exchange_strong_explicit(w->fired, &none, w->branch, memory_order_acq_rel,
                                                     memory_order_acquire))
            return CLAIM_LOST;
        return pz__task_claim(w->task, w->gen, PZ__WAKE_UNPARK) == PZ__CLAIM_WON_READY ? CLAIM_WAKE : CLAIM_TAKEN;
    }
    int c = pz__task_claim(w->task, w->gen, PZ__WAKE_UNPARK);
    return c == PZ__CLAIM_LOST ? CLAIM_LOST : CLAIM_WAKE;
}

/* Hands w its token, under the bucket lock. */
static void grant(pz__waiter *w, uintptr_t token)
{
    w->unpark_token = token;
}

/* Wakes the granted waiters linked through next, after the bucket lock is
 * released.  A woken waiter may return at once, so next is read before the
 * wake and the node is not touched after it. */
static void wake_list(pz__waiter *list)
{
    while (list) {
        pz__waiter *next = list->next;
        if (list->task) {
            pz__task_ready(list->task, true);
        } else {
            _Atomic uint32_t *futex = &list->futex;
            atomic_store_explicit(futex, 0, memory_order_release);
            pz__futex_wake(futex, 1);
        }
        list = next;
    }
}

/* A task's park callback: runs on the next context once the task is PARKED. */
static bool release_after_switch(void *arg)
{
    pz__waiter *w = arg;
    pz__bucket *b = w->bucket;
    void (*before_sleep)(void *) = w->before_sleep;
    void *ctx = w->ctx;
    pz__spin_unlock(&b->lock);
    if (before_sleep)
        before_sleep(ctx);
    /* The task may be woken now but waits for this before it returns. */
    atomic_store_explicit(&w->released, true, memory_order_release);
    return true;
}

int pz_park(const void *addr, int64_t deadline, const pz_park_opts_t *opts, uintptr_t *unpark_token)
{
    static const pz_park_opts_t none;
    if (!opts)
        opts = &none;
    bool (*validate)(void *) = opts->validate;
    void (*before_sleep)(void *) = opts->before_sleep;
    void (*timed_out)(void *, bool) = opts->timed_out;
    void *ctx = opts->ctx;
    uintptr_t park_token = opts->park_token;
    unsigned flags = opts->flags;
    /* Bad input (park.h): nothing is queued on NULL, and a flag this lot
     * does not know could be one the caller relies on. */
    if (!addr || (flags & ~PZ_PARK_THREAD))
        return -EINVAL;
    pz_task_t *task = (flags & PZ_PARK_THREAD) ? NULL : pz__current_task();
    long n = atomic_fetch_add_explicit(&parked_now, 1, memory_order_relaxed) + 1;
    if ((long)get_table()->size * PZ__LOAD_FACTOR < n)
        grow(n);

    pz__waiter w;
    memset(&w, 0, sizeof w);
    atomic_init(&w.addr, addr);
    w.park_token = park_token;
    w.task = task;
    w.before_sleep = before_sleep;
    w.ctx = ctx;

    pz__bucket *b = lock_bucket(addr);
    if (validate && !validate(ctx)) {
        pz__spin_unlock(&b->lock);
        pz__wait_note(PZ__WAIT_NONE, NULL); /* the announced wait did not happen */
        atomic_fetch_sub_explicit(&parked_now, 1, memory_order_relaxed);
        return -EAGAIN;
    }
    w.parked_at = pz__clock_coarse();
    int result;
    if (task) {
        pz__wait_note_default(PZ__WAIT_PARK, addr);
        w.gen = pz__park_prepare(false);
        w.bucket = b;
        enqueue(b, &w);
        result = pz__park_commit(release_after_switch, &w, deadline);
        while (!atomic_load_explicit(&w.released, memory_order_acquire))
            pz__arch_cpu_relax();
        if (result != 0) {
            /* Deadline or cancel won the claim, so no unparker took us. */
            b = lock_waiter_bucket(&w);
            remove_waiter(b, &w);
            if (timed_out)
                timed_out(ctx, !has_waiter(b, atomic_load_explicit(&w.addr, memory_order_relaxed), NULL));
            pz__spin_unlock(&b->lock);
        }
    } else {
        atomic_store_explicit(&w.futex, 1, memory_order_relaxed);
        enqueue(b, &w);
        pz__spin_unlock(&b->lock);
        if (before_sleep)
            before_sleep(ctx);
        pz__thread_wait_begin(addr);
        result = 0;
        /* The futex takes a negative deadline as "none"; a negative
         * deadline here is one that has passed. */
        int64_t until = deadline == PZ_FOREVER ? -1 : deadline < 0 ? 0 : deadline;
        while (atomic_load_explicit(&w.futex, memory_order_acquire) != 0) {
            int r = pz__futex_wait(&w.futex, 1, until);
            if (until >= 0 && (r == -ETIMEDOUT || pz__clock_now() >= until)) {
                b = lock_waiter_bucket(&w);
                if (remove_waiter(b, &w)) {
                    if (timed_out)
                        timed_out(ctx, !has_waiter(b, atomic_load_explicit(&w.addr, memory_order_relaxed), NULL));
                    result = -ETIMEDOUT;
                    pz__spin_unlock(&b->lock);
                    break;
                }
                /* Unlinked by an unparker: its wake is on the way. */
                pz__spin_unlock(&b->lock);
                until = -1;
            }
        }
        pz__thread_wait_end();
    }
    atomic_fetch_sub_explicit(&parked_now, 1, memory_order_relaxed);
    if (result == 0 && unpark_token)
        *unpark_token = w.unpark_token;
    return result;
}

pz_unpark_result_t pz_unpark_one(const void *addr, uintptr_t (*callback)(pz_unpark_result_t result, void *ctx),
                                 void *ctx)
{
    pz_unpark_result_t res = {0, 0, false, false};
    if (!addr)
        return res; /* nobody parks on NULL (pz_park refuses it) */
    pz__bucket *b = lock_bucket(addr);
    pz__waiter *chosen = NULL;
    int how = CLAIM_LOST;
    for (pz__waiter *x = b->head; x; x = x->next) {
        if (atomic_load_explicit(&x->addr, memory_order_relaxed) != addr)
            continue;
        if ((how = claim(x)) != CLAIM_LOST) {
            chosen = x;
            break;
        }
    }
    if (chosen) {
        unlink_waiter(b, chosen);
        res.unparked = 1;
        res.have_more = has_waiter(b, addr, NULL);
        res.be_fair = fair_now(b, pz__clock_coarse(), chosen);
    } else {
        res.have_more = has_waiter(b, addr, NULL);
    }
    uintptr_t token = callback ? callback(res, ctx) : 0;
    if (chosen)
        grant(chosen, token);
    pz__spin_unlock(&b->lock);
    if (chosen && how == CLAIM_WAKE)
        wake_list(chosen);
    return res;
}

int pz_unpark_all(const void *addr, uintptr_t unpark_token)
{
    if (!addr)
        return 0;
    pz__bucket *b = lock_bucket(addr);
    pz__waiter *woken = NULL, **tail = &woken;
    int n = 0;
    pz__waiter *x = b->head;
    while (x) {
        pz__waiter *next = x->next;
        int how;
        if (atomic_load_explicit(&x->addr, memory_order_relaxed) == addr && (how = claim(x)) != CLAIM_LOST) {
            unlink_waiter(b, x);
            grant(x, unpark_token);
            if (how == CLAIM_WAKE) {
                *tail = x;
                tail = &x->next;
            }
            n++;
        }
        x = next;
    }
    pz__spin_unlock(&b->lock);
    wake_list(woken);
    return n;
}

pz_unpark_result_t pz_requeue(const void *from, const void *to, pz_requeue_op_t (*validate)(void *ctx),
                              uintptr_t (*callback)(pz_requeue_op_t op, pz_unpark_result_t result, void *ctx),
                              void *ctx)
{
    pz_unpark_result_t res = {0, 0, false, false};
    if (!from || !to)
        return res;
    pz__bucket *bf, *bt;
    lock_bucket_pair(from, to, &bf, &bt);
    pz_requeue_op_t op = validate ? validate(ctx) : PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST;
    if (op == PZ_REQUEUE_ABORT) {
        unlock_pair(bf, bt);
        return res;
    }
    pz__waiter *chosen = NULL;
    int how = CLAIM_LOST;
    pz__waiter *x = bf->head;
    while (x) {
        pz__waiter *next = x->next;
        if (atomic_load_explicit(&x->addr, memory_order_relaxed) != from) {
            /* another address's waiter: stays */
        } else if (!chosen && op != PZ_REQUEUE_ALL && (how = claim(x)) != CLAIM_LOST) {
            unlink_waiter(bf, x);
            chosen = x;
        } else if (op == PZ_REQUEUE_ALL || op == PZ_REQUEUE_UNPARK_ONE_REQUEUE_REST) {
            /* Moved even if it is timing out: it finds its bucket through
             * its address, which changes here under both locks. */
            unlink_waiter(bf, x);
            atomic_store_explicit(&x->addr, to, memory_order_release);
            if (x->task)
                x->bucket = bt;
            enqueue(bt, x);
            res.requeued++;
        }
        x = next;
    }
    if (chosen) {
        res.unparked = 1;
        res.have_more = has_waiter(bf, from, NULL);
        res.be_fair = fair_now(bf, pz__clock_coarse(), chosen);
    } else {
        res.have_more = has_waiter(bf, from, NULL);
    }
    uintptr_t token = callback ? callback(op, res, ctx) : 0;
    if (chosen)
        grant(chosen, token);
    unlock_pair(bf, bt);
    if (chosen && how == CLAIM_WAKE)
        wake_list(chosen);
    return res;
}

pz_unpark_result_t pz_unpark_filter(const void *addr, pz_filter_op_t (*filter)(uintptr_t park_token, void *ctx),
                                    uintptr_t (*callback)(pz_unpark_result_t result, void *ctx), void *ctx)
{
    pz_unpark_result_t res = {0, 0, false, false};
    if (!addr || !filter)
        return res;
    pz__bucket *b = lock_bucket(addr);
    pz__waiter *woken = NULL, **tail = &woken, *taken = NULL;
    pz__waiter *x = b->head;
    int64_t now = 0;
    bool fair = false;
    while (x) {
        pz__waiter *next = x->next;
        if (atomic_load_explicit(&x->addr, memory_order_relaxed) != addr) {
            x = next;
            continue;
        }
        pz_filter_op_t op = filter(x->park_token, ctx);
        if (op == PZ_FILTER_STOP)
            break;
        int how;
        if ((op == PZ_FILTER_UNPARK || op == PZ_FILTER_UNPARK_STOP) && (how = claim(x)) != CLAIM_LOST) {
            unlink_waiter(b, x);
            if (!now)
                now = pz__clock_coarse();
            if (!fair)
                fair = now - x->parked_at >= PZ__FAIR_NS;
            if (how == CLAIM_WAKE) {
                *tail = x;
                tail = &x->next;
            } else {
                x->next = taken; /* granted below, never woken by us */
                taken = x;
            }
            res.unparked++;
            if (op == PZ_FILTER_UNPARK_STOP)
                break;
        }
        x = next;
    }
    res.have_more = has_waiter(b, addr, NULL);
    if (res.unparked)
        res.be_fair = fair || fair_now(b, now, NULL);
    uintptr_t token = callback ? callback(res, ctx) : 0;
    for (pz__waiter *w = woken; w; w = w->next)
        grant(w, token);
    for (pz__waiter *w = taken; w; w = w->next)
        grant(w, token);
    pz__spin_unlock(&b->lock);
    wake_list(woken);
    return res;
}

/* ---- select nodes (lot.h) ---- */

bool pz__lot_enqueue(const void *addr, pz__waiter *w, bool (*validate)(void *ctx), void *ctx)
{
    long n = atomic_fetch_add_explicit(&parked_now, 1, memory_order_relaxed) + 1;
    if ((long)get_table()->size * PZ__LOAD_FACTOR < n)
        grow(n);
    atomic_store_explicit(&w->addr, addr, memory_order_relaxed);
    w->next = NULL;
    w->unpark_token = 0;
    pz__bucket *b = lock_bucket(addr);
    if (validate && !validate(ctx)) {
        pz__spin_unlock(&b->lock);
        atomic_fetch_sub_explicit(&parked_now, 1, memory_order_relaxed);
        return false;
    }
    w->parked_at = pz__clock_coarse();
    enqueue(b, w);
    pz__spin_unlock(&b->lock);
    return true;
}

bool pz__lot_leave(pz__waiter *w, void (*left)(void *ctx, bool was_last), void *ctx)
{
    pz__bucket *b = lock_waiter_bucket(w);
    bool queued = remove_waiter(b, w);
    if (queued && left)
        left(ctx, !has_waiter(b, atomic_load_explicit(&w->addr, memory_order_relaxed), NULL));
    pz__spin_unlock(&b->lock);
    atomic_fetch_sub_explicit(&parked_now, 1, memory_order_relaxed);
    return queued;
}
