/*
 * The calling thread's worker, read out of line on purpose.  A task may be
 * suspended on one worker thread and resumed on another; if this accessor
 * were inlined, the compiler could compute the thread-local address once and
 * reuse it after the switch (it treats the thread pointer as constant within
 * a function).  A call into another translation unit cannot be cached.  The
 * library is never built with link-time optimisation for the same reason.
 */
#include "internal.h"

/* initial-exec: one %fs-relative load even in libplaza.so (the default
 * model for position-independent code calls __tls_get_addr on every read).
 * pz__self_tls is also read by the sync locks' inline paths, through a
 * volatile asm (plaza/runtime.h); .worker is the thread's worker. */
__thread pz__self_tls_t pz__self_tls __attribute__((tls_model("initial-exec")));
#define current_worker ((pz__worker *)pz__self_tls.worker)

pz__worker *pz__current_worker_call(void)
{
    return current_worker;
}

void pz__set_current_worker(pz__worker *w)
{
    pz__self_tls.worker = w;
}

void pz__spin_lock_slow(pz__spin *s)
{
    unsigned round = 0;
    for (;;) {
        while (atomic_load_explicit(&s->locked, memory_order_relaxed))
            pz__backoff(&round);
        if (!atomic_exchange_explicit(&s->locked, 1, memory_order_acquire))
            return;
    }
}

/* The caller's id (plaza/runtime.h): the running task's id, or for a
 * thread that runs no task a per-thread number with PZ__CALLER_THREAD_BIT.
 * It lives here, out of line, so that no caller can keep the thread-local
 * address across a task switch. */
static _Atomic uint64_t next_thread_number = 1;
__thread uint64_t pz__thread_id __attribute__((tls_model("initial-exec")));
#define thread_id pz__thread_id

uint64_t pz__caller_id(void)
{
    pz__worker *w = current_worker;
    if (w && w->current)
        return w->current->id;
    if (!thread_id)
        thread_id = PZ__CALLER_THREAD_BIT | atomic_fetch_add_explicit(&next_thread_number, 1, memory_order_relaxed);
    return thread_id;
}

/* The lock observation's per-caller record (plaza/runtime.h,
 * src/runtime/observe.c): here, out of line, for the same reason as
 * pz__caller_id, and with one thread-local read. */
#define thread_observer pz__self_tls.observer
/* The inline paths of plaza/runtime.h read these at fixed offsets. */
_Static_assert(offsetof(pz__self_tls_t, holds) == 8, "pz__holds_self reads %fs:8");
_Static_assert(offsetof(pz__self_tls_t, observe_last) == 32, "pz__observe_caller reads %fs:32");
_Static_assert(offsetof(pz__self_tls_t, observe_prev) == 40, "the observed paths' second slot");

pz__observer *pz__observer_self(void)
{
    pz__worker *w = current_worker;
    if (w && w->current)
        return &w->current->observer;
    return &thread_observer;
}
