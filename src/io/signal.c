/*
 * Signal waits on the reactor, and the graceful-shutdown helper.
 *
 * pz_signal_wait registers its set with the runtime's mask registry
 * (src/runtime/sigmask.c: blocked on every runtime thread, pz_run's
 * included, before the registration returns), opens a signalfd for the
 * set and reads one signal from it with pz_read's readiness wait.  A
 * signal that arrives before the read stays pending in the kernel, since
 * it is blocked everywhere, so none is lost between two waits; reading
 * consumes it, so each goes to one waiter.
 *
 * The shutdown helper: one watcher task per pz_run waits for SIGINT and
 * SIGTERM.  State word `requested` (0, then 1 forever within the run) is
 * written by the watcher (or pz_shutdown_request) before pz_notify_all of
 * `announce`; a waiter takes the notify's epoch, reads `requested`, and
 * waits since that epoch, so a stop between its check and its wait makes
 * the wait return at once.  A second signal kills the process with the
 * signal's default action.  The watcher is cancelled and joined by a
 * main-exit hook, which also resets the state for the next pz_run.
 */
#define _GNU_SOURCE
#include "io_internal.h"
#include "plaza/signal.h"
#include "plaza/sync.h"
#include "plaza/task.h"

#include "../arch/arch_signal.h"
#include "../runtime/kit.h"

int pz_signal_wait(uint64_t mask, int64_t deadline)
{
    if (!mask)
        return -EINVAL;
    sigset_t set;
    sigemptyset(&set);
    for (int s = 1; s <= 64; s++) {
        if (mask & PZ_SIGMASK(s)) {
            if (s >= NSIG || !pz__sig_waitable(s))
                return -EINVAL;
            sigaddset(&set, s);
        }
    }
    int r = pz__sigmask_register(&set);
    if (r < 0)
        return r;
    int fd = pz__signalfd_open(&set);
    if (fd < 0)
        return fd;
    int sig;
    for (;;) {
        sig = pz__signalfd_take(fd);
        if (sig != -EAGAIN)
            break;
        r = pz_wait_fd(fd, PZ_READABLE, deadline);
        if (r < 0) {
            sig = r;
            break;
        }
    }
    pz_close(fd);
    return sig;
}

/* ---- shutdown ---- */

static pz_mutex_t sd_lock;
static pz_task_t *watcher;         /* under sd_lock */
static _Atomic int requested;
static _Atomic int stop_signal;
static pz_notify_t announce;

static void announce_stop(int sig)
{
    int no = 0;
    if (atomic_compare_exchange_strong(&requested, &no, 1)) {
        atomic_store(&stop_signal, sig);
        pz_notify_all(&announce);
    }
}

static void *watch(void *arg)
{
    (void)arg;
    for (;;) {
        int sig = pz_signal_wait(PZ_SIGMASK(SIGINT) | PZ_SIGMASK(SIGTERM), PZ_FOREVER);
        if (sig < 0)
            return NULL; /* cancelled at main's exit */
        if (atomic_load(&requested)) {
            pz__report("second %s during shutdown: exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM");
            pz__sig_die(sig);
        }
        announce_stop(sig);
    }
}

/* Main-exit hook: stop the watcher, so that it is not abandoned in a wait,
 * and start the next pz_run with no stop requested. */
static void stop_watcher(void)
{
    pz_mutex_lock(&sd_lock);
    pz_task_t *w = watcher;
    watcher = NULL;
    pz_mutex_unlock(&sd_lock);
    if (w) {
        pz_cancel(w);
        pz_shield_begin(); /* main may itself be cancelled */
        pz_join(w, NULL);
        pz_shield_end();
    }
    atomic_store(&requested, 0);
    atomic_store(&stop_signal, 0);
}

int pz_shutdown_listen(void)
{
    if (!pz__current_task())
        return -EPERM;
    int r = 0;
    pz_mutex_lock(&sd_lock);
    if (!watcher) {
        r = pz__main_exit_hook(stop_watcher);
        if (r == 0) {
            /* Registered here, before the watcher runs, so that a signal
             * sent as soon as this returns is already blocked. */
            sigset_t set;
            sigemptyset(&set);
            sigaddset(&set, SIGINT);
            sigaddset(&set, SIGTERM);
            pz_mutex_unlock(&sd_lock);
            r = pz__sigmask_register(&set);
            pz_mutex_lock(&sd_lock);
        }
        if (r == 0 && !watcher) {
            watcher = pz_spawn_with(watch, NULL, &(pz_spawn_opts_t){.name = "plaza-shutdown", .stack_size = 32768});
            if (!watcher)
                r = -ENOMEM;
        }
    }
    pz_mutex_unlock(&sd_lock);
    return r;
}

static void ensure_listening(void)
{
    if (pz__current_task()) {
        pz_mutex_lock(&sd_lock);
        bool running = watcher != NULL;
        pz_mutex_unlock(&sd_lock);
        if (!running)
            pz_shutdown_listen();
    }
}

bool pz_shutdown_requested(void)
{
    if (atomic_load(&requested))
        return true;
    ensure_listening();
    return atomic_load(&requested) != 0;
}

int pz_shutdown_wait(int64_t deadline)
{
    ensure_listening();
    for (;;) {
        uint64_t e = pz_notify_epoch(&announce);
        if (atomic_load(&requested))
            return 0;
        int r = pz_notify_wait_since(&announce, e, deadline);
        if (r < 0)
            return r;
    }
}

void pz_shutdown_request(void)
{
    announce_stop(0);
}

int pz_shutdown_signal(void)
{
    return atomic_load(&stop_signal);
}

pz_notify_t *pz_shutdown_notify(void)
{
    ensure_listening();
    return &announce;
}
