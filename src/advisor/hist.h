/*
 * The latency histogram every benchmark program and the advisor use (the peers under
 * bench/peers/ implement the same layout and the same percentile rule, so
 * their figures compare exactly).
 *
 * Log-linear buckets over nanoseconds: values below 256 get a bucket each;
 * above that, every power-of-two range [2^k, 2^(k+1)) is split into 128
 * equal buckets.  A bucket's width is then at most 1/128 of its lower bound,
 * and reporting its midpoint is off by at most 0.4% of the true value,
 * whatever the magnitude: a microsecond and a second-long stall are both
 * resolved well enough for percentiles.  Values from 2^40 ns (18 minutes)
 * up share the last bucket.
 *
 * Percentile rule: with n values, the one at sorted index
 * min(n - 1, floor(n * permille / 1000)), reported as its bucket's midpoint.
 * Counts are 32-bit (a histogram holds one run of one connection or task
 * group, far below 2^32 values per bucket) so that one per connection stays
 * small at 1000 connections.
 */
#ifndef PZ_HIST_H
#define PZ_HIST_H

#include <stdint.h>
#include <string.h>

#define HIST_SUB_BITS 7
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_MAX_BITS 40
#define HIST_BUCKETS (2 * HIST_SUB + (HIST_MAX_BITS - HIST_SUB_BITS - 1) * HIST_SUB)

typedef struct hist {
    uint32_t count[HIST_BUCKETS];
} hist;

static inline int hist_index(uint64_t v)
{
    if (v >= (1ULL << HIST_MAX_BITS))
        v = (1ULL << HIST_MAX_BITS) - 1;
    if (v < 2 * HIST_SUB)
        return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - HIST_SUB_BITS; /* >= 1 here */
    uint64_t mant = v >> shift;      /* in [SUB, 2*SUB) */
    return 2 * HIST_SUB + (shift - 1) * HIST_SUB + (int)(mant - HIST_SUB);
}

/* The midpoint of bucket i, the inverse of hist_index. */
static inline double hist_value(int i)
{
    if (i < 2 * HIST_SUB)
        return i;
    int shift = (i - 2 * HIST_SUB) / HIST_SUB + 1;
    uint64_t mant = (uint64_t)((i - 2 * HIST_SUB) % HIST_SUB + HIST_SUB);
    return (double)(mant << shift) + (double)(1ULL << shift) / 2.0;
}

static inline void hist_add(hist *h, uint64_t v)
{
    h->count[hist_index(v)]++;
}

static inline void hist_merge(hist *into, const hist *from)
{
    for (int i = 0; i < HIST_BUCKETS; i++)
        into->count[i] += from->count[i];
}

static inline uint64_t hist_total(const hist *h)
{
    uint64_t n = 0;
    for (int i = 0; i < HIST_BUCKETS; i++)
        n += h->count[i];
    return n;
}

/* The percentile rule above; 0 for an empty histogram. */
static inline double hist_permille(const hist *h, uint64_t permille)
{
    uint64_t n = hist_total(h);
    if (n == 0)
        return 0;
    uint64_t rank = n * permille / 1000;
    if (rank > n - 1)
        rank = n - 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen > rank)
            return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

#endif
