#define _DEFAULT_SOURCE
/*
 * A small line-based key-value service, built from the service kit
 * (docs/service.md): a task group of connections, lock guards, select on
 * the shutdown notification and a channel or the listening socket,
 * buffered lines with a limit, cancel shields for cleanup, and graceful
 * shutdown on SIGINT/SIGTERM (a second one kills the process).
 *
 *   service [host:port]        default 127.0.0.1:7008; port 0 picks one
 *
 * Prints "listening on PORT" when ready.  Commands, one per line:
 *   PING              -> PONG
 *   SET key value     -> OK
 *   GET key           -> VALUE value | NONE
 *   STATS             -> STATS connections requests
 *   QUIT              -> BYE, and the connection closes
 * A line over 1024 bytes gets "ERR line too long" and the connection
 * closes.  On the first SIGINT/SIGTERM it stops accepting, tells every
 * open connection BYE, waits for them and exits with status 0.
 */
#include <plaza.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SECOND 1000000000LL
#define LINE_MAX_BYTES 1024
#define SLOTS 256

/* The table: logic critical sections are short here, but a real service
 * would fetch from a database while holding it, so it is an async lock. */
static pz_async_rwlock_t table_lock = PZ_ASYNC_RWLOCK_INIT;
static struct {
    char key[64], value[256];
} table[SLOTS];

/* Counters: a data critical section, a sync lock. */
static pz_mutex_t stats_lock;
static long connections, requests;

/* Every request reports here; one task counts. */
enum { EV_CONNECTED, EV_REQUEST };
static pz_chan_t *events;

static size_t slot_of(const char *key)
{
    size_t h = 5381;
    for (const char *p = key; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return h % SLOTS;
}

/* Handles one command line; returns false when the connection ends. */
static bool command(pz_writer_t *w, char *line, int64_t deadline)
{
    char *save = NULL, *cmd = strtok_r(line, " \r\n", &save);
    if (!cmd)
        return true;
    if (strcmp(cmd, "PING") == 0) {
        pz_writer_printf(w, deadline, "PONG\n");
    } else if (strcmp(cmd, "SET") == 0) {
        char *key = strtok_r(NULL, " \r\n", &save), *value = strtok_r(NULL, "\r\n", &save);
        if (!key || !value || strlen(key) >= 64 || strlen(value) >= 256) {
            pz_writer_printf(w, deadline, "ERR usage: SET key value\n");
            return true;
        }
        PZ_GUARD(pz_async_rwlock_write, g, &table_lock);
        if (g.err)
            return false; /* cancelled: shutting down */
        size_t s = slot_of(key);
        strcpy(table[s].key, key);
        strcpy(table[s].value, value);
        pz_writer_printf(w, deadline, "OK\n");
    } else if (strcmp(cmd, "GET") == 0) {
        char *key = strtok_r(NULL, " \r\n", &save);
        if (!key) {
            pz_writer_printf(w, deadline, "ERR usage: GET key\n");
            return true;
        }
        PZ_GUARD(pz_async_rwlock_read, g, &table_lock);
        if (g.err)
            return false;
        size_t s = slot_of(key);
        if (strcmp(table[s].key, key) == 0)
            pz_writer_printf(w, deadline, "VALUE %s\n", table[s].value);
        else
            pz_writer_printf(w, deadline, "NONE\n");
    } else if (strcmp(cmd, "STATS") == 0) {
        long c, r;
        {
            PZ_GUARD(pz_mutex, g, &stats_lock);
            c = connections;
            r = requests;
        }
        pz_writer_printf(w, deadline, "STATS %ld %ld\n", c, r);
    } else if (strcmp(cmd, "QUIT") == 0) {
        pz_writer_printf(w, deadline, "BYE\n");
        return false;
    } else {
        pz_writer_printf(w, deadline, "ERR unknown command\n");
    }
    return true;
}

static int serve_connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    unsigned char rbuf[LINE_MAX_BYTES + 1024], wbuf[4096];
    pz_reader_t r;
    pz_writer_t w;
    pz_reader_init(&r, fd, rbuf, sizeof rbuf);
    pz_writer_init(&w, fd, wbuf, sizeof wbuf);
    int ev = EV_CONNECTED;
    pz_chan_send(events, &ev);
    int result = 0;
    for (;;) {
        const char *line;
        int64_t deadline = pz_now() + 60 * SECOND; /* idle connections go after a minute */
        ssize_t n = pz_reader_line(&r, &line, LINE_MAX_BYTES, deadline);
        if (n == -EMSGSIZE) {
            pz_writer_printf(&w, deadline, "ERR line too long\n");
            pz_writer_flush(&w, deadline);
            /* A lingering close: closing with the rest of the long line
             * unread would reset the connection, and the client could
             * lose the answer.  Say we are done, then read and drop what
             * comes until the client closes (1 s at most). */
            shutdown(fd, SHUT_WR);
            const void *junk;
            int64_t linger = pz_now() + SECOND;
            ssize_t k;
            while ((k = pz_reader_peek(&r, &junk, 1, linger)) > 0)
                pz_reader_consume(&r, (size_t)k);
            break;
        }
        if (n <= 0) {
            result = (int)n;
            break;
        }
        char copy[LINE_MAX_BYTES + 1];
        memcpy(copy, line, (size_t)n);
        copy[n] = '\0';
        bool more = command(&w, copy, deadline);
        ev = EV_REQUEST;
        pz_chan_send(events, &ev);
        if (pz_writer_flush(&w, deadline) < 0 || !more)
            break;
    }
    /* Cleanup waits (a flush), even when the service is stopping and this
     * task has been cancelled: shielded, and bounded by a deadline. */
    pz_shield_begin();
    if (pz_cancelled())
        pz_writer_printf(&w, pz_now() + SECOND, "BYE\n");
    pz_writer_flush(&w, pz_now() + SECOND);
    pz_shield_end();
    pz_close(fd);
    return result == -ECANCELED || result == 0 ? 0 : result;
}

/* Counts the events until the group is cancelled. */
static int count_events(void *arg)
{
    (void)arg;
    for (;;) {
        int ev;
        pz_sel_t c[] = {PZ_SEL_RECV(events, &ev)};
        if (pz_select(c, 1, PZ_FOREVER) < 0 || c[0].result < 0)
            return 0;
        PZ_GUARD(pz_mutex, g, &stats_lock);
        if (ev == EV_CONNECTED)
            connections++;
        else
            requests++;
    }
}

static void *app(void *arg)
{
    const char *addr = arg;
    pz_shutdown_listen();
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int lfd = pz_tcp_listen_addr(addr, (struct sockaddr *)&ss, &len);
    if (lfd < 0) {
        fprintf(stderr, "service: cannot listen on %s: %s\n", addr, pz_strerror(lfd));
        return (void *)1;
    }
    events = pz_chan_create(sizeof(int), 64);
    printf("listening on %d\n", pz_sock_port(lfd));
    fflush(stdout);

    pz_group_t *g = pz_group_new(0);
    pz_group_spawn_with(g, count_events, NULL, &(pz_spawn_opts_t){.name = "stats"});
    uint64_t stop = pz_notify_epoch(pz_shutdown_notify());
    int k = 0;
    while (!pz_shutdown_requested()) {
        pz_sel_t c[] = {PZ_SEL_FD(lfd, PZ_READABLE), PZ_SEL_NOTIFY(pz_shutdown_notify(), stop)};
        k = pz_select(c, 2, PZ_FOREVER);
        if (k < 0)
            fprintf(stderr, "service: select failed: %s\n", pz_strerror(k));
        if (k != 0)
            break;
        int fd = pz_accept(lfd, NULL, NULL, pz_now()); /* ready: does not wait */
        if (fd >= 0 && pz_group_spawn(g, serve_connection, (void *)(intptr_t)fd) < 0)
            pz_close(fd);
    }
    pz_close(lfd);
    int sig = pz_shutdown_signal();
    fprintf(stderr, "service: stopping (%s)\n", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "requested");
    pz_group_cancel(g);
    int err = pz_group_wait(g);
    printf("stopped: %ld connections, %ld requests%s%s\n", connections, requests, err ? ", error: " : "",
           err ? pz_strerror(err) : "");
    fflush(stdout);
    pz_chan_destroy(events);
    return NULL;
}

int main(int argc, char **argv)
{
    void *result = NULL;
    if (pz_run(NULL, app, argc > 1 ? argv[1] : "127.0.0.1:7008", &result) != 0)
        return 1;
    return result ? 1 : 0;
}
