/*
 * Internal declarations of the runtime's service-kit pieces (signal mask
 * registry, main-exit hooks).  Never installed.
 */
#ifndef PZ_RUNTIME_KIT_H
#define PZ_RUNTIME_KIT_H

#include <signal.h>

/* sigmask.c: adds set to the signals blocked on every runtime thread and
 * waits until pz_run's thread blocks them too.  0 or a negative errno. */
int pz__sigmask_register(const sigset_t *set);
/* pz_run's thread, while it waits for the main task. */
void pz__sigmask_runner_sync(void);
void pz__sigmask_runner_restore(void);

/* main_exit.c */
int pz__main_exit_hook(void (*fn)(void));
void pz__main_exit_hooks_run(void);

#endif
