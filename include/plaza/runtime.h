/*
 * plaza runtime: stackful tasks on a work-stealing pool of worker threads.
 *
 * Errors are negative errno values (-EINVAL, -ETIMEDOUT, -ECANCELED, ...),
 * never reported through errno.  Deadlines are absolute pz_now()
 * nanoseconds; PZ_FOREVER waits without end; a deadline that has passed
 * (negative ones included) means "do not wait".
 *
 * Bad arguments, call by call (tests/test_bad_args.c checks each):
 *   pz_run: a NULL main, or a field of *cfg out of range (workers or
 *     blocking_threads_max negative, workers or spare_workers over 4096,
 *     spare_workers, monitor or stall_ms below -1, dump_signal not 0 or
 *     a signal number, a stack size over 1 GiB), returns -EINVAL
 *     (reported) before anything starts; cfg NULL is the defaults, result
 *     NULL is allowed; called while a runtime runs (from a task too):
 *     -EBUSY.
 *   pz_spawn, pz_spawn_with: a NULL fn, a stack size over 1 GiB, or no
 *     runtime running return NULL (reported); opts NULL and a NULL name
 *     are the defaults.
 *   pz_join: NULL gives -EINVAL (reported); pz_detach(NULL): -EINVAL;
 *     pz_cancel(NULL) does nothing; pz_task_id(NULL) is 0 and
 *     pz_task_name(NULL) is "".
 *   pz_sleep, pz_sleep_until: a negative time, or a deadline already
 *     passed (INT64_MIN included), returns 0 at once.
 *   pz_blocking: a NULL fn gives -EINVAL (reported); result may be NULL.
 *   pz_yield, pz_cancelled, pz_self, pz_worker_index outside a task:
 *     nothing, false, NULL, -1.
 *   pz_strerror: any int, "not an error code" for one it does not know.
 *   pz_dump(NULL) writes to the report sink; pz_set_report(NULL, ...)
 *     restores stderr.
 * There are no flags here.  A task handle already given up (joined, or
 * detached and ended) is caught by its generation: pz_join and pz_detach
 * report it and return -EINVAL, pz_cancel ignores it (pz_join says more).
 * A pointer that was never a task handle (uninitialised memory) cannot be
 * told from one and is undefined, as for any pointer.
 */
#ifndef PLAZA_RUNTIME_H
#define PLAZA_RUNTIME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PZ_FOREVER INT64_MAX

typedef void *(*pz_fn)(void *arg);
typedef struct pz_task pz_task_t;

/* Runtime configuration.  Zero in any field means "the default". */
typedef struct pz_config {
    int workers;              /* worker threads; default: one per CPU */
    size_t stack_size;        /* default task stack size; default 256 KiB */
    int blocking_threads_max; /* cap of the blocking pool; default 512 */
    bool no_guard_pages;      /* stacks without a guard page (see docs/stacks.md) */
    bool debug;               /* the debug switch (docs/debugging.md); also PLAZA_DEBUG=1 */
    int dump_signal;          /* a signal that prints pz_dump to the report sink, 0 none;
                               * also PLAZA_DUMP_SIGNAL=SIGQUIT (name or number) */
    int monitor;              /* the monitor thread (deadlocks, stalls): 0 on, -1 off */
    int stall_ms;             /* a task running this long without switching is a
                               * stall; 0: 100 ms, -1: no stall reports */
    int spare_workers;        /* spare worker threads that may stand in for worker
                               * threads blocked in a sync lock or a system call
                               * (docs/runtime.md); 0: 64, -1: none; also
                               * PLAZA_SPARE_WORKERS.  Needs the monitor. */
    int idle_spin_us;         /* how long a worker that runs out of tasks keeps
                               * polling for I/O before it sleeps (one worker at
                               * a time, only while tasks wait for I/O, and only
                               * while such spins find work: docs/runtime.md,
                               * "Spinning before sleeping"); 0: 20 us, -1: no
                               * spin, at most 1000; also PLAZA_IDLE_SPIN_US.
                               * For a request/response partner on another core
                               * it saves the wake-up of a sleeping worker. */
} pz_config_t;

/* Options of one spawn.  Zero fields take the runtime's defaults. */
typedef struct pz_spawn_opts {
    size_t stack_size;        /* rounded up to whole pages, at least 16 KiB */
    const char *name;         /* copied; shown in reports (at most 31 bytes kept) */
} pz_spawn_opts_t;

/* Starts the runtime, runs main(arg) as its first task and returns when that
 * task returns, storing its result in *result (if result is not NULL).
 * Tasks still running when main returns are abandoned, never resumed.
 * One runtime runs at a time in a process: returns -EBUSY if one is running,
 * -EINVAL for a bad configuration, -ENOMEM/-EAGAIN if threads or memory
 * cannot be had (a worker thread, the poller, main's stack: then main has
 * not run, or not at all for the threads), -EMFILE if the poller's
 * descriptors cannot be had, else 0. */
int pz_run(const pz_config_t *cfg, pz_fn main, void *arg, void **result);

/* Creates a task running fn(arg).  Callable from a task or from any thread
 * while the runtime runs.  Returns NULL (and reports why on stderr) if there
 * is no runtime or no memory.  The handle stays valid until pz_join returns
 * 0 for it or pz_detach is called. */
pz_task_t *pz_spawn(pz_fn fn, void *arg);
pz_task_t *pz_spawn_with(pz_fn fn, void *arg, const pz_spawn_opts_t *opts);

/* Waits for t to finish and frees it, storing its result in *result.
 * Returns 0, -ECANCELED if the calling task was cancelled while waiting (t
 * keeps running and can be joined again), -EDEADLK when a task joins itself,
 * -EINVAL for a detached task or a task another caller is already joining,
 * -EPERM when called outside a task of the running runtime.  A task that
 * could not get a stack never ran: its join returns the cause (-ENOMEM
 * usually, see docs/stacks.md) and stores NULL.
 *
 * Handles detect reuse: a handle carries the generation of the task it
 * names, so joining, detaching or cancelling a task whose handle was
 * already given up (joined, or detached and ended) is reported and fails
 * with -EINVAL (pz_cancel ignores it), even after the memory went to a new
 * task; pz_task_id of such a handle is 0.  Compare handles with
 * pz_task_id, not ==: pz_self()'s handle for a task differs from the one
 * pz_spawn returned for it. */
int pz_join(pz_task_t *t, void **result);

/* Lets t run to completion on its own; its resources are freed when it ends.
 * Returns 0, or -EINVAL (reported) for a task already detached or being
 * joined, or a stale handle.  The handle must not be used afterwards. */
int pz_detach(pz_task_t *t);

/* Cancels t: the wait it is in now and every later wait that would
 * suspend it return -ECANCELED; a call that completes without suspending
 * still succeeds, and no wait is cancelled inside pz_shield_begin/_end
 * (the rule in full: include/plaza/task.h).  A task that ignores the
 * error runs on; cancelling a finished task does nothing. */
void pz_cancel(pz_task_t *t);

/* True if the calling task has been cancelled. */
bool pz_cancelled(void);

/* Lets other runnable tasks run before the caller continues. */
void pz_yield(void);

/* The calling task, or NULL on a thread that is not running a task. */
pz_task_t *pz_self(void);

/* A task's id (unique for the process lifetime, starting at 1) and name. */
uint64_t pz_task_id(const pz_task_t *t);
const char *pz_task_name(const pz_task_t *t);

/* Monotonic time in nanoseconds. */
int64_t pz_now(void);

/* Suspends the calling task until the deadline (or for ns nanoseconds).
 * Returns 0, or -ECANCELED if the task was cancelled.  Called outside a task
 * it sleeps the thread. */
int pz_sleep_until(int64_t deadline);
int pz_sleep(int64_t ns);

/* Runs fn(arg) on the blocking pool, a set of threads that grows as needed,
 * while the calling task is suspended, so a blocking call never holds a
 * worker.  Stores fn's result in *result.  Returns 0, or -ECANCELED if the
 * task was cancelled before fn started (fn then never runs); once fn runs
 * the call waits for it.  Outside a task fn runs on the calling thread. */
int pz_blocking(pz_fn fn, void *arg, void **result);

/* The number of worker threads of the running runtime (0 if none), and the
 * index of the worker running the caller (-1 on any other thread).  The
 * index is below pz_worker_count() on a configured worker; a spare worker
 * (standing in for a blocked one, docs/runtime.md) has an index from
 * pz_worker_count() up to pz_worker_count() + spare_workers - 1. */
int pz_worker_count(void);
int pz_worker_index(void);

/* Error codes of plaza's own, apart from every errno value: name
 * resolution failures (pz_tcp_dial, pz_tcp_listen). */
#define PZ_EDNS_NONAME (-4001) /* the host (or service) is not known */
#define PZ_EDNS_AGAIN (-4002)  /* temporary failure in name resolution */
#define PZ_EDNS_FAIL (-4003)   /* the resolver failed for good */
#define PZ_EDNS_NODATA (-4004) /* the name has no address of a usable family */
#define PZ_EDNS_OTHER (-4005)  /* another resolver failure */

/* A short description of a plaza error code (a negative errno value, or
 * one of the PZ_E* codes above). */
const char *pz_strerror(int err);

/* Prints every task (id, name, spawn site, state, what it waits on and for
 * how long with the holder, the plaza locks it holds, and the stack of a
 * suspended task) and every thread blocked in a plaza wait, one line per
 * fact, each prefixed "plaza: ".  out NULL: to the report sink.  A
 * snapshot; callable from any thread, also while the runtime runs.  See
 * docs/debugging.md. */
void pz_dump(FILE *out);

/* Routes every plaza message (misuse, overflow, dumps, deadlock and stall
 * reports) to fn, one line at a time, without the "plaza: " prefix or a
 * newline; NULL restores stderr.  fn may be called from any thread,
 * including the monitor thread, and must not take plaza locks. */
typedef void (*pz_report_fn)(const char *line, void *arg);
void pz_set_report(pz_report_fn fn, void *arg);

/* ---- Internal: the runtime's services to the inline code of the upper
 * layers' headers.  Not for users; may change in any release. ---- */

/* The caller's id: the running task's pz_task_id, or for a thread that runs
 * no task PZ__CALLER_THREAD_BIT | a per-thread number (from 1).  Constant
 * for a task across its suspensions and for a thread. */
#define PZ__CALLER_THREAD_BIT (1ull << 58)
uint64_t pz__caller_id(void) __attribute__((const));

/* The held-lock record (src/runtime/held.c): a lock layer reports each
 * acquisition and release of a lock with a holder, so the runtime can name
 * the locks a task or thread holds (dumps, the suspend-while-held report).
 * One per task (in the task, moving with it) and per plain thread.
 * Written by its owner only, read by reports at any time: relaxed atomics
 * (plain moves on x86 and arm64, the same cost as plain fields).  depth
 * counts every hold; the first PZ__HELD_MAX are kept with their lock, kind
 * and site. */
#define PZ__HELD_MAX 4
typedef struct pz__held {
    _Atomic(const void *) lock;
    _Atomic(const char *) kind; /* "pz_mutex", "pz_rwlock", ... */
    _Atomic(void *) site;       /* an address in the acquiring function */
} pz__held;
typedef struct pz__holds {
    _Atomic unsigned depth; /* locks held now; the first PZ__HELD_MAX are in rec */
    pz__held rec[PZ__HELD_MAX];
    uint64_t caller; /* the owner's pz__caller_id (set with the record), for the observed paths */
} pz__holds;
void pz__held_acquired(const void *lock, const char *kind);
/* The same with the acquiring call site given (an out-of-line lock path
 * that is not itself the user's call: the advisor's observed paths). */
void pz__held_acquired_at(const void *lock, const char *kind, const void *site);
/* False (reported): the caller does not hold the lock, and must not
 * unlock it (src/runtime/held.c says which callers are caught). */
bool pz__held_released(const void *lock, const char *what);
/* Drops lock from the record without a check (the async locks check
 * their holder themselves). */
void pz__held_forget(const void *lock);
/* Switches the holder check of threads on or off (PLAZA_SYNC_CHECK=1 at
 * start); for tests. */
void pz__sync_check_set(int on);
/* What the observation keeps per caller (each task has one, each plain
 * thread one of its own).  timed_holds is the observer's: the number of
 * holds it is timing for this caller (the lock layers call the released
 * hook only while it is not 0, and the scheduler keeps suspended_ns only
 * then).  suspended_ns: the nanoseconds the task has spent suspended
 * (parked: I/O, sleep, a lock, the blocking pool) while the observation
 * was on and timed_holds was not 0; always 0 for a plain thread. */
typedef struct pz__observer {
    int64_t suspended_ns;
    uint32_t timed_holds;
} pz__observer;
/*
 * The record of the caller, reached inline (x86-64): the sync locks' fast
 * paths write it without a call (pz__held_take, pz__held_give below), so
 * that the suspend-while-holding check costs a few moves.
 *
 * A task may be suspended on one worker thread and resumed on another, and
 * a compiler treats the thread pointer as constant within a function: a
 * thread-local read in inline code could be served from a register loaded
 * before a switch.  So the thread-local is read by a volatile asm (never
 * merged with another, ordered with calls by its memory clobber), every
 * time.  pz__self_tls.worker is the thread's worker (NULL on a plain
 * thread); .holds a plain thread's record once held.c has registered it.
 * The offsets into the runtime's own structs come from pz__self_layout.
 * Elsewhere than x86-64, pz__holds_self is NULL and the locks call held.c.
 */
struct pz__observe_slot;
typedef struct pz__self_tls_t {
    void *worker;         /* offset 0 */
    pz__holds *holds;     /* offset 8 */
    pz__observer observer; /* offset 16: a plain thread's (pz__observer_self) */
    /* offset 32: the slot of the thread's last observed acquisition (the
     * lock layers' observed paths keep it; pz__observe_caller) */
    struct pz__observe_slot *observe_last;
    /* the slot observe_last replaced: a loop that alternates between two
     * pairs (one lock at two sites, two locks at one site) finds the other
     * one here, out of line, without a lookup (pz__observe_slot_for) */
    struct pz__observe_slot *observe_prev;
} pz__self_tls_t;
extern __thread pz__self_tls_t pz__self_tls __attribute__((tls_model("initial-exec")));
typedef struct pz__self_layout_t {
    uint32_t worker_current;    /* offsetof(pz__worker, current) */
    uint32_t task_holds;        /* offsetof(struct pz_task, holds) */
    uint32_t worker_coop_spent; /* offsetof(pz__worker, coop_spent) */
} pz__self_layout_t;
extern const pz__self_layout_t pz__self_layout;

/* The caller's record, or NULL: not known inline (a plain thread before
 * its first record, a worker's own loop, or not x86-64; held.c decides). */
static inline pz__holds *pz__holds_self(void)
{
#if defined(__x86_64__)
    char *w;
    pz__holds *h;
    __asm__ volatile("movq pz__self_tls@gottpoff(%%rip), %1\n\t"
                     "movq %%fs:(%1), %0\n\t"
                     "movq %%fs:8(%1), %1"
                     : "=&r"(w), "=&r"(h)
                     :
                     : "memory");
    if (__builtin_expect(w != (char *)0, 1)) {
        char *t = *(char **)(w + pz__self_layout.worker_current);
        return t ? (pz__holds *)(t + pz__self_layout.task_holds) : (pz__holds *)0;
    }
    return h;
#else
    return (pz__holds *)0;
#endif
}

#if defined(__x86_64__)
/* The calling thread's worker (pz__self_tls.worker; NULL on a plain
 * thread), by the same volatile read as pz__holds_self: read afresh at
 * every call, never merged with another read or moved across a call, so
 * never the worker of a thread the task ran on before a switch. */
static inline void *pz__self_worker(void)
{
    char *w;
    __asm__ volatile("movq pz__self_tls@gottpoff(%%rip), %0\n\t"
                     "movq %%fs:(%0), %0"
                     : "=r"(w)
                     :
                     : "memory");
    return w;
}
#endif

/* The cooperative budget (src/runtime/sched.c): a task yields after this
 * many steps since it was switched in.  Each release of a contended async
 * lock is a step, so that a task that keeps retaking the lock by its fast
 * path does not keep its worker from the tasks queued behind it; never
 * inside a thread-blocking section (a yield there would suspend its
 * holder). */
#define PZ__COOP_BUDGET 128
void pz__coop_tick_release(void);
/* Resets the spent budget of the running task and yields (the inline step
 * below found it spent). */
void pz__coop_yield_spent(void);

/* pz__coop_tick_release inline (x86-64): the release of a contended async
 * lock is in the lock's hot loop, and that call with the worker lookup it
 * makes had 9% of the samples of `perf record` of async_contended tasks=2
 * (AMD EPYC VM).  The budget is written by the worker's own thread only,
 * as always. */
static inline void pz__coop_release_step(void)
{
#if defined(__x86_64__)
    char *w = (char *)pz__self_worker();
    if (!w)
        return;
    char *t = *(char **)(w + pz__self_layout.worker_current);
    if (!t || atomic_load_explicit(&((pz__holds *)(t + pz__self_layout.task_holds))->depth, memory_order_relaxed))
        return;
    unsigned *spent = (unsigned *)(w + pz__self_layout.worker_coop_spent);
    if (__builtin_expect(++*spent >= PZ__COOP_BUDGET, 0))
        pz__coop_yield_spent();
#else
    pz__coop_tick_release();
#endif
}

/* Pushes lock (of kind, taken at site) on the record h, its owner's. */
static inline void pz__held_push(pz__holds *h, const void *lock, const char *kind, const void *site)
{
    unsigned d = atomic_load_explicit(&h->depth, memory_order_relaxed);
    if (__builtin_expect(d < PZ__HELD_MAX, 1)) {
        pz__held *e = &h->rec[d];
        atomic_store_explicit(&e->lock, lock, memory_order_relaxed);
        atomic_store_explicit(&e->kind, kind, memory_order_relaxed);
        atomic_store_explicit(&e->site, (void *)site, memory_order_relaxed);
    }
    atomic_store_explicit(&h->depth, d + 1, memory_order_relaxed);
}

/* lock (of kind) was taken by the caller at site: kept in its record,
 * inline when the record is known. */
static inline void pz__held_take_at(const void *lock, const char *kind, const void *site)
{
    pz__holds *h = pz__holds_self();
    if (__builtin_expect(!h, 0))
        pz__held_acquired_at(lock, kind, site);
    else
        pz__held_push(h, lock, kind, site);
}

/* lock (of kind) was taken here: in the public lock call, inlined in its
 * caller.  A macro, so that the site's address is taken in that call
 * itself, where the debug information's scope of the inlined call covers
 * it (a nested inline function's scope may not, once the compiler moves
 * the instruction); the memory clobber keeps it after the lock's atomic
 * operation.  Not x86-64: held.c takes its own return address. */
#if defined(__x86_64__)
#define PZ__HERE()                                                                      \
    __extension__({                                                                     \
        void *pz__site_;                                                                \
        __asm__ volatile("leaq 0(%%rip), %0" : "=r"(pz__site_) : : "memory");           \
        (const void *)pz__site_;                                                        \
    })
#define pz__held_take(lock, kind) pz__held_take_at((lock), (kind), PZ__HERE())
#else
/* Not known inline: the out-of-line paths take their return address. */
#define PZ__HERE() ((const void *)0)
#define pz__held_take(lock, kind) pz__held_acquired((lock), (kind))
#endif

/* The caller lets lock go: true if it may (the last lock it took, inline;
 * anything else, held.c's checks and reports). */
static inline bool pz__held_give(const void *lock, const char *what)
{
    pz__holds *h = pz__holds_self();
    if (__builtin_expect(h != (pz__holds *)0, 1)) {
        unsigned d = atomic_load_explicit(&h->depth, memory_order_relaxed);
        if (__builtin_expect(d - 1 < PZ__HELD_MAX, 1) &&
            __builtin_expect(atomic_load_explicit(&h->rec[d - 1].lock, memory_order_relaxed) == lock, 1)) {
            atomic_store_explicit(&h->depth, d - 1, memory_order_relaxed);
            return true;
        }
    }
    return pz__held_released(lock, what);
}

/* True while the debug switch is on (PLAZA_DEBUG=1 in the environment, or
 * pz_config_t.debug): then the locks whose fast path would pay for it (the
 * async locks) write the held-lock record too.  Set before the first task
 * runs and left alone while the runtime runs. */
extern bool pz__debug;
static inline bool pz__debug_holds(void)
{
    return __builtin_expect(pz__debug, 0);
}

/* The lock calls and their observed halves are always inlined: the
 * observed half takes its call site's address (PZ__HERE), which must be in
 * the caller's own code, never in a part of the lock call the compiler
 * split off and shared between callers (gcc's partial inlining does that
 * to a cold branch of a function it does not inline whole). */
#define PZ__INLINE static inline __attribute__((always_inline))

/* The lock observation hooks (docs/advisor.md).  Off by default: every
 * lock's fast path then costs one predictable branch on pz__observe_sw.on.
 * The advisor (src/advisor, a layer above the locks) installs its hooks
 * with pz__lock_hooks_install and then sets the flag; the sync and async
 * layers call down into the table, never up into the advisor.  The hooks
 * run inside lock and unlock paths (sometimes under a parking-lot bucket
 * lock): they must not park, suspend or take a plaza lock. */
#define PZ__LOCK_MUTEX 0u
#define PZ__LOCK_RWLOCK 1u
#define PZ__LOCK_ASYNC_MUTEX 2u
#define PZ__LOCK_ASYNC_RWLOCK 3u
#define PZ__LOCK_SEMAPHORE 4u
#define PZ__LOCK_CHAN 5u
#define PZ__LOCK_SHARED 1u /* a shared hold (a read lock, semaphore permits) */
#define PZ__LOCK_SEND 2u   /* a channel wait: a send (else a receive) */
/* A sync lock's wait that ended in its pause-spin, before yielding or
 * parking, is timed once in PZ__WAIT_SAMPLE_GAP, at random
 * (src/sync/observe.c): such a wait lasts nanoseconds to microseconds, and
 * its two clock reads, one of them inside the critical section, were most
 * of what the advisor cost a contended data lock.  A wait that yielded or
 * parked is always timed.  So a reported wait carries one of: */
#define PZ__LOCK_WAIT_UNTIMED 4u /* it waited, untimed: count it, wait_ns is 0 */
#define PZ__LOCK_WAIT_SAMPLED 8u /* wait_ns stands for PZ__WAIT_SAMPLE_GAP such waits */
#define PZ__WAIT_SAMPLE_GAP 8u
/* An observer's per-thread record of one (lock, call site) pair, which the
 * observed lock paths update themselves on an uncontended acquisition: the
 * observer finds it before the lock is taken, so that around the critical
 * section there is no call and no lookup, only a countdown and an owner
 * check.  The slot belongs to the calling thread (only that thread writes
 * it); it is the slot of its pair whenever lock and site match, and a lock
 * path may keep the last one (pz__self_tls.observe_last) and check them
 * instead of asking the hook again.
 *
 * Counting by the countdown: each acquisition takes one from countdown,
 * and the one that would bring it to 0 goes to the sample hook, which
 * times that hold and loads the next countdown (the gap to the next timed
 * hold), adding it to drawn.  So drawn - countdown is the number of
 * acquisitions at the pair, exact, with one store per acquisition. */
typedef struct pz__observe_slot {
    const void *lock, *site;       /* the pair (NULL while it changes) */
    _Atomic uint64_t countdown;    /* acquisitions until the next timed hold; >= 1 between acquisitions */
    _Atomic uint64_t drawn;        /* the sum of the countdowns loaded */
    _Atomic uint64_t *probe;       /* the lock's owner probe (0: none armed; pz__observe_owner) */
    bool shared;                   /* the pair's acquisitions are shared holds */
} pz__observe_slot;
typedef struct pz__lock_hooks {
    /* lock was acquired at site (an address in the caller of the public
     * call) by self (pz__caller_id()); wait_ns is the time the acquisition
     * waited, -1 if it took the lock at the first attempt (flags may say
     * the wait was untimed or a sample: PZ__LOCK_WAIT_UNTIMED, _SAMPLED). */
    void (*acquired)(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags,
                     uint64_t self);
    /* lock is about to be released by the caller self (which still holds
     * it); called only while pz__observer_self()->timed_holds is not 0. */
    void (*released)(const void *lock, unsigned kind, unsigned flags, uint64_t self);
    /* An acquisition at site gave up (deadline or cancel, err) after
     * waiting wait_ns. */
    void (*gave_up)(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags, int err);
    /* pz_run has spawned main and is about to start the workers (may be
     * NULL): the advisor starts its live page there. */
    void (*runtime_started)(void);
    /* The calling thread's slot for (lock, site), or NULL; then an
     * uncontended acquisition is counted in it (pz__observe_count). */
    pz__observe_slot *(*slot)(const void *lock, unsigned kind, const void *site, unsigned flags);
    /* From the counting paths: an exclusive acquisition by self found the
     * lock's owner probe armed, or is to arm it (pz__observe_owner); the countdown reached
     * 0 (this hold is to be timed, and the next countdown loaded). */
    void (*owner_probe)(pz__observe_slot *slot, uint64_t self, bool arm);
    void (*sample)(pz__observe_slot *slot, uint64_t self, unsigned flags);
} pz__lock_hooks;
/* The observation's switches, read by every lock and unlock call, on a
 * cache line of their own (the struct's alignment and size are the
 * line's), so that no variable written for another reason can share it:
 * - on: the advisor is on (the locks take their observed paths);
 * - hooks: its table, set before on;
 * - timed_now: the number of holds the observer is timing now, of every
 *   caller (PZ__OBSERVE_TIMING below), written when a timed hold begins
 *   or ends, so only while the advisor is on. */
typedef struct pz__observe_switches {
    _Alignas(64) _Atomic bool on;
    const pz__lock_hooks *_Atomic hooks;
    _Atomic uint32_t timed_now;
} pz__observe_switches;
_Static_assert(sizeof(pz__observe_switches) == 64, "the switches fill one line");
extern pz__observe_switches pz__observe_sw;
/* Installs hooks (NULL: none) and turns the observation on or off. */
void pz__lock_hooks_install(const pz__lock_hooks *hooks);
/* The hooks' owner_probe and sample, for the inline paths (src/runtime/
 * observe.c: out of line, as they are rare). */
void pz__observe_owner_probed(pz__observe_slot *sl, uint64_t self, bool arm);
void pz__observe_sample(pz__observe_slot *sl, uint64_t self, unsigned flags);

/* What the inline observed paths need of the caller, read at once: its
 * held-lock record (NULL: not known inline, as for pz__holds_self; its
 * caller field is the caller's id) and the thread's last slot.  The same
 * volatile read of the thread-local as pz__holds_self, for the same
 * reason (a task may move to another thread between two lock calls). */
typedef struct pz__observe_caller_t {
    pz__holds *holds;
    struct pz__observe_slot *last;
} pz__observe_caller_t;
PZ__INLINE pz__observe_caller_t pz__observe_caller(void)
{
    pz__observe_caller_t c = {(pz__holds *)0, (struct pz__observe_slot *)0};
#if defined(__x86_64__)
    char *w;
    __asm__ volatile("movq pz__self_tls@gottpoff(%%rip), %2\n\t"
                     "movq %%fs:32(%2), %1\n\t"
                     "movq %%fs:8(%2), %0\n\t"
                     "movq %%fs:(%2), %2"
                     : "=&r"(c.holds), "=&r"(c.last), "=&r"(w)
                     :
                     : "memory");
    if (__builtin_expect(w != (char *)0, 1)) {
        char *t = *(char **)(w + pz__self_layout.worker_current);
        c.holds = t ? (pz__holds *)(t + pz__self_layout.task_holds) : (pz__holds *)0;
    }
#endif
    return c;
}

/* The number of holds the observer is timing now, of every caller: while
 * it is 0 no release needs reporting, so the unlocks test it (one load of
 * a line written only when a timed hold begins or ends) before they call
 * out to check the caller's own count (pz__observer_self). */
#define PZ__OBSERVE_TIMING()                                                                         \
    __builtin_expect(atomic_load_explicit(&pz__observe_sw.timed_now, memory_order_relaxed) != 0, 0)

/* The thread's last slot if it is (lock, site)'s and this acquisition is
 * neither to be timed nor to arm the owner probe (the countdown is above
 * 2): then the caller counts it inline (pz__observe_take), else it goes
 * out of line. */
PZ__INLINE bool pz__observe_hit(const pz__observe_slot *sl, const void *lock, const void *site, uint64_t *countdown)
{
    return sl && sl->lock == lock && sl->site == site &&
           (*countdown = atomic_load_explicit(&sl->countdown, memory_order_relaxed)) > 2;
}

/* Counts an acquisition, already made, in a slot that pz__observe_hit
 * accepted (the countdown it read is above 2: no hold to time, no probe to
 * arm). */
PZ__INLINE void pz__observe_take(pz__observe_slot *sl, uint64_t countdown)
{
    atomic_store_explicit(&sl->countdown, countdown - 1, memory_order_relaxed);
}

/* An exclusive acquisition by self, counted (countdown: the slot's
 * countdown as this acquisition found it): the owner probe.  Once per
 * sampling gap an acquisition arms the lock's probe with its holder and
 * the gap's length (the one whose countdown is 2, the acquisition before
 * the timed one; with a gap of 1, the timed one); the next exclusive
 * acquisition, whoever makes it, finds it armed, records whether the
 * owner changed, and disarms it.  So owner changes are sampled with the
 * holds (exact while every hold is timed), and an untimed acquisition
 * only reads a word that is written twice per gap: writing the last owner
 * at every change put a shared cache line inside every critical section
 * that changed hands.  The arming acquisition is not the timed one: a
 * timed hold lasts longer and calls out after its unlock, which makes the
 * next acquisition change hands more often than an untimed one's. */
PZ__INLINE void pz__observe_owner(pz__observe_slot *sl, uint64_t self, uint64_t countdown)
{
    if (__builtin_expect((atomic_load_explicit(sl->probe, memory_order_relaxed) != 0) | (countdown == 2), 0))
        pz__observe_owner_probed(sl, self, countdown == 2);
}

/* The same on the inline paths, whose countdown is above 2
 * (pz__observe_hit): only the probe to read. */
PZ__INLINE void pz__observe_owner_inline(pz__observe_slot *sl, uint64_t self)
{
    if (__builtin_expect(atomic_load_explicit(sl->probe, memory_order_relaxed) != 0, 0))
        pz__observe_owner_probed(sl, self, false);
}

/* The same, with the caller's id read from its held-lock record only when
 * the probe is armed (the sync locks' inline paths: one load less on
 * every acquisition).  The read is volatile so that the compiler cannot
 * hoist it above the test, as it did with a plain one. */
PZ__INLINE void pz__observe_owner_inline_holds(pz__observe_slot *sl, const pz__holds *h)
{
    if (__builtin_expect(atomic_load_explicit(sl->probe, memory_order_relaxed) != 0, 0))
        pz__observe_owner_probed(sl, *(const volatile uint64_t *)&h->caller, false);
}

/* An acquisition just made by self, in any slot of its thread (the
 * out-of-line paths): counted, the owner checked, the hold timed when the
 * countdown runs out. */
PZ__INLINE void pz__observe_count(pz__observe_slot *sl, uint64_t self, unsigned flags)
{
    uint64_t countdown = atomic_load_explicit(&sl->countdown, memory_order_relaxed);
    if (!(flags & PZ__LOCK_SHARED))
        pz__observe_owner(sl, self, countdown);
    if (__builtin_expect(countdown <= 1, 0))
        pz__observe_sample(sl, self, flags);
    else
        pz__observe_take(sl, countdown);
}

/* The out-of-line observed paths' slot for (lock, site), from the hooks h
 * (NULL: the advisor is off, no slot).  The thread keeps its last slot
 * (observe_last, which the inline paths read) and the one before it
 * (observe_prev): a loop that alternates between two pairs (one lock at
 * two sites, as bench_sync.c's loop with its every-64th timed call; two
 * locks at one site) misses the inline paths' one slot at each change of
 * pair, and finds the other here without asking the hooks (then the two
 * swap, so that the inline paths find it next time).  Only the thread
 * itself reads and writes them, in out-of-line calls that do not suspend
 * (a direct thread-local access is safe there, not in inline code:
 * pz__observe_caller). */
static inline struct pz__observe_slot *pz__observe_slot_for(const pz__lock_hooks *h, const void *lock, unsigned kind,
                                                            const void *site, unsigned flags)
{
    if (!h)
        return (pz__observe_slot *)0;
    pz__observe_slot *last = pz__self_tls.observe_last;
    if (last && last->lock == lock && last->site == site)
        return last;
    pz__observe_slot *sl = pz__self_tls.observe_prev;
    if (!(sl && sl->lock == lock && sl->site == site))
        sl = h->slot(lock, kind, site, flags);
    pz__self_tls.observe_prev = last;
    pz__self_tls.observe_last = sl;
    return sl;
}

/* The caller's record: the running task's, or the calling thread's.  Valid
 * until the caller next suspends (a task may resume on another thread). */
pz__observer *pz__observer_self(void);

#ifdef __cplusplus
}
#endif
#endif
