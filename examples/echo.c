#define _DEFAULT_SOURCE
/*
 * An echo server and client to copy from.
 *
 *   echo server [host:port]            serve until killed (default 127.0.0.1:7007)
 *   echo client [host:port] [conns]    run conns clients for 2 seconds
 *   echo                               both, in one process, on a free port
 *
 * Each connection is one task; its reads and writes suspend only that task.
 */
#include <plaza.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#define SECOND 1000000000LL

static void *serve_connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    for (;;) {
        /* An idle client is dropped after 30 s. */
        ssize_t n = pz_read(fd, buf, sizeof buf, pz_now() + 30 * SECOND);
        if (n <= 0 || pz_write_all(fd, buf, (size_t)n, pz_now() + 30 * SECOND) < 0)
            break;
    }
    pz_close(fd);
    return NULL;
}

static void *server(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int fd = pz_accept(lfd, NULL, NULL, PZ_FOREVER);
        if (fd == -ECANCELED)
            break;
        if (fd < 0) {
            fprintf(stderr, "accept: %s\n", pz_strerror(fd));
            continue;
        }
        pz_detach(pz_spawn(serve_connection, (void *)(intptr_t)fd));
    }
    return NULL;
}

struct client_arg {
    const char *addr;
    int64_t until;
    long round_trips;
};

static void *client(void *arg)
{
    struct client_arg *c = arg;
    int fd = pz_tcp_dial(c->addr, pz_now() + 5 * SECOND);
    if (fd < 0) {
        fprintf(stderr, "dial %s: %s\n", c->addr, pz_strerror(fd));
        return NULL;
    }
    char out[64], in[64];
    memset(out, 'p', sizeof out);
    while (pz_now() < c->until) {
        if (pz_write_all(fd, out, sizeof out, pz_now() + SECOND) < 0)
            break;
        size_t got = 0;
        while (got < sizeof in) {
            ssize_t n = pz_read(fd, in + got, sizeof in - got, pz_now() + SECOND);
            if (n <= 0)
                goto done;
            got += (size_t)n;
        }
        if (memcmp(in, out, sizeof in) != 0) {
            fprintf(stderr, "echo mismatch\n");
            break;
        }
        c->round_trips++;
    }
done:
    pz_close(fd);
    return NULL;
}

struct run {
    const char *mode;
    const char *addr;
    int conns;
};

static void *app(void *arg)
{
    struct run *r = arg;
    char addr[64];
    pz_task_t *srv = NULL;
    if (strcmp(r->mode, "client") != 0) {
        int lfd = pz_tcp_listen(strcmp(r->mode, "server") == 0 ? r->addr : "127.0.0.1:0");
        if (lfd < 0) {
            fprintf(stderr, "listen: %s\n", pz_strerror(lfd));
            return (void *)1;
        }
        struct sockaddr_in sa;
        socklen_t len = sizeof sa;
        getsockname(lfd, (struct sockaddr *)&sa, &len);
        snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));
        r->addr = strcmp(r->mode, "server") == 0 ? r->addr : addr;
        printf("echo: serving on %s\n", r->addr);
        srv = pz_spawn(server, (void *)(intptr_t)lfd);
        if (strcmp(r->mode, "server") == 0)
            return pz_join(srv, NULL) == 0 ? NULL : (void *)1;
    }
    struct client_arg *c = calloc((size_t)r->conns, sizeof *c);
    pz_task_t **t = calloc((size_t)r->conns, sizeof *t);
    int64_t until = pz_now() + 2 * SECOND;
    for (int i = 0; i < r->conns; i++) {
        c[i] = (struct client_arg){r->addr, until, 0};
        t[i] = pz_spawn(client, &c[i]);
    }
    long total = 0;
    for (int i = 0; i < r->conns; i++) {
        pz_join(t[i], NULL);
        total += c[i].round_trips;
    }
    printf("echo: %d connections, %ld round trips of 64 bytes in 2 s (%.0f per second)\n", r->conns, total,
           total / 2.0);
    free(c);
    free(t);
    if (srv) {
        pz_cancel(srv);
        pz_join(srv, NULL);
    }
    return total > 0 ? NULL : (void *)1;
}

int main(int argc, char **argv)
{
    struct run r = {argc > 1 ? argv[1] : "both", argc > 2 ? argv[2] : "127.0.0.1:7007",
                    argc > 3 ? atoi(argv[3]) : 64};
    if (strcmp(r.mode, "server") && strcmp(r.mode, "client") && strcmp(r.mode, "both")) {
        fprintf(stderr, "usage: echo [server|client|both] [host:port] [connections]\n");
        return 2;
    }
    if (r.conns <= 0)
        r.conns = 1;
    void *failed = NULL;
    int e = pz_run(NULL, app, &r, &failed);
    if (e) {
        fprintf(stderr, "pz_run: %s\n", pz_strerror(e));
        return 1;
    }
    return failed ? 1 : 0;
}
