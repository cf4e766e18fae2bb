/*
 * plaza signals: wait for signals from a task, and stop a service
 * gracefully on SIGINT/SIGTERM.
 *
 * How signals reach a task: plaza's worker threads (and the blocking
 * pool's threads, which workers start) block every asynchronous signal
 * from the moment they start, so a program's signal handlers never run on
 * a task's stack; a signal nobody waits for is delivered to the thread
 * that called pz_run (or another thread of the program), with the
 * disposition the program gave it, exactly as without plaza.  A signal
 * that a task waits for with pz_signal_wait (or that the shutdown helper
 * watches) is blocked on pz_run's thread too, from the first wait on, for
 * as long as pz_run runs, and is read from a signalfd on the runtime's
 * poller: its handler, if the program installed one, no longer runs.
 * Threads the program starts itself must block those signals as well
 * (pthread_sigmask before pthread_create), or the kernel may deliver them
 * there.  docs/service.md has the details.
 */
#ifndef PLAZA_SIGNAL_H
#define PLAZA_SIGNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "async.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A set of signals as a bit mask: PZ_SIGMASK(SIGINT) | PZ_SIGMASK(SIGTERM).
 * (A mask rather than a sigset_t, so that the header compiles in strict
 * ISO C too.)  Signals 1 to 64. */
#define PZ_SIGMASK(sig) (1ull << ((unsigned)(sig) - 1u))

/* Waits until one of the signals in set arrives (or was already pending)
 * and consumes it.  Returns its number, -ETIMEDOUT at the deadline,
 * -ECANCELED, or -EINVAL for an empty set or one holding a signal that
 * cannot be waited for (SIGKILL, SIGSTOP, and the fault signals SIGSEGV,
 * SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT).  Each delivered
 * signal goes to one waiter.  Outside a task it blocks the calling
 * thread.  A standard signal sent several times before it is read counts
 * once (the kernel keeps one pending instance). */
int pz_signal_wait(uint64_t set, int64_t deadline);

/* The graceful-shutdown helper.
 *
 * pz_shutdown_listen starts (once per pz_run) a task that watches SIGINT
 * and SIGTERM.  The first of them asks the program to stop:
 * pz_shutdown_requested turns true and every pz_shutdown_wait returns.  A
 * second one ends the process at once as that signal's default action does
 * (a shell shows exit status 130 for SIGINT, 143 for SIGTERM), for the
 * user whose service hangs in its shutdown.  The watcher is stopped when
 * the main task returns.  Returns 0, -EPERM outside a task, or the error
 * that kept the watcher from starting.
 *
 * pz_shutdown_requested, pz_shutdown_wait and pz_shutdown_notify start the
 * watcher too if it is not running (from a task).  pz_shutdown_request
 * asks for the stop from the program itself (an admin command, a test). */
int pz_shutdown_listen(void);
bool pz_shutdown_requested(void);
/* 0 once a stop was requested, -ETIMEDOUT at the deadline, -ECANCELED. */
int pz_shutdown_wait(int64_t deadline);
void pz_shutdown_request(void);
/* The signal that asked for the stop, 0 if none did (or pz_shutdown_request). */
int pz_shutdown_signal(void);
/* The notify the stop is announced on with pz_notify_all (never a
 * permit): for pz_select.  Take its epoch, check pz_shutdown_requested,
 * then wait since that epoch. */
pz_notify_t *pz_shutdown_notify(void);

#ifdef __cplusplus
}
#endif
#endif
