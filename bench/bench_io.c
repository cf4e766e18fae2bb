/* I/O workloads: a TCP echo server and a closed-loop echo client over
 * loopback.  The client measures plaza's own server (port=0, same runtime)
 * or any external server (port=N), so the peers' echo servers are driven by
 * the very same client code and their figures differ only by the server.
 *
 *   echo_server port=N workers=2 seconds=S
 *   echo conns=N workers=2 size=64 seconds=3 port=0
 *
 * The server= field of the client's param names the server: "plaza" for
 * port=0, else the value of the ECHO_SERVER environment variable (bench-plaza
 * takes only numeric keys, so a name cannot come on the command line), else
 * "external". */
#define _GNU_SOURCE
#include "bench.h"
#include "hist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ECHO_BUF 4096
#define NS_PER_S 1000000000LL
/* Connection tasks keep a 4 KiB buffer and a few frames; 64 KiB leaves a
 * wide margin and keeps 2000 tasks (1000 connections, both ends in one
 * process) far from the default's 512 MiB of reserved stacks. */
#define CONN_STACK (64 * 1024)

/* ---- the server ---- */

static void set_nodelay(int fd)
{
    /* Each reply goes out as soon as it is read back: the peers' servers
     * (tokio with set_nodelay, Go by default) do the same, so none of them
     * is measured with Nagle's algorithm holding a reply back. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct server {
    int lfd;
    int64_t deadline; /* for every wait of the server's tasks */
    _Atomic long accepted;
};

struct server_conn {
    int fd;
    int64_t deadline;
};

static void *server_conn_main(void *arg)
{
    struct server_conn c = *(struct server_conn *)arg;
    free(arg);
    char buf[ECHO_BUF];
    for (;;) {
        ssize_t n = pz_read(c.fd, buf, sizeof buf, c.deadline);
        if (n <= 0) /* end of stream, deadline or error: the connection ends */
            break;
        if (pz_write_all(c.fd, buf, (size_t)n, c.deadline) != n)
            break;
    }
    pz_close(c.fd);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct server *s = arg;
    pz_spawn_opts_t opts = {.stack_size = CONN_STACK, .name = "echo-conn"};
    for (;;) {
        int fd = pz_accept(s->lfd, NULL, NULL, s->deadline);
        if (fd == -ECONNABORTED || fd == -EMFILE || fd == -ENFILE) {
            /* The listener still works: a connection reset before it was
             * accepted, or a momentary lack of descriptors, only loses one. */
            if (fd != -ECONNABORTED)
                fprintf(stderr, "echo_server: accept: %s\n", pz_strerror(fd));
            continue;
        }
        if (fd < 0)
            break; /* deadline, cancellation or a closed listener: stop */
        set_nodelay(fd);
        struct server_conn *c = malloc(sizeof *c);
        bench_check(c != NULL, "malloc");
        c->fd = fd;
        c->deadline = s->deadline;
        pz_task_t *t = pz_spawn_with(server_conn_main, c, &opts);
        if (!t) {
            free(c);
            pz_close(fd);
            continue;
        }
        pz_detach(t);
        atomic_fetch_add(&s->accepted, 1);
    }
    return NULL;
}

/* Listens on 127.0.0.1:port (0: an ephemeral port) and returns the port. */
static int server_listen(struct server *s, int port)
{
    char hp[32];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    s->lfd = pz_tcp_listen(hp);
    if (s->lfd < 0) {
        fprintf(stderr, "echo: listen on %s: %s\n", hp, pz_strerror(s->lfd));
        exit(2);
    }
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    bench_check(getsockname(s->lfd, (struct sockaddr *)&sa, &len) == 0, "getsockname");
    return ntohs(sa.sin_port);
}

struct echo_server_cfg {
    int port;
    long seconds;
    long accepted;
};

static void *echo_server_main(void *arg)
{
    struct echo_server_cfg *cfg = arg;
    struct server s = {.deadline = pz_now() + cfg->seconds * NS_PER_S};
    int port = server_listen(&s, cfg->port);
    fprintf(stderr, "echo_server: listening on 127.0.0.1:%d for %ld s\n", port, cfg->seconds);
    pz_task_t *acc = pz_spawn(accept_main, &s);
    bench_check(acc != NULL, "spawn accept loop");
    /* The accept loop and every connection share the deadline, so all of
     * them are done (or about to be) when this join returns. */
    bench_check(pz_join(acc, NULL) == 0, "join accept loop");
    pz_close(s.lfd);
    cfg->accepted = atomic_load(&s.accepted);
    return NULL;
}

static void run_echo_server(const bench_args *a)
{
    /* A server only makes sense with a client that knows its port, and
     * `bench-plaza all` (no keys) would just idle for `seconds`: without
     * port= there is nothing to run. */
    if (arg_get(a, "port", -1) < 0) {
        fprintf(stderr, "echo_server: needs port=N (0: any free port); skipped\n");
        return;
    }
    struct echo_server_cfg cfg = {(int)arg_get(a, "port", 0), arg_get(a, "seconds", 10), 0};
    int workers = (int)arg_get(a, "workers", 2);
    bench_check(cfg.port >= 0 && cfg.port < 65536, "port in 0..65535");
    run_with_workers(workers, echo_server_main, &cfg);
    char param[64];
    snprintf(param, sizeof param, "workers=%d", workers);
    emit("echo_server", param, "connections", (double)cfg.accepted);
}

/* ---- the client ---- */

struct client;

struct client_conn {
    struct client *cl;
    int index;
    long round_trips;
    int err;          /* 0, or the first error (negative errno) */
    const char *what; /* the call that failed */
    hist h;
};

struct client {
    int port;
    int conns;
    long size;
    long seconds;
    _Atomic int ready;  /* connections dialled (or failed) */
    _Atomic int go;     /* set once every connection is ready */
    _Atomic int64_t end; /* when the loops stop issuing round trips */
    int64_t io_deadline; /* bounds every wait, so a stuck server cannot hang us */
    struct client_conn *c;
    double elapsed_s;
};

/* Fills buf with n bytes of a pattern that depends on the connection and the
 * round trip (so a stale or misrouted reply cannot pass), and returns its
 * checksum. */
static uint64_t fill_pattern(unsigned char *buf, long n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1, sum = 0xcbf29ce484222325ULL;
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x;
        sum = (sum ^ buf[i]) * 0x100000001b3ULL; /* FNV-1a */
    }
    return sum;
}

static uint64_t checksum(const unsigned char *buf, long n)
{
    uint64_t sum = 0xcbf29ce484222325ULL;
    for (long i = 0; i < n; i++)
        sum = (sum ^ buf[i]) * 0x100000001b3ULL;
    return sum;
}

static void *client_conn_main(void *arg)
{
    struct client_conn *c = arg;
    struct client *cl = c->cl;
    char hp[32];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", cl->port);
    int fd = pz_tcp_dial(hp, cl->io_deadline);
    atomic_fetch_add(&cl->ready, 1);
    if (fd < 0) {
        c->err = fd;
        c->what = "dial";
        return NULL;
    }
    /* Everyone starts together, so each connection's loop covers the whole
     * measured interval.  Polling is fine: it lasts only while dialling. */
    while (!atomic_load(&cl->go))
        pz_sleep(1000000);
    unsigned char *out = malloc((size_t)cl->size), *in = malloc((size_t)cl->size);
    bench_check(out && in, "malloc");
    int64_t end = atomic_load(&cl->end);
    uint64_t seq = 0;
    for (int64_t t0 = pz_now(); t0 < end; seq++) {
        uint64_t sum = fill_pattern(out, cl->size, ((uint64_t)c->index << 32) ^ seq);
        ssize_t r = pz_write_all(fd, out, (size_t)cl->size, cl->io_deadline);
        if (r != cl->size) {
            c->err = r < 0 ? (int)r : -EIO;
            c->what = "write";
            break;
        }
        long got = 0;
        while (got < cl->size) {
            r = pz_read(fd, in + got, (size_t)(cl->size - got), cl->io_deadline);
            if (r <= 0) {
                c->err = r < 0 ? (int)r : -ECONNRESET; /* 0: the server hung up */
                c->what = "read";
                break;
            }
            got += r;
        }
        if (c->err)
            break;
        int64_t t1 = pz_now();
        if (checksum(in, cl->size) != sum) {
            c->err = -EBADMSG;
            c->what = "verify";
            break;
        }
        hist_add(&c->h, (uint64_t)(t1 - t0));
        c->round_trips++;
        t0 = t1;
    }
    free(out);
    free(in);
    pz_close(fd);
    return NULL;
}

static void *echo_main(void *arg)
{
    struct client *cl = arg;
    struct server s = {.deadline = PZ_FOREVER};
    pz_task_t *acc = NULL;
    if (cl->port == 0) {
        cl->port = server_listen(&s, 0);
        acc = pz_spawn(accept_main, &s);
        bench_check(acc != NULL, "spawn accept loop");
    }
    /* Dialling 1000 connections can take a while on a loaded machine; the
     * bound is generous but finite. */
    cl->io_deadline = pz_now() + (cl->seconds + 30) * NS_PER_S;
    pz_spawn_opts_t opts = {.stack_size = CONN_STACK, .name = "echo-client"};
    pz_task_t **t = calloc((size_t)cl->conns, sizeof *t);
    bench_check(t != NULL, "calloc");
    for (int i = 0; i < cl->conns; i++) {
        t[i] = pz_spawn_with(client_conn_main, &cl->c[i], &opts);
        bench_check(t[i] != NULL, "spawn client connection");
    }
    while (atomic_load(&cl->ready) < cl->conns)
        pz_sleep(1000000);
    int64_t start = pz_now();
    atomic_store(&cl->end, start + cl->seconds * NS_PER_S);
    atomic_store(&cl->go, 1);
    for (int i = 0; i < cl->conns; i++)
        bench_check(pz_join(t[i], NULL) == 0, "join client connection");
    /* Round trips started before the end are counted, so the interval runs
     * until the last of them came back. */
    cl->elapsed_s = (double)(pz_now() - start) / 1e9;
    free(t);
    if (acc) {
        pz_cancel(acc);
        pz_join(acc, NULL);
        pz_close(s.lfd);
    }
    return NULL;
}

static void run_echo(const bench_args *a)
{
    struct client cl = {
        .port = (int)arg_get(a, "port", 0),
        .conns = (int)arg_get(a, "conns", 64),
        .size = arg_get(a, "size", 64),
        .seconds = arg_get(a, "seconds", 3),
    };
    int workers = (int)arg_get(a, "workers", 2);
    bench_check(cl.conns > 0 && cl.conns <= 100000, "conns in 1..100000");
    bench_check(cl.size > 0 && cl.size <= (1L << 24), "size in 1..16 MiB");
    bench_check(cl.port >= 0 && cl.port < 65536, "port in 0..65535");
    const char *server = "plaza";
    if (cl.port != 0) {
        server = getenv("ECHO_SERVER");
        if (!server || !*server)
            server = "external";
    }
    cl.c = calloc((size_t)cl.conns, sizeof *cl.c);
    bench_check(cl.c != NULL, "calloc connections");
    for (int i = 0; i < cl.conns; i++) {
        cl.c[i].cl = &cl;
        cl.c[i].index = i;
    }
    run_with_workers(workers, echo_main, &cl);

    /* Merge the per-connection histograms (one per connection: no sharing
     * between workers while measuring) and report the first failures. */
    hist *all = calloc(1, sizeof *all);
    bench_check(all != NULL, "calloc");
    uint64_t total = 0;
    int failed = 0;
    for (int i = 0; i < cl.conns; i++) {
        struct client_conn *c = &cl.c[i];
        hist_merge(all, &c->h);
        total += (uint64_t)c->round_trips;
        if (c->err) {
            if (failed < 5)
                fprintf(stderr, "echo: connection %d: %s: %s (after %ld round trips)\n", i,
                        c->what, pz_strerror(c->err), c->round_trips);
            failed++;
        }
    }
    if (failed) {
        fprintf(stderr, "echo: %d of %d connections failed (server=%s port=%d)\n", failed,
                cl.conns, server, cl.port);
        exit(2);
    }
    bench_check(total > 0, "at least one round trip");
    char param[96];
    snprintf(param, sizeof param, "conns=%d size=%ld server=%s", cl.conns, cl.size, server);
    emit("echo", param, "rps", (double)total / cl.elapsed_s);
    emit("echo", param, "p50_us", hist_permille(all, 500) / 1000.0);
    emit("echo", param, "p99_us", hist_permille(all, 990) / 1000.0);
    emit("echo", param, "p999_us", hist_permille(all, 999) / 1000.0);
    free(all);
    free(cl.c);
}

const workload io_workloads[] = {
    {"echo_server", "port workers seconds", run_echo_server},
    {"echo", "conns workers size seconds port", run_echo},
    {NULL, NULL, NULL},
};
