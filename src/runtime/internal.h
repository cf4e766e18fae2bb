/*
 * Internal declarations of the runtime layer.  Never installed.
 *
 * Threads and ownership:
 * - A worker (pz__worker) is one OS thread.  Its fields are touched only by
 *   that thread except where a field is atomic or says otherwise.
 * - A task runs on one worker at a time and may move between workers each
 *   time it is suspended.  Code that runs in a task must therefore never keep
 *   a pointer to the worker (or to any thread-local) across a suspension:
 *   pz__current_worker() is a read the compiler cannot cache (below).
 */
#ifndef PZ_RUNTIME_INTERNAL_H
#define PZ_RUNTIME_INTERNAL_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "plaza/runtime.h"
#include "../arch/arch.h"
#include "spin.h"

#if defined(__SANITIZE_ADDRESS__)
#define PZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PZ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PZ_TSAN 1
#endif
#endif

/*
 * PZ__ASSERT(cond): an invariant a comment states.  Checked in Debug builds
 * and in the sanitizer builds (CMake defines PZ_ASSERTS for both); compiled
 * out otherwise, so release fast paths are the same instructions.  A
 * broken invariant prints "plaza: assertion failed" with the condition and
 * where, on stderr (not the report sink: the runtime cannot be trusted any
 * more), and aborts.
 */
#ifdef PZ_ASSERTS
#define PZ__ASSERT(cond) (__builtin_expect(!!(cond), 1) ? (void)0 : pz__assert_fail(#cond, __FILE__, __LINE__, __func__))
#else
#define PZ__ASSERT(cond) ((void)sizeof(!(cond)))
#endif
_Noreturn void pz__assert_fail(const char *cond, const char *file, int line, const char *func);

#define PZ__CACHELINE 64
#define PZ__DEFAULT_STACK (256u * 1024u)
#define PZ__MIN_STACK (16u * 1024u)
#define PZ__MAX_STACK (1024u * 1024u * 1024u)

typedef struct pz__worker pz__worker;
typedef struct pz__runtime pz__runtime;
typedef struct pz__stack_chunk pz__stack_chunk;

/* A stack: its lowest byte (the guard's) and the chunk it is cut from
 * (src/runtime/stack.c). */
typedef struct pz__stack_slot {
    void *base;
    pz__stack_chunk *chunk;
} pz__stack_slot;

/* The locks a task or thread holds: pz__holds, in plaza/runtime.h (the
 * sync locks write it inline; held.c). */
/* A snapshot of one entry, for reports. */
typedef struct pz__held_view {
    const void *lock;
    const char *kind;
    void *site;
} pz__held_view;
/* Copies up to PZ__HELD_MAX entries of h into out; returns how many, and
 * the whole depth in *depth. */
static inline unsigned pz__holds_read(const pz__holds *h, pz__held_view *out, unsigned *depth)
{
    unsigned d = atomic_load_explicit(&((pz__holds *)h)->depth, memory_order_relaxed);
    unsigned n = d < PZ__HELD_MAX ? d : PZ__HELD_MAX;
    for (unsigned i = 0; i < n; i++) {
        pz__held *e = (pz__held *)&h->rec[i];
        out[i].lock = atomic_load_explicit(&e->lock, memory_order_relaxed);
        out[i].kind = atomic_load_explicit(&e->kind, memory_order_relaxed);
        out[i].site = atomic_load_explicit(&e->site, memory_order_relaxed);
    }
    if (depth)
        *depth = d;
    return n;
}

/* Why a task or thread waits (wait.c).  Recorded at the one place every
 * wait goes through: pz__park_commit for a task, the thread path of
 * pz_park (and the few thread waits outside it) for a thread. */
enum pz__wait_kind {
    PZ__WAIT_NONE = 0,
    PZ__WAIT_MUTEX,        /* pz_mutex: blocks the thread */
    PZ__WAIT_RWLOCK,       /* pz_rwlock: blocks the thread */
    PZ__WAIT_CONDVAR,      /* pz_condvar: blocks the thread */
    PZ__WAIT_ONCE,         /* pz_once: blocks the thread */
    PZ__WAIT_ASYNC_MUTEX,
    PZ__WAIT_ASYNC_RWLOCK,
    PZ__WAIT_SEMAPHORE,
    PZ__WAIT_NOTIFY,
    PZ__WAIT_BARRIER,
    PZ__WAIT_CHAN_SEND,
    PZ__WAIT_CHAN_RECV,
    PZ__WAIT_FD_READ,
    PZ__WAIT_FD_WRITE,
    PZ__WAIT_SLEEP,
    PZ__WAIT_JOIN,
    PZ__WAIT_GROUP,
    PZ__WAIT_BLOCKING,     /* pz_blocking: its job runs on the pool */
    PZ__WAIT_YIELD,
    PZ__WAIT_SELECT,
    PZ__WAIT_PARK,         /* pz_park on an address, by a user's primitive */
    PZ__WAIT_KINDS
};
/* A published wait: kind, object and since when (pz_now()).  Written by
 * its owner only, read racily by reports (relaxed atomics). */
typedef struct pz__wait {
    _Atomic int kind;
    _Atomic(const void *) obj;
    _Atomic int64_t since;
} pz__wait;

/* One execution context: a task, or a worker's own scheduler loop on the
 * thread's native stack. */
typedef struct pz__ctx {
    void *sp;          /* saved stack pointer while not running */
    void *stack_lo;    /* lowest usable byte of the stack (sanitizers) */
    size_t stack_size; /* usable bytes above stack_lo (sanitizers) */
    void *asan_fake;   /* ASan's fake-stack handle while switched out */
    void *tsan_fiber;  /* TSan's fiber for this context */
} pz__ctx;

/*
 * The park word of a task, written by the task when it parks and by exactly
 * one waker when it is woken:
 *
 *   bits 0-1   state: PZ__PS_RUNNING, PZ__PS_PARKING (switching off its stack,
 *              claimable), PZ__PS_PARKED (off its stack, claimable; the claimer
 *              must make it runnable), PZ__PS_WOKEN (claimed)
 *   bit  2     PZ__PS_NOCANCEL: pz_cancel does not claim this park
 *   bits 4-7   the wake reason the claimer stored (PZ__WAKE_*)
 *   bits 16-63 the park generation: every park gets a new one, and a waker
 *              names the generation it means, so a stale timer, cancel or
 *              unpark can never wake a later park.
 *
 * A claim is one CAS from PARKING or PARKED to WOKEN for the named
 * generation; whoever wins it decides the reason and no one else can.
 */
enum {
    PZ__PS_RUNNING = 0,
    PZ__PS_PARKING = 1,
    PZ__PS_PARKED = 2,
    PZ__PS_WOKEN = 3,
    PZ__PS_STATE_MASK = 3,
    PZ__PS_NOCANCEL = 4,
};
enum {
    PZ__WAKE_UNPARK = 0,
    PZ__WAKE_TIMEOUT = 1,
    PZ__WAKE_CANCEL = 2,
    PZ__WAKE_ABORT = 3, /* the park callback declined to sleep */
};
#define PZ__PS_GEN_SHIFT 16
#define PZ__PS_MAKE(gen, flags, reason, st) \
    (((uint64_t)(gen) << PZ__PS_GEN_SHIFT) | ((uint64_t)(reason) << 4) | (uint64_t)(flags) | (uint64_t)(st))
#define PZ__PS_GEN(s) ((s) >> PZ__PS_GEN_SHIFT)
#define PZ__PS_STATE(s) ((unsigned)((s) & PZ__PS_STATE_MASK))
#define PZ__PS_REASON(s) ((int)(((s) >> 4) & 15))

/* Results of pz__task_claim. */
enum {
    PZ__CLAIM_LOST = 0,     /* someone else woke that park, or it is over */
    PZ__CLAIM_WON = 1,      /* won; the task was still switching off its stack
                             * and will make itself runnable */
    PZ__CLAIM_WON_READY = 2 /* won; the caller must call pz__task_ready */
};

/* Called on the next context after a task has switched off its stack.
 * Returns false to abort the park (the task resumes at once). */
typedef bool (*pz__park_fn)(void *arg);

struct pz_task {
    pz__ctx ctx;
    struct pz_task *next;     /* link in the injection queue or a local list */
    pz_fn fn;
    void *arg;
    void *result;
    uint64_t id;

    /* Stack: taken when the task first runs, returned when it ends. */
    pz__stack_slot stack;
    void *stack_base;         /* the stack's lowest byte, its guard's */
    size_t stack_map_size;    /* guard + usable; 0: no stack */
    size_t stack_size;        /* requested usable size */
    size_t guard_size;

    int saved_errno;          /* errno of the task while it is switched out */
    int start_error;          /* < 0: it never ran (no stack); pz_join returns it */

    _Atomic uint64_t park_state; /* see the park word above */
    uint64_t park_gen;        /* last generation used; the task's own */
    pz__park_fn park_cb;      /* the pending park's callback and argument */
    void *park_cb_arg;
    _Atomic bool cancelled;

    /* Timer: valid while timer_index >= 0, guarded by the lock of the heap of
     * worker timer_worker (the deadline is in the heap's entry). */
    uint64_t timer_gen;
    int timer_index;
    int timer_worker;
    bool timer_armed;         /* the task's own: it inserted a timer this park */

    /* Join state, guarded by join_lock. */
    pz__spin join_lock;
    bool done;
    bool detached;
    pz_task_t *joiner;
    uint64_t joiner_gen;

    pz__holds holds;          /* the plaza locks it holds (held.c) */

    /* Introspection (wait.c, task.c): the wait announced for the next park
     * (the task's own), the wait it is in now, where it was spawned, and
     * its links in the registry of live tasks (under the registry lock). */
    int note_kind;
    bool note_again; /* the note continues the last wait (pz__wait_note_again) */
    const void *note_obj;
    pz__wait wait;
    _Atomic bool wait_blocks_thread; /* the wait blocks its worker thread */
    void *spawn_site;
    struct pz_task *reg_prev, *reg_next;
    bool registered;
    uint8_t reg_shard;        /* which list of the registry (task.c) */
    _Atomic bool reg_hidden;  /* ended: reports skip it (task.c) */
    pz__observer observer;    /* the lock observation's (src/runtime/observe.c) */

    char name[32];

    /* The service kit (src/runtime/cancel.c, group.c, local.c); the
     * task's own fields, touched only by the task itself. */
    unsigned shield;           /* pz_shield_begin depth: waits are not cancelled */
    struct pz_group *groups;   /* groups it opened and has not waited for */
    struct pz__local *locals;  /* its task-local values */
    _Atomic uint16_t handle_gen; /* src/runtime/handle.c */
};

/* Bounded single-producer multi-consumer ring of runnable tasks.  Only the
 * owning worker pushes (writes tail); the owner and stealers pop by CAS on
 * head.  Slots are atomics so stealers may read them racily and discard what
 * they read if their CAS fails. */
#define PZ__RUNQ_CAP 256u
typedef struct pz__runq {
    _Alignas(PZ__CACHELINE) _Atomic uint32_t head;
    _Alignas(PZ__CACHELINE) _Atomic uint32_t tail;
    _Atomic(pz_task_t *) slots[PZ__RUNQ_CAP];
} pz__runq;

/* An entry of a timer heap: the deadline is kept beside the task, so that
 * sifting compares entries of the array and touches a task only to record
 * where it moved (its timer_index). */
typedef struct pz__timer_entry {
    int64_t deadline;
    pz_task_t *task;
} pz__timer_entry;

/* A worker's timers: a binary min-heap of parked tasks by deadline. */
typedef struct pz__timers {
    pz__spin lock;
    pz__timer_entry *heap;
    size_t len, cap;
    _Atomic int64_t next;      /* earliest deadline, PZ_FOREVER if none */
} pz__timers;

#define PZ__STACK_CACHE 16
/* Object slots per worker: one cache line of addresses. */
#define PZ__WORKER_SLOTS (PZ__CACHELINE / (int)sizeof(uintptr_t))

struct pz__worker {
    _Alignas(PZ__CACHELINE) int index;
    pz__runtime *rt;
    pz__ctx sched_ctx;         /* the scheduler loop's context */
    pz_task_t *current;        /* the task running now, NULL in the loop */

    /* What the context switched to must do first: set by the context that
     * switches away, run by the one that resumes (release after switch). */
    void (*after_fn)(pz__worker *w, void *arg);
    void *after_arg;

    pz__runq runq;
    _Atomic(pz_task_t *) lifo; /* the task woken last by this worker */
    unsigned lifo_streak;
    unsigned wake_streak;      /* tasks taken from the wake list in a row */
    unsigned idle_spin_skips;  /* idle moments without a spin while spins do not pay */
    unsigned coop_spent;       /* pz__coop_tick calls since the switch-in */
    uint32_t tick;
    bool in_loop;              /* the worker loop is choosing (not a task) */
    bool waking_io;            /* in worker_poll: wakes go to the queue's tail */
    bool polled;               /* back from waiting in the poller: find_work does not poll again */
    uint64_t rng;
    bool searching;            /* written under the runtime's idle lock */

    pz__timers timers;

    pz__stack_slot stack_cache[PZ__STACK_CACHE];
    int stack_cache_len;

    /* The id of the task running on this worker, 0 while none is: written
     * only by this worker at every switch, read by lock slow paths of
     * other workers deciding whether a holder may be running (so it has a
     * line of its own). */
    _Alignas(PZ__CACHELINE) _Atomic uint64_t running_id;
    /* Switches made by this worker (written with running_id, on the same
     * line; the monitor compares samples to find stalls), and its thread's
     * kernel id (for /proc). */
    _Atomic uint64_t switches;
    _Atomic int tid;
    /* Tasks in a lock wait and in a blocking-pool wait, counted up by the
     * worker a task parks on and down by the one it resumes on (each
     * counter written only by its own worker; only the sum over the
     * workers means anything).  The monitor walks no task while both sums
     * are zero. */
    _Atomic long lock_waits;
    _Atomic long blocking_waits;

    /* Object slots: each holds the address of a sync object or 0, and
     * what an address in a slot means is that object's business (today:
     * a read hold of a pz_async_rwlock, src/async/rwlock.c).  Only for
     * objects that cannot be freed while their address is in a slot.
     * Taken and released by CAS, mostly by tasks running on this worker;
     * scanned by others that revoke an object's slots.  A line of their
     * own, so that tasks on different workers write different lines. */
    _Alignas(PZ__CACHELINE) _Atomic uintptr_t slots[PZ__WORKER_SLOTS];

    _Alignas(PZ__CACHELINE) _Atomic uint32_t sleep_word; /* 1: notified */
    bool sleeping;             /* in the sleeper list; under the idle lock */
    bool polling;              /* sleeping in the poller; under the idle lock */

    pthread_t thread;
    void *altstack;

    /* Spare slots only (spare.c): PZ__SLOT_FREE (no thread), _RUNNING,
     * _RETIRE (told to leave at its next scheduling point), _EXITED (its
     * thread has returned and waits to be joined).  A configured worker
     * stays PZ__SLOT_FREE.  Written by the monitor, by the spare (EXITED)
     * and by pz_run's shutdown; see spare.c for who may do what. */
    _Atomic int slot_state;
    int cover;                 /* the slot whose blocked thread this spare stands in for */
};

enum { PZ__SLOT_FREE = 0, PZ__SLOT_RUNNING = 1, PZ__SLOT_RETIRE = 2, PZ__SLOT_EXITED = 3 };

struct pz__runtime {
    int nworkers;              /* the configured workers: slots [0, nworkers) */
    pz__worker *workers;       /* nworkers + spare_max slots (spare.c) */
    int spare_max;             /* spare slots: [nworkers, nworkers + spare_max) */
    /* Slots that have ever had a thread: [0, nslots).  Only grows (by the
     * monitor, seq_cst, before a spare's thread starts); every walk over
     * the workers' queues, timers, object slots and counters goes up to
     * it (pz__rt_slots), so a retired spare's leftovers are still seen. */
    _Atomic int nslots;
    /* Threads in a worker loop now: nworkers plus the spares that have not
     * exited (the monitor's "all idle" compares nsleeping with it). */
    _Atomic int nthreads;
    size_t stack_size;
    size_t guard_size;
    int guard_kind;            /* PZ__GUARD_* */

    /* Global injection queue, two lists under one lock (runq.c):
     * - the wake list: tasks woken by an event, that is an expired timer, a
     *   finished blocking-pool job or a thread that is not a worker; every
     *   scheduling decision looks at it (sched.c, next_local);
     * - the ordinary list: the overflow of full local queues, looked at
     *   every PZ__MAINTENANCE_INTERVAL decisions and when a worker has
     *   nothing local.
     * inject_len counts the tasks of both lists (so "is anything queued
     * globally" stays one load), wake_len those of the wake list.  Every
     * decision of every worker reads wake_len, so it has a line of its own,
     * written only when the wake list changes (not by the overflow). */
    _Alignas(PZ__CACHELINE) pz__spin inject_lock;
    pz_task_t *inject_head, *inject_tail;
    pz_task_t *wake_head, *wake_tail;
    _Atomic size_t inject_len;
    _Alignas(PZ__CACHELINE) _Atomic size_t wake_len;

    /* Idle workers.  nsleeping and nsearching are read without the lock to
     * decide cheaply whether a wake-up is needed. */
    _Alignas(PZ__CACHELINE) pz__spin idle_lock;
    int *sleepers;
    int nsleepers;
    /* The timer watcher: the sleeper that wakes at the earliest timer
     * deadline of all heaps (watch_until), or -1.  Under idle_lock; the
     * rule and why it is enough are in sched.c's idle. */
    int watcher;
    int64_t watch_until;
    _Atomic int nsleeping;
    _Atomic int nsearching;
    /* The configured idle spin (pz_config_t.idle_spin_us, in ns; 0: none),
     * the number of workers in it now (at most one: idle_spin), and how
     * often spins have found work lately, in 1/PZ__IDLE_SPIN_ONE (written
     * by the spinner only; sched.c, idle_spin). */
    int64_t idle_spin_ns;
    _Atomic int nidle_spinning;
    _Atomic int idle_spin_paid;

    _Atomic bool shutdown;
    _Atomic uint32_t main_done;
    pz_task_t *main_task;      /* set before the workers start */
    _Atomic uint32_t start_gate; /* 1 once every worker thread exists */
    int main_error;            /* < 0: main never ran (no stack) */
    /* Tasks spawned and not yet freed: written by every spawn and free, so
     * on a line of its own (beside idle_lock's fields, which idle and
     * waking workers write, it was most of pz__task_free's time). */
    _Alignas(PZ__CACHELINE) _Atomic long live_tasks;

    /* The poller driver (driver.c).  io_waiters counts tasks and
     * threads waiting for readiness: while it is zero nobody polls.  One
     * worker at a time polls (driver_busy); it is then "polling" and is
     * woken through the waker descriptor instead of its futex. */
    int poller;
    int waker;
    _Atomic long io_waiters;
    _Atomic bool driver_busy;
    pz__spin io_table_lock;
    struct pz__io_source *_Atomic *io_chunks;

    /* Chunks of default-size stacks with a free stack (src/runtime/stack.c). */
    _Alignas(PZ__CACHELINE) pz__spin stack_pool_lock;
    pz__stack_chunk *chunks_head, *chunks_tail;
    int spare_chunks;
    long dirty_stacks; /* free stacks whose pages were not given back */
    _Atomic bool stack_failure_reported;
};

extern _Atomic(pz__runtime *) pz__rt;

/* The number of worker slots to walk (see nslots): seq_cst, because the
 * async rwlock's revocation pairs it with its readers' slot writes
 * (src/async/rwlock.c; the argument is in spare.c). */
static inline int pz__rt_slots(pz__runtime *rt)
{
    return atomic_load_explicit(&rt->nslots, memory_order_seq_cst);
}

/* The running runtime, kept alive until pz__rt_unpin: for code that walks
 * its workers from any thread (lock slow paths).  A worker needs no pin
 * (workers stop before the runtime is freed); a plain thread is counted,
 * and pz_run waits for the count to drop after it clears pz__rt.  Hold a
 * pin only for a short walk, never across a wait.  NULL: no runtime. */
pz__runtime *pz__rt_pin(void);
void pz__rt_unpin(pz__runtime *rt);

/* current.c */
pz__worker *pz__current_worker_call(void);
/* The calling thread's worker, or NULL.  Read afresh at every call, never
 * cached across a suspension: on x86-64 plaza/runtime.h's volatile read
 * (pz__self_worker), elsewhere out of line. */
static inline pz__worker *pz__current_worker(void)
{
#if defined(__x86_64__)
    return (pz__worker *)pz__self_worker();
#else
    return pz__current_worker_call();
#endif
}
void pz__set_current_worker(pz__worker *w);
/* A plain thread's caller id (0 until pz__caller_id gives it one;
 * current.c), for library paths that do not suspend and so may read the
 * thread-local directly (as pz__self_tls). */
extern __thread uint64_t pz__thread_id __attribute__((tls_model("initial-exec")));

/* Object slots (pz__worker.slots), the runtime's API for the layers above:
 * a line of PZ__WORKER_SLOTS words per worker.  The calling worker's line,
 * or NULL on a plain thread. */
static inline _Atomic uintptr_t *pz__slots_mine(void)
{
    pz__worker *w = pz__current_worker();
    return w ? w->slots : NULL;
}
/* Calls fn(line, ctx) on every worker's line, one after another, until it
 * returns true; returns whether one did.  From any thread (slots.c pins the
 * runtime for the walk); false with no runtime.  fn must not wait. */
bool pz__slots_each(bool (*fn)(_Atomic uintptr_t *line, void *ctx), void *ctx);

/* runq.c */
void pz__runq_init(pz__runq *q);
pz_task_t *pz__runq_steal(pz__runq *victim, pz__runq *dst); /* dst's owner */

/* Owner only; false when full.  Inline: it is on every switch. */
static inline bool pz__runq_push(pz__runq *q, pz_task_t *t)
{
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (tail - head >= PZ__RUNQ_CAP)
        return false;
    atomic_store_explicit(&q->slots[tail % PZ__RUNQ_CAP], t, memory_order_relaxed);
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    return true;
}

/* Owner only. */
static inline pz_task_t *pz__runq_pop(pz__runq *q)
{
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    for (;;) {
        uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
        if (head == tail)
            return NULL;
        pz_task_t *t = atomic_load_explicit(&q->slots[head % PZ__RUNQ_CAP], memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(&q->head, &head, head + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return t;
    }
}

static inline uint32_t pz__runq_len(pz__runq *q)
{
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    uint32_t head = atomic_load_explicit(&q->head, memory_order_acquire);
    return tail - head;
}
size_t pz__runq_take_half(pz__runq *q, pz_task_t **out); /* owner, for overflow */
/* The injection queue's ordinary list: push n linked tasks; pop one to run
 * (and, when w's local queue is empty, a share more into it). */
void pz__inject_push(pz__runtime *rt, pz_task_t *first, pz_task_t *last, size_t n);
pz_task_t *pz__inject_pop(pz__runtime *rt, pz__worker *w);
/* Its wake list: push n linked tasks at the tail; pop the head. */
void pz__wake_push(pz__runtime *rt, pz_task_t *first, pz_task_t *last, size_t n);
pz_task_t *pz__wake_pop(pz__runtime *rt);

/* sched.c */
void pz__task_ready(pz_task_t *t, bool lifo);
/* Makes n linked tasks (first..last) that an event woke runnable through
 * the wake list (timers; pz__task_ready does it for a non-worker caller). */
void pz__task_ready_woken(pz_task_t *first, pz_task_t *last, size_t n);
void pz__notify_work(pz__runtime *rt);
void pz__suspend(void (*after)(pz__worker *, void *), void *arg);
_Noreturn void pz__task_exit_switch(pz_task_t *t);
void pz__resume(void);
/* The thread function of a worker (sched.c), started by pz_run. */
void *pz__worker_main(void *arg);

/* task.c: parking a task. */
uint64_t pz__park_prepare(bool nocancel);
int pz__park_commit(pz__park_fn cb, void *arg, int64_t deadline);
int pz__task_claim(pz_task_t *t, uint64_t gen, int reason);
void pz__task_finish(pz__worker *w, pz_task_t *t);
void pz__task_free(pz_task_t *t);
/* Hides an ended t from reports (they never read its stack after this);
 * its struct stays on the registry until pz__task_free. */
void pz__task_unregister(pz_task_t *t);
pz_task_t *pz__current_task(void);

/* sched.c: counts one step of the running task's cooperative budget and
 * yields when it is spent (see sched.c; PZ__COOP_BUDGET and the step at the
 * release of a contended lock, pz__coop_release_step, are in
 * plaza/runtime.h). */
void pz__coop_tick(void);
/* Counts one step of the running task's budget without yielding: for a
 * wait that should not itself be lengthened by a yield (a lock call that
 * may well find its lock free); the task's next tick yields if the budget
 * is spent by then. */
static inline void pz__coop_count(void)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current)
        w->coop_spent++;
}

/* sched.c: true if the task with this id is running on some worker of the
 * runtime right now (a snapshot; the answer may change at once). */
bool pz__task_id_running(uint64_t id);

/* timer.c */
void pz__timers_init(pz__timers *tm);
void pz__timers_destroy(pz__timers *tm);
void pz__timer_insert(pz__worker *w, pz_task_t *t, int64_t deadline, uint64_t gen);
void pz__timer_remove(pz__runtime *rt, pz_task_t *t);
/* Fires the expired timers of heap tm: their tasks go to rt's wake list,
 * without waking a worker (the caller, an awake worker, decides: sched.c's
 * fire_timers).  Returns how many. */
int pz__timers_fire(pz__runtime *rt, pz__timers *tm, int64_t now, bool try_only);
int64_t pz__timers_earliest(pz__runtime *rt);

/* stack.c */
int pz__stack_acquire(pz__worker *w, pz_task_t *t);
/* w: the releasing worker (its cache), or NULL. */
void pz__stack_release(pz__runtime *rt, pz__worker *w, pz_task_t *t);
void pz__stacks_destroy(pz__runtime *rt);
void pz__overflow_handler_install(void);
int pz__altstack_setup(pz__worker *w);
void pz__altstack_teardown(pz__worker *w);

/* driver.c: the poller driver and the readiness waiters (see there). */
#define PZ__IO_READ 1u
#define PZ__IO_WRITE 2u
#define PZ__IO_CLOSED 4u
#define PZ__IO_ENDED 8u
#define PZ__IO_WATCH_WRITE 16u
#define PZ__IO_TICK 256u
/* pz__io_source_signal: the descriptor was closed by pz_close. */
#define PZ__SIG_CLOSED 0x100u

enum { PZ__SRC_NEW = 0, PZ__SRC_POLLED = 1, PZ__SRC_BLOCKING = 2 };

/* A task waiting for readiness: on its own stack, in its source's list. */
typedef struct pz__io_waiter {
    struct pz__io_waiter *next;
    pz_task_t *task;
    uint64_t gen;
    uint64_t bit;  /* PZ__IO_READ, PZ__IO_WRITE or both: woken by either */
    bool linked;   /* in the list; under the source's lock */
    /* A select's node (src/io/select.c): the waker first sets *fired from
     * -1 to branch and skips the node if that fails; NULL otherwise. */
    _Atomic int *fired;
    int branch;
} pz__io_waiter;

typedef struct pz__io_source {
    _Atomic uint64_t readiness; /* see driver.c */
    _Atomic int kind;           /* PZ__SRC_*; set under lock */
    pz__spin lock;              /* registration and the waiter list */
    int fd;                     /* its descriptor, set at registration */
    /* A byte stream (stream socket or pipe), set at registration: a read
     * that returns fewer bytes than asked has emptied it (src/io/io.c). */
    bool stream;
    /* A socket (of any type), set at registration with stream. */
    bool socket;
    /* Times the poller registration changed between read only and read
     * and write (pz__driver_watch_write and its undoing) since the
     * descriptor was registered, counted under lock.  Only the tests read
     * it: a connection that never fills its send buffer must never change
     * it. */
    _Atomic uint32_t interest_changes;
    pz__io_waiter *waiters;
} pz__io_source;

int pz__driver_init(pz__runtime *rt);
void pz__driver_destroy(pz__runtime *rt);
/* Waits for readiness until deadline (ns, < 0 none, 0 no wait) and wakes
 * the waiters of every ready descriptor.  Returns the number of events. */
int pz__driver_poll(pz__runtime *rt, int64_t deadline, int max_events);
pz__io_source *pz__io_source_of(pz__runtime *rt, int fd);
/* Sets the readiness bits of events (PZ__EV_*, PZ__SIG_CLOSED) and wakes
 * the waiters they concern. */
void pz__io_source_signal(pz__io_source *src, unsigned events);
/* The running task waits until bit (PZ__IO_READ or PZ__IO_WRITE) is set in
 * src's readiness: 0, -EBADF (closed), -ETIMEDOUT or -ECANCELED. */
int pz__driver_wait(pz__runtime *rt, pz__io_source *src, uint64_t bit, int64_t deadline);
/* For a select, between its pz__park_prepare and pz__park_commit: links wt
 * (task, gen, bit, fired, branch set) unless bit or CLOSED is set already
 * (then false); pz__driver_leave unlinks it if an event has not, and says
 * whether it did. */
bool pz__driver_enqueue(pz__io_source *src, pz__io_waiter *wt);
bool pz__driver_leave(pz__io_source *src, pz__io_waiter *wt);
/* Makes the poller report src's writability (PZ__IO_WATCH_WRITE), which
 * it does not until a call has found the descriptor not writable: 0 (set
 * already, or set now), -EBADF if src is closed or no longer polled, or
 * the poller's error.  A caller that saw WATCH_WRITE clear must try its
 * call again afterwards before it clears PZ__IO_WRITE (driver.c says
 * why); PZ__IO_WRITE may only be cleared in a word with WATCH_WRITE set. */
int pz__driver_watch_write(pz__runtime *rt, pz__io_source *src);

/* wait.c: wait reasons.  pz__wait_note announces the kind and object of
 * the caller's next wait (a task's next park, or a thread's next blocking
 * wait); a wait without a note is recorded as PZ__WAIT_PARK on its
 * address (pz__wait_note_default).  Cheap: two stores. */
void pz__wait_note(int kind, const void *obj);
void pz__wait_note_default(int kind, const void *obj);
/* As pz__wait_note, for a lock's slow path, which may park several times
 * in one call (woken without the lock, or on its own timer): again says
 * that this park continues the call's wait on the same object, which
 * then keeps the time it began, so dumps show how long the call has
 * waited and the monitor sees one wait, not a new one per park (a
 * deadlock is reported once). */
void pz__wait_note_again(int kind, const void *obj, bool again);
const char *pz__wait_kind_name(int kind);
bool pz__wait_kind_is_lock(int kind);
/* Threads in a plaza wait now (plain threads, and workers blocked by their
 * task), for the monitor. */
long pz__thread_waits(void);
/* The task side, called by pz__park_commit around its switch. */
void pz__wait_publish(pz_task_t *t);
void pz__wait_clear(pz_task_t *t);

/* A plain thread's record (or a worker's while its task blocks it): its
 * held locks and its current wait, registered once per thread so that
 * reports can see blocked threads and the locks threads hold. */
typedef struct pz__thread_rec {
    struct pz__thread_rec *prev, *next;
    int tid;
    uint64_t caller;          /* pz__caller_id of the thread */
    pz__holds holds;          /* a plain thread's held locks */
    pz__wait wait;
    _Atomic(pz_task_t *) task; /* the task blocking this worker, or NULL */
    bool registered;
} pz__thread_rec;
pz__thread_rec *pz__thread_rec_self(void);
/* Brackets a thread-blocking wait (pz_park's thread path). */
void pz__thread_wait_begin(const void *addr);
void pz__thread_wait_end(void);
/* The registries of live tasks (task.c) and of threads (wait.c), for
 * reports: pz__introspect_lock takes both locks (tasks first), and the
 * walks must be made under it.  Held only by reports, briefly by spawn,
 * task end and thread registration. */
void pz__introspect_lock(void);
void pz__introspect_unlock(void);
void pz__task_registry_lock(void);
void pz__task_registry_unlock(void);
void pz__thread_recs_walk(void (*fn)(pz__thread_rec *r, void *arg), void *arg);
void pz__tasks_walk(void (*fn)(pz_task_t *t, void *arg), void *arg);
/* In the child of a fork (lifecycle.c's handler). */
void pz__introspect_after_fork(void);
void pz__tasks_forget(void);
void pz__monitor_after_fork(void);

/* dump.c: the report sink, holders and descriptions for reports. */
void pz__report_line(const char *line);
/* A lock layer's answer to "who holds obj" (a caller id, 0 unknown); must
 * only read obj's words.  Registered per wait kind. */
typedef uint64_t (*pz__holder_fn)(const void *obj);
void pz__holder_query_register(int kind, pz__holder_fn fn);
/* Under pz__introspect_lock: the caller id of lock's holder, 0 unknown;
 * *tid the holder thread's id when it is a plain thread. */
uint64_t pz__holder_of(int kind, const void *lock, int *tid);
void pz__describe_caller(uint64_t id, int tid, char *buf, size_t size);
void pz__describe_wait(int kind, const void *obj, char *buf, size_t size);
void pz__dump_to(FILE *f, const char *why);

/* monitor.c, checks.c: the monitor thread. */
#define PZ__MONITOR_PERIOD_NS (100 * 1000000ll)
/* The longest idle spin pz_config_t.idle_spin_us may ask for, and the
 * one it gets by default (0). */
#define PZ__IDLE_SPIN_MAX_US 1000
#define PZ__IDLE_SPIN_DEFAULT_US 20
/* The idle spin's gate (sched.c, idle_spin): the share of recent spins
 * that found work, in 1/PZ__IDLE_SPIN_ONE, under which a worker spins only
 * at one idle moment in PZ__IDLE_SPIN_PROBE. */
#define PZ__IDLE_SPIN_ONE 1024
#define PZ__IDLE_SPIN_GATE 512
#define PZ__IDLE_SPIN_PROBE 16
extern bool pz__debug;
void pz__monitor_start(pz__runtime *rt, const pz_config_t *c);
void pz__monitor_stop(void);
/* Wakes the monitor if it sleeps because every worker was idle: a worker
 * leaving its idle sleep, a thread starting a plaza wait.  One relaxed
 * load when it does not sleep. */
void pz__monitor_poke(void);
void pz__monitor_configure(const pz_config_t *c);
void pz__monitor_check(pz__runtime *rt, int64_t now);
bool pz__monitor_busy_threads(void);

/* spare.c: spare workers for blocked worker threads (see there). */
#define PZ__SPARE_DEFAULT 64
/* A worker blocked this long in a sync lock behind a holder task that is
 * not running gets a spare at the monitor's next look. */
#define PZ__SPARE_LOCK_NS (10 * 1000000ll)
int pz__spare_configure(const pz_config_t *c);
void pz__spare_monitor_start(pz__runtime *rt, int64_t stall_ns);
void pz__spare_monitor_stop(pz__runtime *rt);
/* Under pz__introspect_lock: task t, running on a worker, blocks its thread
 * in a sync lock wait (kind, obj, since) whose holder is `holder`. */
void pz__spare_lock_wait(pz__runtime *rt, pz_task_t *t, int kind, const void *obj, int64_t since, uint64_t holder,
                         int64_t now);
/* The monitor's look: retires spares whose blocked thread came back, joins
 * the ones that exited, starts spares for newly blocked threads. */
void pz__spare_check(pz__runtime *rt, int64_t now);
/* True while any spare slot has a thread (the monitor keeps looking). */
bool pz__spare_busy(pz__runtime *rt);
/* Worker side: a spare leaving (its thread, in its loop, no task). */
void pz__spare_leave(pz__worker *w);
/* pz_run's shutdown, after the monitor stopped: joins every spare thread. */
void pz__spare_join_all(pz__runtime *rt);
/* sched.c: wakes worker w from its idle sleep (a spare told to retire). */
void pz__worker_kick(pz__worker *w);
/* checks.c: what thread tid does now (true: in a system call or blocked),
 * and a worker thread's CPU time (-1 unknown). */
bool pz__thread_activity(int tid, char *buf, size_t size);
int64_t pz__worker_cpu(pz__worker *w);

/* held.c: a task suspends while it holds a sync lock (reported). */
void pz__held_at_suspend(pz_task_t *t);
/* held.c: a task ends while it holds plaza locks (reported, with each
 * lock and where it was taken; async locks are in the record only with the
 * debug switch on). */
void pz__held_at_exit(pz_task_t *t);

/* blocking.c */
void pz__blocking_configure(int max_threads);
void pz__blocking_shutdown(void);
/* In the child of a fork: forget the parent's pool threads. */
void pz__blocking_after_fork(void);

/* Messages for misuse and failure, one line on stderr prefixed "plaza: ". */
void pz__report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
