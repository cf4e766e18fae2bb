/*
 * The advisor: watches every plaza lock at run time and says, for each,
 * whether its critical section is data critical (short, never waits: a
 * sync lock, pz_mutex, is right) or logic critical (waits on I/O or on
 * other tasks inside: an async lock, pz_async_mutex, is right), with the
 * evidence in numbers.  docs/advisor.md explains the report.
 *
 * Off by default, and then each lock's fast path costs one predictable
 * branch.  On with the environment variable PLAZA_ADVISOR at start-up:
 *   PLAZA_ADVISOR=1 (or text)   the text report on stderr at exit
 *   PLAZA_ADVISOR=json:PATH     the JSON report written to PATH at exit
 * PLAZA_ADVISOR_SAMPLE=N times about one hold in N (a power of two,
 * default 1024; random gaps of mean N) after the first 256 acquisitions of
 * each thread at each call site, which are all timed, and every hold of a
 * lock whose holds last 20 us or more on average; every acquisition is
 * counted and every wait that took time (contended, or given up at a
 * deadline or cancel) timed whatever N.
 * PLAZA_ADVISOR_HTTP=ADDR:PORT serves the report live (pz_advisor_http_port).
 */
#ifndef PLAZA_ADVISOR_H
#define PLAZA_ADVISOR_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PZ_ADVISOR_TEXT 0
#define PZ_ADVISOR_JSON 1

/* Turns the advisor on, as PLAZA_ADVISOR would: spec is "1", "text" or
 * "json:PATH" (the report written at exit), or "" (on, no report at exit).
 * Call it before the locks to watch are first taken (a hold already in
 * progress is not timed).  Returns 0, or -EINVAL for a spec it does not
 * understand. */
int pz_advisor_enable(const char *spec);
/* Stops observing (the statistics gathered so far stay). */
void pz_advisor_disable(void);
/* Writes the report of every lock seen so far, as text or JSON.  Returns
 * 0, -EINVAL for an unknown format or a NULL stream, or -EIO. */
int pz_advisor_report(FILE *out, int format);
/* Gives a lock (any plaza lock's address) a name for the reports; the
 * name is copied.  Returns 0, -EINVAL for NULL, -ENOMEM, or -ENOSPC when
 * the advisor's table of locks is full. */
int pz_lock_name(const void *lock, const char *name);
/* The TCP port of the live page (PLAZA_ADVISOR_HTTP=ADDR:PORT, read when
 * the advisor is switched on; its task starts with pz_run), or 0 until it
 * listens.  GET / is the report as an HTML page that refreshes itself,
 * GET /advisor.json the JSON report. */
int pz_advisor_http_port(void);

#ifdef __cplusplus
}
#endif
#endif
