/*
 * The lock observation switch and hook table (include/plaza/runtime.h).
 *
 * Contract: pz__observe_sw.on is false until hooks are installed, and the
 * table is published before the flag (release store, relaxed loads that
 * depend on the flag are ordered by the flag's own release/acquire pair on
 * the paths that read the table: they load the flag, then the table with
 * acquire).  Turning the observation off leaves the table in place, so a
 * lock path that saw the flag just before it cleared still finds hooks.
 *
 * The per-caller record (pz__observer, pz__observer_self in current.c): a
 * task's lives in the task (zeroed when the task is made), a plain
 * thread's in a thread-local.  Only the
 * caller itself writes it, and the scheduler keeps suspended_ns only while
 * the flag is on and the observer times a hold of that task, so a task
 * that holds no timed lock pays no clock read when it parks.
 */
#include "internal.h"

/* Zero: off, no hooks, nothing timed. */
pz__observe_switches pz__observe_sw;

void pz__lock_hooks_install(const pz__lock_hooks *hooks)
{
    if (hooks)
        atomic_store_explicit(&pz__observe_sw.hooks, hooks, memory_order_release);
    atomic_store_explicit(&pz__observe_sw.on, hooks != NULL, memory_order_release);
}

/* pz__observer_self lives in current.c, beside the thread-local it reads. */

/* The rare ends of an inline observed acquisition (runtime.h): the table
 * is there whenever a slot is (slots come from the hooks). */
void pz__observe_owner_probed(pz__observe_slot *sl, uint64_t self, bool arm)
{
    const pz__lock_hooks *h = atomic_load_explicit(&pz__observe_sw.hooks, memory_order_acquire);
    if (h)
        h->owner_probe(sl, self, arm);
}

void pz__observe_sample(pz__observe_slot *sl, uint64_t self, unsigned flags)
{
    const pz__lock_hooks *h = atomic_load_explicit(&pz__observe_sw.hooks, memory_order_acquire);
    if (h)
        h->sample(sl, self, flags);
}
