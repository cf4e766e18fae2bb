/*
 * Cancel shields.  The rule is stated in include/plaza/task.h; its
 * mechanism is one field: while a task's shield depth is non-zero, every
 * park it prepares is PZ__PS_NOCANCEL (pz__park_prepare), which pz_cancel
 * cannot claim and pz__park_commit does not claim for a pending cancel.
 * Every wait of plaza parks through pz__park_prepare (the parking lot,
 * channels, joins, the blocking pool, the reactor), so the shield covers
 * them all without a change to any of them.  The depth is the task's own
 * field and changes only on its own stack, between parks.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"
#include "plaza/task.h"

void pz_shield_begin(void)
{
    pz_task_t *t = pz__current_task();
    if (t)
        t->shield++;
}

void pz_shield_end(void)
{
    pz_task_t *t = pz__current_task();
    if (!t)
        return;
    if (t->shield == 0) {
        pz__report("pz_shield_end: task %llu (%s) is not in a shield; ignored", (unsigned long long)t->id,
                   t->name[0] ? t->name : "unnamed");
        return;
    }
    t->shield--;
}

void pz__task_end(pz_task_t *t)
{
    if (!t)
        return;
    pz__groups_close_all(t);
    pz__locals_destroy(t);
}
