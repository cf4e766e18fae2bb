/* Fault injection: see fault.h.  Compiled empty without PLAZA_FAULTS. */
#include "fault.h"

#ifdef PZ_FAULTS
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

static _Atomic long injected[PZ__FAULT_SITES];
static _Atomic uint64_t threads_seen;
static _Atomic int enabled = 1;
static _Atomic unsigned site_mask = ~0u;
static _Atomic int64_t rate_override = -1;
static _Thread_local uint64_t state;

/* The rate as a threshold on 32 random bits; read once. */
static uint64_t threshold(void)
{
    static _Atomic int64_t cached = -1;
    int64_t o = atomic_load_explicit(&rate_override, memory_order_relaxed);
    if (o >= 0)
        return (uint64_t)o;
    int64_t t = atomic_load_explicit(&cached, memory_order_relaxed);
    if (t < 0) {
        const char *r = getenv("PLAZA_FAULTS_RATE");
        double rate = r ? atof(r) : 0.01;
        if (rate < 0)
            rate = 0;
        if (rate > 1)
            rate = 1;
        t = (int64_t)(rate * 4294967296.0);
        atomic_store_explicit(&cached, t, memory_order_relaxed);
    }
    return (uint64_t)t;
}

static uint64_t next(void)
{
    if (!state) {
        const char *s = getenv("PLAZA_FAULTS_SEED");
        uint64_t seed = s ? strtoull(s, NULL, 0) : 1;
        uint64_t n = atomic_fetch_add_explicit(&threads_seen, 1, memory_order_relaxed) + 1;
        state = (seed ^ (n * 0x9E3779B97F4A7C15ull)) | 1;
    }
    uint64_t x = state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return state = x;
}

bool pz__fault(enum pz__fault_site site)
{
    if (!atomic_load_explicit(&enabled, memory_order_relaxed) ||
        !(atomic_load_explicit(&site_mask, memory_order_relaxed) & (1u << site)))
        return false;
    if ((next() & 0xffffffffu) >= threshold())
        return false;
    atomic_fetch_add_explicit(&injected[site], 1, memory_order_relaxed);
    return true;
}

size_t pz__fault_short(size_t n)
{
    if (n <= 1 || !pz__fault(PZ__FAULT_IO))
        return n;
    return 1 + (size_t)(next() % (n - 1));
}

long pz__faults_injected(enum pz__fault_site site)
{
    return atomic_load_explicit(&injected[site], memory_order_relaxed);
}

void pz__faults_enable(bool on)
{
    atomic_store_explicit(&enabled, on, memory_order_relaxed);
}

void pz__faults_target(unsigned sites, double rate)
{
    atomic_store_explicit(&site_mask, sites, memory_order_relaxed);
    int64_t t = -1;
    if (rate >= 0)
        t = (int64_t)((rate > 1 ? 1 : rate) * 4294967296.0);
    atomic_store_explicit(&rate_override, t, memory_order_relaxed);
}
#else
/* ISO C wants a translation unit to declare something. */
typedef int pz__fault_unused;
#endif
