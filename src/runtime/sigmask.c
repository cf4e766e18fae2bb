/*
 * The signal mask of the runtime's threads.
 *
 * A signal that a task waits for (src/io/signal.c reads it from a
 * signalfd) must be blocked on every thread of the process, or the kernel
 * may deliver it to a thread that does not block it, where its handler or
 * default action runs instead.  So:
 *   - worker threads block every asynchronous signal from their first
 *     instruction (pz__sig_block_async), and the blocking pool's threads,
 *     created by workers, inherit that mask.  So no signal handler of the
 *     program ever runs on a task's stack, and a signal nobody waits for
 *     goes to the thread that called pz_run (or another thread of the
 *     program) exactly as it would without plaza;
 *   - the signals tasks wait for are registered here (the set only grows,
 *     for the life of the process) and the thread blocked in pz_run blocks
 *     them too: a registration bumps `wanted`, and pz_run's thread, woken
 *     on its futex, applies the set and stores the generation it applied
 *     in `applied`.  The registering task waits for that before it reads
 *     its signalfd, so no signal of the set can reach pz_run's thread
 *     unblocked after the registration returns.  A wake-up that comes
 *     before pz_run's thread sleeps is lost, so the registrar repeats it
 *     until it sees the acknowledgement.
 *   - pz_run's thread restores its own mask when pz_run returns; signals
 *     of the set still pending then get their usual disposition.
 * Threads the program starts itself must block the set too (or be
 * started with it blocked): docs/service.md.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"

#include "../arch/arch_signal.h"

static pz__spin reg_lock;
static sigset_t registered; /* under reg_lock */
static _Atomic uint64_t wanted;  /* generation of `registered` */
static _Atomic uint64_t applied; /* the generation pz_run's thread applied */

/* pz_run's thread: its mask before the first registration it applied. */
static _Thread_local bool runner_saved;
static _Thread_local sigset_t runner_mask;

int pz__sigmask_register(const sigset_t *set)
{
    pz__spin_lock(&reg_lock);
    bool grows = false;
    for (int s = 1; s < NSIG; s++) {
        if (sigismember(set, s) == 1 && sigismember(&registered, s) != 1) {
            sigaddset(&registered, s);
            grows = true;
        }
    }
    uint64_t gen = grows ? atomic_fetch_add(&wanted, 1) + 1 : atomic_load(&wanted);
    sigset_t now = registered;
    pz__spin_unlock(&reg_lock);

    /* The calling thread: a worker blocks it already; a plain thread
     * (a wait outside a task) must block it itself. */
    int r = pz__sig_block(&now, NULL);
    if (r < 0)
        return r;
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
    if (!rt || !pz__current_task())
        return 0;
    /* Shielded: a cancelled task still finishes registering (its sleeps
     * would otherwise return at once, and this loop spin). */
    pz_task_t *self = pz__current_task();
    self->shield++;
    while (atomic_load(&applied) < gen && !atomic_load(&rt->main_done)) {
        pz__futex_wake(&rt->main_done, 1);
        pz_sleep(100000);
    }
    self->shield--;
    return 0;
}

void pz__sigmask_runner_sync(void)
{
    uint64_t gen = atomic_load(&wanted);
    if (gen == atomic_load(&applied))
        return;
    pz__spin_lock(&reg_lock);
    sigset_t now = registered;
    gen = atomic_load(&wanted);
    pz__spin_unlock(&reg_lock);
    if (!runner_saved) {
        sigset_t none;
        sigemptyset(&none);
        pz__sig_block(&none, &runner_mask);
        runner_saved = true;
    }
    pz__sig_block(&now, NULL);
    atomic_store(&applied, gen);
}

void pz__sigmask_runner_restore(void)
{
    if (runner_saved) {
        pz__sig_setmask(&runner_mask);
        runner_saved = false;
    }
    /* The next pz_run's thread applies the set afresh. */
    atomic_store(&applied, 0);
}
