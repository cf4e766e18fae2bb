/* Helpers of the PostgreSQL tests (pg_helpers.h). */
#include "pg_helpers.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

/* Reads KEY='value' from a state file of scripts/pg-test-server.sh. */
static int state_value(const char *state, const char *key, char *out, size_t cap)
{
    FILE *f = fopen(state, "r");
    if (!f)
        return -1;
    char line[1024];
    size_t kl = strlen(key);
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) != 0 || line[kl] != '=' || line[kl + 1] != '\'')
            continue;
        char *v = line + kl + 2;
        char *end = strrchr(v, '\'');
        if (!end || (size_t)(end - v) >= cap)
            break;
        memcpy(out, v, (size_t)(end - v));
        out[end - v] = '\0';
        found = 0;
        break;
    }
    fclose(f);
    return found;
}

const char *pg_url(void)
{
    static char url[1024];
    if (url[0])
        return url;
    const char *e = getenv("PLAZA_PG_URL");
    if (e && *e) {
        snprintf(url, sizeof url, "%s", e);
        return url;
    }
    const char *state = getenv("PLAZA_PG_STATE");
    if (state && state_value(state, "PLAZA_PG_URL", url, sizeof url) == 0)
        return url;
    const char *allow = getenv("PLAZA_PG_ALLOW_SKIP");
    fprintf(stderr, "plaza: no PostgreSQL test server (PLAZA_PG_URL unset, no state file %s): "
                    "install postgresql-15 (scripts/install-deps.sh test); pg tests %s\n",
            state ? state : "(PLAZA_PG_STATE unset)", allow && !strcmp(allow, "1") ? "skipped" : "FAIL");
    exit(allow && !strcmp(allow, "1") ? 77 : 1);
}

const char *pg_state(const char *key)
{
    static char v[8][1024];
    static int next;
    const char *state = getenv("PLAZA_PG_STATE");
    if (!state || getenv("PLAZA_PG_URL"))
        return NULL;
    char *out = v[next++ % 8];
    return state_value(state, key, out, sizeof v[0]) == 0 ? out : NULL;
}

static int script(const char *cmd, const char *state)
{
    const char *s = getenv("PLAZA_PG_SCRIPT");
    if (!s)
        s = "scripts/pg-test-server.sh";
    char buf[2048];
    snprintf(buf, sizeof buf, "'%s' %s '%s'", s, cmd, state);
    return system(buf) == 0 ? 0 : -1;
}

int pg_private_start(const char *state, char *url, size_t cap)
{
    if (script("start", state) < 0)
        return -1;
    return state_value(state, "PLAZA_PG_URL", url, cap);
}

int pg_private_restart(const char *state)
{
    return script("restart", state);
}

void pg_private_stop(const char *state)
{
    script("stop", state);
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGresult *admin_exec(const char *url, const char *sql)
{
    PGconn *c = PQconnectdb(url);
    PQsetNoticeProcessor(c, quiet, NULL);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "admin connect: %s", PQerrorMessage(c));
        check_failed("admin connect", __FILE__, __LINE__);
    }
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "admin query %s: %s", sql, PQerrorMessage(c));
        check_failed("admin query", __FILE__, __LINE__);
    }
    PQfinish(c);
    return r;
}

void pg_admin(const char *url, const char *sql)
{
    PQclear(admin_exec(url, sql));
}

long long pg_admin_int(const char *url, const char *sql)
{
    PGresult *r = admin_exec(url, sql);
    long long v = PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}
