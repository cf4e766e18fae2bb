/* A sink for plaza's reports (pz_set_report(report_collect, NULL)): every
 * line is kept in one buffer, under a lock since reports come from any
 * thread (the monitor, workers, spare threads), and echoed to stderr. */
#ifndef PLAZA_TEST_REPORT_SINK_H
#define PLAZA_TEST_REPORT_SINK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;
static char sink[1 << 16];
static size_t sink_len;

static inline void collect(const char *line, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&sink_lock);
    size_t n = strlen(line);
    if (sink_len + n + 2 < sizeof sink) {
        memcpy(sink + sink_len, line, n);
        sink[sink_len + n] = '\n';
        sink_len += n + 1;
        sink[sink_len] = '\0';
    }
    pthread_mutex_unlock(&sink_lock);
    fprintf(stderr, "report: %s\n", line);
}

static inline void sink_reset(void)
{
    pthread_mutex_lock(&sink_lock);
    sink_len = 0;
    sink[0] = '\0';
    pthread_mutex_unlock(&sink_lock);
}

/* How many times `what` occurs in the reports so far. */
static inline int sink_count(const char *what)
{
    pthread_mutex_lock(&sink_lock);
    int n = 0;
    for (const char *p = sink; (p = strstr(p, what)); p += strlen(what))
        n++;
    pthread_mutex_unlock(&sink_lock);
    return n;
}

static inline bool sink_has(const char *what)
{
    return sink_count(what) > 0;
}

#endif
