/*
 * Writers blocked on a full buffer, and the poller's interest in
 * writability (src/runtime/driver.c): a descriptor is registered for
 * reading alone, a write that finds it not writable asks the poller to
 * watch writability, and the first writability event that finds no writer
 * waiting stops the watch.
 *
 * - A writer blocked on a full buffer (TCP, a local socket pair, a pipe)
 *   is woken when the peer, a plain thread the runtime knows nothing of,
 *   drains it; while it waits the watch is on and WRITE is clear; once it
 *   is done, an event with nobody waiting to write drops the watch.
 * - Request/response traffic never fills a send buffer: neither end of an
 *   echo connection ever changes its registration (the accepted end is
 *   never watched; the dialled one is registered watching for its connect
 *   and changes once, back to reading alone).
 * - Many connections, each a writer task and a reader task that lets its
 *   writer block before it reads, writing through every kind of write wait
 *   (pz_write, pz_writev, pz_wait_fd for writing or for either, pz_select),
 *   with random cancels of writers and readers (a cancelled reader closes
 *   its end under its writer): every byte read is the right byte, an
 *   uncancelled pair moves everything, and no wait runs into its deadline
 *   (a lost writability edge would show as one).
 */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "plaza/io.h"
#include "plaza/select.h"
#include "runtime/internal.h"

/* A wait that runs into this has lost its wake-up: far beyond what any
 * load makes a wait for a draining peer take. */
#define IO_LIMIT (60 * SEC)

enum kind { TCP, LOCAL, PIPE, KINDS };
static const char *const kind_name[KINDS] = {"tcp", "local", "pipe"};

/* A connected pair with small buffers: data written to w is read from r.
 * Both ends are plain blocking descriptors until plaza first uses one. */
static void make_pair(enum kind k, int *w, int *r)
{
    int small = 4096;
    if (k == PIPE) {
        int p[2];
        CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
        CHECK(fcntl(p[1], F_SETPIPE_SZ, small) >= small);
        *r = p[0];
        *w = p[1];
        return;
    }
    if (k == LOCAL) {
        int sv[2];
        CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        CHECK_EQ(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
        CHECK_EQ(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
        *w = sv[0];
        *r = sv[1];
        return;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK_EQ(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(l, 4), 0);
    CHECK_EQ(getsockname(l, (struct sockaddr *)&a, &len), 0);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    /* Before the connect: the window is agreed then. */
    CHECK_EQ(setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    CHECK_EQ(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    CHECK_EQ(connect(c, (struct sockaddr *)&a, sizeof a), 0); /* loopback: done at once */
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(s >= 0);
    close(l);
    *w = c;
    *r = s;
}

static pz__io_source *source(int fd)
{
    pz__runtime *rt = atomic_load(&pz__rt);
    CHECK(rt != NULL);
    pz__io_source *src = pz__io_source_of(rt, fd);
    CHECK(src != NULL);
    return src;
}

static uint64_t word(int fd)
{
    return atomic_load(&source(fd)->readiness);
}

static uint32_t interest_changes(int fd)
{
    return atomic_load(&source(fd)->interest_changes);
}

/* The byte at offset i of connection c's stream. */
static inline unsigned char pattern(int c, size_t i)
{
    return (unsigned char)((i * 131u) ^ (i >> 9) ^ ((unsigned)c * 29u));
}

/* ---- one blocked writer, one draining thread ---- */

struct blocked {
    enum kind k;
    int w, r;
    size_t total;
};

static void *blocked_writer(void *arg)
{
    struct blocked *b = arg;
    unsigned char *buf = malloc(b->total);
    CHECK(buf != NULL);
    for (size_t i = 0; i < b->total; i++)
        buf[i] = pattern(0, i);
    ssize_t n = pz_write_all(b->w, buf, b->total, pz_now() + IO_LIMIT);
    free(buf);
    return (void *)(intptr_t)n;
}

static void *drain(void *arg)
{
    struct blocked *b = arg;
    unsigned char buf[1500];
    size_t got = 0;
    while (got < b->total) {
        ssize_t n = read(b->r, buf, sizeof buf);
        CHECK(n > 0);
        for (ssize_t i = 0; i < n; i++)
            CHECK_EQ(buf[i], pattern(0, got + (size_t)i));
        got += (size_t)n;
    }
    return NULL;
}

static void *reader_of_one(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char c;
    return (void *)(intptr_t)pz_read(fd, &c, 1, pz_now() + IO_LIMIT);
}

/* The watch is off, and the registration change that goes with it is
 * made: both change under the source's lock. */
static bool unwatched(void *arg)
{
    pz__io_source *src = source((int)(intptr_t)arg);
    pz__spin_lock(&src->lock);
    bool off = !(atomic_load(&src->readiness) & PZ__IO_WATCH_WRITE);
    uint32_t n = atomic_load(&src->interest_changes);
    pz__spin_unlock(&src->lock);
    return off && n % 2 == 0;
}

static void *blocked_writer_main(void *arg)
{
    struct blocked *b = arg;
    make_pair(b->k, &b->w, &b->r);
    pz_task_t *wt = pz_spawn(blocked_writer, b);
    CHECK(wt != NULL);
    /* Nobody reads yet, and the stream is far larger than the buffers: the
     * writer parks in a wait for writability and stays there. */
    wait_parked(wt);
    uint64_t s = word(b->w);
    CHECK(s & PZ__IO_WATCH_WRITE);
    CHECK(!(s & PZ__IO_WRITE));
    CHECK_EQ(interest_changes(b->w), 1);
    /* Only the peer's reads can wake it now. */
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, drain, b), 0);
    void *res;
    CHECK_EQ(pz_join(wt, &res), 0);
    CHECK_EQ((intptr_t)res, (intptr_t)b->total);
    CHECK_EQ(pthread_join(th, NULL), 0);
    if (b->k != PIPE) {
        /* An event while nobody waits to write drops the watch: a task
         * waits to read the writer's end, and the peer sends a byte. */
        pz_task_t *rt = pz_spawn(reader_of_one, (void *)(intptr_t)b->w);
        CHECK(rt != NULL);
        wait_parked(rt);
        CHECK_EQ(write(b->r, "x", 1), 1);
        CHECK_EQ(pz_join(rt, &res), 0);
        CHECK_EQ((intptr_t)res, 1);
        wait_until_true(unwatched, (void *)(intptr_t)b->w, IO_LIMIT);
        /* Every watch was dropped again (a writer woken while more edges
         * come may see it dropped and asked again in between). */
        uint32_t n = interest_changes(b->w);
        CHECK(n >= 2 && n % 2 == 0);
    }
    pz_close(b->w);
    close(b->r);
    return NULL;
}

static void test_blocked_writer_woken_by_drain(void **state)
{
    (void)state;
    for (int k = 0; k < KINDS; k++) {
        struct blocked b = {.k = (enum kind)k, .total = 1 << 20};
        run_in_runtime(2, blocked_writer_main, &b);
        fprintf(stderr, "%s: a writer blocked on a full buffer was woken by the drain\n", kind_name[k]);
    }
}

/* ---- request/response: the registration never changes ---- */

#define ROUND_TRIPS 2000

static void *echo_side(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    int fd = pz_accept(lfd, NULL, NULL, pz_now() + IO_LIMIT);
    CHECK(fd >= 0);
    char buf[64];
    for (;;) {
        ssize_t n = pz_read(fd, buf, sizeof buf, pz_now() + IO_LIMIT);
        CHECK(n >= 0);
        if (n == 0)
            break;
        CHECK_EQ(pz_write_all(fd, buf, (size_t)n, pz_now() + IO_LIMIT), n);
        /* The accepted end is registered for reading alone and never
         * finds its send buffer full. */
        CHECK_EQ(interest_changes(fd), 0);
        CHECK(!(word(fd) & PZ__IO_WATCH_WRITE));
    }
    pz_close(fd);
    return NULL;
}

static void *request_response_main(void *arg)
{
    (void)arg;
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int lfd = pz_tcp_listen_addr("127.0.0.1:0", (struct sockaddr *)&a, &len);
    CHECK(lfd >= 0);
    pz_task_t *srv = pz_spawn(echo_side, (void *)(intptr_t)lfd);
    CHECK(srv != NULL);
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", ntohs(a.sin_port));
    int fd = pz_tcp_dial(hp, pz_now() + IO_LIMIT);
    CHECK(fd >= 0);
    char out[64], in[64];
    for (int i = 0; i < ROUND_TRIPS; i++) {
        memset(out, 'a' + i % 26, sizeof out);
        CHECK_EQ(pz_write_all(fd, out, sizeof out, pz_now() + IO_LIMIT), sizeof out);
        size_t got = 0;
        while (got < sizeof in) {
            ssize_t n = pz_read(fd, in + got, sizeof in - got, pz_now() + IO_LIMIT);
            CHECK(n > 0);
            got += (size_t)n;
        }
        CHECK(memcmp(in, out, sizeof in) == 0);
        /* Registered watching writability for the connect; at most one
         * change, back to reading alone, in all the round trips. */
        CHECK(interest_changes(fd) <= 1);
    }
    pz_close(fd);
    CHECK_EQ(pz_join(srv, NULL), 0);
    pz_close(lfd);
    return NULL;
}

static void test_request_response_never_watches_writability(void **state)
{
    (void)state;
    run_in_runtime(2, request_response_main, NULL);
}

/* ---- many connections, every write wait, random cancels ---- */

enum how { VIA_WRITE, VIA_WRITEV, VIA_WAIT_WRITABLE, VIA_WAIT_EITHER, VIA_SELECT, HOWS };

struct conn {
    int id;
    enum kind k;
    int w, r;
    size_t total;
    uint64_t seed;
    pz_task_t *writer, *reader;
    _Atomic bool writer_done;
    _Atomic bool cancel_writer, cancel_reader; /* pz_cancel was called */
    size_t written, got;
    int writer_err, reader_err;
    bool saw_blocked; /* the reader found its writer waiting to write */
};

/* One raw attempt after a wait said writable; 0 if it would block. */
static ssize_t raw_write(struct conn *c, const void *p, size_t n)
{
    ssize_t r = c->k == PIPE ? write(c->w, p, n) : send(c->w, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r >= 0)
        return r;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
}

/* Writes up to n bytes at p one way; the count, or a negative error. */
static ssize_t write_some(struct conn *c, enum how how, const unsigned char *p, size_t n)
{
    int64_t deadline = pz_now() + IO_LIMIT;
    switch (how) {
    case VIA_WRITE:
        return pz_write(c->w, p, n, deadline);
    case VIA_WRITEV: {
        size_t half = n / 2;
        struct iovec iov[2] = {{(void *)p, half}, {(void *)(p + half), n - half}};
        return pz_writev(c->w, iov, 2, deadline);
    }
    default:
        for (;;) {
            int r;
            if (how == VIA_WAIT_WRITABLE) {
                r = pz_wait_fd(c->w, PZ_WRITABLE, deadline);
            } else if (how == VIA_WAIT_EITHER) {
                r = pz_wait_fd(c->w, PZ_READABLE | PZ_WRITABLE, deadline);
            } else {
                pz_sel_t cs[1] = {PZ_SEL_FD(c->w, PZ_WRITABLE)};
                r = pz_select(cs, 1, deadline);
                if (r == 0)
                    r = cs[0].result;
            }
            if (r < 0)
                return r;
            ssize_t k = raw_write(c, p, n);
            if (k != 0)
                return k;
            /* Woken but not writable: a pipe's or pair's write end reports
             * writable with less room than asked, or readable only. */
        }
    }
}

static void *stress_writer(void *arg)
{
    struct conn *c = arg;
    unsigned char buf[12000];
    uint64_t seed = c->seed;
    while (c->written < c->total) {
        size_t n = 1 + (size_t)(test_rand(&seed) % sizeof buf);
        if (n > c->total - c->written)
            n = c->total - c->written;
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern(c->id, c->written + i);
        ssize_t k = write_some(c, (enum how)(test_rand(&seed) % HOWS), buf, n);
        if (k < 0) {
            c->writer_err = (int)k;
            break;
        }
        c->written += (size_t)k;
    }
    atomic_store(&c->writer_done, true);
    pz_close(c->w);
    return NULL;
}

static bool writer_waits_or_done(void *arg)
{
    struct conn *c = arg;
    if (atomic_load(&c->writer_done))
        return true;
    pz__io_source *src = source(c->w);
    uint64_t s = atomic_load(&src->readiness);
    if (atomic_load(&src->kind) == PZ__SRC_POLLED && (s & PZ__IO_WATCH_WRITE) && !(s & PZ__IO_WRITE)) {
        c->saw_blocked = true;
        return true;
    }
    return false;
}

static void *stress_reader(void *arg)
{
    struct conn *c = arg;
    uint64_t seed = c->seed ^ 0x9e3779b97f4a7c15ull;
    /* Let the writer fill the buffer and wait first. */
    wait_until_true(writer_waits_or_done, c, IO_LIMIT);
    unsigned char buf[9000];
    for (;;) {
        size_t want = 1 + (size_t)(test_rand(&seed) % sizeof buf);
        ssize_t n = pz_read(c->r, buf, want, pz_now() + IO_LIMIT);
        if (n <= 0) {
            c->reader_err = (int)n;
            break;
        }
        for (ssize_t i = 0; i < n; i++)
            CHECK_EQ(buf[i], pattern(c->id, c->got + (size_t)i));
        c->got += (size_t)n;
        /* Now and then let the writer fill the buffer again. */
        uint64_t pause = test_rand(&seed) % 16;
        if (pause == 0)
            pz_sleep((int64_t)(test_rand(&seed) % 300) * US);
        else if (pause < 4)
            pz_yield();
    }
    pz_close(c->r); /* under a writer that may still wait, if cancelled */
    return NULL;
}

struct stress {
    struct conn *c;
    int n;
};

static void *canceller(void *arg)
{
    struct stress *s = arg;
    uint64_t seed = 0x5eed;
    for (int i = 0; i < s->n / 3; i++) {
        pz_sleep((int64_t)(test_rand(&seed) % 500) * US);
        struct conn *c = &s->c[test_rand(&seed) % (uint64_t)s->n];
        if (test_rand(&seed) % 2) {
            atomic_store(&c->cancel_writer, true);
            pz_cancel(c->writer);
        } else {
            atomic_store(&c->cancel_reader, true);
            pz_cancel(c->reader);
        }
    }
    return NULL;
}

static void *stress_main(void *arg)
{
    int n = (int)(intptr_t)arg;
    struct stress s = {calloc((size_t)n, sizeof(struct conn)), n};
    CHECK(s.c != NULL);
    for (int i = 0; i < n; i++) {
        struct conn *c = &s.c[i];
        c->id = i;
        c->k = (enum kind)(i % KINDS);
        c->seed = (uint64_t)i * 0x2545f4914f6cdd1dull + 7;
        c->total = 32768 + (size_t)(test_rand(&c->seed) % 131072);
        make_pair(c->k, &c->w, &c->r);
    }
    for (int i = 0; i < n; i++) {
        s.c[i].writer = pz_spawn(stress_writer, &s.c[i]);
        s.c[i].reader = pz_spawn(stress_reader, &s.c[i]);
        CHECK(s.c[i].writer && s.c[i].reader);
    }
    pz_task_t *cx = pz_spawn(canceller, &s);
    CHECK(cx != NULL);
    CHECK_EQ(pz_join(cx, NULL), 0);
    int blocked = 0, cancelled = 0, broken = 0;
    size_t moved = 0;
    for (int i = 0; i < n; i++) {
        struct conn *c = &s.c[i];
        CHECK_EQ(pz_join(c->writer, NULL), 0);
        CHECK_EQ(pz_join(c->reader, NULL), 0);
        /* No wait ran into its deadline: no writability edge was lost. */
        CHECK(c->writer_err != -ETIMEDOUT && c->reader_err != -ETIMEDOUT);
        if (c->writer_err == -ECANCELED) {
            CHECK(atomic_load(&c->cancel_writer));
        } else if (c->writer_err == -EPIPE || c->writer_err == -ECONNRESET) {
            CHECK_EQ(c->reader_err, -ECANCELED); /* its reader closed early */
            broken++;
        } else {
            CHECK_EQ(c->writer_err, 0);
            CHECK_EQ(c->written, c->total);
        }
        if (c->reader_err == -ECANCELED) {
            CHECK(atomic_load(&c->cancel_reader));
            CHECK(c->got <= c->written);
            cancelled++;
        } else {
            CHECK_EQ(c->reader_err, 0); /* the end of the stream */
            CHECK_EQ(c->got, c->written);
        }
        if (c->writer_err == -ECANCELED)
            cancelled++;
        blocked += c->saw_blocked;
        moved += c->got;
    }
    /* Every reader waited for its writer to block or end first; most
     * writers block (their streams are many buffers long). */
    CHECK(blocked > 0);
    fprintf(stderr, "%d connections, %zu bytes: %d writers seen blocked, %d cancelled, %d writers cut off by their reader\n",
            n, moved, blocked, cancelled, broken);
    free(s.c);
    return NULL;
}

static void test_blocked_writers_with_cancels(void **state)
{
    (void)state;
    for (int round = 0; round < 10; round++)
        run_in_runtime(0, stress_main, (void *)(intptr_t)SCALED(96));
}

int main(void)
{
    /* A raw write to a pipe whose reader was cancelled must not kill the
     * test (plaza's own writes hold SIGPIPE off themselves). */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocked_writer_woken_by_drain),
        cmocka_unit_test(test_request_response_never_watches_writability),
        cmocka_unit_test(test_blocked_writers_with_cancels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
