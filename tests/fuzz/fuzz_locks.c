/* Differential fuzzing of pz_mutex, pz_rwlock, pz_async_mutex,
 * pz_async_rwlock, pz_notify and pz_barrier against sequential models,
 * with operations from several actors interleaved by the input.
 *
 * An input is a primitive selector (ignored when PLAZA_FUZZ_PRIMITIVE
 * names one: mutex, rwlock, async_mutex, async_rwlock, notify, barrier),
 * a parameter (the barrier's count), then one step per two bytes: the
 * first picks the actor and the operation, the second its argument.
 *
 * Actors: three plain threads for the thread-blocking locks (a task must
 * not suspend while it holds one, and these actors hold locks across
 * steps); for the task-suspending primitives two tasks and one plain
 * thread.  Every actor waits for the driver (the runtime's main task) to
 * hand it an operation, runs it, reports the result and waits again (a
 * task by yielding), so the input alone decides the interleaving.  The
 * runtime has one worker: a task runs only when the others yield, and a
 * woken task has run once the driver has yielded twice.
 *
 * Operations: try forms, timed forms whose deadline has passed (-1 or
 * pz_now() - 1), unlocks and downgrades by the holder; for the
 * task-suspending primitives also waits without deadline from the tasks
 * (an async mutex lock, a notify wait, a barrier wait), which block until
 * another step releases them or cancels the task.  The model says what
 * each call returns and which blocked actors a step releases, and with
 * what; the driver waits for exactly those to report and checks, after
 * yielding, that the others are still blocked.  A mismatch aborts with
 * both values.  At the end blocked tasks are cancelled and every hold the
 * model knows of is released by its holder. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plaza.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

enum prim { P_MUTEX, P_RWLOCK, P_AMUTEX, P_ARWLOCK, P_NOTIFY, P_BARRIER, P_COUNT };
static const char *const prim_names[P_COUNT] = {"mutex", "rwlock", "async_mutex", "async_rwlock", "notify", "barrier"};

#define ACTORS 3
#define BLOCKS 1000 /* a model result: the call blocks */

/* The primitive under test (one object of each, reset per input). */
static enum prim prim;
static int forced = -1; /* PLAZA_FUZZ_PRIMITIVE, or -1 */
static pz_mutex_t mu;
static pz_rwlock_t rw;
static pz_async_mutex_t am;
static pz_async_rwlock_t arw;
static pz_notify_t nt;
static pz_barrier_t bar;

enum status { IDLE, BLOCKED, COMPLETING, RETIRED };

struct actor {
    int index;
    bool thread;
    /* The hand-over: the driver sets op/arg and then cmd (1 run, 2 quit);
     * the actor clears cmd, runs the operation and sets done. */
    _Atomic int cmd;
    int op, arg;
    uint64_t snap; /* the epoch the actor last read (notify) */
    int result;
    _Atomic int done;
    pz_task_t *task;
    pthread_t th;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* The model's view of this actor. */
    enum status status;
    int expect;
    int reads; /* read holds (rwlocks, the upgradable one not counted) */
    bool upg, writer, holds;
    uint64_t msnap;
};

static struct actor actors[ACTORS];

/* The model of the primitive. */
static struct {
    int holder; /* mutexes: actor index, -1 free */
    int readers, upg, writer; /* rwlocks: read holds (upgradable included), holders or -1 */
    int queue[ACTORS], qn; /* blocked actors in arrival order */
    bool permit; /* notify */
    uint64_t epoch;
    int count, arrived; /* barrier */
} m;

static _Noreturn void mismatch(size_t step, int a, int op, const char *what, long want, long got)
{
    fprintf(stderr, "fuzz_locks: %s, step %zu, actor %d, operation %d: %s: model %ld, library %ld\n",
            prim_names[prim], step, a, op, what, want, got);
    abort();
}

static int64_t past(int arg)
{
    return (arg & 1) ? -1 : pz_now() - 1;
}

/* ---- the operations, as the library runs them ---- */

static int run_mutex(struct actor *a)
{
    switch (a->op) {
    case 0:
        return pz_mutex_trylock(&mu);
    case 1:
        return pz_mutex_lock_until(&mu, past(a->arg));
    case 2:
        if (a->arg & 2)
            pz_mutex_unlock_fair(&mu);
        else
            pz_mutex_unlock(&mu);
        return 0;
    default:
        return pz_mutex_is_locked(&mu);
    }
}

static int run_rwlock(struct actor *a)
{
    int64_t d = past(a->arg);
    switch (a->op) {
    case 0:
        return pz_rwlock_try_read(&rw);
    case 1:
        return pz_rwlock_read_until(&rw, d);
    case 2:
        return pz_rwlock_read_recursive_until(&rw, d);
    case 3:
        return pz_rwlock_try_write(&rw);
    case 4:
        return pz_rwlock_write_until(&rw, d);
    case 5:
        return pz_rwlock_try_upgradable(&rw);
    case 6:
        return pz_rwlock_upgradable_until(&rw, d);
    case 7:
        return pz_rwlock_try_upgrade(&rw);
    case 8:
        return pz_rwlock_upgrade_until(&rw, d);
    case 9:
        pz_rwlock_read_unlock(&rw);
        return 0;
    case 10:
        if (a->arg & 2)
            pz_rwlock_write_unlock_fair(&rw);
        else
            pz_rwlock_write_unlock(&rw);
        return 0;
    case 11:
        pz_rwlock_upgradable_unlock(&rw);
        return 0;
    case 12:
        pz_rwlock_downgrade(&rw);
        return 0;
    case 13:
        pz_rwlock_downgrade_to_upgradable(&rw);
        return 0;
    default:
        pz_rwlock_upgradable_downgrade(&rw);
        return 0;
    }
}

static int run_amutex(struct actor *a)
{
    switch (a->op) {
    case 1:
        return pz_async_mutex_trylock(&am);
    case 2:
        return pz_async_mutex_lock_until(&am, past(a->arg));
    case 3:
        return pz_async_mutex_lock(&am);
    case 4:
        return pz_async_mutex_unlock(&am);
    default:
        return pz_async_mutex_is_locked(&am);
    }
}

static int run_arwlock(struct actor *a)
{
    int64_t d = past(a->arg);
    switch (a->op) {
    case 0:
        return pz_async_rwlock_try_read(&arw);
    case 1:
        return pz_async_rwlock_read_until(&arw, d);
    case 2:
        return pz_async_rwlock_try_write(&arw);
    case 3:
        return pz_async_rwlock_write_until(&arw, d);
    case 4:
        return pz_async_rwlock_try_upgradable_read(&arw);
    case 5:
        return pz_async_rwlock_upgradable_read_until(&arw, d);
    case 6:
        return pz_async_rwlock_try_upgrade(&arw);
    case 7:
        return pz_async_rwlock_upgrade_until(&arw, d);
    case 8:
        return pz_async_rwlock_read_unlock(&arw);
    case 9:
        return pz_async_rwlock_write_unlock(&arw);
    case 10:
        return pz_async_rwlock_upgradable_unlock(&arw);
    case 11:
        return pz_async_rwlock_downgrade(&arw);
    case 12:
        return pz_async_rwlock_downgrade_to_upgradable(&arw);
    case 13:
        return pz_async_rwlock_upgradable_downgrade(&arw);
    default:
        return (int)pz_async_rwlock_readers(&arw);
    }
}

static int run_notify(struct actor *a)
{
    switch (a->op) {
    case 1:
        pz_notify_one(&nt);
        return 0;
    case 2:
        pz_notify_all(&nt);
        return 0;
    case 3:
        a->snap = pz_notify_epoch(&nt);
        return (int)a->snap;
    case 4:
        return pz_notify_wait_until(&nt, past(a->arg));
    case 5:
        return pz_notify_wait_since(&nt, a->snap, past(a->arg));
    default:
        return pz_notify_wait(&nt);
    }
}

static int run_barrier(struct actor *a)
{
    if (a->op == 1)
        return pz_barrier_wait_until(&bar, past(a->arg));
    return pz_barrier_wait(&bar);
}

static int run_op(struct actor *a)
{
    switch (prim) {
    case P_MUTEX:
        return run_mutex(a);
    case P_RWLOCK:
        return run_rwlock(a);
    case P_AMUTEX:
        return run_amutex(a);
    case P_ARWLOCK:
        return run_arwlock(a);
    case P_NOTIFY:
        return run_notify(a);
    default:
        return run_barrier(a);
    }
}

/* ---- the actors ---- */

static void *task_actor(void *arg)
{
    struct actor *a = arg;
    for (;;) {
        int c;
        while (!(c = atomic_load_explicit(&a->cmd, memory_order_acquire)))
            pz_yield();
        atomic_store_explicit(&a->cmd, 0, memory_order_relaxed);
        if (c == 2)
            return NULL;
        a->result = run_op(a);
        atomic_store_explicit(&a->done, 1, memory_order_release);
    }
}

static void *thread_actor(void *arg)
{
    struct actor *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->lock);
        int c;
        while (!(c = atomic_load_explicit(&a->cmd, memory_order_acquire)))
            pthread_cond_wait(&a->cond, &a->lock);
        atomic_store_explicit(&a->cmd, 0, memory_order_relaxed);
        pthread_mutex_unlock(&a->lock);
        if (c == 2)
            return NULL;
        a->result = run_op(a);
        atomic_store_explicit(&a->done, 1, memory_order_release);
    }
}

static void command(struct actor *a, int c)
{
    atomic_store_explicit(&a->done, 0, memory_order_relaxed);
    if (a->thread) {
        pthread_mutex_lock(&a->lock);
        atomic_store_explicit(&a->cmd, c, memory_order_release);
        pthread_cond_signal(&a->cond);
        pthread_mutex_unlock(&a->lock);
    } else {
        atomic_store_explicit(&a->cmd, c, memory_order_release);
    }
}

/* ---- the model ---- */

static void complete(int i, int result)
{
    actors[i].status = COMPLETING;
    actors[i].expect = result;
}

static void enqueue(int i)
{
    actors[i].status = BLOCKED;
    m.queue[m.qn++] = i;
}

static int dequeue_first(void)
{
    int i = m.queue[0];
    memmove(m.queue, m.queue + 1, (size_t)--m.qn * sizeof m.queue[0]);
    return i;
}

static void dequeue(int i)
{
    for (int k = 0; k < m.qn; k++) {
        if (m.queue[k] == i) {
            memmove(m.queue + k, m.queue + k + 1, (size_t)(m.qn - k - 1) * sizeof m.queue[0]);
            m.qn--;
            return;
        }
    }
    abort();
}

/* Returns false if the step is not one to run now (an unlock by a
 * non-holder, a lock by the holder: misuse, checked elsewhere). */
static bool model_mutex(struct actor *a, int *want)
{
    int i = a->index;
    bool free = m.holder < 0;
    switch (a->op) {
    case 0:
    case 1:
        if (m.holder == i)
            return false;
        if (free)
            m.holder = i;
        *want = a->op == 0 ? free : (free ? 0 : -ETIMEDOUT);
        return true;
    case 2:
        if (m.holder != i)
            return false;
        m.holder = -1;
        *want = 0;
        return true;
    default:
        *want = !free;
        return true;
    }
}

/* The sync and async rwlocks share one model: no waiter ever queues, so
 * only the holds decide. */
static bool model_rwlock(struct actor *a, int op, int *want)
{
    int i = a->index;
    bool can_read = m.writer < 0;
    bool can_write = m.writer < 0 && m.readers == 0;
    bool can_upg = m.writer < 0 && m.upg < 0;
    int timedout = -ETIMEDOUT;
    /* op: 0 try_read, 1 read_until, 2 try_write, 3 write_until,
     * 4 try_upgradable, 5 upgradable_until, 6 try_upgrade, 7 upgrade_until,
     * 8 read_unlock, 9 write_unlock, 10 upgradable_unlock, 11 downgrade,
     * 12 downgrade_to_upgradable, 13 upgradable_downgrade, 14 readers */
    switch (op) {
    case 0:
    case 1:
        if (m.writer == i)
            return false;
        if (can_read) {
            m.readers++;
            a->reads++;
        }
        *want = op == 0 ? can_read : (can_read ? 0 : timedout);
        return true;
    case 2:
    case 3:
        if (m.writer == i || a->reads || a->upg)
            return false; /* would wait for itself */
        if (can_write)
            m.writer = i, a->writer = true;
        *want = op == 2 ? can_write : (can_write ? 0 : timedout);
        return true;
    case 4:
    case 5:
        if (m.writer == i || a->upg)
            return false;
        if (can_upg) {
            m.upg = i;
            m.readers++;
            a->upg = true;
        }
        *want = op == 4 ? can_upg : (can_upg ? 0 : timedout);
        return true;
    case 6:
    case 7: {
        if (!a->upg || a->reads)
            return false; /* an upgrade past its own read holds waits for ever */
        bool ok = m.readers == 1;
        if (ok) {
            m.readers = 0;
            m.upg = -1;
            m.writer = i;
            a->upg = false;
            a->writer = true;
        }
        *want = op == 6 ? ok : (ok ? 0 : timedout);
        return true;
    }
    case 8:
        if (!a->reads)
            return false;
        a->reads--;
        m.readers--;
        *want = 0;
        return true;
    case 9:
        if (!a->writer)
            return false;
        a->writer = false;
        m.writer = -1;
        *want = 0;
        return true;
    case 10:
        if (!a->upg)
            return false;
        a->upg = false;
        m.upg = -1;
        m.readers--;
        *want = 0;
        return true;
    case 11:
    case 12:
        if (!a->writer)
            return false;
        a->writer = false;
        m.writer = -1;
        m.readers++;
        if (op == 11) {
            a->reads++;
        } else {
            a->upg = true;
            m.upg = i;
        }
        *want = 0;
        return true;
    case 13:
        if (!a->upg)
            return false;
        a->upg = false;
        m.upg = -1;
        a->reads++;
        *want = 0;
        return true;
    default:
        *want = m.readers;
        return true;
    }
}

static bool model_amutex(struct actor *a, int *want)
{
    int i = a->index;
    bool free = m.holder < 0;
    switch (a->op) {
    case 1:
    case 2:
    case 3:
        if (m.holder == i || (a->op == 3 && a->thread))
            return false; /* a thread actor never blocks: it could not be freed */
        if (free) {
            m.holder = i;
            *want = a->op == 1 ? 1 : 0;
        } else if (a->op == 3) {
            *want = BLOCKS;
        } else {
            *want = a->op == 1 ? 0 : -ETIMEDOUT;
        }
        return true;
    case 4:
        if (m.holder != i)
            return false;
        /* The first waiter gets the lock: handed over, or woken to take
         * it while nobody else runs. */
        m.holder = -1;
        if (m.qn) {
            m.holder = dequeue_first();
            complete(m.holder, 0);
        }
        *want = 0;
        return true;
    default:
        *want = !free;
        return true;
    }
}

static bool model_notify(struct actor *a, int *want)
{
    switch (a->op) {
    case 1:
        if (m.qn)
            complete(dequeue_first(), 0);
        else
            m.permit = true;
        *want = 0;
        return true;
    case 2:
        m.epoch++;
        while (m.qn)
            complete(dequeue_first(), 0);
        *want = 0;
        return true;
    case 3:
        a->msnap = m.epoch;
        *want = (int)m.epoch;
        return true;
    case 4:
    case 5:
        if (a->op == 5 && m.epoch != a->msnap) {
            *want = 0; /* a newer epoch: the permit stays */
        } else if (m.permit) {
            m.permit = false;
            *want = 0;
        } else {
            *want = -ETIMEDOUT;
        }
        return true;
    default:
        if (a->thread)
            return false;
        if (m.permit) {
            m.permit = false;
            *want = 0;
        } else {
            *want = BLOCKS;
        }
        return true;
    }
}

static bool model_barrier(struct actor *a, int *want)
{
    if (a->op != 1 && a->thread)
        return false;
    if (m.arrived + 1 >= m.count) {
        /* The last arrival leads and releases the others. */
        m.arrived = 0;
        while (m.qn)
            complete(dequeue_first(), 0);
        *want = PZ_BARRIER_LEADER;
    } else if (a->op == 1) {
        *want = -ETIMEDOUT; /* its arrival taken back */
    } else {
        m.arrived++;
        *want = BLOCKS;
    }
    return true;
}

/* The operations per primitive; for the task-suspending ones with a
 * blocking wait, operation 0 is the cancel of a blocked task. */
static const int op_count[P_COUNT] = {4, 15, 6, 15, 7, 3};

static bool model_op(struct actor *a, int *want)
{
    switch (prim) {
    case P_MUTEX:
        return model_mutex(a, want);
    case P_RWLOCK: {
        /* The sync rwlock's ops, mapped onto the shared model's. */
        static const int map[15] = {0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
        return model_rwlock(a, map[a->op], want);
    }
    case P_AMUTEX:
        return model_amutex(a, want);
    case P_ARWLOCK:
        return model_rwlock(a, a->op, want);
    case P_NOTIFY:
        return model_notify(a, want);
    default:
        return model_barrier(a, want);
    }
}

/* The barrier's arrival or the notify's or mutex's queue place of a
 * cancelled task goes with it. */
static void model_cancel(int i)
{
    dequeue(i);
    if (prim == P_BARRIER)
        m.arrived--;
    complete(i, -ECANCELED);
}

/* ---- the driver ---- */

/* Waits for every actor the model says completes, checks its result, and
 * then checks that every blocked actor is still blocked.  An actor that has
 * not returned after 10 s is taken as never returning (a call returns in
 * microseconds here; the bound only turns a hang into a report). */
static void settle(size_t step)
{
    int64_t limit = pz_now() + 10 * (int64_t)1000000000;
    for (;;) {
        bool waiting = false;
        for (int i = 0; i < ACTORS; i++) {
            struct actor *a = &actors[i];
            bool done = atomic_load_explicit(&a->done, memory_order_acquire);
            if (a->status == BLOCKED && done)
                mismatch(step, i, a->op, "returned while the model has it blocked", BLOCKS, a->result);
            if (a->status == COMPLETING && !done) {
                waiting = true;
                if (pz_now() > limit)
                    mismatch(step, i, a->op, "did not return", a->expect, BLOCKS);
            }
        }
        if (!waiting)
            break;
        pz_yield();
        sched_yield();
    }
    for (int i = 0; i < ACTORS; i++) {
        struct actor *a = &actors[i];
        if (a->status != COMPLETING)
            continue;
        if (a->result != a->expect)
            mismatch(step, i, a->op, "result", a->expect, a->result);
        a->status = a->expect == -ECANCELED ? RETIRED : IDLE;
    }
    pz_yield();
    pz_yield();
    for (int i = 0; i < ACTORS; i++) {
        if (actors[i].status == BLOCKED && atomic_load_explicit(&actors[i].done, memory_order_acquire))
            mismatch(step, i, actors[i].op, "returned while the model has it blocked", BLOCKS,
                     actors[i].result);
    }
}

/* One step; false if it was not one to run. */
static bool step(size_t n, int who, int op, int arg)
{
    struct actor *a = &actors[who];
    bool can_block = prim == P_AMUTEX || prim == P_NOTIFY || prim == P_BARRIER;
    if (can_block && op == 0) {
        if (a->status != BLOCKED || a->thread)
            return false;
        model_cancel(who);
        pz_cancel(a->task);
        settle(n);
        return true;
    }
    if (a->status != IDLE)
        return false;
    a->op = op;
    a->arg = arg;
    int want = 0;
    if (!model_op(a, &want))
        return false;
    if (want == BLOCKS)
        enqueue(who);
    else
        complete(who, want);
    command(a, 1);
    settle(n);
    return true;
}

struct input {
    const uint8_t *data;
    size_t size;
};

static void reset(uint8_t param)
{
    memset(&m, 0, sizeof m);
    m.holder = m.upg = m.writer = -1;
    memset(&mu, 0, sizeof mu);
    memset(&rw, 0, sizeof rw);
    memset(&am, 0, sizeof am);
    memset(&arw, 0, sizeof arw);
    memset(&nt, 0, sizeof nt);
    m.count = 1 + param % 3;
    if (pz_barrier_init(&bar, (uint32_t)m.count) != 0)
        abort();
}

static void *fuzz_main(void *arg)
{
    struct input *in = arg;
    prim = forced >= 0 ? (enum prim)forced : (enum prim)(in->data[0] % P_COUNT);
    reset(in->data[1]);
    bool sync = prim == P_MUTEX || prim == P_RWLOCK;
    for (int i = 0; i < ACTORS; i++) {
        struct actor *a = &actors[i];
        memset(a, 0, sizeof *a);
        a->index = i;
        a->thread = sync || i == ACTORS - 1;
        if (a->thread) {
            pthread_mutex_init(&a->lock, NULL);
            pthread_cond_init(&a->cond, NULL);
            if (pthread_create(&a->th, NULL, thread_actor, a) != 0)
                abort();
        } else if (!(a->task = pz_spawn(task_actor, a))) {
            abort();
        }
    }
    size_t n = 0;
    for (size_t i = 2; i + 1 < in->size; i += 2) {
        int who = in->data[i] % ACTORS;
        int op = (in->data[i] / ACTORS) % op_count[prim];
        if (step(n, who, op, in->data[i + 1]))
            n++;
    }
    /* The end: blocked tasks are cancelled, holds released. */
    for (int i = 0; i < ACTORS; i++) {
        if (actors[i].status == BLOCKED)
            step(n++, i, 0, 0);
    }
    for (int i = 0; i < ACTORS; i++) {
        struct actor *a = &actors[i];
        if (a->status == RETIRED)
            continue;
        static const int unlock_op[P_COUNT][4] = {
            /* read, write, upgradable, mutex */
            {-1, -1, -1, 2}, {9, 10, 11, -1}, {-1, -1, -1, 4}, {8, 9, 10, -1}, {-1, -1, -1, -1}, {-1, -1, -1, -1}};
        while (a->reads)
            step(n++, i, unlock_op[prim][0], 0);
        if (a->writer)
            step(n++, i, unlock_op[prim][1], 0);
        if (a->upg)
            step(n++, i, unlock_op[prim][2], 0);
        if ((prim == P_MUTEX || prim == P_AMUTEX) && m.holder == i)
            step(n++, i, unlock_op[prim][3], 0);
    }
    if (pz_mutex_is_locked(&mu) || pz_async_mutex_is_locked(&am))
        mismatch(n, -1, -1, "a mutex is still locked after every unlock", 0, 1);
    if (prim == P_ARWLOCK && pz_async_rwlock_readers(&arw) != 0)
        mismatch(n, -1, -1, "readers after every unlock", 0, (long)pz_async_rwlock_readers(&arw));
    for (int i = 0; i < ACTORS; i++) {
        struct actor *a = &actors[i];
        command(a, 2);
        if (a->thread) {
            pthread_join(a->th, NULL);
            pthread_mutex_destroy(&a->lock);
            pthread_cond_destroy(&a->cond);
        } else if (pz_join(a->task, NULL) != 0) {
            abort();
        }
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *p = getenv("PLAZA_FUZZ_PRIMITIVE");
    if (p) {
        for (int i = 0; i < P_COUNT; i++)
            if (strcmp(p, prim_names[i]) == 0)
                forced = i;
        if (forced < 0) {
            fprintf(stderr, "fuzz_locks: PLAZA_FUZZ_PRIMITIVE=%s names no primitive\n", p);
            exit(2);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 4096)
        return 0;
    struct input in = {data, size};
    pz_config_t cfg = {.workers = 1};
    if (pz_run(&cfg, fuzz_main, &in, NULL) != 0)
        abort();
    return 0;
}
