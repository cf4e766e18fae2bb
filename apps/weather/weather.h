/*
 * plaza-weather's commands and what they share: `serve` (server.c), `load`
 * (load.c) and `demo` (demo.c), dispatched by main.c.
 */
#ifndef WX_WEATHER_H
#define WX_WEATHER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define WX_MS 1000000LL
#define WX_SECOND 1000000000LL

int wx_serve_main(int argc, char **argv);
int wx_load_main(int argc, char **argv);
int wx_demo_main(int argc, char **argv);
int wx_verify_main(int argc, char **argv);

/* Wall-clock unix milliseconds. */
int64_t wx_wall_ms(void);

/* The load generator, callable in-process (the demo uses it). */
typedef struct wx_load_opts {
    const char *target;
    int connections;
    double duration_s;
    double post_rate, get_rate; /* requests per second, over all connections */
    int batch;                  /* readings per POST */
    double grace_s;             /* how long after the end answers are awaited (default 10 s) */
    int workers;
    bool json;
    const char *acked_path; /* when set: every acknowledged reading, one line each */
    const char *city_prefix; /* "city" */
    int cities;              /* 64 */
} wx_load_opts;

enum { WX_EP_POST, WX_EP_GET, WX_EP_COUNT };

typedef struct wx_ep_result {
    uint64_t sent, ok;
    double rps; /* completed requests per second */
    double p50_us, p99_us, p999_us, max_us;
    uint64_t status[6]; /* by class: [0] connection errors, [1..5] 1xx..5xx */
} wx_ep_result;

typedef struct wx_load_result {
    double elapsed_s;
    wx_ep_result ep[WX_EP_COUNT];
    uint64_t acked_readings;
    uint64_t late_sends; /* requests sent more than 1 ms after their scheduled instant */
    uint64_t unsent;     /* requests due before the end that were never sent (connection still busy) */
} wx_load_result;

/* Runs the load inside an already running plaza runtime (from a task).
 * Returns 0 or a negative error (the target never answered). */
int wx_load_run(const wx_load_opts *o, wx_load_result *res);
void wx_load_print(FILE *f, const wx_load_opts *o, const wx_load_result *r, bool json);

#endif
