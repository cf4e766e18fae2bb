/* plaza's benchmark program: the same workloads, parameters and output as
 * the peers under bench/peers/ (see bench/peers/README.md).  One CSV line per
 * measurement on stdout: system,workload,param,metric,value. */
#ifndef PZ_BENCH_H
#define PZ_BENCH_H

#include <plaza.h>

#include <stdbool.h>
#include <stdint.h>

typedef struct bench_args {
    int n;
    const char *keys[16];
    long values[16];
} bench_args;

/* The value of key, or def if it was not given. */
long arg_get(const bench_args *a, const char *key, long def);

typedef struct workload {
    const char *name;
    const char *keys; /* space-separated keys it accepts */
    void (*run)(const bench_args *a);
} workload;

/* Each area's table, ended by a {NULL} entry.  Weak, so an area that is not
 * built yet is simply absent. */
extern const workload runtime_workloads[];
extern const workload sync_workloads[] __attribute__((weak));
extern const workload async_workloads[] __attribute__((weak));
extern const workload io_workloads[] __attribute__((weak));
extern const workload logic_workloads[] __attribute__((weak));
/* Scheduling under overload (bench_overload.c): not in `all`; bench/run.py
 * runs them with their parameters beside the peers. */
extern const workload overload_workloads[] __attribute__((weak));

/* The busy loop the peers run outside their locks: w steps of xorshift64
 * seeded from seed (see bench/peers/README.md). */
static inline uint64_t bench_work(uint64_t seed, long w)
{
    uint64_t x = seed | 1;
    for (long i = 0; i < w; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

/* Prints one result line. */
void emit(const char *name, const char *param, const char *metric, double value);

/* Aborts the run with a message when a workload's own check fails. */
void bench_check(bool ok, const char *what);

/* Runs fn(arg) as the main task of a runtime with `workers` workers. */
void run_with_workers(int workers, pz_fn fn, void *arg);

long rss_bytes(void);

#endif
