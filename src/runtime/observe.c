/*
 * The lock observation switch and hook table (include/plaza/runtime.h).
 *
 * Contract: pz__advisor_on is false until hooks are installed, and the
 * table is published before the flag (release store, relaxed loads that
 * depend on the flag are ordered by the flag's own release/acquire pair on
 * the paths that read the table: they load the flag, then the table with
 * acquire).  Turning the observation off leaves the table in place, so a
 * lock path that saw the flag just before it cleared still finds hooks.
 *
 * The per-task suspended time is kept by the scheduler (suspend_on in
 * sched.c) only while the flag is on, so it costs nothing when off.
 */
#include "internal.h"

_Atomic bool pz__advisor_on;
const pz__lock_hooks *_Atomic pz__lock_hooks_table;

void pz__lock_hooks_install(const pz__lock_hooks *hooks)
{
    if (hooks)
        atomic_store_explicit(&pz__lock_hooks_table, hooks, memory_order_release);
    atomic_store_explicit(&pz__advisor_on, hooks != NULL, memory_order_release);
}

int64_t pz__task_suspended_ns(void)
{
    pz_task_t *t = pz__current_task();
    return t ? t->suspended_ns : -1;
}
