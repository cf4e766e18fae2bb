/*
 * The forecast of a city: the formula, and the refresh across replicas on
 * one PostgreSQL database (forecast.h states the contract).
 *
 * Two locks nest around a city's refresh across replicas.  The caller's
 * local pz_async_mutex gives single flight within the process: the
 * process's other takers wait on it, suspended, and never hold a session
 * or queue on the server.  Inside it, the distributed lock (pz_pg_lock)
 * gives one refresher at a time across the processes, and its fencing
 * token goes with the write: the storage admits it only if no higher token
 * has written the city (storage_pg.c), so a holder whose lock was lost
 * (killed, paused past the lease, cut off) never overwrites a newer
 * forecast.
 *
 * Lock sessions.  Each pz_pg_lock is one database session; one per city
 * would cost 64 connections per replica.  WX_LOCK_SESSIONS sessions are
 * lent through a pz_chan that holds each idle one exactly once (so a send
 * back never waits) and re-keyed per city (pz_pg_lock_set_key) by the one
 * task that holds it.  A refresh waits for a session within its lock
 * deadline.
 */
#define _GNU_SOURCE
#include "forecast.h"
#include "weather.h"

#include <plaza.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef WX_HAVE_PG
#include <plaza/pg.h>
#endif

double wx_forecast_compute(const wx_point *pts, int n, bool have_prev, double prev, double base)
{
    if (n == 0)
        return have_prev ? prev : base;
    double mean = 0, tmean = 0;
    int64_t t0 = pts[0].time_ms; /* times relative to the newest keep the sums exact */
    for (int k = 0; k < n; k++) {
        mean += pts[k].temperature;
        tmean += (double)(pts[k].time_ms - t0);
    }
    mean /= n;
    tmean /= n;
    double sxy = 0, sxx = 0;
    for (int k = 0; k < n; k++) {
        double dt = (double)(pts[k].time_ms - t0) - tmean;
        sxy += dt * (pts[k].temperature - mean);
        sxx += dt * dt;
    }
    double slope = (n >= 2 && sxx > 0) ? sxy / sxx : 0; /* degrees per ms */
    return (have_prev ? 0.7 * mean + 0.3 * prev : mean) + slope * 600000.0;
}


#ifndef WX_HAVE_PG
int wx_replicas_open(wx_store *store, int64_t lease_ns, int log_fd, wx_replicas **out)
{
    (void)store, (void)lease_ns, (void)log_fd;
    *out = NULL;
    return 0;
}
void wx_replicas_close(wx_replicas *r) { (void)r; }
int wx_replicas_refresh(wx_replicas *r, const char *city, double base, uint64_t known_token, int64_t deadline,
                        int64_t fresh_ns, wx_forecast *out)
{
    (void)r, (void)city, (void)base, (void)known_token, (void)deadline, (void)fresh_ns, (void)out;
    return -ENOSYS;
}
void wx_replicas_get_stats(wx_replicas *r, wx_replicas_stats *out)
{
    (void)r;
    *out = (wx_replicas_stats){0};
}
#else

#define WX_LOCK_SESSIONS 4

struct wx_replicas {
    wx_store *store;
    int log_fd;
    pz_pg_lock_t *locks[WX_LOCK_SESSIONS];
    int nlocks;
    pz_chan_t *sessions;
    _Atomic uint64_t acquired, timeouts, written, adopted, refused, lost;
};

/* The distributed lock's key of a city: FNV-1a of a name of its own, so
 * that it cannot meet another program's advisory locks by accident. */
static int64_t city_key(const char *name)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = "plaza-weather/forecast/"; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return (int64_t)h;
}

static int64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

typedef struct log_line {
    int fd;
    const char *text;
    size_t len;
} log_line;

static void *write_log_line(void *p)
{
    log_line *l = p;
    ssize_t n = write(l->fd, l->text, l->len); /* O_APPEND: one line, one write */
    (void)n;
    return NULL;
}

/* Test hook (--refresh-log): a line per distributed lock event, in the
 * shared wall clock, so a test can check that the holds of a city by all
 * replicas never overlap.  "A city token ns pid" once the lock is granted,
 * "R city token ns pid outcome" taken just before it is released. */
static void refresh_log(wx_replicas *s, char what, const char *city, uint64_t token, int64_t ns, const char *outcome)
{
    if (s->log_fd < 0)
        return;
    char line[160];
    int len = snprintf(line, sizeof line, "%c %s %llu %lld %d%s%s\n", what, city, (unsigned long long)token,
                       (long long)ns, (int)getpid(), outcome ? " " : "", outcome ? outcome : "");
    log_line l = {s->log_fd, line, (size_t)len};
    pz_blocking(write_log_line, &l, NULL);
}

/* The refresh across replicas; see forecast.h.  The caller holds the
 * city's local lock. */
int wx_replicas_refresh(wx_replicas *s, const char *city, double base, uint64_t known_token, int64_t deadline,
                        int64_t fresh_ns, wx_forecast *out)
{
    pz_pg_lock_t *l;
    int r = pz_chan_recv_until(s->sessions, &l, deadline);
    if (r < 0) {
        atomic_fetch_add(&s->timeouts, 1);
        return r == -ECANCELED ? r : -ETIMEDOUT;
    }
    /* Nobody else has this session: it is idle in the channel or ours, so
     * the key cannot be refused (-EBUSY is for a session held or waited
     * for); if it were, the lock would be taken on another city's key. */
    uint64_t token = 0;
    r = pz_pg_lock_set_key(l, city_key(city));
    if (r == 0)
        r = pz_pg_lock_lock_until(l, deadline, &token);
    if (r < 0) {
        pz_chan_send(s->sessions, &l); /* never full: it holds each session once */
        if (r == -ETIMEDOUT)
            atomic_fetch_add(&s->timeouts, 1);
        else if (r != -ECANCELED)
            fprintf(stderr, "plaza-weather: distributed lock of %s: %s\n", city, pz_strerror(r));
        return r;
    }
    atomic_fetch_add(&s->acquired, 1);
    /* A hold, once granted, runs to its end (read, write, unlock, the
     * session back in the channel) even if the task is cancelled (the
     * refresher at shutdown): a cancel in the middle would leave the log
     * without the hold's end and end the session instead of unlocking.
     * Each step has its own deadline (the storage's, the unlock's 5 s). */
    pz_shield_begin();
    refresh_log(s, 'A', city, token, wall_ns(), NULL);
    const char *outcome = "failed";
    wx_forecast f;
    int have = wx_store_forecast_get(s->store, city, &f);
    if (have < 0) {
        r = have;
    } else if (have && f.token != known_token && fresh_ns > 0 && (wx_wall_ms() - f.computed_at_ms) * WX_MS < fresh_ns) {
        /* Another replica refreshed it since this one last saw it, and
         * recently: single flight across the replicas.  (The forecast this
         * process already serves is never adopted again: it was found
         * stale, and the wall clock's milliseconds would otherwise let it
         * look fresh for one more instant.) */
        *out = f;
        atomic_fetch_add(&s->adopted, 1);
        outcome = "fresh";
        r = 0;
    } else {
        wx_point pts[WX_RECENT];
        int n = wx_store_recent(s->store, city, pts, WX_RECENT);
        if (n < 0) {
            r = n;
        } else {
            wx_forecast nf = {
                .temperature = wx_forecast_compute(pts, n, have == 1, f.temperature, base),
                .computed_at_ms = wx_wall_ms(),
                .based_on = n,
                .token = token,
            };
            r = wx_store_forecast_put(s->store, city, &nf);
            if (r == 0) {
                *out = nf;
                atomic_fetch_add(&s->written, 1);
                outcome = "wrote";
            } else if (r == -ESTALE) {
                /* The lock was lost and a later holder has written: its
                 * forecast is the one to serve. */
                atomic_fetch_add(&s->refused, 1);
                fprintf(stderr,
                        "plaza-weather: forecast of %s not written: token %llu is stale (the distributed lock "
                        "was lost and taken by another replica)\n",
                        city, (unsigned long long)token);
                outcome = "stale";
                r = wx_store_forecast_get(s->store, city, out);
                if (r == 1)
                    r = 0;
                else if (r == 0)
                    r = -EIO;
            }
        }
    }
    refresh_log(s, 'R', city, token, wall_ns(), outcome);
    if (pz_pg_lock_unlock(l) == -ENOLCK) {
        atomic_fetch_add(&s->lost, 1);
        fprintf(stderr, "plaza-weather: distributed lock of %s (token %llu) was lost while held\n", city,
                (unsigned long long)token);
    }
    pz_chan_send(s->sessions, &l);
    pz_shield_end();
    return r;
}

int wx_replicas_open(wx_store *store, int64_t lease_ns, int log_fd, wx_replicas **out)
{
    *out = NULL;
    if (!store->shared_conninfo)
        return 0;
    wx_replicas *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->store = store;
    s->log_fd = log_fd;
    s->sessions = pz_chan_create(sizeof(pz_pg_lock_t *), WX_LOCK_SESSIONS);
    if (!s->sessions) {
        free(s);
        return -ENOMEM;
    }
    pz_pg_lock_opts_t o = {.lease_ns = lease_ns};
    for (int k = 0; k < WX_LOCK_SESSIONS; k++) {
        int r = pz_pg_lock_open_with(store->shared_conninfo, 0, &o, pz_now() + 30 * WX_SECOND, &s->locks[k]);
        if (r < 0) {
            wx_replicas_close(s);
            return r;
        }
        s->nlocks++;
        pz_chan_send(s->sessions, &s->locks[k]);
    }
    *out = s;
    return 0;
}

void wx_replicas_close(wx_replicas *s)
{
    if (!s)
        return;
    for (int k = 0; k < s->nlocks; k++)
        pz_pg_lock_close(s->locks[k]);
    pz_chan_destroy(s->sessions);
    free(s);
}

void wx_replicas_get_stats(wx_replicas *s, wx_replicas_stats *out)
{
    *out = (wx_replicas_stats){
        .acquired = atomic_load(&s->acquired),
        .timeouts = atomic_load(&s->timeouts),
        .written = atomic_load(&s->written),
        .adopted = atomic_load(&s->adopted),
        .refused = atomic_load(&s->refused),
        .lost = atomic_load(&s->lost),
    };
}
#endif
