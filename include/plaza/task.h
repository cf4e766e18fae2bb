/*
 * plaza task extras: cancel shields, task groups (structured
 * concurrency), task-local values, task names by id.
 *
 * THE CANCELLATION RULE (every wait of plaza: runtime, async, io, bufio,
 * signals, select):
 *   pz_cancel(t) marks t cancelled, for good.  From then on, every call of
 *   t that would suspend it returns -ECANCELED instead of suspending (and
 *   the wait t is suspended in, if any, ends with -ECANCELED), unless t is
 *   inside a shield.  A call that completes without suspending completes
 *   as usual: a free lock is taken, an item in a channel is received, data
 *   already in a socket is read, a finished task is joined.  A wait that is
 *   cancelled has taken nothing (async.h's cancel policy).
 *   Inside pz_shield_begin() ... pz_shield_end() no wait is cancelled: the
 *   task can release what it holds, flush, join its children and run
 *   pz_blocking to the end.  pz_cancelled() stays true inside the shield,
 *   and the first suspending wait after the shield's end returns
 *   -ECANCELED.  A wait with a deadline still times out inside a shield:
 *   bound cleanup with deadlines.
 *   The sync locks (pz_mutex, pz_rwlock, pz_condvar, pz_once) block the
 *   thread, never suspend the task, and are not cancellation points.
 *   Unlocks, releases, sends to a channel with room and notifies never
 *   wait and never fail with -ECANCELED.
 */
#ifndef PLAZA_TASK_H
#define PLAZA_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Shields nest; pz_shield_end without a matching begin is reported and
 * ignored.  Only from a task (elsewhere they do nothing: threads are never
 * cancelled). */
void pz_shield_begin(void);
void pz_shield_end(void);

/* ------------------------------------------------------------------------
 * Task groups: a task spawns children into a group and waits for them all,
 * like Go's errgroup or a Trio nursery.
 *
 * A child is a function returning an int: 0 for success, anything else
 * (conventionally a negative errno) for failure.  pz_group_wait returns the
 * first failure in time (or 0), and after it returns no child of the
 * group is running and every child's task has been or is being freed
 * (children are never joined one by one: no handle to leak).
 *
 * The rules that keep a group from being left with children running:
 * - pz_group_wait waits for every child.  If the waiting task is
 *   cancelled, it cancels every child and goes on waiting for them
 *   (shielded), then returns -ECANCELED.  With a deadline
 *   (pz_group_wait_until) it may return -ETIMEDOUT with the group still
 *   open; wait again, or pz_group_cancel and wait.
 * - A task that ends with a group still open (it never waited, or its
 *   wait timed out) has that group closed at its end: the children are
 *   cancelled and waited for, and the leak is reported on stderr.  The
 *   same at pz_run's end for the main task.
 * - Children may open groups of their own (nesting): cancelling a child
 *   cancels its wait, which cancels its children, and so on down.
 *
 * Any task may spawn into an open group (a child may spawn siblings); only
 * the task that created the group may wait for it.  A group is freed by
 * the pz_group_wait that returns something other than -ETIMEDOUT: the
 * handle must not be used afterwards.
 * ------------------------------------------------------------------------ */
typedef struct pz_group pz_group_t;

#define PZ_GROUP_CANCEL_ON_ERROR 1u /* the first failure cancels the other children */

/* A new group owned by the calling task; NULL outside a task or out of
 * memory (reported). */
pz_group_t *pz_group_new(unsigned flags);
/* Starts fn(arg) as a child.  0, -ENOMEM, -EINVAL (bad arguments).  A
 * child spawned into a cancelled group starts cancelled. */
int pz_group_spawn(pz_group_t *g, int (*fn)(void *arg), void *arg);
int pz_group_spawn_with(pz_group_t *g, int (*fn)(void *arg), void *arg, const pz_spawn_opts_t *opts);
/* Cancels every child, and every child spawned later. */
void pz_group_cancel(pz_group_t *g);
/* Children still running (a snapshot). */
size_t pz_group_running(pz_group_t *g);
int pz_group_wait(pz_group_t *g);
int pz_group_wait_until(pz_group_t *g, int64_t deadline);

/* ------------------------------------------------------------------------
 * Task-local values: a key made once (per process), a value per task.
 * At the end of a task every value it set that is not NULL is passed to
 * its key's destructor (in reverse order of first set; a destructor that
 * sets values again gets up to four rounds).  Values are the task's own:
 * get and set touch no lock.  Up to 256 keys per process.
 * ------------------------------------------------------------------------ */
typedef unsigned pz_local_key_t;

/* 0, or -ENOSPC when every key is taken. */
int pz_local_key(pz_local_key_t *key, void (*destructor)(void *value));
/* 0, -EINVAL (not a key), -EPERM (not in a task), -ENOMEM. */
int pz_local_set(pz_local_key_t key, void *value);
/* The calling task's value, NULL if none (or not in a task). */
void *pz_local_get(pz_local_key_t key);

/* The name of the live task with this id (given with pz_spawn_opts.name),
 * copied into out (cap bytes, '\0'-terminated): 0, -ESRCH if no live
 * task with that id has a name, -EINVAL.  For logs and reports that keep
 * ids rather than handles. */
int pz_task_name_of(uint64_t id, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
