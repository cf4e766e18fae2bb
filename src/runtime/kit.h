/*
 * Internal declarations of the runtime's service-kit pieces (signal mask
 * registry, main-exit hooks).  Never installed.
 */
#ifndef PZ_RUNTIME_KIT_H
#define PZ_RUNTIME_KIT_H

#include <signal.h>

#include "plaza/runtime.h"

/* sigmask.c: adds set to the signals blocked on every runtime thread and
 * waits until pz_run's thread blocks them too.  0 or a negative errno. */
int pz__sigmask_register(const sigset_t *set);
/* pz_run's thread, while it waits for the main task. */
void pz__sigmask_runner_sync(void);
void pz__sigmask_runner_restore(void);

/* main_exit.c */
int pz__main_exit_hook(void (*fn)(void));
void pz__main_exit_hooks_run(void);

/* At the end of every task, after its function returned, on its own
 * stack: closes the groups it left open (group.c) and runs its
 * task-local destructors (local.c).  May suspend. */
void pz__task_end(pz_task_t *t);
void pz__groups_close_all(pz_task_t *t);
void pz__locals_destroy(pz_task_t *t);

/* local.c: the registry of named tasks, for pz_task_name_of. */
void pz__task_name_register(pz_task_t *t);
void pz__task_name_forget(pz_task_t *t);

/* handle.c: type-stable task structs and generation-tagged handles. */
pz_task_t *pz__task_alloc(void);
void pz__task_recycle(pz_task_t *t);
pz_task_t *pz__task_handle(pz_task_t *t);
/* The task a handle names, or NULL if it is stale (reported, naming the
 * call, by pz__task_of; silently by pz__task_peek). */
pz_task_t *pz__task_of(const pz_task_t *h, const char *call);
pz_task_t *pz__task_peek(const pz_task_t *h);

#endif
