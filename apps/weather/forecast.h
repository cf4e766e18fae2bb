/*
 * The forecast of a city: its formula (PROTOCOL.md), and its refresh across
 * the replicas of the service that share one PostgreSQL database.
 *
 * Contract of the refresh across replicas (wx_replicas_refresh): the caller
 * holds the city's local forecast lock (single flight within the process);
 * the call takes the city's distributed lock on one of a few lock sessions,
 * adopts the stored forecast if another replica wrote it recently, or
 * recomputes it and writes it with the lock's fencing token, and unlocks.
 * The storage admits the write only if no higher token has written the
 * city, so a replica whose lock was lost cannot overwrite a newer forecast.
 * docs/weather.md, Replicas, states the guarantees and the lease.
 */
#ifndef WX_FORECAST_H
#define WX_FORECAST_H

#include "storage.h"

#include <stdbool.h>
#include <stdint.h>

/* The forecast from the recent readings pts[0..n) (newest first) and the
 * previous forecast, if any: 0.7 * mean + 0.3 * previous (the mean alone
 * the first time; the previous, or base, without readings), plus the
 * least-squares slope times 10 minutes. */
double wx_forecast_compute(const wx_point *pts, int n, bool have_prev, double prev, double base);

typedef struct wx_replicas wx_replicas;

typedef struct wx_replicas_stats {
    uint64_t acquired; /* distributed holds */
    uint64_t timeouts; /* lock (or lock session) not had by the deadline */
    uint64_t written;  /* forecasts computed and admitted */
    uint64_t adopted;  /* another replica's recent forecast served instead */
    uint64_t refused;  /* writes refused as stale: the lock had been lost */
    uint64_t lost;     /* holds whose lock was found lost at the unlock */
} wx_replicas_stats;

/* Opens the lock sessions on the store's shared database, each with the
 * lease lease_ns (pz_pg_lock_opts_t).  log_fd >= 0: every hold is appended
 * to it (the tests' --refresh-log).  0 with *out set; 0 with *out NULL if
 * the store is not shared (SQLite) or the PostgreSQL component is not
 * built; or a connect error. */
int wx_replicas_open(wx_store *store, int64_t lease_ns, int log_fd, wx_replicas **out);
/* Closes the sessions; nobody may be refreshing.  r may be NULL. */
void wx_replicas_close(wx_replicas *r);

/* Refreshes city (its seed base for a first forecast) across replicas:
 * 0 with *out the forecast to serve; -ETIMEDOUT (no lock by deadline),
 * -ECANCELED, or a storage error.  known_token: the token of the forecast
 * this process already serves (0: none); it is never adopted again, since
 * the caller found it stale.  A stored forecast younger than fresh_ns and
 * written by another holder is adopted (0: always recompute). */
int wx_replicas_refresh(wx_replicas *r, const char *city, double base, uint64_t known_token, int64_t deadline,
                        int64_t fresh_ns, wx_forecast *out);
void wx_replicas_get_stats(wx_replicas *r, wx_replicas_stats *out);

#endif
