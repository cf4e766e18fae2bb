#define _GNU_SOURCE
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const workload *tables[7];

static void init_tables(void)
{
    int n = 0;
    const workload *all[] = {runtime_workloads, sync_workloads, async_workloads, io_workloads,
                             logic_workloads, overload_workloads};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i])
            tables[n++] = all[i];
    tables[n] = NULL;
}

long arg_get(const bench_args *a, const char *key, long def)
{
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->keys[i], key) == 0)
            return a->values[i];
    return def;
}

void emit(const char *name, const char *param, const char *metric, double value)
{
    printf("plaza,%s,%s,%s,%.2f\n", name, param, metric, value);
    fflush(stdout);
}

void bench_check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "CHECK FAILED: %s\n", what);
        exit(2);
    }
}

void run_with_workers(int workers, pz_fn fn, void *arg)
{
    pz_config_t cfg = {.workers = workers};
    int r = pz_run(&cfg, fn, arg, NULL);
    bench_check(r == 0, "pz_run");
}

long rss_bytes(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static const workload *find(const char *name)
{
    for (int t = 0; tables[t]; t++)
        for (const workload *w = tables[t]; w->name; w++)
            if (strcmp(w->name, name) == 0)
                return w;
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench-plaza <workload|all|list> [key=value ...]\n");
    for (int t = 0; tables[t]; t++)
        for (const workload *w = tables[t]; w->name; w++)
            fprintf(stderr, "  %-20s %s\n", w->name, w->keys);
}

int main(int argc, char **argv)
{
    init_tables();
    if (argc < 2) {
        usage();
        return 64;
    }
    if (strcmp(argv[1], "list") == 0) {
        for (int t = 0; tables[t]; t++)
            for (const workload *w = tables[t]; w->name; w++)
                printf("%s\n", w->name);
        return 0;
    }
    bench_args a = {0};
    if (strcmp(argv[1], "all") == 0) {
        for (int t = 0; tables[t]; t++)
            for (const workload *w = tables[t]; w->name && tables[t] != overload_workloads; w++) {
                fprintf(stderr, "bench-plaza: %s\n", w->name);
                w->run(&a);
            }
        return 0;
    }
    const workload *w = find(argv[1]);
    if (!w) {
        fprintf(stderr, "bench-plaza: unknown workload %s\n", argv[1]);
        usage();
        return 64;
    }
    for (int i = 2; i < argc && a.n < 16; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "bench-plaza: expected key=value, got %s\n", argv[i]);
            return 64;
        }
        *eq = '\0';
        char keys[256];
        snprintf(keys, sizeof keys, " %s ", w->keys);
        char probe[64];
        snprintf(probe, sizeof probe, " %s ", argv[i]);
        if (!strstr(keys, probe)) {
            fprintf(stderr, "bench-plaza: %s takes no key %s (keys: %s)\n", w->name, argv[i], w->keys);
            return 64;
        }
        a.keys[a.n] = argv[i];
        a.values[a.n++] = strtol(eq + 1, NULL, 10);
    }
    w->run(&a);
    return 0;
}
