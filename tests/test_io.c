/* The I/O layer: many connections echoing checksummed data, deadlines,
 * cancel, peers that close or reset, data that arrives before the wait,
 * two tasks on one descriptor, regular files, plain threads. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "plaza/io.h"


static int listen_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    CHECK_EQ(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- echo with many connections ---- */

static void *echo_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    for (;;) {
        ssize_t n = pz_read(fd, buf, sizeof buf, pz_now() + 30 * SEC);
        if (n <= 0)
            break;
        CHECK_EQ(pz_write_all(fd, buf, (size_t)n, pz_now() + 30 * SEC), n);
    }
    pz_close(fd);
    return NULL;
}

struct server {
    int lfd;
    int expected;
};

static void *echo_server(void *arg)
{
    struct server *s = arg;
    for (int i = 0; i < s->expected; i++) {
        int c = pz_accept(s->lfd, NULL, NULL, pz_now() + 30 * SEC);
        CHECK(c >= 0);
        pz_detach(pz_spawn(echo_conn, (void *)(intptr_t)c));
    }
    return NULL;
}

struct client {
    int port;
    uint64_t seed;
};

static void *echo_client(void *arg)
{
    struct client *c = arg;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", c->port);
    int fd = pz_tcp_dial(addr, pz_now() + 30 * SEC);
    CHECK(fd >= 0);
    size_t total = 8192 + (size_t)(test_rand(&c->seed) % 8192);
    unsigned char *out = malloc(total), *in = malloc(total);
    for (size_t i = 0; i < total; i++)
        out[i] = (unsigned char)test_rand(&c->seed);
    /* Write in random chunks, reading back as we go. */
    size_t sent = 0, got = 0;
    while (got < total) {
        if (sent < total) {
            size_t chunk = 1 + (size_t)(test_rand(&c->seed) % 3000);
            if (chunk > total - sent)
                chunk = total - sent;
            CHECK_EQ(pz_write_all(fd, out + sent, chunk, pz_now() + 30 * SEC), chunk);
            sent += chunk;
        }
        ssize_t n = pz_read(fd, in + got, total - got, pz_now() + 30 * SEC);
        CHECK(n > 0);
        got += (size_t)n;
    }
    CHECK(memcmp(in, out, total) == 0); /* nothing lost or reordered */
    free(in);
    free(out);
    pz_close(fd);
    return (void *)total;
}

static void *many_connections_main(void *arg)
{
    int n = (int)(intptr_t)arg;
    int lfd = pz_tcp_listen("127.0.0.1:0");
    CHECK(lfd >= 0);
    struct server s = {lfd, n};
    pz_task_t *srv = pz_spawn(echo_server, &s);
    struct client *cl = calloc((size_t)n, sizeof *cl);
    pz_task_t **t = calloc((size_t)n, sizeof *t);
    for (int i = 0; i < n; i++) {
        cl[i].port = listen_port(lfd);
        cl[i].seed = (uint64_t)i * 7919 + 1;
        t[i] = pz_spawn(echo_client, &cl[i]);
    }
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        void *r;
        CHECK_EQ(pz_join(t[i], &r), 0);
        bytes += (size_t)r;
    }
    CHECK_EQ(pz_join(srv, NULL), 0);
    pz_close(lfd);
    fprintf(stderr, "%d connections echoed %zu bytes\n", n, bytes);
    free(cl);
    free(t);
    return NULL;
}

static void test_many_connections(void **state)
{
    (void)state;
    run_in_runtime(0, many_connections_main, (void *)(intptr_t)SCALED(1000));
}

/* ---- deadlines ---- */

static void *deadlines_main(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char buf[65536];
    /* read: nothing comes */
    int64_t start = pz_now();
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, start + 20000000), -ETIMEDOUT);
    CHECK(pz_now() - start >= 20000000);
    /* write: fill the socket buffer until it blocks */
    memset(buf, 'x', sizeof buf);
    ssize_t r;
    long written = 0;
    while ((r = pz_write(sv[0], buf, sizeof buf, pz_now() + 20000000)) > 0)
        written += r;
    CHECK_EQ(r, -ETIMEDOUT);
    CHECK(written > 0);
    pz_close(sv[0]);
    pz_close(sv[1]);

    /* accept: nobody connects */
    int lfd = pz_tcp_listen("127.0.0.1:0");
    CHECK(lfd >= 0);
    CHECK_EQ(pz_accept(lfd, NULL, NULL, pz_now() + 20000000), -ETIMEDOUT);
    pz_close(lfd);

    /* connect: a listener whose backlog is full drops SYNs, so connecting
     * hangs until the deadline. */
    int full = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_EQ(bind(full, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(full, 0), 0);
    socklen_t alen = sizeof a;
    getsockname(full, (struct sockaddr *)&a, &alen);
    int fillers[8], nf = 0, timed_out = 0;
    for (int i = 0; i < 8 && !timed_out; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        int rc = pz_connect(c, (struct sockaddr *)&a, sizeof a, pz_now() + 50000000);
        if (rc == -ETIMEDOUT) {
            timed_out = 1;
            pz_close(c);
        } else {
            CHECK_EQ(rc, 0);
            fillers[nf++] = c;
        }
    }
    CHECK(timed_out);
    for (int i = 0; i < nf; i++)
        pz_close(fillers[i]);
    close(full);
    return NULL;
}

static void test_deadlines(void **state)
{
    (void)state;
    run_in_runtime(2, deadlines_main, NULL);
}

/* ---- cancel, close, reset ---- */

static void *blocked_reader(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char b;
    return (void *)(intptr_t)pz_read(fd, &b, 1, PZ_FOREVER);
}

static void *cancel_close_reset_main(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    pz_task_t *t = pz_spawn(blocked_reader, (void *)(intptr_t)sv[0]);
    wait_parked(t);
    pz_cancel(t);
    void *r;
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECANCELED);

    /* The peer closes mid-transfer: the reader gets the data, then EOF. */
    CHECK_EQ(pz_write_all(sv[1], "abc", 3, PZ_FOREVER), 3);
    pz_close(sv[1]);
    char buf[16];
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, pz_now() + SEC), 3);
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, pz_now() + SEC), 0);
    /* Writing to a closed peer is -EPIPE, not SIGPIPE. */
    CHECK_EQ(pz_write(sv[0], "x", 1, pz_now() + SEC), -EPIPE);
    pz_close(sv[0]);

    /* A reset (linger 0) while a task waits in read. */
    int lfd = pz_tcp_listen("127.0.0.1:0");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", listen_port(lfd));
    int c = pz_tcp_dial(addr, pz_now() + SEC);
    CHECK(c >= 0);
    int s = pz_accept(lfd, NULL, NULL, pz_now() + SEC);
    CHECK(s >= 0);
    t = pz_spawn(blocked_reader, (void *)(intptr_t)c);
    wait_parked(t);
    struct linger lg = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    pz_close(s);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -ECONNRESET);
    pz_close(c);

    /* pz_close while another task waits on the descriptor. */
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    t = pz_spawn(blocked_reader, (void *)(intptr_t)sv[0]);
    wait_parked(t);
    pz_close(sv[0]);
    CHECK_EQ(pz_join(t, &r), 0);
    CHECK_EQ((intptr_t)r, -EBADF);
    pz_close(sv[1]);
    pz_close(lfd);
    return NULL;
}

static void test_cancel_close_reset(void **state)
{
    (void)state;
    run_in_runtime(2, cancel_close_reset_main, NULL);
}

/* ---- data before the wait; two tasks on one descriptor ---- */

struct duplex {
    int fd;
    size_t bytes;
};

static void *duplex_writer(void *arg)
{
    struct duplex *d = arg;
    unsigned char buf[4096];
    size_t sent = 0;
    while (sent < d->bytes) {
        size_t n = sizeof buf < d->bytes - sent ? sizeof buf : d->bytes - sent;
        for (size_t i = 0; i < n; i++)
            buf[i] = (unsigned char)(sent + i);
        CHECK_EQ(pz_write_all(d->fd, buf, n, pz_now() + 30 * SEC), n);
        sent += n;
    }
    return NULL;
}

static void *duplex_reader(void *arg)
{
    struct duplex *d = arg;
    unsigned char buf[4096];
    size_t got = 0;
    while (got < d->bytes) {
        ssize_t n = pz_read(d->fd, buf, sizeof buf, pz_now() + 30 * SEC);
        CHECK(n > 0);
        for (ssize_t i = 0; i < n; i++)
            CHECK_EQ(buf[i], (unsigned char)(got + (size_t)i));
        got += (size_t)n;
    }
    return NULL;
}

static void *duplex_main(void *arg)
{
    (void)arg;
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* Data that arrives before anyone waits. */
    CHECK_EQ(write(sv[1], "early", 5), 5);
    pz_sleep(2000000);
    char buf[8];
    int64_t start = pz_now();
    CHECK_EQ(pz_read(sv[0], buf, sizeof buf, pz_now() + SEC), 5);
    CHECK(pz_now() - start < SEC / 2);
    CHECK_EQ(pz_wait_fd(sv[0], PZ_WRITABLE, pz_now() + SEC), PZ_WRITABLE);

    /* One task reads sv[0] while another writes it; the far end echoes. */
    size_t bytes = (size_t)SCALED(4 << 20);
    struct duplex w = {sv[0], bytes}, r = {sv[0], bytes};
    pz_task_t *echo = pz_spawn(echo_conn, (void *)(intptr_t)sv[1]);
    pz_task_t *tw = pz_spawn(duplex_writer, &w);
    pz_task_t *tr = pz_spawn(duplex_reader, &r);
    CHECK_EQ(pz_join(tw, NULL), 0);
    CHECK_EQ(pz_join(tr, NULL), 0);
    shutdown(sv[0], SHUT_WR);
    CHECK_EQ(pz_join(echo, NULL), 0);
    pz_close(sv[0]);
    return NULL;
}

static void test_duplex_and_early_data(void **state)
{
    (void)state;
    run_in_runtime(2, duplex_main, NULL);
}

/* ---- regular files, plain threads, bad input ---- */

static void *file_main(void *arg)
{
    (void)arg;
    char path[] = "/tmp/plaza-io-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    unlink(path);
    CHECK_EQ(pz_write_all(fd, "hello file", 10, pz_now() + SEC), 10);
    CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
    char buf[16];
    CHECK_EQ(pz_read(fd, buf, sizeof buf, pz_now() + SEC), 10);
    CHECK(memcmp(buf, "hello file", 10) == 0);
    pz_close(fd);
    CHECK_EQ(pz_read(-1, buf, 1, PZ_FOREVER), -EBADF);
    CHECK_EQ(pz_wait_fd(0, 0, PZ_FOREVER), -EINVAL);
    capture_stderr_begin();
    int r = pz_tcp_listen("no-port-here");
    const char *msg = capture_stderr_end();
    CHECK_EQ(r, -EINVAL);
    CHECK(strstr(msg, "cannot parse address") != NULL);
    int l6 = pz_tcp_listen("[::1]:0");
    if (l6 >= 0) { /* IPv6 loopback present */
        char addr[64];
        snprintf(addr, sizeof addr, "[::1]:%d", listen_port(l6));
        int c = pz_tcp_dial(addr, pz_now() + SEC);
        CHECK(c >= 0);
        int s = pz_accept(l6, NULL, NULL, pz_now() + SEC);
        CHECK(s >= 0);
        pz_close(c);
        pz_close(s);
        pz_close(l6);
    }
    return NULL;
}

static void test_files_and_errors(void **state)
{
    (void)state;
    run_in_runtime(2, file_main, NULL);
}

static void test_plain_thread(void **state)
{
    (void)state;
    /* No runtime: the calls block the thread. */
    int sv[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char b[4];
    CHECK_EQ(pz_read(sv[0], b, sizeof b, pz_now() + 10000000), -ETIMEDOUT);
    CHECK_EQ(pz_write(sv[1], "ok", 2, PZ_FOREVER), 2);
    CHECK_EQ(pz_read(sv[0], b, sizeof b, PZ_FOREVER), 2);
    pz_close(sv[0]);
    pz_close(sv[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_thread),
        cmocka_unit_test(test_files_and_errors),
        cmocka_unit_test(test_duplex_and_early_data),
        cmocka_unit_test(test_cancel_close_reset),
        cmocka_unit_test(test_deadlines),
        cmocka_unit_test(test_many_connections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
