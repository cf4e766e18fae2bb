/*
 * Tasks: spawning, joining, cancelling, and the task park every wait in
 * plaza is built on.
 *
 * Lifetime of a task struct: it lives until both (a) the task has finished
 * and (b) its handle has been given up by pz_join or pz_detach.  Whichever
 * comes second frees it; join_lock orders the two.
 *
 * Park protocol (see the park word in internal.h):
 *   1. pz__park_prepare: the task takes a new generation and enters PARKING.
 *      From here a waker that knows (task, generation) may claim it.
 *   2. The task publishes itself where a waker will find it (a wait queue,
 *      a joiner slot, a blocking-pool job), then pz__park_commit arms the
 *      timer, honours a pending cancel and switches away.
 *   3. On the next context, park_after moves PARKING to PARKED, then runs
 *      the caller's callback (release after switch; Go's gopark orders its
 *      unlockf the same way).  If a claim came while the task was PARKING,
 *      the callback runs first and then the task is made runnable.
 *   4. A waker that claims a PARKED task makes it runnable; one that claims
 *      a PARKING task leaves that to step 3.  Either way exactly one party
 *      makes the task runnable, exactly once.
 * Because the park word is PARKED before the callback releases anything, a
 * waker that can only find the task after that release (say, under a wait
 * queue's lock the callback lets go of) always claims a PARKED task, and
 * the task runs only after that waker has finished with it.  A callback
 * must therefore not use the task's stack after its own release: a timer or
 * a cancel may already have made the task runnable.
 * A claim touches only the task struct, never the waiter's stack, and a
 * claimed PARKED task cannot run (or end) until it is made runnable, so the
 * claimer may still use the struct until then.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t next_task_id = 1;

/* The registry of live tasks, for reports (pz_dump, the monitor): a task
 * is linked when it is spawned and unlinked when its struct is freed (by
 * pz_join, pz_detach, or its end if detached).  When it ends it is only
 * hidden (before its stack goes back): reports skip hidden tasks, so they
 * never read an ended task's stack.
 *
 * It is split into REGISTRY_SHARDS lists, each with its own lock on its own
 * cache line, and a task goes to the list its id picks (consecutive ids,
 * neighbouring lists).  With one list and one lock, the worker spawning a
 * burst and the worker ending its tasks took turns at that lock, up to
 * four times per task: at 1 000-task bursts on 2 workers it was a quarter
 * of the CPU time (the lock's line moving between the cores, and
 * spinning).  Hiding instead of unlinking at the end keeps the worker that
 * ends a task off the lists altogether: spawn and join, usually on one
 * worker, are the ones that touch them.  A report takes every list's lock,
 * in index order, and walks them one by one.
 *
 * Why a report never reads a task that has ended: a report counts itself
 * in registry_walkers before it takes the locks, and reads each task's
 * hidden flag under them; an ending task sets its flag, then reads
 * registry_walkers (all four seq_cst).  If the task reads 0, the report's
 * increment comes after that read in the single order of seq_cst
 * operations, so the report's read of the flag sees it set.  Otherwise the
 * task takes and drops its list's lock, waiting out a report that may
 * have read the flag before it was set.
 *
 * t->registered and t->reg_shard are written only by whoever owns the
 * task's life at that step (the spawner before the task is published, the
 * freer), each step ordered after the one before (the run queue, the
 * switch, the join lock), so they may be read without a list's lock by
 * that owner. */
#define REGISTRY_SHARDS 16u
struct registry_shard {
    _Alignas(PZ__CACHELINE) pz__spin lock;
    pz_task_t *head;
};
static struct registry_shard registry[REGISTRY_SHARDS];
static _Alignas(PZ__CACHELINE) _Atomic int registry_walkers;

static void registry_add(pz_task_t *t)
{
    unsigned i = (unsigned)(t->id % REGISTRY_SHARDS);
    struct registry_shard *r = &registry[i];
    t->reg_shard = (uint8_t)i;
    t->reg_prev = NULL;
    t->registered = true;
    atomic_store_explicit(&t->reg_hidden, false, memory_order_relaxed);
    pz__spin_lock(&r->lock);
    t->reg_next = r->head;
    if (r->head)
        r->head->reg_prev = t;
    r->head = t;
    pz__spin_unlock(&r->lock);
}

static void registry_unlink(pz_task_t *t)
{
    if (!t->registered)
        return;
    struct registry_shard *r = &registry[t->reg_shard];
    pz__spin_lock(&r->lock);
    if (t->reg_prev)
        t->reg_prev->reg_next = t->reg_next;
    else
        r->head = t->reg_next;
    if (t->reg_next)
        t->reg_next->reg_prev = t->reg_prev;
    t->registered = false;
    pz__spin_unlock(&r->lock);
}

void pz__task_unregister(pz_task_t *t)
{
    if (!t->registered || atomic_load_explicit(&t->reg_hidden, memory_order_relaxed))
        return; /* hidden already by an earlier step of its end */
    atomic_store_explicit(&t->reg_hidden, true, memory_order_seq_cst);
    if (atomic_load_explicit(&registry_walkers, memory_order_seq_cst)) {
        struct registry_shard *r = &registry[t->reg_shard];
        pz__spin_lock(&r->lock);
        pz__spin_unlock(&r->lock);
    }
}

void pz__tasks_forget(void)
{
    for (unsigned i = 0; i < REGISTRY_SHARDS; i++) {
        registry[i].lock = (pz__spin){0};
        registry[i].head = NULL;
    }
    atomic_store(&registry_walkers, 0);
}

void pz__task_registry_lock(void)
{
    atomic_fetch_add_explicit(&registry_walkers, 1, memory_order_seq_cst);
    for (unsigned i = 0; i < REGISTRY_SHARDS; i++)
        pz__spin_lock(&registry[i].lock);
}

void pz__task_registry_unlock(void)
{
    for (unsigned i = REGISTRY_SHARDS; i-- > 0;)
        pz__spin_unlock(&registry[i].lock);
    atomic_fetch_sub_explicit(&registry_walkers, 1, memory_order_seq_cst);
}

void pz__tasks_walk(void (*fn)(pz_task_t *t, void *arg), void *arg)
{
    for (unsigned i = 0; i < REGISTRY_SHARDS; i++)
        for (pz_task_t *t = registry[i].head; t; t = t->reg_next)
            if (!atomic_load_explicit(&t->reg_hidden, memory_order_seq_cst))
                fn(t, arg);
}

pz_task_t *pz__current_task(void)
{
    pz__worker *w = pz__current_worker();
    return w ? w->current : NULL;
}

pz_task_t *pz_self(void)
{
    return pz__current_task();
}

bool pz_cancelled(void)
{
    pz_task_t *t = pz__current_task();
    return t && atomic_load(&t->cancelled);
}

uint64_t pz_task_id(const pz_task_t *h)
{
    pz_task_t *t = pz__task_peek(h);
    return t ? t->id : 0;
}

const char *pz_task_name(const pz_task_t *h)
{
    pz_task_t *t = pz__task_peek(h);
    return t ? t->name : "";
}

static pz_task_t *spawn(pz_fn fn, void *arg, const pz_spawn_opts_t *opts, void *site);

pz_task_t *pz_spawn(pz_fn fn, void *arg)
{
    return spawn(fn, arg, NULL, __builtin_return_address(0));
}

pz_task_t *pz_spawn_with(pz_fn fn, void *arg, const pz_spawn_opts_t *opts)
{
    return spawn(fn, arg, opts, __builtin_return_address(0));
}

static pz_task_t *spawn(pz_fn fn, void *arg, const pz_spawn_opts_t *opts, void *site)
{
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
    if (!rt) {
        pz__report("pz_spawn: no runtime is running (call it from pz_run's tasks)");
        return NULL;
    }
    if (!fn) {
        pz__report("pz_spawn: fn is NULL");
        return NULL;
    }
    size_t stack = rt->stack_size;
    if (opts && opts->stack_size) {
        if (opts->stack_size > PZ__MAX_STACK) {
            pz__report("pz_spawn: stack size %zu is over the limit of %u bytes", opts->stack_size, PZ__MAX_STACK);
            return NULL;
        }
        size_t page = pz__page_size();
        stack = opts->stack_size < PZ__MIN_STACK ? PZ__MIN_STACK : opts->stack_size;
        stack = (stack + page - 1) / page * page;
    }
    pz_task_t *t = pz__task_alloc();
    if (!t) {
        pz__report("pz_spawn: out of memory");
        return NULL;
    }
    t->fn = fn;
    t->arg = arg;
    t->id = atomic_fetch_add_explicit(&next_task_id, 1, memory_order_relaxed);
    t->holds.caller = t->id;
    t->stack_size = stack;
    t->timer_index = -1;
    atomic_init(&t->park_state, 0);
    atomic_init(&t->cancelled, false);
    if (opts && opts->name) {
        strncpy(t->name, opts->name, sizeof t->name - 1);
        t->name[sizeof t->name - 1] = '\0';
        pz__task_name_register(t);
    }
    t->spawn_site = site;
    atomic_fetch_add_explicit(&rt->live_tasks, 1, memory_order_relaxed);
    pz_task_t *handle = pz__task_handle(t); /* before t can run, end and be freed */
    registry_add(t);
    pz__task_ready(t, false);
    return handle;
}

void pz__task_free(pz_task_t *t)
{
    pz__runtime *rt = atomic_load(&pz__rt);
    registry_unlink(t);
    if (t->stack_map_size && rt) {
        /* Only for tasks freed at shutdown: a finished task has already
         * given its stack back. */
        pz__stack_release(rt, NULL, t);
    }
    if (rt)
        atomic_fetch_sub_explicit(&rt->live_tasks, 1, memory_order_relaxed);
    pz__task_name_forget(t);
    pz__task_recycle(t);
}

void pz__task_finish(pz__worker *w, pz_task_t *t)
{
    (void)w;
    pz__task_unregister(t);
    pz__spin_lock(&t->join_lock);
    t->done = true;
    bool free_it = t->detached;
    pz_task_t *joiner = t->joiner;
    int claim = joiner ? pz__task_claim(joiner, t->joiner_gen, PZ__WAKE_UNPARK) : PZ__CLAIM_LOST;
    pz__spin_unlock(&t->join_lock);
    if (claim == PZ__CLAIM_WON_READY)
        pz__task_ready(joiner, true);
    if (free_it)
        pz__task_free(t);
}

static const char *name_of(const pz_task_t *t)
{
    return t->name[0] ? t->name : "unnamed";
}

int pz_join(pz_task_t *h, void **result)
{
    pz_task_t *self = pz__current_task();
    if (!h) {
        pz__report("pz_join: task is NULL");
        return -EINVAL;
    }
    pz_task_t *t = pz__task_of(h, "pz_join");
    if (!t)
        return -EINVAL;
    if (!self) {
        pz__report("pz_join: called outside a task (join from a task of the runtime)");
        return -EPERM;
    }
    if (t == self) {
        pz__report("pz_join: task %llu (%s) joins itself", (unsigned long long)t->id, name_of(t));
        return -EDEADLK;
    }
    pz__spin_lock(&t->join_lock);
    if (t->detached) {
        pz__spin_unlock(&t->join_lock);
        pz__report("pz_join: task %llu (%s) is detached and cannot be joined", (unsigned long long)t->id,
                   name_of(t));
        return -EINVAL;
    }
    if (t->joiner) {
        pz__spin_unlock(&t->join_lock);
        pz__report("pz_join: task %llu (%s) is already being joined by task %llu", (unsigned long long)t->id,
                   name_of(t), (unsigned long long)t->joiner->id);
        return -EINVAL;
    }
    while (!t->done) {
        pz__wait_note(PZ__WAIT_JOIN, t);
        t->joiner_gen = pz__park_prepare(false);
        t->joiner = self;
        pz__spin_unlock(&t->join_lock);
        int r = pz__park_commit(NULL, NULL, PZ_FOREVER);
        pz__spin_lock(&t->join_lock);
        t->joiner = NULL;
        if (r == -ECANCELED && !t->done) {
            pz__spin_unlock(&t->join_lock);
            return -ECANCELED;
        }
    }
    pz__spin_unlock(&t->join_lock);
    int err = t->start_error;
    if (result)
        *result = err < 0 ? NULL : t->result;
    pz__task_free(t);
    return err;
}

int pz_detach(pz_task_t *h)
{
    if (!h)
        return -EINVAL;
    pz_task_t *t = pz__task_of(h, "pz_detach");
    if (!t)
        return -EINVAL;
    pz__spin_lock(&t->join_lock);
    if (t->detached || t->joiner) {
        bool twice = t->detached;
        pz__spin_unlock(&t->join_lock);
        pz__report("pz_detach: task %llu (%s) is %s; ignored", (unsigned long long)t->id, name_of(t),
                   twice ? "already detached" : "being joined");
        return -EINVAL;
    }
    t->detached = true;
    bool done = t->done;
    pz__spin_unlock(&t->join_lock);
    if (done)
        pz__task_free(t);
    return 0;
}

int pz__task_claim(pz_task_t *t, uint64_t gen, int reason)
{
    uint64_t s = atomic_load_explicit(&t->park_state, memory_order_acquire);
    for (;;) {
        unsigned st = PZ__PS_STATE(s);
        if (PZ__PS_GEN(s) != gen || (st != PZ__PS_PARKING && st != PZ__PS_PARKED))
            return PZ__CLAIM_LOST;
        if (reason == PZ__WAKE_CANCEL && (s & PZ__PS_NOCANCEL))
            return PZ__CLAIM_LOST;
        uint64_t won = PZ__PS_MAKE(gen, s & PZ__PS_NOCANCEL, reason, PZ__PS_WOKEN);
        if (atomic_compare_exchange_weak_explicit(&t->park_state, &s, won, memory_order_acq_rel,
                                                  memory_order_acquire))
            return st == PZ__PS_PARKED ? PZ__CLAIM_WON_READY : PZ__CLAIM_WON;
    }
}

void pz_cancel(pz_task_t *h)
{
    pz_task_t *t = pz__task_of(h, "pz_cancel");
    if (!t)
        return;
    /* Dekker pair with pz__park_commit: it enters PARKING, then reads
     * cancelled; we set cancelled, then read the park word.  With both
     * sequentially consistent, at least one side sees the other. */
    atomic_store_explicit(&t->cancelled, true, memory_order_seq_cst);
    uint64_t s = atomic_load_explicit(&t->park_state, memory_order_seq_cst);
    unsigned st = PZ__PS_STATE(s);
    if (st == PZ__PS_PARKING || st == PZ__PS_PARKED) {
        if (pz__task_claim(t, PZ__PS_GEN(s), PZ__WAKE_CANCEL) == PZ__CLAIM_WON_READY)
            pz__task_ready(t, false);
    }
}

uint64_t pz__park_prepare(bool nocancel)
{
    pz_task_t *self = pz__current_task();
    nocancel = nocancel || self->shield; /* src/runtime/cancel.c */
    /* A park starts from a running task: the previous one is over. */
    PZ__ASSERT(PZ__PS_STATE(atomic_load_explicit(&self->park_state, memory_order_relaxed)) == PZ__PS_RUNNING);
    uint64_t gen = ++self->park_gen;
    atomic_store_explicit(&self->park_state,
                          PZ__PS_MAKE(gen, nocancel ? PZ__PS_NOCANCEL : 0, 0, PZ__PS_PARKING),
                          memory_order_seq_cst);
    return gen;
}

static void park_after(pz__worker *w, void *arg)
{
    (void)w;
    pz_task_t *t = arg;
    /* Read before the task can be woken and reuse these fields. */
    uint64_t gen = t->park_gen;
    pz__park_fn cb = t->park_cb;
    void *cb_arg = t->park_cb_arg;
    bool claimed_early = false;
    uint64_t s = atomic_load_explicit(&t->park_state, memory_order_acquire);
    for (;;) {
        /* Only this park's generation, and only PARKING (ours to move)
         * or WOKEN (a claimer's). */
        PZ__ASSERT(PZ__PS_GEN(s) == gen);
        PZ__ASSERT(PZ__PS_STATE(s) == PZ__PS_PARKING || PZ__PS_STATE(s) == PZ__PS_WOKEN);
        if (PZ__PS_STATE(s) == PZ__PS_WOKEN) {
            claimed_early = true;
            break;
        }
        uint64_t parked = (s & ~(uint64_t)PZ__PS_STATE_MASK) | PZ__PS_PARKED;
        if (atomic_compare_exchange_weak_explicit(&t->park_state, &s, parked, memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }
    if (cb && !cb(cb_arg) && !claimed_early) {
        if (pz__task_claim(t, gen, PZ__WAKE_ABORT) == PZ__CLAIM_WON_READY)
            pz__task_ready(t, false);
    }
    if (claimed_early) {
        /* Claimed while it switched away.  By its timer (its deadline had
         * passed, or passed meanwhile): a timer's wake-up, through the wake
         * list like every other (sched.c), so a task that has fallen behind
         * its deadlines is not sent to the tail of a long run queue. */
        if (PZ__PS_REASON(s) == PZ__WAKE_TIMEOUT)
            pz__task_ready_woken(t, t, 1);
        else
            pz__task_ready(t, false);
    }
}

int pz__park_commit(pz__park_fn cb, void *arg, int64_t deadline)
{
    pz__worker *w = pz__current_worker();
    pz_task_t *self = w->current;
    uint64_t gen = self->park_gen;
    uint64_t s = atomic_load_explicit(&self->park_state, memory_order_relaxed);
    if (deadline != PZ_FOREVER) {
        if (pz__deadline_reached(deadline)) {
            pz__task_claim(self, gen, PZ__WAKE_TIMEOUT);
        } else {
            pz__timer_insert(w, self, deadline, gen);
            self->timer_armed = true;
        }
    }
    if (!(s & PZ__PS_NOCANCEL) && atomic_load_explicit(&self->cancelled, memory_order_seq_cst))
        pz__task_claim(self, gen, PZ__WAKE_CANCEL);
    self->park_cb = cb;
    self->park_cb_arg = arg;
    pz__wait_publish(self);
    pz__suspend(park_after, self);
    pz__wait_clear(self);

    s = atomic_load_explicit(&self->park_state, memory_order_acquire);
    /* Exactly one claim made it runnable, for this park. */
    PZ__ASSERT(PZ__PS_STATE(s) == PZ__PS_WOKEN && PZ__PS_GEN(s) == gen);
    int reason = PZ__PS_REASON(s);
    if (self->timer_armed) {
        if (reason != PZ__WAKE_TIMEOUT)
            pz__timer_remove(atomic_load_explicit(&pz__rt, memory_order_relaxed), self);
        self->timer_armed = false;
    }
    atomic_store_explicit(&self->park_state, PZ__PS_MAKE(gen, 0, 0, PZ__PS_RUNNING), memory_order_relaxed);
    switch (reason) {
    case PZ__WAKE_UNPARK:
        return 0;
    case PZ__WAKE_TIMEOUT:
        return -ETIMEDOUT;
    case PZ__WAKE_CANCEL:
        return -ECANCELED;
    default:
        return -EAGAIN;
    }
}

int64_t pz_now(void)
{
    return pz__clock_now();
}

int pz_sleep_until(int64_t deadline)
{
    if (!pz__current_task()) {
        pz__thread_sleep_until(deadline);
        return 0;
    }
    pz__wait_note(PZ__WAIT_SLEEP, NULL);
    pz__park_prepare(false);
    int r = pz__park_commit(NULL, NULL, deadline);
    return r == -ECANCELED ? r : 0;
}

int pz_sleep(int64_t ns)
{
    if (ns < 0)
        ns = 0;
    int64_t now = pz__clock_now();
    return pz_sleep_until(ns > PZ_FOREVER - now ? PZ_FOREVER : now + ns);
}
