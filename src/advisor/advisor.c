/*
 * The advisor: per-lock statistics gathered through the lock hooks of
 * runtime.h, and the verdicts built from them (docs/advisor.md).
 *
 * Contract with the lock layers: acquired() runs after a lock was taken,
 * released() before it is let go, both on the thread (task) of the holder
 * and never suspending.  For an exclusive hold, the hold's own fields in
 * the lock's record (hold_*) are written only between those two calls, so
 * the lock itself serialises them; the report reads them with relaxed
 * loads and may see a hold half-recorded, which moves a figure by one
 * sample at most.
 *
 * The table: a fixed open-addressed array of TABLE_SIZE slots keyed by
 * the lock's address, inserted by CAS of the key and never removed (a
 * lock's memory reused for another lock continues the old record; named
 * again, it takes the new name).  The record itself is allocated once and
 * published by CAS; a thread that finds the key but no record yet waits
 * for it (the inserter is between two instructions).  The advisor takes
 * no plaza lock: its own state is atomics and one spin flag for the
 * symbol resolver, so it never measures itself.
 *
 * Sampling: every acquisition, contended acquisition, wait and wait that
 * gave up is counted; a wait is timed whenever the first attempt fails,
 * but for a sync lock's wait that ends in the spin, timed once in
 * PZ__WAIT_SAMPLE_GAP and weighted by it (wait_weight; src/sync/observe.c
 * says why); hold times are timed for the first SAMPLE_FIRST holds
 * of each lock and then about one acquisition in N = sample_mask + 1: a
 * per-(thread, lock, site) countdown reloaded with a random gap, uniform
 * over [1, 2N - 1] (mean N), so that the timed holds are an unbiased
 * sample of the holds even when hold lengths follow a period
 * (docs/advisor.md).  The same countdown counts the acquisitions: a
 * slot's are drawn - countdown (runtime.h).  Owner changes are sampled
 * once per gap by the owner probe (runtime.h, pz__observe_owner), each
 * probe weighted by its gap: an estimate, exact while every hold is timed.
 *
 * Where the time goes, with the advisor on: an untimed acquisition of a
 * sync lock or an async mutex costs, inline and after the lock is taken,
 * one read of the caller's thread-local record, the check that the
 * thread's last slot is this (lock, site)'s, the countdown, and one load
 * of the record's probe line (written twice per sampling gap); a contended
 * one adds a count in its thread's slot, and if it is timed two clock
 * reads (one inside the critical section) and a few stores to the slot
 * (slot_wait); an untimed release costs one
 * load of the count of timed holds.  No shared write inside a critical
 * section but the probe's, once per gap, and a timed hold's.
 */
#define _GNU_SOURCE
#include "plaza/advisor.h"
#include "plaza/async.h"
#include "plaza/runtime.h"
#include "plaza/sync.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "advisor_internal.h"
#include "hist.h"

#define TABLE_SIZE 4096u /* a power of two */
/* Every hold of a lock is timed until it has this many timed holds, so
 * that a lock taken a few times still has evidence. */
#define SAMPLE_FIRST 64u
/* A hold this long may hide a blocking system call worth reporting. */
#define LONG_HOLD_NS 20000
/* The owner probe's value before the first acquisition (no caller id:
 * task ids count up from 1, thread ids have one high bit). */
#define PROBE_NOBODY UINT64_MAX

static pz__advisor_lock *_Atomic table_rec[TABLE_SIZE];
static _Atomic uintptr_t table_key[TABLE_SIZE];
static _Atomic uint64_t table_full_misses;
static uint64_t sample_mask = 1023;

static const char *const kind_names[] = {"pz_mutex", "pz_rwlock", "pz_async_mutex", "pz_async_rwlock",
                                         "pz_semaphore", "pz_chan"};

const char *pz__advisor_kind_name(unsigned kind)
{
    return kind < sizeof kind_names / sizeof kind_names[0] ? kind_names[kind] : "lock";
}

static inline uint32_t slot_of(uintptr_t key)
{
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 40) & (TABLE_SIZE - 1);
}

static pz__advisor_lock *record_new(const void *lock, unsigned kind)
{
    size_t size = (sizeof(pz__advisor_lock) + 63) / 64 * 64;
    pz__advisor_lock *r = aligned_alloc(64, size);
    if (!r)
        return NULL;
    memset(r, 0, size);
    r->lock = lock;
    atomic_store_explicit(&r->kind, kind, memory_order_relaxed);
    /* The first exclusive acquisition finds the probe armed by nobody: the
     * lock's first owner counts as a change, as every later one would. */
    atomic_store_explicit(&r->probe, PROBE_NOBODY, memory_order_relaxed);
    atomic_store_explicit(&r->probe_weight, 1, memory_order_relaxed);
    return r;
}

/* The record of lock, created (with kind) if create is set.  NULL if absent
 * or the table is full (or out of memory).  The record is allocated before
 * its key is claimed, so that the claim and the record's publication are
 * two stores apart; a thread that finds the key before the record waits
 * for it, without a limit (giving up would leave an acquisition uncounted:
 * with 64 threads on two busy cores, an inserter preempted inside
 * aligned_alloc made others give up after a million spins). */
static pz__advisor_lock *record_of(const void *lock, unsigned kind, bool create)
{
    uintptr_t key = (uintptr_t)lock;
    uint32_t i = slot_of(key);
    pz__advisor_lock *mine = NULL;
    for (uint32_t probes = 0; probes < TABLE_SIZE; probes++, i = (i + 1) & (TABLE_SIZE - 1)) {
        uintptr_t k = atomic_load_explicit(&table_key[i], memory_order_acquire);
        if (k == 0) {
            if (!create)
                return NULL;
            if (!mine && !(mine = record_new(lock, kind)))
                return NULL; /* the lock goes unobserved */
            if (atomic_compare_exchange_strong_explicit(&table_key[i], &k, key, memory_order_acq_rel,
                                                        memory_order_acquire)) {
                atomic_store_explicit(&table_rec[i], mine, memory_order_release);
                return mine;
            }
            if (k != key)
                continue;
        }
        if (k == key) {
            free(mine);
            pz__advisor_lock *r;
            for (unsigned spins = 0; !(r = atomic_load_explicit(&table_rec[i], memory_order_acquire)); spins++) {
                if (spins > 1000)
                    sched_yield();
            }
            return r;
        }
    }
    free(mine);
    atomic_fetch_add_explicit(&table_full_misses, 1, memory_order_relaxed);
    return NULL;
}

pz__advisor_lock *pz__advisor_record_at(unsigned i)
{
    return i < TABLE_SIZE ? atomic_load_explicit(&table_rec[i], memory_order_acquire) : NULL;
}

unsigned pz__advisor_table_size(void)
{
    return TABLE_SIZE;
}

/* Counter updates: under an exclusive hold the lock serialises them (a
 * load and a store, no locked instruction); shared holds add atomically. */
static inline void bump(_Atomic uint64_t *p, uint64_t v, bool exclusive)
{
    if (exclusive)
        atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + v, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(p, v, memory_order_relaxed);
}

static inline void bump_max(_Atomic uint64_t *p, uint64_t v)
{
    uint64_t m = atomic_load_explicit(p, memory_order_relaxed);
    while (v > m && !atomic_compare_exchange_weak_explicit(p, &m, v, memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* n more of v in histogram h (exclusive: only the calling thread writes
 * h, as bump's). */
static inline void hist_bump(_Atomic uint32_t *h, uint64_t v, uint32_t n, bool exclusive)
{
    _Atomic uint32_t *b = &h[hist_index(v)];
    if (exclusive)
        atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + n, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(b, n, memory_order_relaxed);
}

/* How many waits a reported wait stands for in the sums and histograms
 * (runtime.h, PZ__LOCK_WAIT_*): 0 for an untimed one (counted only), the
 * sampling gap for a timed sample of spin-ended waits, else 1. */
static inline uint32_t wait_weight(unsigned flags)
{
    if (flags & PZ__LOCK_WAIT_UNTIMED)
        return 0;
    return (flags & PZ__LOCK_WAIT_SAMPLED) ? PZ__WAIT_SAMPLE_GAP : 1;
}

static pz__advisor_site *site_of(pz__advisor_lock *r, const void *site)
{
    for (int i = 0; i < PZ__ADVISOR_SITES; i++) {
        pz__advisor_site *s = &r->sites[i];
        const void *a = atomic_load_explicit(&s->addr, memory_order_acquire);
        if (a == site)
            return s;
        if (a == NULL) {
            if (atomic_compare_exchange_strong_explicit(&s->addr, &a, site, memory_order_acq_rel,
                                                        memory_order_acquire) ||
                a == site)
                return s;
        }
    }
    return NULL; /* more sites than slots: counted in the lock's totals only */
}

/* The thread's CPU time (ns) and voluntary context switches so far. */
static void thread_usage(int64_t *cpu_ns, int64_t *voluntary)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) {
        *cpu_ns = -1;
        *voluntary = 0;
        return;
    }
    *cpu_ns = ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
              ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
    *voluntary = ru.ru_nvcsw;
}

/* The per-thread counts.  Every acquisition is counted in a slot of its
 * thread's cache, keyed by (lock, call site), by its countdown (a load and
 * a store to a line no other thread writes): counting all acquisitions
 * then costs no shared cache line inside the critical section.  A slot
 * taken over by another pair first adds its count to the shared record.
 * Caches are never freed (a report after the thread ended still reads
 * them); a report taken while a slot changes hands, or while its
 * countdown is reloaded, may miss or count twice that slot's count (or
 * one gap of it) for that instant. */
#define TCACHE_SLOTS 128u
typedef struct tslot {
    pz__observe_slot o; /* first: what the lock paths update (runtime.h); its pair */
    _Atomic(pz__advisor_lock *) rec; /* NULL while the slot changes hands */
    pz__advisor_site *s;
    uint64_t gap; /* the countdown last loaded: the acquisitions the next sample stands for */
    /* The pair's site and kind of hold as a report reads them (o.site and
     * o.shared are the owner thread's plain fields, rewritten when the slot
     * changes hands while a report may be reading). */
    _Atomic(const void *) report_site;
    _Atomic bool report_shared;
    /* The pair's waits (slot_wait): written by the owner thread alone,
     * inside the critical section that ended the wait; moved to the
     * shared record when the slot changes hands; read by reports.  whist
     * is allocated at the slot's first wait (it has HIST_BUCKETS). */
    _Atomic uint64_t contended, wait_sum, wait_max, blocked_ns;
    _Atomic(_Atomic uint32_t *) whist;
} tslot;
typedef struct tcache {
    struct tcache *next;
    uint64_t rng; /* xorshift64 state for the sampling gaps */
    tslot slot[TCACHE_SLOTS];
} tcache;
static _Atomic(tcache *) tcaches;
/* initial-exec: no __tls_get_addr call per lock in a position-independent
 * build (the library is linked, never loaded with dlopen). */
static _Thread_local tcache *my_tcache __attribute__((tls_model("initial-exec")));

/* The acquisitions counted in sl (runtime.h: drawn - countdown). */
static uint64_t slot_count(const pz__observe_slot *o)
{
    uint64_t d = atomic_load_explicit(&o->drawn, memory_order_relaxed);
    uint64_t c = atomic_load_explicit(&o->countdown, memory_order_relaxed);
    return d > c ? d - c : 0;
}

static inline uint64_t ld64(const _Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

void pz__advisor_thread_counts(pz__advisor_lock *r, const void *site, pz__advisor_count_t *c, uint32_t *wait_hist)
{
    memset(c, 0, sizeof *c);
    for (tcache *t = atomic_load_explicit(&tcaches, memory_order_acquire); t; t = t->next) {
        for (unsigned i = 0; i < TCACHE_SLOTS; i++) {
            tslot *sl = &t->slot[i];
            if (atomic_load_explicit(&sl->rec, memory_order_acquire) != r)
                continue;
            const void *at = atomic_load_explicit(&sl->report_site, memory_order_relaxed);
            if (site && at != site)
                continue;
            bool shared = atomic_load_explicit(&sl->report_shared, memory_order_relaxed);
            uint64_t n = slot_count(&sl->o);
            uint64_t contended = ld64(&sl->contended), wait_sum = ld64(&sl->wait_sum);
            uint64_t wait_max = ld64(&sl->wait_max), blocked = ld64(&sl->blocked_ns);
            _Atomic uint32_t *h = atomic_load_explicit(&sl->whist, memory_order_acquire);
            /* The slot changed hands meanwhile (its figures went to the
             * record, or are another pair's): skip it. */
            if (atomic_load_explicit(&sl->rec, memory_order_acquire) != r)
                continue;
            c->acquisitions += n;
            if (shared)
                c->shared += n;
            c->contended += contended;
            c->wait_sum += wait_sum;
            c->blocked_worker_ns += blocked;
            if (wait_max > c->wait_max)
                c->wait_max = wait_max;
            if (h && wait_hist)
                for (int b = 0; b < HIST_BUCKETS; b++)
                    wait_hist[b] += atomic_load_explicit(&h[b], memory_order_relaxed);
        }
    }
}

/* The waits counted in sl go to the shared record old (and the site's
 * figures), and the slot's are zeroed: the slot changes hands. */
static void slot_move_waits(tslot *sl, pz__advisor_lock *old)
{
    uint64_t contended = ld64(&sl->contended);
    if (!contended)
        return;
    uint64_t wait_sum = ld64(&sl->wait_sum);
    atomic_fetch_add_explicit(&old->contended, contended, memory_order_relaxed);
    atomic_fetch_add_explicit(&old->wait_sum, wait_sum, memory_order_relaxed);
    atomic_fetch_add_explicit(&old->blocked_worker_ns, ld64(&sl->blocked_ns), memory_order_relaxed);
    bump_max(&old->wait_max, ld64(&sl->wait_max));
    if (sl->s) {
        atomic_fetch_add_explicit(&sl->s->contended, contended, memory_order_relaxed);
        atomic_fetch_add_explicit(&sl->s->wait_sum, wait_sum, memory_order_relaxed);
    }
    _Atomic uint32_t *h = atomic_load_explicit(&sl->whist, memory_order_relaxed);
    for (int b = 0; h && b < HIST_BUCKETS; b++) {
        uint32_t n = atomic_load_explicit(&h[b], memory_order_relaxed);
        if (n) {
            atomic_fetch_add_explicit(&old->wait_hist[b], n, memory_order_relaxed);
            atomic_store_explicit(&h[b], 0, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&sl->contended, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->wait_sum, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->wait_max, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->blocked_ns, 0, memory_order_relaxed);
}

static uint64_t sample_gap(void);
/* The first countdown of a new slot of r: 1 (its first acquisition timed)
 * while r has few timed holds, else a random gap. */
static uint64_t first_countdown(pz__advisor_lock *r)
{
    return atomic_load_explicit(&r->timed_holds, memory_order_relaxed) < SAMPLE_FIRST ? 1 : sample_gap();
}

static __attribute__((noinline, cold)) tslot *slot_refill(tslot *sl, const void *lock, unsigned kind, const void *site,
                                                          unsigned flags)
{
    sl->o.lock = sl->o.site = NULL; /* no lock path may take it for its old pair now */
    pz__advisor_lock *old = atomic_exchange_explicit(&sl->rec, NULL, memory_order_acq_rel);
    if (old) {
        uint64_t a = slot_count(&sl->o);
        atomic_fetch_add_explicit(&old->acquisitions, a, memory_order_relaxed);
        if (sl->o.shared)
            atomic_fetch_add_explicit(&old->shared, a, memory_order_relaxed);
        if (sl->s)
            atomic_fetch_add_explicit(&sl->s->acquisitions, a, memory_order_relaxed);
        slot_move_waits(sl, old);
    }
    atomic_store_explicit(&sl->o.drawn, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->o.countdown, 0, memory_order_relaxed);
    pz__advisor_lock *r = record_of(lock, kind, true);
    if (!r)
        return NULL;
    if (kind != PZ__ADVISOR_KIND_UNKNOWN)
        atomic_store_explicit(&r->kind, kind, memory_order_relaxed);
    const void *none = NULL;
    atomic_compare_exchange_strong_explicit(&r->first_site, &none, site, memory_order_relaxed,
                                            memory_order_relaxed);
    sl->o.lock = lock;
    sl->o.site = site;
    sl->o.shared = flags & PZ__LOCK_SHARED;
    atomic_store_explicit(&sl->report_site, site, memory_order_relaxed);
    atomic_store_explicit(&sl->report_shared, (flags & PZ__LOCK_SHARED) != 0, memory_order_relaxed);
    sl->s = site_of(r, site);
    uint64_t first = first_countdown(r);
    sl->gap = first;
    atomic_store_explicit(&sl->o.drawn, first, memory_order_relaxed);
    atomic_store_explicit(&sl->o.countdown, first, memory_order_relaxed);
    sl->o.probe = &r->probe;
    atomic_store_explicit(&sl->rec, r, memory_order_release);
    return sl;
}

static __attribute__((noinline)) tcache *tcache_new(void)
{
    tcache *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->rng = (uint64_t)(uintptr_t)t * 0x9E3779B97F4A7C15ull | 1;
    t->next = atomic_load_explicit(&tcaches, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&tcaches, &t->next, t, memory_order_acq_rel, memory_order_relaxed)) {
    }
    my_tcache = t;
    return t;
}

static inline tslot *slot_of_pair(const void *lock, unsigned kind, const void *site, unsigned flags)
{
    tcache *t = my_tcache;
    if (__builtin_expect(!t, 0) && !(t = tcache_new()))
        return NULL;
    uint64_t h = ((uint64_t)(uintptr_t)lock ^ ((uint64_t)(uintptr_t)site << 7)) * 0x9E3779B97F4A7C15ull;
    tslot *sl = &t->slot[h >> (64 - 7)];
    if (__builtin_expect(sl->o.lock == lock && sl->o.site == site &&
                             atomic_load_explicit(&sl->rec, memory_order_relaxed) != NULL,
                         1))
        return sl;
    return slot_refill(sl, lock, kind, site, flags);
}

_Static_assert(TCACHE_SLOTS == 1u << 7, "slot_of_pair takes the hash's top 7 bits");

/* The gap to the next timed hold: uniform over [1, 2N - 1], mean N. */
static uint64_t sample_gap(void)
{
    tcache *t = my_tcache;
    if (!t)
        return sample_mask + 1;
    uint64_t x = t->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t->rng = x;
    uint64_t n = sample_mask + 1;
    return 1 + (x >> 11) % (2 * n - 1);
}

/* A wait for a sync lock on a worker thread blocked that worker. */
static inline bool blocks_worker(unsigned kind)
{
    return (kind == PZ__LOCK_MUTEX || kind == PZ__LOCK_RWLOCK) && pz_worker_index() >= 0;
}

/* A wait that took time: an acquisition's (contended) or one that gave up. */
static __attribute__((noinline)) void record_wait(pz__advisor_lock *r, pz__advisor_site *s, unsigned kind, uint64_t w,
                                                  bool gave_up, unsigned flags)
{
    if (kind == PZ__LOCK_CHAN)
        atomic_fetch_add_explicit(flags & PZ__LOCK_SEND ? &r->send_waits : &r->recv_waits, 1,
                                  memory_order_relaxed);
    uint32_t k = wait_weight(flags);
    if (k) {
        hist_bump(r->wait_hist, w, k, false);
        bump_max(&r->wait_max, w);
    }
    atomic_fetch_add_explicit(gave_up ? &r->gave_up : &r->contended, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->wait_sum, w * k, memory_order_relaxed);
    if (blocks_worker(kind))
        atomic_fetch_add_explicit(&r->blocked_worker_ns, w * k, memory_order_relaxed);
    if (s) {
        atomic_fetch_add_explicit(gave_up ? &s->gave_up : &s->contended, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->wait_sum, w * k, memory_order_relaxed);
    }
}

/* Starts timing the hold self just took, in a free entry of r->open (none
 * free: this hold goes untimed). */
static __attribute__((noinline)) void hold_begin(pz__advisor_lock *r, pz__advisor_site *s, uint64_t self,
                                                 bool shared)
{
    pz__advisor_open *e = NULL;
    bool again = false;
    /* An entry self left open on this lock (a semaphore permit released
     * by another task, a recursive read) is restarted, not doubled: one
     * open entry per caller and lock at most. */
    for (int i = 0; i < PZ__ADVISOR_OPEN && !e; i++)
        if (atomic_load_explicit(&r->open[i].owner, memory_order_relaxed) == self)
            e = &r->open[i], again = true;
    for (int i = 0; i < PZ__ADVISOR_OPEN && !e; i++) {
        uint64_t free_owner = 0;
        if (atomic_load_explicit(&r->open[i].owner, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong_explicit(&r->open[i].owner, &free_owner, self, memory_order_acquire,
                                                    memory_order_relaxed)) {
            e = &r->open[i];
            break;
        }
    }
    if (!e)
        return;
    /* The thread's CPU time and switches cost a system call at each end:
     * only for locks whose timed holds have lasted long enough that a
     * blocking call inside could matter (LONG_HOLD_NS), and are common
     * (more than one timed hold in 64: a preempted data section now and
     * then does not make every timed hold pay).  The first long hold of a
     * lock therefore goes unexamined. */
    int64_t cpu = -1, vol = 0;
    uint64_t longs = atomic_load_explicit(&r->long_holds, memory_order_relaxed);
    if (longs && longs * 64 >= atomic_load_explicit(&r->timed_holds, memory_order_relaxed))
        thread_usage(&cpu, &vol);
    pz__observer *o = pz__observer_self();
    if (!again) {
        o->timed_holds++;
        atomic_fetch_add_explicit(&pz__observe_sw.timed_now, 1, memory_order_relaxed);
    }
    e->site = s;
    e->shared = shared;
    e->susp0 = o->suspended_ns;
    e->cpu0 = cpu;
    e->vol0 = vol;
    e->thread = &my_tcache;
    e->t0 = pz_now();
}

/* An exclusive acquisition by self found r's probe armed (runtime.h,
 * pz__observe_owner): it records whether the owner changed since the
 * acquisition that armed it, with that sample's weight, and disarms it.
 * Only holders of the lock touch the probe (it is armed and disarmed
 * inside exclusive holds), so the lock orders these plain updates; the
 * counts are atomic for the report. */
static __attribute__((noinline)) void owner_probed(pz__advisor_lock *r, uint64_t self)
{
    uint64_t armed_by = atomic_load_explicit(&r->probe, memory_order_relaxed);
    if (!armed_by)
        return;
    uint64_t weight = atomic_load_explicit(&r->probe_weight, memory_order_relaxed);
    atomic_store_explicit(&r->probe, 0, memory_order_relaxed);
    bump(&r->owner_probes, 1, true);
    if (armed_by != self)
        bump(&r->owner_changes, weight, true);
}

/* Arms r's probe for the acquisition after this one by self, standing
 * for the weight acquisitions of its slot's sampling gap. */
static void owner_arm(pz__advisor_lock *r, uint64_t self, uint64_t weight)
{
    atomic_store_explicit(&r->probe_weight, weight, memory_order_relaxed);
    atomic_store_explicit(&r->probe, self, memory_order_relaxed);
}

/* The acquisition just made brought the countdown of sl to 0: the hold
 * is timed, and the next gap loaded (and added to drawn, which keeps
 * drawn - countdown the slot's count).  Until the lock has SAMPLE_FIRST
 * timed holds, and for a lock whose timed holds last LONG_HOLD_NS on
 * average, the gap is 1: every hold is timed (two clock reads are then
 * under 1% of a hold, so logic sections get exact figures); short ones
 * are sampled. */
static __attribute__((noinline)) void sample_point(tslot *sl, uint64_t self, bool shared)
{
    pz__advisor_lock *r = atomic_load_explicit(&sl->rec, memory_order_relaxed);
    uint64_t timed = atomic_load_explicit(&r->timed_holds, memory_order_relaxed);
    bool every = timed < SAMPLE_FIRST || atomic_load_explicit(&r->hold_sum, memory_order_relaxed) / timed >= LONG_HOLD_NS;
    uint64_t gap = every ? 1 : sample_gap();
    /* A gap of 1 had no acquisition with a countdown of 2 to arm the
     * owner probe (pz__observe_owner): this one does, with weight 1. */
    if (!shared && sl->gap == 1)
        owner_arm(r, self, 1);
    sl->gap = gap;
    atomic_store_explicit(&sl->o.drawn, atomic_load_explicit(&sl->o.drawn, memory_order_relaxed) + gap,
                          memory_order_relaxed);
    atomic_store_explicit(&sl->o.countdown, gap, memory_order_relaxed);
    hold_begin(r, sl->s, self, shared);
}

/* The wait of an acquisition that just took the lock, counted inside its
 * critical section in the thread's slot: a few stores to lines no other
 * thread writes.  Recording it in the lock's shared record there (seven
 * atomic additions on lines every waiter writes) made each contended
 * section longer, so that the next acquisition contended too: the rows
 * of bench/ whose sections are far apart (work=100) ran 2.7 times slower
 * with the advisor on.  Reports add the slots' figures to the record's. */
static void slot_wait(tslot *sl, pz__advisor_lock *r, unsigned kind, uint64_t w, unsigned flags)
{
    uint32_t k = wait_weight(flags);
    if (k) {
        _Atomic uint32_t *h = atomic_load_explicit(&sl->whist, memory_order_relaxed);
        if (__builtin_expect(!h, 0)) {
            h = calloc(HIST_BUCKETS, sizeof *h);
            if (!h) {
                record_wait(r, sl->s, kind, w, false, flags);
                return;
            }
            atomic_store_explicit(&sl->whist, h, memory_order_release);
        }
        /* The slot's owner alone writes these: bump's exclusive form. */
        hist_bump(h, w, k, true);
        bump(&sl->wait_sum, w * k, true);
        if (w > ld64(&sl->wait_max))
            atomic_store_explicit(&sl->wait_max, w, memory_order_relaxed);
        if (blocks_worker(kind))
            bump(&sl->blocked_ns, w * k, true);
    }
    bump(&sl->contended, 1, true);
}

/* An acquisition by self counted in sl (the out-of-line paths; the inline
 * ones do the same in runtime.h). */
static inline void slot_count_one(tslot *sl, pz__advisor_lock *r, uint64_t self, bool shared)
{
    uint64_t c = atomic_load_explicit(&sl->o.countdown, memory_order_relaxed);
    if (__builtin_expect(!shared && (atomic_load_explicit(&r->probe, memory_order_relaxed) != 0 || c == 2), 0)) {
        owner_probed(r, self);
        if (c == 2)
            owner_arm(r, self, sl->gap);
    }
    if (__builtin_expect(c > 1, 1))
        atomic_store_explicit(&sl->o.countdown, c - 1, memory_order_relaxed);
    else
        sample_point(sl, self, shared);
}

/* The fast path: a leaf but for the unlikely calls, so that an untimed,
 * uncontended acquisition is a handful of loads and two stores, all but
 * one (the owner line) to the thread's own cache. */
static void on_acquired(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags,
                        uint64_t self)
{

    tslot *sl = slot_of_pair(lock, kind, site, flags);
    if (__builtin_expect(!sl, 0))
        return;
    pz__advisor_lock *r = atomic_load_explicit(&sl->rec, memory_order_relaxed);
    if (__builtin_expect(kind == PZ__LOCK_CHAN, 0)) {
        /* A channel's send or receive that waited: no hold, no count. */
        record_wait(r, sl->s, kind, wait_ns > 0 ? (uint64_t)wait_ns : 0, false, flags);
        return;
    }
    bool shared = flags & PZ__LOCK_SHARED;
    if (__builtin_expect(wait_ns >= 0, 0))
        slot_wait(sl, r, kind, (uint64_t)wait_ns, flags);
    /* Owner changes of exclusive holds only: readers writing the owner
     * line would fight over it. */
    slot_count_one(sl, r, self, shared);
}

/* The slot interface (runtime.h): the lock paths look the slot up before
 * they take the lock and count an uncontended acquisition in it
 * themselves (pz__observe_count and the inline paths), calling back only
 * here. */
static pz__observe_slot *on_slot(const void *lock, unsigned kind, const void *site, unsigned flags)
{
    tslot *sl = slot_of_pair(lock, kind, site, flags);
    return sl ? &sl->o : NULL;
}

static void on_owner_probe(pz__observe_slot *o, uint64_t self, bool arm)
{
    tslot *sl = (tslot *)o;
    pz__advisor_lock *r = atomic_load_explicit(&sl->rec, memory_order_relaxed);
    owner_probed(r, self);
    if (arm)
        owner_arm(r, self, sl->gap);
}

static void on_sample(pz__observe_slot *o, uint64_t self, unsigned flags)
{
    sample_point((tslot *)o, self, flags & PZ__LOCK_SHARED);
}

static void on_gave_up(const void *lock, unsigned kind, const void *site, int64_t wait_ns, unsigned flags, int err)
{
    (void)err;
    tslot *sl = slot_of_pair(lock, kind, site, flags);
    if (!sl)
        return;
    pz__advisor_lock *r = atomic_load_explicit(&sl->rec, memory_order_relaxed);
    record_wait(r, sl->s, kind, wait_ns > 0 ? (uint64_t)wait_ns : 0, true, flags);
}

static void on_released(const void *lock, unsigned kind, unsigned flags, uint64_t self)
{
    (void)flags;
    pz__advisor_lock *r = record_of(lock, kind, false);
    if (!r)
        return;
    pz__advisor_open *e = NULL;
    for (int i = 0; i < PZ__ADVISOR_OPEN && !e; i++)
        if (atomic_load_explicit(&r->open[i].owner, memory_order_relaxed) == self)
            e = &r->open[i];
    if (!e)
        return; /* an untimed hold */
    int64_t hold = pz_now() - e->t0;
    if (hold < 0)
        hold = 0;
    pz__observer *o = pz__observer_self();
    /* What part of the hold the holder waited rather than ran: the time
     * its task was suspended (parked: I/O, sleep, another lock, the
     * blocking pool), or, for a hold that never suspended and stayed on
     * one thread, the time that thread was off the CPU after a voluntary
     * switch (a blocking system call or a futex wait).  Involuntary
     * switches (preemption on a busy machine) do not count as waiting. */
    int64_t susp = o->suspended_ns - e->susp0, blocked = 0;
    if (o->timed_holds) {
        o->timed_holds--;
        atomic_fetch_sub_explicit(&pz__observe_sw.timed_now, 1, memory_order_relaxed);
    }
    /* The release hook of the mutexes runs after the unlock (src/sync/
     * observe.c, src/async/observe.c): another holder's timed hold may be
     * ending at the same time, so every update is atomic.  Timed holds
     * are few; the cost does not matter. */
    bool exclusive = false;
    if (hold >= LONG_HOLD_NS)
        bump(&r->long_holds, 1, exclusive);
    if (susp <= 0 && e->thread == &my_tcache && e->cpu0 >= 0) {
        susp = 0;
        int64_t cpu, vol;
        thread_usage(&cpu, &vol);
        if (cpu >= 0 && vol > e->vol0) {
            /* getrusage's CPU time has microsecond resolution. */
            int64_t off = hold - (cpu - e->cpu0) - 1000;
            if (off > 0)
                blocked = off;
        }
    }
    if (susp < 0)
        susp = 0;
    if (susp > hold)
        susp = hold;
    if (susp + blocked > hold)
        blocked = hold - susp;
    pz__advisor_site *s = e->site;
    bool shared = e->shared;
    atomic_store_explicit(&e->owner, 0, memory_order_release);
    uint64_t waiting = (uint64_t)(susp + blocked);
    bump(&r->timed_holds, 1, exclusive);
    if (shared)
        bump(&r->timed_shared, 1, false);
    bump(&r->hold_sum, (uint64_t)hold, exclusive);
    bump(&r->waiting_sum, waiting, exclusive);
    if (susp > 0)
        bump(&r->suspended_holds, 1, exclusive);
    if (blocked > 0)
        bump(&r->blocked_holds, 1, exclusive);
    bump_max(&r->hold_max, (uint64_t)hold);
    bump_max(&r->running_max, (uint64_t)hold - waiting);
    hist_bump(r->hold_hist, (uint64_t)hold, 1, exclusive);
    if (s) {
        atomic_fetch_add_explicit(&s->timed_holds, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->hold_sum, (uint64_t)hold, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->waiting_sum, waiting, memory_order_relaxed);
    }
}

static const pz__lock_hooks advisor_hooks = {on_acquired, on_released,    on_gave_up, pz__advisor_runtime_started,
                                             on_slot,     on_owner_probe, on_sample};

/* ---- calibration: what an uncontended acquisition costs here ---------- */

int64_t pz__advisor_cost_mutex_ps, pz__advisor_cost_async_ps;

static int64_t best_of(void (*round)(int), int n)
{
    int64_t best = INT64_MAX;
    for (int k = 0; k < 5; k++) {
        int64_t t0 = pz_now();
        round(n);
        int64_t t = pz_now() - t0;
        if (t < best)
            best = t;
    }
    return best * 1000 / n;
}

static pz_mutex_t calib_mutex;
static pz_async_mutex_t calib_async;

static void round_mutex(int n)
{
    for (int i = 0; i < n; i++) {
        pz_mutex_lock(&calib_mutex);
        pz_mutex_unlock(&calib_mutex);
    }
}

static void round_async(int n)
{
    for (int i = 0; i < n; i++) {
        pz_async_mutex_lock(&calib_async);
        pz_async_mutex_unlock(&calib_async);
    }
}

/* Runs with the observation off (the calibration locks are not reported). */
static void calibrate(void)
{
    if (pz__advisor_cost_mutex_ps)
        return;
    pz__advisor_cost_mutex_ps = best_of(round_mutex, 20000);
    pz__advisor_cost_async_ps = best_of(round_async, 20000);
}

/* ---- switching on ------------------------------------------------------ */

static char *exit_json_path;
static _Atomic int exit_format = -1;
static _Atomic bool exit_registered;

static void report_at_exit(void)
{
    int f = atomic_load(&exit_format);
    if (f < 0)
        return;
    if (f == PZ_ADVISOR_JSON && exit_json_path) {
        FILE *out = fopen(exit_json_path, "w");
        if (!out) {
            fprintf(stderr, "plaza: advisor: cannot write %s: %s\n", exit_json_path, strerror(errno));
            return;
        }
        pz_advisor_report(out, PZ_ADVISOR_JSON);
        fclose(out);
    } else {
        pz_advisor_report(stderr, PZ_ADVISOR_TEXT);
    }
}

int pz_advisor_enable(const char *spec)
{
    if (!spec)
        return -EINVAL;
    int format;
    if (strcmp(spec, "1") == 0 || strcmp(spec, "text") == 0) {
        format = PZ_ADVISOR_TEXT;
    } else if (strncmp(spec, "json:", 5) == 0 && spec[5]) {
        char *p = strdup(spec + 5);
        if (!p)
            return -ENOMEM;
        free(exit_json_path);
        exit_json_path = p;
        format = PZ_ADVISOR_JSON;
    } else if (spec[0] == 0) {
        format = -1;
    } else {
        return -EINVAL;
    }
    const char *n = getenv("PLAZA_ADVISOR_SAMPLE");
    if (n && *n) {
        unsigned long v = strtoul(n, NULL, 10);
        if (v >= 1 && v <= 65536 && (v & (v - 1)) == 0)
            sample_mask = v - 1;
        else
            fprintf(stderr, "plaza: PLAZA_ADVISOR_SAMPLE=%s is not a power of two from 1 to 65536; using 1024\n", n);
    }
    calibrate();
    atomic_store(&exit_format, format);
    if (format >= 0 && !atomic_exchange(&exit_registered, true))
        atexit(report_at_exit);
    pz__lock_hooks_install(&advisor_hooks);
    pz__advisor_http_start_from_env();
    return 0;
}

void pz_advisor_disable(void)
{
    pz__lock_hooks_install(NULL);
}

int pz_lock_name(const void *lock, const char *name)
{
    if (!lock || !name)
        return -EINVAL;
    pz__advisor_lock *r = record_of(lock, PZ__ADVISOR_KIND_UNKNOWN, true);
    if (!r)
        return -ENOSPC;
    char *copy = strdup(name);
    if (!copy)
        return -ENOMEM;
    char *old = atomic_exchange_explicit(&r->name, copy, memory_order_acq_rel);
    (void)old; /* a report may be reading it: the old name is left */
    return 0;
}

__attribute__((constructor)) static void advisor_from_environment(void)
{
    const char *spec = getenv("PLAZA_ADVISOR");
    if (!spec || !*spec || strcmp(spec, "0") == 0)
        return;
    if (pz_advisor_enable(spec) != 0)
        fprintf(stderr, "plaza: PLAZA_ADVISOR=%s: expected 1, text or json:PATH; the advisor stays off\n", spec);
}
