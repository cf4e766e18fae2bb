/*
 * The task dump (pz_dump) and the report sink (pz_set_report).
 *
 * A dump walks the registry of live tasks and the registry of threads that
 * use plaza locks (wait.c) and prints, for each task: id, name, spawn
 * site, state, what it waits on and for how long with the holder of that
 * object where one is known, the plaza locks it holds, and for a suspended
 * task a backtrace taken from the registers its context switch saved
 * (src/arch/unwind.c); then every thread blocked in a plaza wait.
 *
 * Everything read is a snapshot of fields other threads write: wait
 * records are relaxed atomics, held-lock records are read racily (a report
 * may show a lock a moment after its release).  A suspended task's stack is
 * walked only while its park word says PARKED and is checked again after
 * the walk: if the task was woken meanwhile the frames are dropped.  Under
 * TSan no stack is walked (the walk reads another context's stack without
 * an order TSan can see, by design).
 *
 * Holders: a lock's holder is the task or thread whose held-lock record
 * names it (sync locks always write the record; async locks only with the
 * debug switch on), or, for a lock kind whose layer registered a holder
 * query (the async mutex keeps its holder's id in its word), the answer of
 * that query.  Registered downward: the runtime never calls up by name.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the report sink ---- */

static _Atomic(pz_report_fn) report_fn;
static _Atomic(void *) report_arg;

void pz_set_report(pz_report_fn fn, void *arg)
{
    atomic_store_explicit(&report_arg, arg, memory_order_relaxed);
    atomic_store_explicit(&report_fn, fn, memory_order_release);
}

void pz__report_line(const char *line)
{
    pz_report_fn fn = atomic_load_explicit(&report_fn, memory_order_acquire);
    if (fn) {
        fn(line, atomic_load_explicit(&report_arg, memory_order_relaxed));
        return;
    }
    fprintf(stderr, "plaza: %s\n", line);
}

/* ---- holder queries ---- */

static _Atomic(pz__holder_fn) holder_fns[PZ__WAIT_KINDS];

void pz__holder_query_register(int kind, pz__holder_fn fn)
{
    if (kind > 0 && kind < PZ__WAIT_KINDS)
        atomic_store_explicit(&holder_fns[kind], fn, memory_order_release);
}

struct find_holder {
    const void *lock;
    uint64_t found; /* a caller id: task id, or PZ__CALLER_THREAD_BIT | n */
    int tid;
};

static bool holds_lock(const pz__holds *h, const void *lock)
{
    pz__held_view v[PZ__HELD_MAX];
    unsigned n = pz__holds_read(h, v, NULL);
    for (unsigned i = 0; i < n; i++)
        if (v[i].lock == lock)
            return true;
    return false;
}

static void find_in_task(pz_task_t *t, void *arg)
{
    struct find_holder *f = arg;
    if (!f->found && holds_lock(&t->holds, f->lock))
        f->found = t->id;
}

static void find_in_thread(pz__thread_rec *r, void *arg)
{
    struct find_holder *f = arg;
    if (!f->found && holds_lock(&r->holds, f->lock)) {
        f->found = r->caller;
        f->tid = r->tid;
    }
}

uint64_t pz__holder_of(int kind, const void *lock, int *tid)
{
    struct find_holder f = {lock, 0, 0};
    /* The monitor and the dumps read a wait's kind and object apart, while
     * its task may end it and start another: a lock kind can meet a later
     * plain park's NULL object.  Such a wait has no holder (a lock wait
     * always has its lock, and the next look sees the new wait). */
    if (!lock) {
        if (tid)
            *tid = 0;
        return 0;
    }
    if (kind > 0 && kind < PZ__WAIT_KINDS) {
        pz__holder_fn fn = atomic_load_explicit(&holder_fns[kind], memory_order_acquire);
        if (fn)
            f.found = fn(lock);
    }
    if (!f.found)
        pz__tasks_walk(find_in_task, &f);
    if (!f.found)
        pz__thread_recs_walk(find_in_thread, &f);
    if (tid)
        *tid = f.tid;
    return f.found;
}

/* ---- printing ---- */

typedef struct out {
    FILE *file;   /* NULL: the report sink */
    void *syms;   /* symbol session */
    int64_t now;
} out_t;

static void emit(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out_t *o, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (o->file)
        fprintf(o->file, "plaza: %s\n", buf);
    else
        pz__report_line(buf);
}

static const char *name_of(const pz_task_t *t)
{
    return t->name[0] ? t->name : "unnamed";
}

void pz__describe_caller(uint64_t id, int tid, char *buf, size_t size)
{
    if (id & PZ__CALLER_THREAD_BIT) {
        if (tid)
            snprintf(buf, size, "thread #%llu (tid %d)", (unsigned long long)(id & ~PZ__CALLER_THREAD_BIT), tid);
        else
            snprintf(buf, size, "thread #%llu", (unsigned long long)(id & ~PZ__CALLER_THREAD_BIT));
    } else {
        snprintf(buf, size, "task %llu", (unsigned long long)id);
    }
}

void pz__describe_wait(int kind, const void *obj, char *buf, size_t size)
{
    if (kind == PZ__WAIT_FD_READ || kind == PZ__WAIT_FD_WRITE)
        snprintf(buf, size, "%s on fd %d", pz__wait_kind_name(kind), (int)(intptr_t)obj);
    else if (kind == PZ__WAIT_SLEEP || kind == PZ__WAIT_YIELD)
        snprintf(buf, size, "%s", pz__wait_kind_name(kind));
    else if (kind == PZ__WAIT_JOIN)
        snprintf(buf, size, "join of task %llu", obj ? (unsigned long long)((const pz_task_t *)obj)->id : 0ull);
    else
        snprintf(buf, size, "%s %p", pz__wait_kind_name(kind), obj);
}

static bool kind_has_holder(int kind)
{
    return kind == PZ__WAIT_MUTEX || kind == PZ__WAIT_RWLOCK || kind == PZ__WAIT_ASYNC_MUTEX ||
           kind == PZ__WAIT_ASYNC_RWLOCK || kind == PZ__WAIT_CONDVAR;
}

static void print_holds(out_t *o, const pz__holds *h)
{
    pz__held_view v[PZ__HELD_MAX];
    unsigned depth;
    unsigned n = pz__holds_read(h, v, &depth);
    for (unsigned i = 0; i < n; i++) {
        char site[256];
        pz__arch_symbolize(o->syms, v[i].site, true, site, sizeof site);
        emit(o, "    holds %s %p, taken at %s", v[i].kind ? v[i].kind : "lock", v[i].lock, site);
    }
    if (depth > n)
        emit(o, "    holds %u more lock(s)", depth - n);
}

static void print_wait(out_t *o, const char *who, int kind, const void *obj, int64_t since, bool blocks_thread)
{
    char what[300], holder[96] = "";
    if (kind == PZ__WAIT_BLOCKING) {
        char fn[256];
        pz__arch_symbolize(o->syms, (void *)obj, false, fn, sizeof fn);
        snprintf(what, sizeof what, "blocking call %s", fn);
    } else {
        pz__describe_wait(kind, obj, what, sizeof what);
    }
    if (kind_has_holder(kind)) {
        int tid = 0;
        uint64_t h = pz__holder_of(kind, obj, &tid);
        if (h) {
            char d[64];
            pz__describe_caller(h, tid, d, sizeof d);
            snprintf(holder, sizeof holder, ", held by %s", d);
        } else {
            snprintf(holder, sizeof holder, ", holder unknown");
        }
    }
    double secs = since ? (double)(o->now - since) / 1e9 : 0;
    emit(o, "%s %s %s for %.3f s%s", who, blocks_thread ? "blocked (its thread) in" : "waiting in", what, secs,
         holder);
}

static int running_on(pz__runtime *rt, uint64_t id)
{
    for (int i = 0, n = rt ? pz__rt_slots(rt) : 0; i < n; i++)
        if (atomic_load_explicit(&rt->workers[i].running_id, memory_order_relaxed) == id)
            return i;
    return -1;
}

static void print_backtrace(out_t *o, pz_task_t *t)
{
#ifdef PZ_TSAN
    (void)o;
    (void)t;
#else
    uint64_t s = atomic_load_explicit(&t->park_state, memory_order_acquire);
    if (PZ__PS_STATE(s) != PZ__PS_PARKED)
        return;
    void *frames[24];
    int n = pz__arch_backtrace_saved(t->ctx.sp, frames, 24);
    if (atomic_load_explicit(&t->park_state, memory_order_acquire) != s)
        return; /* woken meanwhile: the frames may be of another moment */
    /* Frame 0 is in the switch's caller, inside the runtime: start at the
     * first frame past the runtime's park (pz__park_commit). */
    for (int i = 0; i < n; i++) {
        char sym[256];
        pz__arch_symbolize(o->syms, frames[i], i > 0, sym, sizeof sym);
        emit(o, "    #%d %s", i, sym);
    }
#endif
}

struct dump_walk {
    out_t *o;
    pz__runtime *rt;
    int count;
};

static void dump_task(pz_task_t *t, void *arg)
{
    struct dump_walk *d = arg;
    out_t *o = d->o;
    d->count++;
    char site[256];
    pz__arch_symbolize(o->syms, t->spawn_site, true, site, sizeof site);
    char who[96];
    snprintf(who, sizeof who, "task %llu (%s)", (unsigned long long)t->id, name_of(t));
    int kind = atomic_load_explicit(&t->wait.kind, memory_order_acquire);
    int on = running_on(d->rt, t->id);
    bool blocks = atomic_load_explicit(&t->wait_blocks_thread, memory_order_relaxed);
    if (kind != PZ__WAIT_NONE && (blocks || on < 0)) {
        print_wait(o, who, kind, atomic_load_explicit(&t->wait.obj, memory_order_relaxed),
                   atomic_load_explicit(&t->wait.since, memory_order_relaxed), blocks);
    } else if (on >= 0 && on >= d->rt->nworkers) {
        emit(o, "%s running on spare worker %d", who, on - d->rt->nworkers);
    } else if (on >= 0) {
        emit(o, "%s running on worker %d", who, on);
    } else {
        emit(o, "%s runnable", who);
    }
    emit(o, "    spawned at %s", site);
    print_holds(o, &t->holds);
    if (on < 0 && kind != PZ__WAIT_NONE)
        print_backtrace(o, t);
}

static void dump_thread(pz__thread_rec *r, void *arg)
{
    struct dump_walk *d = arg;
    int kind = atomic_load_explicit(&r->wait.kind, memory_order_acquire);
    if (kind == PZ__WAIT_NONE || atomic_load_explicit(&r->task, memory_order_relaxed))
        return; /* not waiting, or a worker whose task the task list shows */
    char who[64];
    pz__describe_caller(r->caller, r->tid, who, sizeof who);
    print_wait(d->o, who, kind, atomic_load_explicit(&r->wait.obj, memory_order_relaxed),
               atomic_load_explicit(&r->wait.since, memory_order_relaxed), false);
    print_holds(d->o, &r->holds);
    d->count++;
}

struct dump_call {
    FILE *f;
    const char *why;
};

static void dump_call(void *arg)
{
    struct dump_call *c = arg;
    pz__dump_to(c->f, c->why);
}

void pz__dump_to(FILE *f, const char *why)
{
    if (pz__current_task()) {
        /* A task's stack may be too small for libdw's symbol lookups. */
        struct dump_call c = {f, why};
        pz__arch_run_on_own_stack(dump_call, &c);
        return;
    }
    out_t o = {.file = f, .syms = pz__arch_symbols_open(), .now = pz__clock_now()};
    pz__runtime *rt = pz__rt_pin();
    pz__introspect_lock();
    int spares = 0;
    for (int i = rt ? rt->nworkers : 0, n = rt ? pz__rt_slots(rt) : 0; i < n; i++)
        spares += atomic_load_explicit(&rt->workers[i].slot_state, memory_order_relaxed) == PZ__SLOT_RUNNING;
    if (spares)
        emit(&o, "dump%s%s: %d worker(s), %d spare worker(s) standing in for blocked ones", why ? " " : "",
             why ? why : "", rt->nworkers, spares);
    else
        emit(&o, "dump%s%s: %d worker(s)", why ? " " : "", why ? why : "", rt ? rt->nworkers : 0);
    struct dump_walk d = {&o, rt, 0};
    pz__tasks_walk(dump_task, &d);
    int tasks = d.count;
    d.count = 0;
    pz__thread_recs_walk(dump_thread, &d);
    emit(&o, "end of dump: %d task(s), %d blocked thread(s)", tasks, d.count);
    pz__introspect_unlock();
    pz__rt_unpin(rt);
    pz__arch_symbols_close(o.syms);
    if (f)
        fflush(f);
}

void pz_dump(FILE *out)
{
    pz__dump_to(out, NULL);
}
