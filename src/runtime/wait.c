/*
 * Wait reasons: what every task and every blocked thread waits on, on what
 * object, since when; and the registry of threads that use plaza locks.
 *
 * A task announces its next wait with pz__wait_note (the primitive that is
 * about to park it knows what it is); pz__park_commit, the one place every
 * task park goes through, publishes the note with the time just before the
 * task switches away and clears it when the task runs again.  A wait
 * without a note is published as the default its parking code gave
 * (pz_park: PZ__WAIT_PARK on its address).  A thread (a plain thread, or a
 * worker blocked by its task in a thread-blocking lock) publishes its wait
 * in its thread record, between pz__thread_wait_begin and _end.
 *
 * Ownership: a note and a published wait are written only by their owner
 * (the task, or the thread) and read by reports at any time: the fields are
 * relaxed atomics and a report is a snapshot (kind, object and time may
 * come from two different waits; a report says what it saw, no more).
 *
 * Thread records: one per thread that has taken a plaza lock or blocked in
 * one, in a thread-local, linked into a global list on first use and
 * unlinked by a thread-exit destructor.  The list's lock is taken only on
 * registration, exit and by reports.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <pthread.h>
#include <unistd.h>
#include <sys/syscall.h>

static const char *const kind_names[PZ__WAIT_KINDS] = {
    [PZ__WAIT_NONE] = "nothing",
    [PZ__WAIT_MUTEX] = "pz_mutex",
    [PZ__WAIT_RWLOCK] = "pz_rwlock",
    [PZ__WAIT_CONDVAR] = "pz_condvar",
    [PZ__WAIT_ONCE] = "pz_once",
    [PZ__WAIT_ASYNC_MUTEX] = "pz_async_mutex",
    [PZ__WAIT_ASYNC_RWLOCK] = "pz_async_rwlock",
    [PZ__WAIT_SEMAPHORE] = "pz_semaphore",
    [PZ__WAIT_NOTIFY] = "pz_notify",
    [PZ__WAIT_BARRIER] = "pz_barrier",
    [PZ__WAIT_CHAN_SEND] = "pz_chan send",
    [PZ__WAIT_CHAN_RECV] = "pz_chan recv",
    [PZ__WAIT_FD_READ] = "fd read",
    [PZ__WAIT_FD_WRITE] = "fd write",
    [PZ__WAIT_SLEEP] = "sleep",
    [PZ__WAIT_JOIN] = "join",
    [PZ__WAIT_GROUP] = "group wait",
    [PZ__WAIT_BLOCKING] = "blocking call",
    [PZ__WAIT_YIELD] = "yield",
    [PZ__WAIT_SELECT] = "select",
    [PZ__WAIT_PARK] = "pz_park",
};

const char *pz__wait_kind_name(int kind)
{
    return kind >= 0 && kind < PZ__WAIT_KINDS && kind_names[kind] ? kind_names[kind] : "unknown";
}

/* ---- thread records ---- */

static pz__spin recs_lock;
static pz__thread_rec *recs_head;
static pthread_key_t recs_key;
static pthread_once_t recs_once = PTHREAD_ONCE_INIT;
static __thread pz__thread_rec self_rec __attribute__((tls_model("initial-exec")));
/* A thread's note for its next thread wait. */
static __thread int thread_note_kind __attribute__((tls_model("initial-exec")));
static __thread const void *thread_note_obj __attribute__((tls_model("initial-exec")));
static __thread bool thread_note_again __attribute__((tls_model("initial-exec")));

static void rec_unlink(void *arg)
{
    pz__thread_rec *r = arg;
    pz__spin_lock(&recs_lock);
    if (r->registered) {
        if (r->prev)
            r->prev->next = r->next;
        else
            recs_head = r->next;
        if (r->next)
            r->next->prev = r->prev;
        r->registered = false;
    }
    pz__spin_unlock(&recs_lock);
}

static void recs_key_make(void)
{
    pthread_key_create(&recs_key, rec_unlink);
}

pz__thread_rec *pz__thread_rec_self(void)
{
    pz__thread_rec *r = &self_rec;
    if (__builtin_expect(r->registered, 1))
        return r;
    pthread_once(&recs_once, recs_key_make);
    r->tid = (int)syscall(SYS_gettid);
    r->caller = pz__caller_id();
    pz__spin_lock(&recs_lock);
    r->prev = NULL;
    r->next = recs_head;
    if (recs_head)
        recs_head->prev = r;
    recs_head = r;
    r->registered = true;
    pz__spin_unlock(&recs_lock);
    pthread_setspecific(recs_key, r);
    return r;
}

void pz__thread_recs_walk(void (*fn)(pz__thread_rec *r, void *arg), void *arg)
{
    for (pz__thread_rec *r = recs_head; r; r = r->next)
        fn(r, arg);
}

void pz__introspect_lock(void)
{
    pz__task_registry_lock();
    pz__spin_lock(&recs_lock);
}

void pz__introspect_unlock(void)
{
    pz__spin_unlock(&recs_lock);
    pz__task_registry_unlock();
}

/* ---- notes ---- */

static void note(int kind, const void *obj, bool again)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current) {
        w->current->note_kind = kind;
        w->current->note_obj = obj;
        w->current->note_again = again;
    } else {
        thread_note_kind = kind;
        thread_note_obj = obj;
        thread_note_again = again;
    }
}

void pz__wait_note(int kind, const void *obj)
{
    note(kind, obj, false);
}

void pz__wait_note_again(int kind, const void *obj, bool again)
{
    note(kind, obj, again);
}

void pz__wait_note_default(int kind, const void *obj)
{
    pz__worker *w = pz__current_worker();
    if (w && w->current) {
        if (!w->current->note_kind) {
            w->current->note_kind = kind;
            w->current->note_obj = obj;
            w->current->note_again = false;
        }
    } else if (!thread_note_kind) {
        thread_note_kind = kind;
        thread_note_obj = obj;
        thread_note_again = false;
    }
}

static _Atomic long thread_waits; /* threads in a plaza wait now */

long pz__thread_waits(void)
{
    return atomic_load_explicit(&thread_waits, memory_order_relaxed);
}

bool pz__wait_kind_is_lock(int kind)
{
    return kind == PZ__WAIT_MUTEX || kind == PZ__WAIT_RWLOCK || kind == PZ__WAIT_ASYNC_MUTEX ||
           kind == PZ__WAIT_ASYNC_RWLOCK;
}

static void count(int kind, long d)
{
    pz__worker *w = pz__current_worker();
    _Atomic long *c = pz__wait_kind_is_lock(kind) ? &w->lock_waits
                      : kind == PZ__WAIT_BLOCKING ? &w->blocking_waits
                                                  : NULL;
    if (c)
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d, memory_order_relaxed);
}

/* Whether a wait on obj continues the last one, whose object the record
 * still holds (pz__wait_clear and pz__thread_wait_end clear only the
 * kind): then it keeps its start. */
static bool continues(bool again, const pz__wait *last, const void *obj)
{
    return again && obj && atomic_load_explicit(&last->obj, memory_order_relaxed) == obj;
}

void pz__wait_publish(pz_task_t *t)
{
    int kind = t->note_kind ? t->note_kind : PZ__WAIT_PARK;
    count(kind, 1);
    /* The coarse clock: the start of a wait is read by the dumps and the
     * checks, which speak of milliseconds and seconds, and is written at
     * every park, where the precise clock would cost more than the rest of
     * this record. */
    if (!continues(t->note_again && t->note_kind, &t->wait, t->note_obj))
        atomic_store_explicit(&t->wait.since, pz__clock_coarse(), memory_order_relaxed);
    atomic_store_explicit(&t->wait.obj, t->note_obj, memory_order_relaxed);
    atomic_store_explicit(&t->wait.kind, kind, memory_order_release);
    t->note_kind = 0;
    t->note_obj = NULL;
    t->note_again = false;
}

void pz__wait_clear(pz_task_t *t)
{
    count(atomic_load_explicit(&t->wait.kind, memory_order_relaxed), -1);
    atomic_store_explicit(&t->wait.kind, PZ__WAIT_NONE, memory_order_relaxed);
}

/* ---- thread waits ---- */

void pz__thread_wait_begin(const void *addr)
{
    pz__thread_rec *r = pz__thread_rec_self();
    pz__worker *w = pz__current_worker();
    pz_task_t *t = w ? w->current : NULL;
    int kind;
    const void *obj;
    bool again;
    if (t) {
        kind = t->note_kind ? t->note_kind : PZ__WAIT_PARK;
        obj = t->note_kind ? t->note_obj : addr;
        again = t->note_kind && t->note_again;
        t->note_kind = 0;
        t->note_obj = NULL;
        t->note_again = false;
    } else {
        kind = thread_note_kind ? thread_note_kind : PZ__WAIT_PARK;
        obj = thread_note_kind ? thread_note_obj : addr;
        again = thread_note_kind && thread_note_again;
        thread_note_kind = 0;
        thread_note_obj = NULL;
        thread_note_again = false;
    }
    int64_t now = pz__clock_now();
    bool kept = continues(again, &r->wait, obj);
    if (!kept)
        atomic_store_explicit(&r->wait.since, now, memory_order_relaxed);
    atomic_store_explicit(&r->wait.obj, obj, memory_order_relaxed);
    atomic_store_explicit(&r->task, t, memory_order_relaxed);
    atomic_store_explicit(&r->wait.kind, kind, memory_order_release);
    atomic_fetch_add_explicit(&thread_waits, 1, memory_order_relaxed);
    pz__monitor_poke();
    if (t) {
        /* The task does not suspend: it blocks its worker.  Published on
         * the task too, so a dump of tasks shows it. */
        atomic_store_explicit(&t->wait.since, kept ? atomic_load_explicit(&r->wait.since, memory_order_relaxed) : now,
                              memory_order_relaxed);
        atomic_store_explicit(&t->wait.obj, obj, memory_order_relaxed);
        atomic_store_explicit(&t->wait_blocks_thread, true, memory_order_relaxed);
        atomic_store_explicit(&t->wait.kind, kind, memory_order_release);
    }
}

void pz__thread_wait_end(void)
{
    pz__thread_rec *r = &self_rec;
    pz_task_t *t = atomic_load_explicit(&r->task, memory_order_relaxed);
    atomic_fetch_sub_explicit(&thread_waits, 1, memory_order_relaxed);
    atomic_store_explicit(&r->wait.kind, PZ__WAIT_NONE, memory_order_relaxed);
    atomic_store_explicit(&r->task, NULL, memory_order_relaxed);
    if (t) {
        atomic_store_explicit(&t->wait.kind, PZ__WAIT_NONE, memory_order_relaxed);
        atomic_store_explicit(&t->wait_blocks_thread, false, memory_order_relaxed);
    }
}

/* In the child of a fork only the forking thread exists: the records of the
 * others (and the parent's tasks) are forgotten, their memory left alone. */
void pz__introspect_after_fork(void)
{
    pz__tasks_forget();
    recs_lock = (pz__spin){0};
    recs_head = NULL;
    if (self_rec.registered) {
        self_rec.prev = self_rec.next = NULL;
        recs_head = &self_rec;
    }
    pz__monitor_after_fork();
}
