/*
 * Task handles that detect reuse.
 *
 * Task structs are type-stable: a freed struct goes to a free list and is
 * used again by a later spawn, never returned to malloc while the process
 * runs, so reading a field of a stale handle's struct is always defined.
 * Each struct carries a 16-bit generation (handle_gen, never 0), bumped
 * every time the struct is freed, and the handle pz_spawn returns is the
 * struct's address with that generation in its top 16 bits (user-space
 * addresses of x86_64 and aarch64 leave them 0; a struct at an address
 * that does not is handed out untagged).  Every call that takes a handle
 * strips the tag and compares it with the struct's generation: a handle
 * whose task was already joined, or detached and ended, is stale, and the
 * call reports it and fails instead of freeing the struct twice or acting
 * on the task that reuses it.  A handle without a tag (pz_self's) is not
 * checked: it names the running task, which is live.  The check misses
 * only a handle kept across 65 535 reuses of the same struct.
 *
 * The handles must never be dereferenced by anyone but this layer, which
 * always goes through pz__task_of.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "kit.h"

#include <stdlib.h>
#include <string.h>

#define TAG_SHIFT 48
#define ADDR_MASK ((UINT64_C(1) << TAG_SHIFT) - 1)

/* Structs are carved from slabs of TASKS_PER_SLAB, never from one malloc
 * each: a burst of spawns made one allocation per task, and glibc grows a
 * worker thread's arena a page at a time (one mprotect per 8 structs, about
 * 12 000 system calls for 100 000 spawns).  A slab is one calloc above
 * malloc's mmap threshold, so it is a fresh zeroed mapping, faulted in
 * whole by one system call (a burst of spawns fills it anyway, and 61 page
 * faults of their own cost it 15% more CPU).  Slabs are never freed (the
 * structs are type-stable); each is linked from the one before so that all
 * of them stay reachable. */
#define TASKS_PER_SLAB 512
struct task_slab {
    struct task_slab *prev;
    pz_task_t tasks[TASKS_PER_SLAB];
};

static pz__spin free_lock;
static pz_task_t *free_list; /* under free_lock, linked through next */
static struct task_slab *slabs; /* under free_lock: the newest slab */
static unsigned slab_used;      /* under free_lock: structs of it handed out */

pz_task_t *pz__task_alloc(void)
{
    pz__spin_lock(&free_lock);
    pz_task_t *t = free_list;
    if (t) {
        free_list = t->next;
    } else if (slabs && slab_used < TASKS_PER_SLAB) {
        t = &slabs->tasks[slab_used++];
        atomic_init(&t->handle_gen, 1);
        pz__spin_unlock(&free_lock);
        return t; /* never used: still zero */
    }
    pz__spin_unlock(&free_lock);
    if (!t) {
        struct task_slab *s = calloc(1, sizeof *s);
        if (!s)
            return NULL;
        pz__memory_prefault(s, sizeof *s);
        t = &s->tasks[0];
        atomic_init(&t->handle_gen, 1);
        pz__spin_lock(&free_lock);
        /* Another thread may have started a slab meanwhile: the rest of
         * its slab's structs stay unused, linked behind this one. */
        s->prev = slabs;
        slabs = s;
        slab_used = 1;
        pz__spin_unlock(&free_lock);
        return t;
    }
    uint16_t gen = atomic_load_explicit(&t->handle_gen, memory_order_relaxed);
    memset(t, 0, sizeof *t);
    atomic_store_explicit(&t->handle_gen, gen, memory_order_relaxed);
    return t;
}

void pz__task_recycle(pz_task_t *t)
{
    /* Timed holds the task never ended (a semaphore permit another task
     * released) end with it for the observed unlocks' filter
     * (pz__observe_sw.timed_now, runtime.h). */
    if (t->observer.timed_holds)
        atomic_fetch_sub_explicit(&pz__observe_sw.timed_now, t->observer.timed_holds, memory_order_relaxed);
    uint16_t gen = atomic_load_explicit(&t->handle_gen, memory_order_relaxed);
    gen = gen == UINT16_MAX ? 1 : (uint16_t)(gen + 1);
    atomic_store_explicit(&t->handle_gen, gen, memory_order_release);
    pz__spin_lock(&free_lock);
    t->next = free_list;
    free_list = t;
    pz__spin_unlock(&free_lock);
}

pz_task_t *pz__task_handle(pz_task_t *t)
{
    if (!t || ((uintptr_t)t & ~ADDR_MASK))
        return t;
    uint64_t gen = atomic_load_explicit(&t->handle_gen, memory_order_relaxed);
    return (pz_task_t *)((uintptr_t)t | (uintptr_t)(gen << TAG_SHIFT));
}

pz_task_t *pz__task_peek(const pz_task_t *h)
{
    pz_task_t *t = (pz_task_t *)((uintptr_t)h & ADDR_MASK);
    unsigned tag = (unsigned)((uintptr_t)h >> TAG_SHIFT);
    if (t && tag && atomic_load_explicit(&t->handle_gen, memory_order_acquire) != tag)
        return NULL;
    return t;
}

pz_task_t *pz__task_of(const pz_task_t *h, const char *call)
{
    pz_task_t *t = pz__task_peek(h);
    if (h && !t)
        pz__report("%s: stale task handle: that task was already joined, or detached and ended "
                   "(handle generation %u, the task struct is at %u now)",
                   call, (unsigned)((uintptr_t)h >> TAG_SHIFT),
                   (unsigned)atomic_load(&((pz_task_t *)((uintptr_t)h & ADDR_MASK))->handle_gen));
    return t;
}
