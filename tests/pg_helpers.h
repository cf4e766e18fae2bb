/* Helpers of the PostgreSQL tests: the test server and blocking setup
 * queries from the test's own thread (never from a worker). */
#ifndef PZ_TEST_PG_HELPERS_H
#define PZ_TEST_PG_HELPERS_H

#include <stdint.h>

#include "plaza.h"
#include "plaza/pg.h"

/* The conninfo of the test server: $PLAZA_PG_URL, else PLAZA_PG_URL in the
 * state file $PLAZA_PG_STATE that scripts/pg-test-server.sh wrote.  Without
 * one it says why and exits: 77 (skip) if PLAZA_PG_ALLOW_SKIP=1, else 1. */
const char *pg_url(void);

/* Another value of the state file (PLAZA_PG_PORT, PLAZA_PG_TCP_URL), or
 * NULL (also when the URL came from $PLAZA_PG_URL). */
const char *pg_state(const char *key);

/* Starts a private server of the test's own (state file path given),
 * restarts it, stops it; the URL of the one started.  0 or -1. */
int pg_private_start(const char *state, char *url, size_t cap);
int pg_private_restart(const char *state);
void pg_private_stop(const char *state);

/* Runs sql with libpq's blocking API on the calling thread (not a task);
 * aborts the test on an error.  pg_admin_int returns the first value. */
void pg_admin(const char *url, const char *sql);
long long pg_admin_int(const char *url, const char *sql);

/* A deadline `ms` milliseconds from now. */
static inline int64_t in_ms(int64_t ms)
{
    return pz_now() + ms * 1000000;
}

#endif
