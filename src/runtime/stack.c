/*
 * Task stacks.
 *
 * A stack is one private anonymous mapping: a guard page at the bottom
 * (PROT_NONE, so running off the end faults instead of corrupting the
 * neighbour) and the usable stack above it.  Stacks of the runtime's
 * default size are recycled: each worker keeps a few for the tasks it
 * starts, and a shared pool takes the overflow, so spawning does not map
 * memory on the hot path.  Tasks get their stack when they first run, not
 * when spawned, so a burst of spawned-but-not-started tasks costs only their
 * task structs.
 *
 * A guarded stack costs the kernel two memory areas; Linux limits a process
 * to vm.max_map_count areas (65530 by default), so about 32 000 live guarded
 * stacks.  docs/stacks.md tells what to do about it.
 *
 * Overflow: a SIGSEGV handler on an alternate signal stack looks at the
 * faulting address; if it is in (or just below) the guard of the running
 * task's stack, it reports the task and aborts.  Any other fault goes to the
 * handler that was installed before plaza's, or to the default action.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PZ_ASAN
#include <sanitizer/asan_interface.h>
#endif

#define PZ__ALTSTACK_SIZE (64u * 1024u)
/* Faults this far below the guard still count as an overflow: a frame
 * larger than the guard page can jump past it. */
#define PZ__OVERFLOW_SLACK (64u * 1024u)

int pz__stack_acquire(pz__worker *w, pz_task_t *t)
{
    pz__runtime *rt = w->rt;
    size_t usable = t->stack_size;
    size_t guard = rt->guard_size;
    void *base = NULL;
    if (usable == rt->stack_size) {
        if (w->stack_cache_len > 0) {
            base = w->stack_cache[--w->stack_cache_len];
        } else {
            pz__spin_lock(&rt->stack_pool_lock);
            if (rt->stack_pool_len > 0)
                base = rt->stack_pool[--rt->stack_pool_len];
            pz__spin_unlock(&rt->stack_pool_lock);
        }
    }
    if (!base)
        base = pz__stack_map(usable + guard, guard);
    if (!base)
        return -ENOMEM;
    t->stack_base = base;
    t->stack_map_size = usable + guard;
    t->guard_size = guard;
    t->ctx.stack_lo = (char *)base + guard;
    t->ctx.stack_size = usable;
    return 0;
}

void pz__stack_release(pz__worker *w, pz_task_t *t)
{
    pz__runtime *rt = w->rt;
    if (!t->stack_map_size)
        return;
    void *base = t->stack_base;
    size_t map = t->stack_map_size;
    t->stack_map_size = 0;
#ifdef PZ_ASAN
    /* The dead task's frames leave poisoned redzones behind. */
    __asan_unpoison_memory_region(t->ctx.stack_lo, t->ctx.stack_size);
#endif
    if (t->ctx.stack_size == rt->stack_size) {
        if (w->stack_cache_len < PZ__STACK_CACHE) {
            w->stack_cache[w->stack_cache_len++] = base;
            return;
        }
        pz__spin_lock(&rt->stack_pool_lock);
        if (rt->stack_pool_len < PZ__STACK_POOL_MAX) {
            rt->stack_pool[rt->stack_pool_len++] = base;
            base = NULL;
        }
        pz__spin_unlock(&rt->stack_pool_lock);
        if (!base)
            return;
    }
    pz__stack_unmap(base, map);
}

void pz__stacks_destroy(pz__runtime *rt)
{
    size_t map = rt->stack_size + rt->guard_size;
    for (int i = 0; i < rt->nworkers; i++) {
        pz__worker *w = &rt->workers[i];
        while (w->stack_cache_len > 0)
            pz__stack_unmap(w->stack_cache[--w->stack_cache_len], map);
    }
    while (rt->stack_pool_len > 0)
        pz__stack_unmap(rt->stack_pool[--rt->stack_pool_len], map);
}

/* ---- overflow reports ---- */

static struct sigaction previous_segv, previous_bus;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t append(char *buf, size_t at, size_t cap, const char *s)
{
    while (*s && at + 1 < cap)
        buf[at++] = *s++;
    return at;
}

static size_t append_u64(char *buf, size_t at, size_t cap, uint64_t v)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0 && at + 1 < cap)
        buf[at++] = digits[--n];
    return at;
}

static void on_fault(int sig, siginfo_t *si, void *uc)
{
    pz__worker *w = pz__current_worker();
    pz_task_t *t = w ? w->current : NULL;
    if (t && t->stack_map_size && t->guard_size) {
        uintptr_t addr = (uintptr_t)si->si_addr;
        uintptr_t base = (uintptr_t)t->stack_base;
        uintptr_t lo = base > PZ__OVERFLOW_SLACK ? base - PZ__OVERFLOW_SLACK : 0;
        if (addr >= lo && addr < base + t->guard_size) {
            char msg[160];
            size_t n = append(msg, 0, sizeof msg, "plaza: stack overflow in task ");
            n = append_u64(msg, n, sizeof msg, t->id);
            n = append(msg, n, sizeof msg, " (");
            n = append(msg, n, sizeof msg, t->name[0] ? t->name : "unnamed");
            n = append(msg, n, sizeof msg, "); its stack is ");
            n = append_u64(msg, n, sizeof msg, t->ctx.stack_size);
            n = append(msg, n, sizeof msg, " bytes\n");
            ssize_t unused = write(STDERR_FILENO, msg, n);
            (void)unused;
            abort();
        }
    }
    struct sigaction *prev = sig == SIGSEGV ? &previous_segv : &previous_bus;
    if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction) {
        prev->sa_sigaction(sig, si, uc);
        return;
    }
    if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
        return;
    }
    /* Default action: restore it and return, so the fault repeats and the
     * process dies of it with the usual status. */
    signal(sig, SIG_DFL);
}

static void install_for(int sig, struct sigaction *previous)
{
    struct sigaction now;
    if (sigaction(sig, NULL, &now) == 0 && (now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_fault)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, previous);
}

/* Called by every pz_run: if something replaced plaza's handler since the
 * last runtime (a test framework, a crash reporter), plaza's goes first
 * again and passes what is not an overflow on to that one. */
void pz__overflow_handler_install(void)
{
    pthread_mutex_lock(&install_lock);
    install_for(SIGSEGV, &previous_segv);
    install_for(SIGBUS, &previous_bus);
    pthread_mutex_unlock(&install_lock);
}

int pz__altstack_setup(pz__worker *w)
{
    w->altstack = malloc(PZ__ALTSTACK_SIZE);
    if (!w->altstack)
        return -ENOMEM;
    stack_t ss = {.ss_sp = w->altstack, .ss_size = PZ__ALTSTACK_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        free(w->altstack);
        w->altstack = NULL;
        return -errno;
    }
    return 0;
}

void pz__altstack_teardown(pz__worker *w)
{
    if (!w->altstack)
        return;
    stack_t ss = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    free(w->altstack);
    w->altstack = NULL;
}
