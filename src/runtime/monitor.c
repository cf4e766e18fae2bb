/*
 * The monitor thread: one per runtime, started by pz_run unless
 * pz_config_t.monitor is -1.  It prints the dump a signal asked for
 * (PLAZA_DUMP_SIGNAL / pz_config_t.dump_signal), and, while workers run,
 * samples them for stalls and looks for deadlocks (see the checks below).
 *
 * Idle cost: while every worker sleeps the monitor sleeps too, on its
 * futex word, with no timeout; the first worker to leave its idle sleep
 * wakes it (one relaxed load on that path, a system call only when the
 * monitor actually sleeps), and so does a thread that starts a plaza wait
 * and the dump signal's handler.  So an idle runtime stays at 0% CPU.
 *
 * Signal: the handler only sets a flag and wakes the futex (both
 * async-signal-safe); the monitor prints the dump on its own thread.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "../arch/arch_signal.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The monitor's futex word: bumped by every wake-up. */
static _Atomic uint32_t mon_word;
/* True while the monitor sleeps without a timeout (all workers idle). */
static _Atomic bool mon_parked;
static _Atomic bool dump_requested;
static _Atomic bool mon_stop;
static pthread_t mon_thread;
static bool mon_started;
static int dump_signo;
static struct sigaction old_action;

void pz__monitor_poke(void)
{
    if (atomic_load_explicit(&mon_parked, memory_order_relaxed) &&
        atomic_exchange_explicit(&mon_parked, false, memory_order_acq_rel)) {
        atomic_fetch_add_explicit(&mon_word, 1, memory_order_release);
        pz__futex_wake(&mon_word, 1);
    }
}

static void on_dump_signal(int sig)
{
    (void)sig;
    atomic_store_explicit(&dump_requested, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&mon_word, 1, memory_order_release);
    pz__futex_wake(&mon_word, 1);
}

static bool all_idle(pz__runtime *rt)
{
    return atomic_load_explicit(&rt->nsleeping, memory_order_relaxed) ==
               atomic_load_explicit(&rt->nthreads, memory_order_relaxed) &&
           atomic_load_explicit(&rt->inject_len, memory_order_relaxed) == 0;
}

static void *monitor_main(void *arg)
{
    pz__runtime *rt = arg;
    pz__thread_set_name("plaza-monitor");
    /* Its signal mask is the workers' (every asynchronous signal blocked,
     * inherited from pz_run), and so is that of the spare workers it
     * starts: the fault signals must reach a spare's tasks (the stack
     * overflow report). */
    while (!atomic_load_explicit(&mon_stop, memory_order_acquire)) {
        uint32_t seen = atomic_load_explicit(&mon_word, memory_order_acquire);
        if (atomic_exchange_explicit(&dump_requested, false, memory_order_relaxed))
            pz__dump_to(NULL, "on signal");
        int64_t now = pz__clock_now();
        pz__monitor_check(rt, now);
        if (all_idle(rt) && !pz__monitor_busy_threads() && !pz__spare_busy(rt)) {
            /* Sleep until a worker or a thread wait wakes us.  Parked is
             * published before the re-check, and a poker loads it after
             * making itself visible, so one of the two sees the other. */
            atomic_store_explicit(&mon_parked, true, memory_order_seq_cst);
            if (all_idle(rt) && !pz__monitor_busy_threads() && !pz__spare_busy(rt) && !atomic_load(&mon_stop) &&
                !atomic_load(&dump_requested))
                pz__futex_wait(&mon_word, seen, -1);
            atomic_store_explicit(&mon_parked, false, memory_order_relaxed);
        } else {
            pz__futex_wait(&mon_word, seen, now + PZ__MONITOR_PERIOD_NS);
        }
    }
    return NULL;
}

void pz__monitor_start(pz__runtime *rt, const pz_config_t *c)
{
    atomic_store(&mon_stop, false);
    dump_signo = c->dump_signal;
    const char *env = getenv("PLAZA_DUMP_SIGNAL");
    if (!dump_signo && env && *env) {
        if (!strcmp(env, "SIGQUIT") || !strcmp(env, "QUIT"))
            dump_signo = SIGQUIT;
        else if (!strcmp(env, "SIGUSR1") || !strcmp(env, "USR1"))
            dump_signo = SIGUSR1;
        else if (!strcmp(env, "SIGUSR2") || !strcmp(env, "USR2"))
            dump_signo = SIGUSR2;
        else
            dump_signo = atoi(env);
        if (dump_signo <= 0 || dump_signo >= NSIG) {
            pz__report("PLAZA_DUMP_SIGNAL=%s: not a signal (SIGQUIT, SIGUSR1, SIGUSR2 or a number)", env);
            dump_signo = 0;
        }
    }
    if (dump_signo) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_dump_signal;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(dump_signo, &sa, &old_action);
    }
    if (c->monitor < 0 && !dump_signo)
        return;
    pz__monitor_configure(c);
    pz__spare_monitor_start(rt, c->stall_ms > 0 ? (int64_t)c->stall_ms * 1000000 : 0);
    mon_started = pthread_create(&mon_thread, NULL, monitor_main, rt) == 0;
    if (!mon_started) {
        pz__report("pz_run: cannot start the monitor thread; no deadlock or stall reports, no spare workers");
        pz__spare_monitor_stop(rt);
    }
}

void pz__monitor_stop(void)
{
    if (dump_signo) {
        sigaction(dump_signo, &old_action, NULL);
        dump_signo = 0;
    }
    if (!mon_started)
        return;
    atomic_store_explicit(&mon_stop, true, memory_order_release);
    atomic_fetch_add_explicit(&mon_word, 1, memory_order_release);
    pz__futex_wake(&mon_word, 1);
    pthread_join(mon_thread, NULL);
    mon_started = false;
    pz__spare_monitor_stop(NULL);
}

void pz__monitor_after_fork(void)
{
    /* The monitor thread does not exist in the child. */
    mon_started = false;
    atomic_store_explicit(&mon_parked, false, memory_order_relaxed);
    atomic_store_explicit(&mon_stop, false, memory_order_relaxed);
}
