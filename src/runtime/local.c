/* Task-local values: see include/plaza/task.h. */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"

void pz__locals_destroy(pz_task_t *t)
{
    (void)t;
}
