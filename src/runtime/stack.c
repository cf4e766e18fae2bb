/*
 * Task stacks.
 *
 * A stack is a guard (one page at the bottom that faults on any access, so
 * running off the end is caught instead of corrupting the neighbour) and
 * the usable stack above it.  Stacks of the runtime's default size are cut
 * from chunks: one anonymous mapping holding up to 64 of them side by side,
 * each with its guard.  A stack of another size is a chunk of its own.
 *
 * Guards are installed with madvise(MADV_GUARD_INSTALL) where the kernel
 * has it (Linux 6.13): the guard lives in the page tables and a chunk stays
 * one memory area, so a million live stacks cost about 16 000 of the
 * kernel's vm.max_map_count areas (65530 by default).  Elsewhere each guard
 * is mprotect(PROT_NONE), which splits the mapping: two areas per stack, so
 * about 32 000 live stacks at the default limit.  The choice is made once
 * per runtime (pz__stack_guard_kind).
 *
 * Reuse: each worker keeps up to PZ__STACK_CACHE stacks for the tasks it
 * starts, untouched (spawn and join of short tasks maps nothing and makes
 * no system call).  The cache trades with the pool PZ__STACK_BATCH stacks
 * at a time, under one hold of the pool lock: an empty cache takes that
 * many, a full one gives back its coldest that many.  (One stack per
 * hold, the two workers of a 1 000-task burst took turns at the pool lock
 * for nearly every task they started and ended.)  Beyond the cache a stack
 * goes back to its chunk with its pages, and the next task to take it
 * finds them there: up to PZ__DIRTY_KEEP such stacks in the runtime, so
 * that a burst of spawns, joined and spawned again, neither faults its
 * stacks in anew nor has the kernel zero them.  Past that budget their
 * pages are given back to the kernel in batches (MADV_DONTNEED; guards
 * stay, see put_mask), and a chunk whose stacks are all back is unmapped,
 * except up to PZ__SPARE_CHUNKS spares.
 *
 * Invariants, under rt->stack_pool_lock: a chunk's free_mask has a bit for
 * every stack that is neither in a task, nor in a worker cache, nor having
 * its pages given back by a releaser; dirty_mask is within free_mask; a chunk is
 * on the runtime's list exactly when free_mask is not zero; spare_chunks
 * counts the listed chunks whose stacks are all free; rt->dirty_stacks is
 * the sum of the chunks' dirty_mask bits.
 *
 * Tasks get their stack when they first run, not when spawned, so a burst
 * of spawned-but-not-started tasks costs only their task structs.
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
/* Stacks per chunk, and the most bytes a chunk may map. */
#define PZ__CHUNK_SLOTS 64u
#define PZ__CHUNK_BYTES (64u * 1024u * 1024u)
/* Stacks moved between a worker's cache and the pool at once. */
#define PZ__STACK_BATCH (PZ__STACK_CACHE / 2)

struct pz__stack_chunk {
    struct pz__stack_chunk *prev, *next; /* the runtime's list, while free_mask != 0 */
    char *base;
    size_t slot_size;   /* guard + usable */
    unsigned nslots;
    uint64_t free_mask;
    uint64_t dirty_mask; /* free stacks whose pages have not been given back */
};

static uint64_t all_slots(const pz__stack_chunk *c)
{
    return c->nslots == 64 ? ~(uint64_t)0 : (((uint64_t)1 << c->nslots) - 1);
}

/* Maps a chunk of nslots stacks of usable bytes each and guards them. */
static int chunk_new(pz__runtime *rt, size_t usable, unsigned nslots, pz__stack_chunk **out)
{
    pz__stack_chunk *c = pz__calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->slot_size = usable + rt->guard_size;
    c->nslots = nslots;
    void *base;
    int r = pz__stack_map(c->slot_size * nslots, &base);
    if (r < 0) {
        free(c);
        return r;
    }
    c->base = base;
    for (unsigned i = 0; i < nslots && rt->guard_size; i++) {
        r = pz__stack_guard(c->base + i * c->slot_size, rt->guard_size, rt->guard_kind);
        if (r < 0) {
            pz__stack_unmap(c->base, c->slot_size * nslots);
            free(c);
            return r;
        }
    }
    c->free_mask = all_slots(c);
    *out = c;
    return 0;
}

static void chunk_destroy(pz__stack_chunk *c)
{
    pz__stack_unmap(c->base, c->slot_size * c->nslots);
    free(c);
}

static void list_insert(pz__runtime *rt, pz__stack_chunk *c, bool at_tail)
{
    if (at_tail) {
        c->next = NULL;
        c->prev = rt->chunks_tail;
        if (rt->chunks_tail)
            rt->chunks_tail->next = c;
        else
            rt->chunks_head = c;
        rt->chunks_tail = c;
    } else {
        c->prev = NULL;
        c->next = rt->chunks_head;
        if (rt->chunks_head)
            rt->chunks_head->prev = c;
        else
            rt->chunks_tail = c;
        rt->chunks_head = c;
    }
}

static void list_remove(pz__runtime *rt, pz__stack_chunk *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        rt->chunks_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        rt->chunks_tail = c->prev;
    c->prev = c->next = NULL;
}

/* Takes a free stack from chunk c, under the pool lock. */
static pz__stack_slot take_slot(pz__runtime *rt, pz__stack_chunk *c)
{
    if (c->free_mask == all_slots(c))
        rt->spare_chunks--;
    /* A stack whose pages are still there first: no page faults. */
    unsigned i = (unsigned)__builtin_ctzll(c->dirty_mask ? c->dirty_mask : c->free_mask);
    if (c->dirty_mask & ((uint64_t)1 << i))
        rt->dirty_stacks--;
    c->free_mask &= ~((uint64_t)1 << i);
    c->dirty_mask &= ~((uint64_t)1 << i);
    if (!c->free_mask)
        list_remove(rt, c);
    return (pz__stack_slot){c->base + i * c->slot_size, c};
}

/* What a caller of put_mask must do once it has let go of the pool lock. */
struct put_action {
    pz__stack_chunk *unmap;   /* unmap this chunk (it is off every list) */
    pz__stack_chunk *discard; /* give back the pages of these stacks of it, */
    uint64_t discard_mask;    /* held out of free_mask meanwhile, then put them back */
};

/* Gives the stacks in mask back to chunk c, under the pool lock.  A stack
 * comes back "dirty": its pages stay, for the next task that takes it.
 * While the runtime has more than PZ__DIRTY_KEEP dirty free stacks, pages
 * are given back to the kernel in batches, not per stack (MADV_DONTNEED
 * flushes the TLB of every CPU the process runs on: per stack it was most
 * of the time of joining 500 000 cancelled tasks): a chunk that has
 * PZ__DIRTY_BATCH dirty stacks then has the caller discard them in one
 * madvise per run of neighbours, holding them out of the free mask so
 * nobody takes one meanwhile.  A chunk whose stacks are all free stays as a
 * spare, under the same budget, while the runtime has fewer than
 * PZ__SPARE_CHUNKS of them; past that it is unmapped whole, dirty or not.
 *
 * Spares and their pages are for bursts: every burst of 1 000 tasks (each
 * yields once, spawned and joined 100 times on 2 workers) gives all its
 * stacks back, so with one spare, whose pages were always discarded, each
 * burst unmapped and mapped chunks again (about 110 of each, 64 guard
 * madvise calls per map) and faulted its stacks in anew (13 000 page
 * faults, a TLB shootdown per discard).  With up to 8 spares that keep
 * their pages within the budget: 7 chunks mapped in all, 430 -> 305 ns a
 * task.  A spare costs address space only, its pages counted in the
 * budget.
 *
 * Before the budget, a burst of 1 000 tasks that each yielded once, spawned
 * and joined 100 times on 2 workers, made 12 760 madvise calls and took
 * 3 300 ns a task; with it, 727 calls and 700 to 2 400 ns (a loaded 2-vCPU
 * Xeon VM).  The budget holds at most PZ__DIRTY_KEEP stacks' touched pages
 * (a page or two each for most tasks) beyond what live tasks use. */
#define PZ__DIRTY_BATCH 16
#define PZ__DIRTY_KEEP 1024
#define PZ__SPARE_CHUNKS 8
static struct put_action put_mask(pz__runtime *rt, pz__stack_chunk *c, uint64_t mask, bool dirty)
{
    struct put_action act = {NULL, NULL, 0};
    bool was_full = c->free_mask == 0;
    c->free_mask |= mask;
    if (dirty) {
        c->dirty_mask |= mask;
        rt->dirty_stacks += __builtin_popcountll(mask);
    }
    if (was_full)
        list_insert(rt, c, false);
    bool all_free = c->free_mask == all_slots(c);
    if (all_free) {
        if (rt->spare_chunks >= PZ__SPARE_CHUNKS) {
            list_remove(rt, c);
            rt->dirty_stacks -= __builtin_popcountll(c->dirty_mask);
            act.unmap = c;
            return act;
        }
        /* Kept as a spare, behind the chunks in use so they fill first. */
        rt->spare_chunks++;
        list_remove(rt, c);
        list_insert(rt, c, true);
    }
    if (!c->dirty_mask)
        return act;
    if (rt->dirty_stacks <= PZ__DIRTY_KEEP || __builtin_popcountll(c->dirty_mask) < PZ__DIRTY_BATCH)
        return act;
    act.discard = c;
    act.discard_mask = c->dirty_mask;
    rt->dirty_stacks -= __builtin_popcountll(c->dirty_mask);
    c->dirty_mask = 0;
    if (all_free)
        rt->spare_chunks--;
    c->free_mask &= ~act.discard_mask;
    if (!c->free_mask)
        list_remove(rt, c);
    return act;
}

/* Gives back the pages of the stacks of c in mask: one madvise per run of
 * neighbouring stacks (the guards between them stay). */
static void discard_runs(pz__runtime *rt, pz__stack_chunk *c, uint64_t mask)
{
    while (mask) {
        unsigned i = (unsigned)__builtin_ctzll(mask);
        unsigned j = i;
        while (j + 1 < 64 && (mask & ((uint64_t)1 << (j + 1))))
            j++;
        char *lo = c->base + i * c->slot_size + rt->guard_size;
        char *hi = c->base + (j + 1) * c->slot_size;
        pz__stack_discard(lo, (size_t)(hi - lo));
        for (unsigned k = i; k <= j; k++)
            mask &= ~((uint64_t)1 << k);
    }
}

/* Puts stacks back and does what that asks, until nothing is left to do. */
static void put_back(pz__runtime *rt, pz__stack_chunk *c, uint64_t mask, bool dirty, bool locked)
{
    for (;;) {
        if (!locked)
            pz__spin_lock(&rt->stack_pool_lock);
        struct put_action act = put_mask(rt, c, mask, dirty);
        if (!locked)
            pz__spin_unlock(&rt->stack_pool_lock);
        if (act.unmap) {
            chunk_destroy(act.unmap);
            return;
        }
        if (!act.discard)
            return;
        discard_runs(rt, act.discard, act.discard_mask);
        c = act.discard;
        mask = act.discard_mask;
        dirty = false;
    }
}

static uint64_t slot_bit(pz__stack_slot s)
{
    pz__stack_chunk *c = s.chunk;
    return (uint64_t)1 << (((char *)s.base - c->base) / c->slot_size);
}

/* Takes up to n stacks from the pool into w's cache, under one hold of the
 * pool lock; returns how many. */
static int cache_refill(pz__runtime *rt, pz__worker *w, int n)
{
    int got = 0;
    pz__spin_lock(&rt->stack_pool_lock);
    while (got < n && rt->chunks_head)
        w->stack_cache[w->stack_cache_len + got++] = take_slot(rt, rt->chunks_head);
    pz__spin_unlock(&rt->stack_pool_lock);
    w->stack_cache_len += got;
    return got;
}

/* Gives the n coldest stacks of w's cache (its bottom) back to the pool
 * under one hold of the pool lock, then does what that asks (discards,
 * unmaps) outside it.  One batch cannot ask two things of one chunk that
 * collide: a chunk whose stacks are all free is unmapped, and no stack of
 * it can still be in the batch; stacks a discard holds out of a chunk are
 * not in the batch either. */
static void cache_flush(pz__runtime *rt, pz__worker *w, int n)
{
    struct put_action acts[PZ__STACK_BATCH];
    int nacts = 0;
    pz__spin_lock(&rt->stack_pool_lock);
    for (int i = 0; i < n; i++) {
        pz__stack_slot s = w->stack_cache[i];
        struct put_action act = put_mask(rt, s.chunk, slot_bit(s), true);
        if (act.unmap || act.discard)
            acts[nacts++] = act;
    }
    pz__spin_unlock(&rt->stack_pool_lock);
    w->stack_cache_len -= n;
    memmove(w->stack_cache, w->stack_cache + n, (size_t)w->stack_cache_len * sizeof w->stack_cache[0]);
    for (int i = 0; i < nacts; i++) {
        if (acts[i].unmap) {
            chunk_destroy(acts[i].unmap);
        } else {
            discard_runs(rt, acts[i].discard, acts[i].discard_mask);
            put_back(rt, acts[i].discard, acts[i].discard_mask, false, false);
        }
    }
}

int pz__stack_acquire(pz__worker *w, pz_task_t *t)
{
    pz__runtime *rt = w->rt;
    size_t usable = t->stack_size;
    size_t guard = rt->guard_size;
    pz__stack_slot s = {NULL, NULL};
    if (usable == rt->stack_size) {
        if (w->stack_cache_len == 0 && cache_refill(rt, w, PZ__STACK_BATCH) == 0) {
            /* Mapped outside the lock; another worker may map one at the
             * same time, and both join the list. */
            size_t slot = usable + guard;
            unsigned n = (unsigned)(PZ__CHUNK_BYTES / slot);
            n = n < 1 ? 1 : n > PZ__CHUNK_SLOTS ? PZ__CHUNK_SLOTS : n;
            pz__stack_chunk *c;
            int r = chunk_new(rt, usable, n, &c);
            if (r < 0)
                return r;
            pz__spin_lock(&rt->stack_pool_lock);
            rt->spare_chunks++;
            list_insert(rt, c, false);
            pz__spin_unlock(&rt->stack_pool_lock);
            if (cache_refill(rt, w, PZ__STACK_BATCH) == 0)
                return -ENOMEM; /* not reached: that chunk had free stacks */
        }
        s = w->stack_cache[--w->stack_cache_len];
    } else {
        pz__stack_chunk *c;
        int r = chunk_new(rt, usable, 1, &c);
        if (r < 0)
            return r;
        c->free_mask = 0;
        s = (pz__stack_slot){c->base, c};
    }
    t->stack = s;
    t->stack_base = s.base;
    t->stack_map_size = usable + guard;
    t->guard_size = guard;
    t->ctx.stack_lo = (char *)s.base + guard;
    t->ctx.stack_size = usable;
    return 0;
}

void pz__stack_release(pz__runtime *rt, pz__worker *w, pz_task_t *t)
{
    if (!t->stack_map_size)
        return;
    pz__stack_slot s = t->stack;
    t->stack_map_size = 0;
    t->stack = (pz__stack_slot){NULL, NULL};
#ifdef PZ_ASAN
    /* The dead task's frames leave poisoned redzones behind. */
    __asan_unpoison_memory_region(t->ctx.stack_lo, t->ctx.stack_size);
#endif
    if (t->ctx.stack_size != rt->stack_size) {
        chunk_destroy(s.chunk);
        return;
    }
    if (!w) {
        put_back(rt, s.chunk, slot_bit(s), true, false);
        return;
    }
    if (w->stack_cache_len == PZ__STACK_CACHE)
        cache_flush(rt, w, PZ__STACK_BATCH);
    w->stack_cache[w->stack_cache_len++] = s;
}

void pz__stacks_destroy(pz__runtime *rt)
{
    for (int i = 0, n = pz__rt_slots(rt); i < n; i++) {
        pz__worker *w = &rt->workers[i];
        while (w->stack_cache_len > 0) {
            pz__stack_slot s = w->stack_cache[--w->stack_cache_len];
            put_back(rt, s.chunk, slot_bit(s), false, true);
        }
    }
    /* Chunks with a stack still in a task stay mapped: that task was
     * abandoned parked, and a queue that outlives the runtime may still
     * point into its stack. */
    pz__stack_chunk *c = rt->chunks_head;
    while (c) {
        pz__stack_chunk *next = c->next;
        if (c->free_mask == all_slots(c)) {
            list_remove(rt, c);
            chunk_destroy(c);
        }
        c = next;
    }
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
