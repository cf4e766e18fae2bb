/*
 * Task groups (include/plaza/task.h).
 *
 * A group is a heap object guarded by its spin lock:
 *   running   children whose function has not returned, each with a node
 *             in the `children` list (heap, one per child, freed by the
 *             child itself);
 *   waiter    the owner's task and park generation while it waits in
 *             pz_group_wait, else NULL;
 *   err       the first non-zero child result;
 *   cancelled pz_group_cancel (or a first error with CANCEL_ON_ERROR) ran.
 *
 * Children are detached tasks: each frees its own task struct when it
 * ends, so a group never holds a handle that could leak.  A node's `task`
 * is written by the child itself when it starts, under the lock, so that a
 * cancel never reaches a task that has not started (the child sees
 * `cancelled` then and cancels itself) nor one that has unlinked its node
 * (its struct may be gone).  A child's last touch of the group is the
 * unlock after it has unlinked its node, decremented `running` and, if it
 * was the last, claimed the waiting owner's park; the owner reads
 * `running` only under the lock, so when it sees 0 no child can touch the
 * group any more, and it may free it.  The claimed owner is made runnable
 * by the child after the unlock, from a local copy of the pointer.
 *
 * The owner keeps its open groups on a list of its own (t->groups), so
 * that its end closes the ones it never waited for (pz__task_end).
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"
#include "plaza/task.h"

#include <stdlib.h>

typedef struct pz__child {
    struct pz__child *prev, *next;
    struct pz_group *group;
    int (*fn)(void *);
    void *arg;
    pz_task_t *task; /* set by the child when it starts */
} pz__child;

struct pz_group {
    pz__spin lock;
    unsigned flags;
    bool cancelled;
    int err;
    size_t running;
    pz__child *children;
    pz_task_t *waiter;
    uint64_t waiter_gen;
    pz_task_t *owner;
    struct pz_group *owner_next; /* the owner's list of open groups */
};

static const char *name_of(const pz_task_t *t)
{
    return t->name[0] ? t->name : "unnamed";
}

pz_group_t *pz_group_new(unsigned flags)
{
    pz_task_t *self = pz__current_task();
    if (!self) {
        pz__report("pz_group_new: called outside a task");
        return NULL;
    }
    pz_group_t *g = calloc(1, sizeof *g);
    if (!g) {
        pz__report("pz_group_new: out of memory");
        return NULL;
    }
    g->flags = flags;
    g->owner = self;
    g->owner_next = self->groups;
    self->groups = g;
    return g;
}

/* Under g->lock. */
static void cancel_locked(pz_group_t *g)
{
    g->cancelled = true;
    for (pz__child *c = g->children; c; c = c->next)
        if (c->task)
            pz_cancel(c->task);
}

void pz_group_cancel(pz_group_t *g)
{
    if (!g)
        return;
    pz__spin_lock(&g->lock);
    cancel_locked(g);
    pz__spin_unlock(&g->lock);
}

size_t pz_group_running(pz_group_t *g)
{
    pz__spin_lock(&g->lock);
    size_t n = g->running;
    pz__spin_unlock(&g->lock);
    return n;
}

static void *child_main(void *arg)
{
    pz__child *c = arg;
    pz_group_t *g = c->group;
    pz_task_t *self = pz__current_task();
    pz__spin_lock(&g->lock);
    c->task = self;
    bool cancel = g->cancelled;
    pz__spin_unlock(&g->lock);
    if (cancel)
        pz_cancel(self);

    int r = c->fn(c->arg);
    /* The child's own groups and task-locals end before it leaves the
     * group, so that a group's wait covers its grandchildren too. */
    pz__task_end(self);

    pz__spin_lock(&g->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        g->children = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (r != 0 && g->err == 0) {
        g->err = r;
        if (g->flags & PZ_GROUP_CANCEL_ON_ERROR)
            cancel_locked(g);
    }
    pz_task_t *wake = NULL;
    if (--g->running == 0 && g->waiter &&
        pz__task_claim(g->waiter, g->waiter_gen, PZ__WAKE_UNPARK) == PZ__CLAIM_WON_READY)
        wake = g->waiter;
    pz__spin_unlock(&g->lock);
    /* g may be freed from here on. */
    if (wake)
        pz__task_ready(wake, true);
    free(c);
    return NULL;
}

int pz_group_spawn_with(pz_group_t *g, int (*fn)(void *arg), void *arg, const pz_spawn_opts_t *opts)
{
    if (!g || !fn) {
        pz__report("pz_group_spawn: %s is NULL", g ? "fn" : "the group");
        return -EINVAL;
    }
    pz__child *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->group = g;
    c->fn = fn;
    c->arg = arg;
    pz__spin_lock(&g->lock);
    c->next = g->children;
    if (c->next)
        c->next->prev = c;
    g->children = c;
    g->running++;
    pz__spin_unlock(&g->lock);
    pz_task_t *t = pz_spawn_with(child_main, c, opts);
    if (!t) {
        pz__spin_lock(&g->lock);
        if (c->prev)
            c->prev->next = c->next;
        else
            g->children = c->next;
        if (c->next)
            c->next->prev = c->prev;
        g->running--;
        pz__spin_unlock(&g->lock);
        free(c);
        return -ENOMEM;
    }
    pz_detach(t);
    return 0;
}

int pz_group_spawn(pz_group_t *g, int (*fn)(void *arg), void *arg)
{
    return pz_group_spawn_with(g, fn, arg, NULL);
}

static void unlist(pz_task_t *owner, pz_group_t *g)
{
    for (pz_group_t **p = &owner->groups; *p; p = &(*p)->owner_next) {
        if (*p == g) {
            *p = g->owner_next;
            return;
        }
    }
}

int pz_group_wait_until(pz_group_t *g, int64_t deadline)
{
    pz_task_t *self = pz__current_task();
    if (!g)
        return -EINVAL;
    if (self != g->owner) {
        pz__report("pz_group_wait: only the task that created a group may wait for it (task %llu)",
                   self ? (unsigned long long)self->id : 0ull);
        return -EPERM;
    }
    bool owner_cancelled = false;
    for (;;) {
        pz__spin_lock(&g->lock);
        if (g->running == 0) {
            pz__spin_unlock(&g->lock);
            break;
        }
        pz__wait_note(PZ__WAIT_GROUP, g);
        g->waiter_gen = pz__park_prepare(false);
        g->waiter = self;
        pz__spin_unlock(&g->lock);
        int r = pz__park_commit(NULL, NULL, owner_cancelled ? PZ_FOREVER : deadline);
        pz__spin_lock(&g->lock);
        g->waiter = NULL;
        pz__spin_unlock(&g->lock);
        if (r == -ETIMEDOUT)
            return -ETIMEDOUT;
        if (r == -ECANCELED && !owner_cancelled) {
            /* The owner is cancelled: so are its children, and it waits
             * for them deaf to further cancels. */
            owner_cancelled = true;
            pz_group_cancel(g);
            self->shield++;
        }
    }
    if (owner_cancelled)
        self->shield--;
    int err = owner_cancelled ? -ECANCELED : g->err;
    unlist(self, g);
    free(g);
    return err;
}

int pz_group_wait(pz_group_t *g)
{
    return pz_group_wait_until(g, PZ_FOREVER);
}

void pz__groups_close_all(pz_task_t *t)
{
    while (t->groups) {
        pz_group_t *g = t->groups;
        size_t n = pz_group_running(g);
        if (n)
            pz__report("task %llu (%s) ended with a group of %zu running children: cancelled and waited for",
                       (unsigned long long)t->id, name_of(t), n);
        pz_group_cancel(g);
        t->shield++;
        pz_group_wait(g);
        t->shield--;
    }
}
