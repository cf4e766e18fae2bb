/*
 * Chooses the storage back end from the database's name (storage.h).
 */
#define _GNU_SOURCE
#include "storage.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

double wx_seed_base(int i) { return ((i * 7) % 40) - 5.0; }
double wx_seed_reading(int i, int k) { return wx_seed_base(i) + (((k * 13 + i) % 11) - 5) * 0.1; }

int wx_store_open(const char *url, const wx_store_opts *opts, wx_store **out, char *err, size_t errlen)
{
    if (!url || !*url) {
        snprintf(err, errlen, "no database given");
        return -EINVAL;
    }
    bool pg = strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0;
    if (strncmp(url, "pg:", 3) == 0) {
        pg = true;
        url += 3;
    }
    if (pg) {
#ifdef WX_HAVE_PG
        return wx_pg_open(url, opts, out, err, errlen);
#else
        snprintf(err, errlen, "%s: this build has no PostgreSQL back end (libpq was not found)", url);
        return -EINVAL;
#endif
    }
    if (strncmp(url, "sqlite:", 7) == 0)
        url += 7;
    return wx_sqlite_open(url, opts, out, err, errlen);
}
