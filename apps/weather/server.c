/*
 * plaza-weather serve: the weather service (PROTOCOL.md), on plaza's
 * public API only.
 *
 * Tasks.  One accept loop; one task per connection (it reads, parses,
 * handles and answers its requests one after another, so a slow client
 * suspends only its own task); one writer task that commits readings in
 * groups; one refresher that recomputes every city's forecast on a timer;
 * plaza's shutdown helper (pz_shutdown_*) watches SIGINT/SIGTERM.  The
 * storage calls never hold a worker: SQLite's run on the blocking pool
 * (storage_sqlite.c), PostgreSQL's wait on the reactor (storage_pg.c).
 *
 * The two critical sections of a city, and their locks:
 *  - data: `current` (the last reading) is only copied in and out while
 *    held, a few nanoseconds: a pz_mutex, which blocks the thread for the
 *    instant it is contended and costs almost nothing.
 *  - logic: `forecast` is recomputed from the database while held, so the
 *    lock is held across a database round trip: a pz_async_mutex, whose
 *    waiters are suspended tasks, so the workers serve other requests
 *    meanwhile.  Holding it across the round trip is what makes the
 *    refresh single-flight: whoever waited behind a refresh finds the
 *    forecast fresh and does not query again.
 * --wrong-locks swaps them (forecast under pz_mutex, current under
 * pz_async_mutex) to show what each wrong choice costs: a task holding a
 * pz_mutex across the database call leaves every other task that wants it
 * blocking a whole worker (plaza reports the suspension); with all workers
 * blocked the runtime resumes the holder on a spare worker thread (and
 * reports that too), so the service is slow, not stuck.
 *
 * Writes.  A POST is validated whole (400/404 store nothing), updates
 * `current` of each city, then hands a completion record on its own stack
 * to the writer through a pz_chan and waits on the record's pz_notify.
 * The writer takes what is queued (at most 1000 readings; with
 * --batch-linger-ms it waits that long after the first for more), commits
 * it in one transaction, then fills in each record's result and notifies
 * it.  The POST answers 200 only after the commit that holds its readings:
 * an acknowledged reading is in the database (WAL).  A record is never
 * abandoned: its waiter waits without deadline and without cancellation,
 * and the writer answers every record it received, so the stack it lives
 * on outlives the writer's last touch (pz_notify_one does not touch the
 * word after the wake it delivers).
 *
 * Replicas.  With PostgreSQL, several services may share one database,
 * and a city's forecast is refreshed by one of them at a time: inside the
 * city's local lock, the refresh takes the city's distributed lock and
 * writes under its fencing token (forecast.c).  The lease
 * (--lock-lease-ms) bounds how long a stopped holder keeps the others
 * out.
 *
 * Shutdown.  The first SIGINT/SIGTERM stops the accept loop; every idle
 * connection, waiting in a read of its socket, ends (the stop shuts the
 * socket's reading side; see wait_idle); every connection in the middle of a request receives and
 * answers it with Connection: close (within the request deadline); the
 * service waits for the connections to end, stops the refresher, closes
 * the writer's channel (the writer commits what is queued, then ends),
 * closes the database and exits 0.  A second signal ends the process at once (the signal's default
 * action: status 130 or 143 in a shell).
 */
#define _GNU_SOURCE
#include "forecast.h"
#include "request.h"
#include "storage.h"
#include "weather.h"
#include "../../bench/hist.h"

#include <plaza.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <fcntl.h>

/* ---- options ---- */

typedef struct serve_opts {
    const char *listen, *db;
    int workers;
    bool wrong_locks;
    int64_t forecast_ttl_ns, refresh_ns, lock_timeout_ns, request_timeout_ns, idle_timeout_ns, linger_ns;
    int64_t lock_lease_ns; /* the distributed lock's lease (replicas on PostgreSQL) */
    const char *refresh_log; /* test hook: every distributed hold, appended to this file */
    wx_store_opts store;
} serve_opts;

/* ---- locks with their own measurements ---- */

/* What the service measures of each lock role itself: how long takers
 * waited and how long holders held.  Recorded after the unlock under the
 * stats' own pz_mutex (a data section: a histogram increment). */
typedef struct lock_stats {
    pz_mutex_t lock;
    uint64_t timeouts;
    hist wait, hold;
} lock_stats;

/* A lock of one role: a pz_mutex or a pz_async_mutex, chosen at start. */
typedef struct wx_lock {
    pz_mutex_t sync;
    pz_async_mutex_t async;
    int64_t taken_at; /* written by the holder only */
} wx_lock;

typedef struct lock_role {
    bool is_async;
    lock_stats *stats;
} lock_role;

/* Takes l within timeout_ns of now: returns the wait in ns (0 when it was
 * free) or a negative error.  The clock is read once when the lock is free
 * at once (the hold's start), and the deadline only computed when it is
 * not: a POST takes a city's data lock per reading, and three clock reads
 * per acquisition were a fifth of its CPU outside the parser.  A taker
 * that waits has its deadline run from the wait's start, and its wait
 * ends at l->taken_at, so the deadline it had is l->taken_at - wait +
 * timeout_ns. */
static int lock_take(const lock_role *role, wx_lock *l, int64_t timeout_ns)
{
    if (role->is_async ? pz_async_mutex_trylock(&l->async) : pz_mutex_trylock(&l->sync)) {
        l->taken_at = pz_now();
        return 0;
    }
    int64_t t0 = pz_now();
    int64_t deadline = t0 + timeout_ns;
    int r = role->is_async ? pz_async_mutex_lock_until(&l->async, deadline) : pz_mutex_lock_until(&l->sync, deadline);
    int64_t t1 = pz_now();
    if (r < 0) {
        PZ_GUARD(pz_mutex, g, &role->stats->lock);
        role->stats->timeouts++;
        hist_add(&role->stats->wait, (uint64_t)(t1 - t0));
        return r;
    }
    l->taken_at = t1;
    /* The wait is recorded at the unlock, with the hold: one pass under
     * the stats lock per section. */
    return (int)((t1 - t0) > INT32_MAX ? INT32_MAX : (t1 - t0));
}

static void lock_give(const lock_role *role, wx_lock *l, int waited_ns)
{
    int64_t held = pz_now() - l->taken_at;
    if (role->is_async)
        pz_async_mutex_unlock(&l->async);
    else
        pz_mutex_unlock(&l->sync);
    PZ_GUARD(pz_mutex, g, &role->stats->lock);
    hist_add(&role->stats->wait, (uint64_t)waited_ns);
    hist_add(&role->stats->hold, (uint64_t)held);
}

/* ---- per-city state ---- */

typedef struct city_state {
    wx_lock current_lock;
    double cur_temperature;
    int64_t cur_time_ms;
    uint64_t cur_readings; /* since start */
    /* cur_temperature as the answers spell it, when cur_text_ok: made by
     * the first GET after a reading changed it (a POST only clears the
     * flag), so a city read more often than written is spelled once per
     * reading rather than once per GET. */
    bool cur_text_ok;
    char cur_text[32];

    wx_lock forecast_lock;
    bool fc_have;
    double fc_temperature;
    /* fc_temperature as the answers spell it, made once per refresh rather
     * than once per GET (a computed value takes three printf and strtod
     * rounds to spell shortest). */
    char fc_text[32];
    int64_t fc_computed_at_ms;
    int64_t fc_computed_ns; /* pz_now() of the computation, for staleness */
    int fc_based_on;
    uint64_t fc_token; /* replicas: the fencing token the forecast was written with */
} city_state;

/* ---- metrics ---- */

enum { EP_POST, EP_GET, EP_HEALTHZ, EP_METRICS, EP_COUNT };
static const char *const ep_names[EP_COUNT] = {"post_readings", "get_weather", "healthz", "metrics"};

typedef struct ep_metrics {
    pz_mutex_t lock;
    hist h;
} ep_metrics;

/* ---- writer records ---- */

typedef struct write_req {
    const wx_parsed_reading *r;
    size_t n;
    int result;
    pz_notify_t done;
} write_req;

#define WRITE_QUEUE 4096

typedef struct service {
    serve_opts o;
    wx_store *store;
    wx_city *city_table;
    wx_cities cities;
    city_state *city;
    lock_role current_role, forecast_role;
    lock_stats current_stats, forecast_stats;
    pz_chan_t *writes;
    _Atomic bool store_failed; /* the last commit failed */
    ep_metrics ep[EP_COUNT];
    _Atomic uint64_t status_class[6];
    _Atomic uint64_t acked_readings, commits;

    _Atomic int nconns;
    /* The open connections (their tasks register them), so that the stop
     * can end the idle ones: see wait_idle. */
    pz_mutex_t conns_lock;
    struct conn_entry *conns;
    _Atomic bool stopping; /* set before the idle connections are ended */
    /* Requests received in part or whole and not answered yet (the
     * /metrics request that reports it included). */
    _Atomic int in_progress;
    pz_notify_t conns_changed;
    int lfd;

    /* Replicas (PostgreSQL): the refreshes across them (forecast.c), NULL
     * for a store one process serves. */
    wx_replicas *replicas;
    int refresh_log_fd;
} service;

int64_t wx_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- forecast ---- */

/* The shortest decimal that reads back as the same double. */
static void fmt_double(char *out, size_t len, double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, len, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}


/* Recomputes the city's forecast from its recent readings, for this
 * process alone.  The caller holds the city's forecast lock (that is the
 * point: the lock is held across the database round trip).  0 or a
 * storage error. */
static int refresh_local(service *s, int i)
{
    wx_point pts[WX_RECENT];
    int n = wx_store_recent(s->store, s->city_table[i].name, pts, WX_RECENT);
    if (n < 0)
        return n;
    city_state *c = &s->city[i];
    c->fc_temperature = wx_forecast_compute(pts, n, c->fc_have, c->fc_temperature, s->city_table[i].base);
    fmt_double(c->fc_text, sizeof c->fc_text, c->fc_temperature);
    c->fc_have = true;
    c->fc_based_on = n;
    c->fc_computed_at_ms = wx_wall_ms();
    c->fc_computed_ns = pz_now();
    return 0;
}

/* The refresh across replicas (forecast.c): the caller holds the city's
 * local lock; the forecast it brings back is the one to serve. */
static int refresh_shared(service *s, int i, int64_t deadline, int64_t fresh_ns)
{
    city_state *c = &s->city[i];
    wx_forecast f;
    int r = wx_replicas_refresh(s->replicas, s->city_table[i].name, s->city_table[i].base, c->fc_token, deadline,
                                fresh_ns, &f);
    if (r < 0)
        return r;
    c->fc_temperature = f.temperature;
    fmt_double(c->fc_text, sizeof c->fc_text, c->fc_temperature);
    c->fc_have = true;
    c->fc_based_on = f.based_on;
    c->fc_computed_at_ms = f.computed_at_ms;
    c->fc_token = f.token;
    /* Its age in this process's clock, from the wall clocks' difference. */
    int64_t age_ms = wx_wall_ms() - f.computed_at_ms;
    c->fc_computed_ns = pz_now() - (age_ms > 0 ? age_ms : 0) * WX_MS;
    return 0;
}

/* Refreshes the city's forecast; the caller holds its local forecast
 * lock.  Across replicas, a stored forecast younger than fresh_ns is
 * adopted rather than recomputed.  0 or an error. */
static int refresh_forecast(service *s, int i, int64_t deadline, int64_t fresh_ns)
{
    if (s->replicas)
        return refresh_shared(s, i, deadline, fresh_ns);
    return refresh_local(s, i);
}

/* now: pz_now() of the caller, under the forecast lock. */
static bool forecast_stale(const service *s, const city_state *c, int64_t now)
{
    return !c->fc_have || now - c->fc_computed_ns > s->o.forecast_ttl_ns;
}

static void *refresher(void *arg)
{
    service *s = arg;
    /* The first pass comes one period after the start: until then the
     * GETs compute each forecast when first asked. */
    int64_t next = pz_now() + s->o.refresh_ns;
    while (!pz_cancelled() && pz_sleep_until(next) == 0) {
        for (int i = 0; i < s->cities.n && !pz_cancelled(); i++) {
            city_state *c = &s->city[i];
            int w = lock_take(&s->forecast_role, &c->forecast_lock, s->o.lock_timeout_ns);
            if (w < 0)
                continue;
            /* Across replicas, a forecast another one refreshed in the last
             * half period is adopted: each city is then recomputed about
             * once a period by all of them together, while one replica
             * alone (its own forecast a period old) recomputes every time. */
            int64_t fresh = s->o.refresh_ns / 2 < s->o.forecast_ttl_ns ? s->o.refresh_ns / 2 : s->o.forecast_ttl_ns;
            refresh_forecast(s, i, pz_now() + s->o.lock_timeout_ns, fresh); /* a failure was logged; GETs retry */
            lock_give(&s->forecast_role, &c->forecast_lock, w);
        }
        next += s->o.refresh_ns;
        if (next < pz_now())
            next = pz_now();
    }
    return NULL;
}

/* ---- writer ---- */

static void *writer(void *arg)
{
    service *s = arg;
    write_req **batch = calloc(WX_MAX_READINGS, sizeof *batch);
    wx_reading *rows = calloc(WX_MAX_READINGS, sizeof *rows);
    write_req *carry = NULL;
    if (!batch || !rows) {
        fprintf(stderr, "plaza-weather: writer: out of memory\n");
        exit(1);
    }
    for (;;) {
        write_req *w = carry;
        carry = NULL;
        if (!w && pz_chan_recv(s->writes, &w) < 0)
            break; /* closed and drained */
        size_t nreq = 0, total = 0;
        batch[nreq++] = w;
        total += w->n;
        int64_t linger_until = pz_now() + s->o.linger_ns;
        while (total < WX_MAX_READINGS) {
            int r = s->o.linger_ns > 0 ? pz_chan_recv_until(s->writes, &w, linger_until)
                                       : pz_chan_try_recv(s->writes, &w);
            if (r < 0)
                break;
            if (total + w->n > WX_MAX_READINGS) {
                carry = w; /* the next batch starts with it */
                break;
            }
            batch[nreq++] = w;
            total += w->n;
        }
        size_t k = 0;
        for (size_t i = 0; i < nreq; i++)
            for (size_t j = 0; j < batch[i]->n; j++, k++) {
                const wx_parsed_reading *p = &batch[i]->r[j];
                rows[k].city = s->city_table[p->city].name;
                rows[k].temperature = p->temperature;
                rows[k].time_ms = p->time_ms;
            }
        int r = wx_store_insert_batch(s->store, rows, k);
        atomic_store(&s->store_failed, r < 0);
        if (r == 0) {
            atomic_fetch_add(&s->acked_readings, k);
            atomic_fetch_add(&s->commits, 1);
        }
        for (size_t i = 0; i < nreq; i++) {
            batch[i]->result = r;
            pz_notify_one(&batch[i]->done); /* the record's owner may return at once */
        }
    }
    free(batch);
    free(rows);
    return NULL;
}

/* ---- handlers ---- */

static int handle_post(service *s, wx_request *req, wx_buf *out, bool close, wx_parsed_reading *parsed)
{
    char reason[256];
    size_t n;
    int st = wx_parse_readings(req->body.p ? req->body.p : "", req->body.len, &s->cities, wx_wall_ms(), parsed, &n,
                               reason, sizeof reason);
    if (st)
        return wx_respond_error(out, st, reason, close, NULL) < 0 ? -ENOMEM : st;
    for (size_t i = 0; i < n; i++) {
        city_state *c = &s->city[parsed[i].city];
        int w = lock_take(&s->current_role, &c->current_lock, s->o.lock_timeout_ns);
        if (w < 0)
            return wx_respond_error(out, 503, "lock wait timed out", close, NULL) < 0 ? -ENOMEM : 503;
        c->cur_temperature = parsed[i].temperature;
        c->cur_time_ms = parsed[i].time_ms;
        c->cur_readings++;
        c->cur_text_ok = false;
        lock_give(&s->current_role, &c->current_lock, w);
    }
    write_req wr = {.r = parsed, .n = n};
    int r = pz_chan_send(s->writes, &(write_req *){&wr});
    if (r == 0) {
        /* Waits for the writer, whatever happens: the record is on this
         * stack (see the file's comment). */
        while (pz_notify_wait(&wr.done) < 0) {
        }
        r = wr.result;
    }
    if (r < 0)
        return wx_respond_error(out, 503, "database unavailable", close, NULL) < 0 ? -ENOMEM : 503;
    char body[40] = "{\"accepted\":";
    size_t len = strlen(body);
    len += wx_fmt_int(body + len, (long long)n);
    body[len++] = '}';
    return wx_respond(out, 200, body, len, close, NULL) < 0 ? -ENOMEM : 200;
}

/* Appends the NUL-terminated s at p; returns the end. */
static char *put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return p + n;
}

static int handle_get(service *s, const char *name, wx_buf *out, bool close)
{
    int i = wx_city_find(&s->cities, name, strlen(name));
    if (i < 0) {
        char reason[96];
        snprintf(reason, sizeof reason, "unknown city: %.64s", name);
        return wx_respond_error(out, 404, reason, close, NULL) < 0 ? -ENOMEM : 404;
    }
    city_state *c = &s->city[i];
    int w = lock_take(&s->current_role, &c->current_lock, s->o.lock_timeout_ns);
    if (w < 0)
        return wx_respond_error(out, 503, "lock wait timed out", close, NULL) < 0 ? -ENOMEM : 503;
    double cur = c->cur_temperature;
    int64_t updated = c->cur_time_ms;
    uint64_t version = c->cur_readings;
    char cur_s[sizeof c->cur_text];
    bool spelled = c->cur_text_ok;
    if (spelled)
        memcpy(cur_s, c->cur_text, sizeof cur_s);
    lock_give(&s->current_role, &c->current_lock, w);
    if (!spelled) {
        /* Spelled outside the lock, kept for the next GETs if no reading
         * came meanwhile. */
        fmt_double(cur_s, sizeof cur_s, cur);
        w = lock_take(&s->current_role, &c->current_lock, s->o.lock_timeout_ns);
        if (w >= 0) {
            if (c->cur_readings == version && !c->cur_text_ok) {
                memcpy(c->cur_text, cur_s, sizeof cur_s);
                c->cur_text_ok = true;
            }
            lock_give(&s->current_role, &c->current_lock, w);
        }
    }

    w = lock_take(&s->forecast_role, &c->forecast_lock, s->o.lock_timeout_ns);
    if (w < 0)
        return wx_respond_error(out, 503, "lock wait timed out", close, NULL) < 0 ? -ENOMEM : 503;
    int r = 0;
    /* Single flight: re-checked under the lock (as of the instant it was
     * taken); a refresh that finished while this task waited left it
     * fresh.  Across replicas the distributed lock gets what is left of
     * the lock's deadline. */
    int64_t taken = c->forecast_lock.taken_at;
    if (forecast_stale(s, c, taken))
        r = refresh_forecast(s, i, taken - w + s->o.lock_timeout_ns, s->o.forecast_ttl_ns);
    char fc_s[sizeof c->fc_text];
    memcpy(fc_s, c->fc_text, sizeof fc_s);
    int64_t computed_at = c->fc_computed_at_ms;
    int based_on = c->fc_based_on;
    lock_give(&s->forecast_role, &c->forecast_lock, w);
    if (r == -ETIMEDOUT)
        return wx_respond_error(out, 503, "lock wait timed out", close, NULL) < 0 ? -ENOMEM : 503;
    if (r < 0)
        return wx_respond_error(out, 503, "database unavailable", close, NULL) < 0 ? -ENOMEM : 503;

    /* {"city":..,"temperature":..,"updated":..,"forecast":{"temperature":..,
     * "computed_at":..,"based_on":..}}, put together from its pieces (a
     * city name is under WX_CITY_NAME_MAX bytes, the numbers under 32). */
    char body[320], *p = body;
    p = put_str(p, "{\"city\":\"");
    p = put_str(p, s->city_table[i].name);
    p = put_str(p, "\",\"temperature\":");
    p = put_str(p, cur_s);
    p = put_str(p, ",\"updated\":");
    p += wx_fmt_int(p, (long long)updated);
    p = put_str(p, ",\"forecast\":{\"temperature\":");
    p = put_str(p, fc_s);
    p = put_str(p, ",\"computed_at\":");
    p += wx_fmt_int(p, (long long)computed_at);
    p = put_str(p, ",\"based_on\":");
    p += wx_fmt_int(p, based_on);
    p = put_str(p, "}}");
    return wx_respond(out, 200, body, (size_t)(p - body), close, NULL) < 0 ? -ENOMEM : 200;
}

static int handle_healthz(service *s, wx_buf *out, bool close)
{
    int r = atomic_load(&s->store_failed) ? -EIO : 0;
    if (r == 0)
        r = wx_store_health(s->store);
    if (r < 0) {
        static const char b[] = "{\"status\":\"unavailable\"}";
        return wx_respond(out, 503, b, sizeof b - 1, close, NULL) < 0 ? -ENOMEM : 503;
    }
    static const char b[] = "{\"status\":\"ok\"}";
    return wx_respond(out, 200, b, sizeof b - 1, close, NULL) < 0 ? -ENOMEM : 200;
}

static json_t *hist_json(hist *h, double unit)
{
    return json_pack("{s:I,s:f,s:f,s:f,s:f}", "count", (json_int_t)hist_total(h), "p50_us",
                     hist_permille(h, 500) / unit, "p99_us", hist_permille(h, 990) / unit, "p999_us",
                     hist_permille(h, 999) / unit, "max_us", hist_permille(h, 1000) / unit);
}

static json_t *lock_json(const char *kind, lock_stats *ls)
{
    PZ_GUARD(pz_mutex, g, &ls->lock);
    json_t *o = json_pack("{s:s,s:I,s:I,s:o,s:o}", "kind", kind, "acquisitions", (json_int_t)hist_total(&ls->hold),
                          "timeouts", (json_int_t)ls->timeouts, "wait", hist_json(&ls->wait, 1000.0), "hold",
                          hist_json(&ls->hold, 1000.0));
    return o;
}

static int handle_metrics(service *s, wx_buf *out, bool close)
{
    json_t *root = json_object();
    for (int e = 0; e < EP_COUNT; e++) {
        /* Copy out under the lock, compute outside. */
        hist *h = malloc(sizeof *h);
        if (!h)
            break;
        {
            PZ_GUARD(pz_mutex, g, &s->ep[e].lock);
            memcpy(h, &s->ep[e].h, sizeof *h);
        }
        json_object_set_new(root, ep_names[e], hist_json(h, 1000.0));
        free(h);
    }
    json_object_set_new(root, "status",
                        json_pack("{s:I,s:I,s:I}", "2xx", (json_int_t)atomic_load(&s->status_class[2]), "4xx",
                                  (json_int_t)atomic_load(&s->status_class[4]), "5xx",
                                  (json_int_t)atomic_load(&s->status_class[5])));
    json_t *locks = json_object();
    json_object_set_new(locks, "current", lock_json(s->current_role.is_async ? "pz_async_mutex" : "pz_mutex",
                                                    &s->current_stats));
    json_object_set_new(locks, "forecast", lock_json(s->forecast_role.is_async ? "pz_async_mutex" : "pz_mutex",
                                                     &s->forecast_stats));
    json_object_set_new(root, "locks", locks);
    if (s->replicas) {
        wx_replicas_stats rs;
        wx_replicas_get_stats(s->replicas, &rs);
        json_object_set_new(root, "replicas",
                            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "lock_acquisitions", (json_int_t)rs.acquired,
                                      "lock_timeouts", (json_int_t)rs.timeouts, "written", (json_int_t)rs.written,
                                      "adopted", (json_int_t)rs.adopted, "refused_stale", (json_int_t)rs.refused,
                                      "locks_lost", (json_int_t)rs.lost));
    }
    json_object_set_new(root, "connections",
                        json_pack("{s:i,s:i}", "open", atomic_load(&s->nconns), "requests_in_progress",
                                  atomic_load(&s->in_progress)));
    json_object_set_new(root, "writer", json_pack("{s:I,s:I}", "acked_readings",
                                                  (json_int_t)atomic_load(&s->acked_readings), "commits",
                                                  (json_int_t)atomic_load(&s->commits)));
    char *txt = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(root);
    if (!txt)
        return -ENOMEM;
    int r = wx_respond(out, 200, txt, strlen(txt), close, NULL);
    free(txt);
    return r < 0 ? -ENOMEM : 200;
}

/* Answers one complete request into out; returns its status or -ENOMEM,
 * and in *done_at the pz_now() at which it was answered. */
static int handle(service *s, wx_request *req, wx_buf *out, bool close, wx_parsed_reading *parsed, int64_t *done_at)
{
    wx_route rt;
    wx_route_request(req, &rt);
    int64_t t0 = pz_now();
    int st;
    if (rt.status)
        st = wx_respond_error(out, rt.status, rt.reason, close, rt.allow) < 0 ? -ENOMEM : rt.status;
    else if (rt.kind == WX_ROUTE_POST_READINGS)
        st = handle_post(s, req, out, close, parsed);
    else if (rt.kind == WX_ROUTE_GET_WEATHER)
        st = handle_get(s, rt.city, out, close);
    else if (rt.kind == WX_ROUTE_HEALTHZ)
        st = handle_healthz(s, out, close);
    else
        st = handle_metrics(s, out, close);
    int ep = rt.kind == WX_ROUTE_POST_READINGS ? EP_POST
             : rt.kind == WX_ROUTE_GET_WEATHER ? EP_GET
             : rt.kind == WX_ROUTE_HEALTHZ     ? EP_HEALTHZ
             : rt.kind == WX_ROUTE_METRICS     ? EP_METRICS
                                               : -1;
    *done_at = pz_now();
    if (ep >= 0 && st > 0) {
        PZ_GUARD(pz_mutex, g, &s->ep[ep].lock);
        hist_add(&s->ep[ep].h, (uint64_t)(*done_at - t0));
    }
    return st;
}

/* ---- connections ---- */

#define IN_BUF 16384
/* A connection's task stack: the handlers keep their buffers small and on
 * the heap, yajl's parser does not recurse (its nesting is a stack on the
 * heap, and the validator stops past WX_MAX_JSON_DEPTH), but the
 * PostgreSQL back end runs libpq on this stack (SQLite runs on the
 * blocking pool's threads). */
#define CONN_STACK (128 * 1024)

static void count_status(service *s, int st)
{
    if (st >= 100 && st < 600)
        atomic_fetch_add_explicit(&s->status_class[st / 100], 1, memory_order_relaxed);
}

typedef struct conn_arg {
    service *s;
    int fd;
} conn_arg;

/* A connection as the stop sees it; on its task's stack, in s->conns
 * (under conns_lock) from the task's start until just before it closes
 * the socket, so the stop never touches a closed or reused descriptor. */
typedef struct conn_entry {
    struct conn_entry *prev, *next;
    int fd;
    _Atomic bool idle; /* waiting for the first byte of a request */
} conn_entry;

static void conn_register(service *s, conn_entry *e)
{
    PZ_GUARD(pz_mutex, g, &s->conns_lock);
    e->prev = NULL;
    e->next = s->conns;
    if (s->conns)
        s->conns->prev = e;
    s->conns = e;
}

static void conn_unregister(service *s, conn_entry *e)
{
    PZ_GUARD(pz_mutex, g, &s->conns_lock);
    if (e->prev)
        e->prev->next = e->next;
    else
        s->conns = e->next;
    if (e->next)
        e->next->prev = e->prev;
}

/* Reads the first bytes of the next request: n > 0, 0 at the peer's end
 * (or the stop), -ETIMEDOUT when idle until the deadline, -ESHUTDOWN if
 * the service is stopping.  An idle connection waits in this one read
 * rather than in a pz_select on its socket and the shutdown notify (a
 * node in the one notify's queue that every idle connection shares, and a
 * poll(2) after every wake-up before the read), and the stop ends it
 * from outside: end_idle_connections shuts the reading side of every
 * connection marked idle, so its read returns 0.  Marking and checking are
 * a Dekker pair with the stop (both sequentially consistent): either the
 * stop sees this connection idle, or this connection sees the stop. */
static ssize_t wait_idle(service *s, conn_entry *e, char *in, size_t cap, int64_t deadline)
{
    atomic_store(&e->idle, true);
    if (atomic_load(&s->stopping)) {
        atomic_store(&e->idle, false);
        return -ESHUTDOWN;
    }
    ssize_t n = pz_read(e->fd, in, cap, deadline);
    atomic_store(&e->idle, false);
    return n;
}

/* The stop's side of wait_idle: every connection waiting between requests
 * reads the end of its stream (shutdown(SHUT_RD) wakes its read); a
 * connection in the middle of a request is left to answer it. */
static void end_idle_connections(service *s)
{
    atomic_store(&s->stopping, true);
    PZ_GUARD(pz_mutex, g, &s->conns_lock);
    for (conn_entry *e = s->conns; e; e = e->next)
        if (atomic_load(&e->idle))
            shutdown(e->fd, SHUT_RD);
}

static void *serve_conn(void *arg)
{
    conn_arg *a = arg;
    service *s = a->s;
    int fd = a->fd;
    free(a);
    conn_entry entry = {.fd = fd};
    conn_register(s, &entry);
    char *in = malloc(IN_BUF);
    wx_parsed_reading *parsed = malloc(WX_MAX_READINGS * sizeof *parsed);
    wx_parser ps;
    wx_parser_init(&ps);
    wx_buf out = {0};
    size_t in_off = 0, in_len = 0;
    int64_t request_deadline = 0;
    /* The clock is read three times per request (after the read that
     * brings its bytes, and around the handler); the deadlines run from
     * those readings: the request's from the read, the answer's write and
     * the idle wait that follows from the handler's end. */
    int64_t read_at = pz_now(), done_at = read_at;
    bool sent_continue = false;
    bool in_progress = false; /* counted in s->in_progress */
    if (!in || !parsed)
        goto done;
    for (;;) {
        /* Parse what is buffered; read only when it is all consumed. */
        wx_parse_state state = WX_PARSE_MORE;
        if (in_off < in_len) {
            bool was_started = wx_parser_started(&ps);
            size_t used = wx_parser_feed(&ps, in + in_off, in_len - in_off, &state);
            in_off += used;
            if (!was_started && (wx_parser_started(&ps) || state != WX_PARSE_MORE)) {
                request_deadline = read_at + s->o.request_timeout_ns;
                if (!in_progress) {
                    in_progress = true;
                    atomic_fetch_add(&s->in_progress, 1);
                }
            }
        }
        if (state == WX_PARSE_ERROR) {
            out.len = 0;
            wx_respond_error(&out, ps.status, ps.reason, true, NULL);
            count_status(s, ps.status);
            pz_write_all(fd, out.p, out.len, pz_now() + s->o.request_timeout_ns);
            break;
        }
        if (state == WX_PARSE_DONE) {
            bool close = !ps.req.keep_alive || pz_shutdown_requested();
            out.len = 0;
            int st = handle(s, &ps.req, &out, close, parsed, &done_at);
            if (st < 0)
                break;
            count_status(s, st);
            if (pz_write_all(fd, out.p, out.len, done_at + s->o.request_timeout_ns) < 0 || close ||
                wx_status_closes(st))
                break;
            wx_parser_next(&ps);
            sent_continue = false;
            in_progress = false;
            atomic_fetch_sub(&s->in_progress, 1);
            continue;
        }
        /* A client that sent "Expect: 100-continue" waits for this before
         * it sends the body. */
        if (ps.headers_done && ps.expect_continue && !sent_continue && ps.req.body.len == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            sent_continue = true;
            if (pz_write_all(fd, cont, sizeof cont - 1, request_deadline) < 0)
                break;
        }
        in_off = in_len = 0;
        bool started = wx_parser_started(&ps);
        /* Between requests the stop ends the connection; in the middle of
         * one it does not: the request is received and answered (with
         * Connection: close) within its deadline. */
        ssize_t n = started ? pz_read(fd, in, IN_BUF, request_deadline)
                            : wait_idle(s, &entry, in, IN_BUF, done_at + s->o.idle_timeout_ns);
        read_at = pz_now();
        if (n == -ETIMEDOUT && started) {
            out.len = 0;
            wx_respond_error(&out, 408, "request not complete in time", true, NULL);
            count_status(s, 408);
            pz_write_all(fd, out.p, out.len, pz_now() + WX_SECOND);
            break;
        }
        if (n <= 0)
            break; /* closed or reset, idle too long, or the service stops */
        in_len = (size_t)n;
    }
done:
    if (in_progress)
        atomic_fetch_sub(&s->in_progress, 1);
    conn_unregister(s, &entry);
    pz_close(fd);
    free(in);
    free(parsed);
    wx_parser_free(&ps);
    wx_buf_free(&out);
    if (atomic_fetch_sub(&s->nconns, 1) == 1)
        pz_notify_all(&s->conns_changed);
    return NULL;
}

static void *accept_loop(void *arg)
{
    service *s = arg;
    for (;;) {
        int fd = pz_accept(s->lfd, NULL, NULL, PZ_FOREVER);
        if (fd == -ECANCELED)
            break;
        if (fd < 0) {
            fprintf(stderr, "plaza-weather: accept: %s\n", pz_strerror(fd));
            if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM || fd == -ENOBUFS)
                if (pz_sleep(10 * WX_MS) < 0)
                    break;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_arg *a = malloc(sizeof *a);
        if (!a) {
            pz_close(fd);
            continue;
        }
        a->s = s;
        a->fd = fd;
        atomic_fetch_add(&s->nconns, 1);
        pz_task_t *t = pz_spawn_with(serve_conn, a, &(pz_spawn_opts_t){.stack_size = CONN_STACK, .name = "conn"});
        if (!t) {
            atomic_fetch_sub(&s->nconns, 1);
            pz_close(fd);
            free(a);
            continue;
        }
        pz_detach(t);
    }
    return NULL;
}

/* ---- the serve command ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: plaza-weather serve --listen HOST:PORT --db PATH|sqlite:PATH [--workers N] [--wrong-locks]\n"
               "                           [--forecast-ttl-ms 1000] [--refresh-ms 1000] [--lock-timeout-ms 1000]\n"
               "                           [--batch-linger-ms 0] [--lock-lease-ms 5000]\n");
}

static int parse_ms(const char *name, const char *v, int64_t *out_ns)
{
    char *end;
    long long ms = strtoll(v, &end, 10);
    if (*v == 0 || *end || ms < 0 || ms > 86400000LL) {
        fprintf(stderr, "plaza-weather: %s: not a number of milliseconds: %s\n", name, v);
        return -1;
    }
    *out_ns = ms * WX_MS;
    return 0;
}

typedef struct serve_run {
    service *s;
    int result;
} serve_run;

static void *serve_task(void *arg)
{
    serve_run *run = arg;
    service *s = run->s;
    char err[512];
    /* The test hook's delay starts once the service is up (the start
     * reads every city's last reading). */
    wx_store_opts first = {.grow_pages = s->o.store.grow_pages};
    int r = wx_store_open(s->o.db, &first, &s->store, err, sizeof err);
    if (r < 0) {
        fprintf(stderr, "plaza-weather: cannot open the database: %s\n", err);
        run->result = 1;
        return NULL;
    }
    if ((r = wx_store_seed(s->store, wx_wall_ms())) < 0) {
        fprintf(stderr, "plaza-weather: cannot seed the database: %s\n", pz_strerror(r));
        run->result = 1;
        wx_store_close(s->store);
        return NULL;
    }
    s->city_table = calloc(1024, sizeof *s->city_table);
    int n = s->city_table ? wx_store_cities(s->store, s->city_table, 1024) : -ENOMEM;
    if (n <= 0) {
        fprintf(stderr, "plaza-weather: cannot read the cities: %s\n", n == 0 ? "no cities" : pz_strerror(n));
        run->result = 1;
        wx_store_close(s->store);
        return NULL;
    }
    s->cities.v = s->city_table;
    s->cities.n = n;
    s->city = calloc((size_t)n, sizeof *s->city);
    for (int i = 0; i < n; i++) {
        wx_point p;
        int k = wx_store_recent(s->store, s->city_table[i].name, &p, 1);
        s->city[i].cur_temperature = k == 1 ? p.temperature : s->city_table[i].base;
        s->city[i].cur_time_ms = k == 1 ? p.time_ms : 0;
        /* Names for the lock advisor's report (PLAZA_ADVISOR): the lock of
         * each role that this run takes. */
        char name[WX_CITY_NAME_MAX + 16];
        wx_lock *cl = &s->city[i].current_lock, *fl = &s->city[i].forecast_lock;
        snprintf(name, sizeof name, "current/%s", s->city_table[i].name);
        pz_lock_name(s->current_role.is_async ? (const void *)&cl->async : (const void *)&cl->sync, name);
        snprintf(name, sizeof name, "forecast/%s", s->city_table[i].name);
        pz_lock_name(s->forecast_role.is_async ? (const void *)&fl->async : (const void *)&fl->sync, name);
    }
    pz_lock_name(&s->current_stats.lock, "metrics/current");
    pz_lock_name(&s->forecast_stats.lock, "metrics/forecast");
    s->store->opts = s->o.store;
    /* On a database that other replicas may share, the refreshes take the
     * cities' distributed locks. */
    if ((r = wx_replicas_open(s->store, s->o.lock_lease_ns, s->refresh_log_fd, &s->replicas)) < 0) {
        fprintf(stderr, "plaza-weather: cannot open the distributed lock sessions: %s\n", pz_strerror(r));
        run->result = 1;
        wx_store_close(s->store);
        return NULL;
    }

    /* SIGINT/SIGTERM: the first asks for the stop below, a second ends
     * the process at once (plaza's shutdown helper).  Watched before the
     * address is announced, so a signal sent as soon as it is has its
     * effect. */
    int sr = pz_shutdown_listen();
    if (sr < 0)
        fprintf(stderr, "plaza-weather: no signal watcher (%s): SIGINT/SIGTERM will not stop the service gracefully\n",
                pz_strerror(sr));

    /* The address actually bound (port 0 picks a free one). */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    s->lfd = pz_tcp_listen_addr(s->o.listen, (struct sockaddr *)&ss, &sl);
    if (s->lfd < 0) {
        fprintf(stderr, "plaza-weather: cannot listen on %s: %s\n", s->o.listen, pz_strerror(s->lfd));
        run->result = 1;
        wx_store_close(s->store);
        return NULL;
    }
    char host[64] = "?";
    int port = pz_sock_port(s->lfd);
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    } else if (ss.ss_family == AF_INET6) {
        host[0] = '[';
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host + 1, sizeof host - 2);
        strcat(host, "]");
    }
    printf("plaza-weather: listening on %s:%d (%d cities, %s locks, %d workers%s)\n", host, port, n,
           s->o.wrong_locks ? "wrong" : "right", pz_worker_count(),
           s->replicas ? ", forecasts shared by replicas" : "");
    fflush(stdout);

    pz_task_t *wr = pz_spawn(writer, s);
    pz_task_t *rf = pz_spawn(refresher, s);
    pz_task_t *ac = pz_spawn(accept_loop, s);
    if (!wr || !rf || !ac) {
        fprintf(stderr, "plaza-weather: cannot start the service's tasks\n");
        exit(1);
    }

    while (pz_shutdown_wait(PZ_FOREVER) < 0) {
    }
    fprintf(stderr, "plaza-weather: %s: finishing in-flight requests (again to exit at once)\n",
            pz_shutdown_signal() ? strsignal(pz_shutdown_signal()) : "stop requested");

    /* 1. No new connections. */
    pz_cancel(ac);
    pz_join(ac, NULL);
    pz_close(s->lfd);
    /* 2. Every connection ends after the request it is in; the idle ones
     * at once (wait_idle). */
    end_idle_connections(s);
    int64_t give_up = pz_now() + 3 * s->o.request_timeout_ns;
    for (;;) {
        uint64_t e = pz_notify_epoch(&s->conns_changed);
        if (atomic_load(&s->nconns) == 0)
            break;
        if (pz_notify_wait_since(&s->conns_changed, e, give_up) == -ETIMEDOUT) {
            fprintf(stderr, "plaza-weather: %d connection(s) still open at shutdown\n", atomic_load(&s->nconns));
            break;
        }
    }
    /* 3. No more refreshes; 4. the writer commits what is queued. */
    pz_cancel(rf);
    pz_join(rf, NULL);
    pz_chan_close(s->writes);
    pz_join(wr, NULL);
    int64_t rows = -1;
    wx_store_count(s->store, &rows);
    fprintf(stderr, "plaza-weather: stopped: %llu readings acknowledged in %llu commits, %lld rows stored\n",
            (unsigned long long)atomic_load(&s->acked_readings), (unsigned long long)atomic_load(&s->commits),
            (long long)rows);
    wx_replicas_close(s->replicas);
    wx_store_close(s->store);
    run->result = 0;
    return NULL;
}

int wx_serve_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, 0, 'l'},
        {"db", required_argument, 0, 'd'},
        {"workers", required_argument, 0, 'w'},
        {"wrong-locks", no_argument, 0, 'W'},
        {"forecast-ttl-ms", required_argument, 0, 't'},
        {"refresh-ms", required_argument, 0, 'r'},
        {"lock-timeout-ms", required_argument, 0, 'L'},
        {"batch-linger-ms", required_argument, 0, 'b'},
        /* Test options, not in the usage: a slow database for one city
         * (or all), a shorter slow-client timeout, a database that fills
         * up after N more pages. */
        {"db-delay-ms", required_argument, 0, 'D'},
        {"db-delay-city", required_argument, 0, 'C'},
        {"request-timeout-ms", required_argument, 0, 'R'},
        {"db-grow-pages", required_argument, 0, 'G'},
        {"lock-lease-ms", required_argument, 0, 'E'},
        {"refresh-log", required_argument, 0, 'F'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    service *s = calloc(1, sizeof *s);
    if (!s)
        return 1;
    s->o.listen = "127.0.0.1:8080";
    s->o.forecast_ttl_ns = 1000 * WX_MS;
    s->o.refresh_ns = 1000 * WX_MS;
    s->o.lock_timeout_ns = 1000 * WX_MS;
    s->o.request_timeout_ns = 10 * WX_SECOND;
    s->o.idle_timeout_ns = 60 * WX_SECOND;
    s->o.lock_lease_ns = 5 * WX_SECOND;
    s->refresh_log_fd = -1;
    int c;
    int64_t ns;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': s->o.listen = optarg; break;
        case 'd': s->o.db = optarg; break;
        case 'w':
            s->o.workers = atoi(optarg);
            if (s->o.workers < 1 || s->o.workers > 1024) {
                fprintf(stderr, "plaza-weather: --workers: 1 to 1024\n");
                return 2;
            }
            break;
        case 'W': s->o.wrong_locks = true; break;
        case 't': if (parse_ms("--forecast-ttl-ms", optarg, &s->o.forecast_ttl_ns) < 0) return 2; break;
        case 'r': if (parse_ms("--refresh-ms", optarg, &s->o.refresh_ns) < 0) return 2; break;
        case 'L': if (parse_ms("--lock-timeout-ms", optarg, &s->o.lock_timeout_ns) < 0) return 2; break;
        case 'b': if (parse_ms("--batch-linger-ms", optarg, &s->o.linger_ns) < 0) return 2; break;
        case 'R': if (parse_ms("--request-timeout-ms", optarg, &s->o.request_timeout_ns) < 0) return 2; break;
        case 'D':
            if (parse_ms("--db-delay-ms", optarg, &ns) < 0)
                return 2;
            s->o.store.delay_ms = (int)(ns / WX_MS);
            break;
        case 'C': s->o.store.delay_city = optarg; break;
        case 'G': s->o.store.grow_pages = atoi(optarg); break;
        case 'E':
            if (parse_ms("--lock-lease-ms", optarg, &s->o.lock_lease_ns) < 0)
                return 2;
            if (s->o.lock_lease_ns < WX_MS) {
                fprintf(stderr, "plaza-weather: --lock-lease-ms: at least 1\n");
                return 2;
            }
            break;
        case 'F': s->o.refresh_log = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!s->o.db || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (s->o.refresh_ns == 0)
        s->o.refresh_ns = WX_MS;
    if (s->o.refresh_log &&
        (s->refresh_log_fd = open(s->o.refresh_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
        fprintf(stderr, "plaza-weather: --refresh-log %s: %s\n", s->o.refresh_log, strerror(errno));
        return 2;
    }
    s->current_role = (lock_role){s->o.wrong_locks, &s->current_stats};
    s->forecast_role = (lock_role){!s->o.wrong_locks, &s->forecast_stats};
    s->writes = pz_chan_create(sizeof(write_req *), WRITE_QUEUE);
    if (!s->writes)
        return 1;

    signal(SIGPIPE, SIG_IGN);

    serve_run run = {s, 1};
    pz_config_t cfg = {.workers = s->o.workers};
    int r = pz_run(&cfg, serve_task, &run, NULL);
    if (r < 0)
        fprintf(stderr, "plaza-weather: cannot start the runtime: %s\n", pz_strerror(r));
    /* Every task that used them has ended (the service stopped) or was
     * never started. */
    pz_chan_destroy(s->writes);
    if (s->refresh_log_fd >= 0)
        close(s->refresh_log_fd);
    free(s->city);
    free(s->city_table);
    free(s);
    return r < 0 ? 1 : run.result;
}
