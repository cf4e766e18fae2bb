/*
 * Hooks that run in the main task when its function returns, before
 * pz_run stops the workers: upper layers that keep a task of their own
 * (the shutdown watcher of src/io/signal.c) stop and join it there, so
 * that it is not abandoned with its wait half done.  A hook is added once
 * per process (adding it again does nothing); hooks run in the order they
 * were added, on every pz_run.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"

#define PZ__EXIT_HOOKS 8

static pz__spin hooks_lock;
static void (*hooks[PZ__EXIT_HOOKS])(void);
static int nhooks;

int pz__main_exit_hook(void (*fn)(void))
{
    int r = 0;
    pz__spin_lock(&hooks_lock);
    int i = 0;
    while (i < nhooks && hooks[i] != fn)
        i++;
    if (i == nhooks) {
        if (nhooks < PZ__EXIT_HOOKS)
            hooks[nhooks++] = fn;
        else
            r = -ENOSPC;
    }
    pz__spin_unlock(&hooks_lock);
    return r;
}

void pz__main_exit_hooks_run(void)
{
    for (int i = 0;; i++) {
        pz__spin_lock(&hooks_lock);
        void (*fn)(void) = i < nhooks ? hooks[i] : NULL;
        pz__spin_unlock(&hooks_lock);
        if (!fn)
            return;
        fn();
    }
}
