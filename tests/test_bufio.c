/* Buffered reader and writer: lines, exact reads and frames across
 * arbitrary chunking, limits that fail without reading past the buffer,
 * deadlines that lose nothing, peek/consume for a parser, the end of the
 * stream inside and between items, the writer's flush and sticky error. */
#include "helpers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


static void pair(int sv[2])
{
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

/* ---- a stream of lines, exact blocks and frames, written in random
 * pieces, read back through a small buffer ---- */

#define ITEMS 3000
struct stream {
    int fd;
    uint64_t seed;
};

/* The i-th item: kind i % 3; its bytes are a function of i. */
static size_t item_bytes(int i, unsigned char *out)
{
    uint64_t s = (uint64_t)i * 2654435761u + 1;
    size_t len = 1 + test_rand(&s) % 200;
    for (size_t k = 0; k < len; k++)
        out[k] = (unsigned char)('a' + (test_rand(&s) % 26));
    return len;
}

static void *writer_task(void *arg)
{
    struct stream *st = arg;
    unsigned char *wbuf = malloc(97); /* odd size: items straddle flushes */
    pz_writer_t w;
    pz_writer_init(&w, st->fd, wbuf, 97);
    unsigned char item[256];
    for (int i = 0; i < ITEMS; i++) {
        size_t len = item_bytes(i, item);
        int64_t dl = pz_now() + 30 * SEC;
        switch (i % 3) {
        case 0:
            CHECK_EQ(pz_writer_write(&w, item, len, dl), (ssize_t)len);
            CHECK_EQ(pz_writer_write(&w, "\n", 1, dl), 1);
            break;
        case 1:
            CHECK_EQ(pz_writer_printf(&w, dl, "%03zu", len), 3);
            CHECK_EQ(pz_writer_write(&w, item, len, dl), (ssize_t)len);
            break;
        default: {
            unsigned char h[4] = {0, 0, (unsigned char)(len >> 8), (unsigned char)len};
            CHECK_EQ(pz_writer_write(&w, h, 4, dl), 4);
            CHECK_EQ(pz_writer_write(&w, item, len, dl), (ssize_t)len);
        }
        }
        if (test_rand(&st->seed) % 7 == 0)
            CHECK_EQ(pz_writer_flush(&w, dl), 0);
    }
    CHECK_EQ(pz_writer_flush(&w, pz_now() + 30 * SEC), 0);
    CHECK_EQ(pz_writer_buffered(&w), 0);
    shutdown(st->fd, SHUT_WR);
    free(wbuf);
    return NULL;
}

static void *stream_main(void *arg)
{
    (void)arg;
    int sv[2];
    pair(sv);
    struct stream st = {sv[1], 12345};
    pz_task_t *t = pz_spawn(writer_task, &st);
    unsigned char *rbuf = malloc(256 + 8); /* exact size: ASan catches a read past it */
    pz_reader_t r;
    pz_reader_init(&r, sv[0], rbuf, 256 + 8);
    unsigned char want[256], got[256];
    for (int i = 0; i < ITEMS; i++) {
        size_t len = item_bytes(i, want);
        int64_t dl = pz_now() + 30 * SEC;
        if (i % 3 == 0) {
            const char *line;
            ssize_t n = pz_reader_line(&r, &line, 256, dl);
            CHECK_EQ(n, (ssize_t)len + 1);
            CHECK(memcmp(line, want, len) == 0 && line[len] == '\n');
        } else if (i % 3 == 1) {
            char num[4] = {0};
            CHECK_EQ(pz_reader_exact(&r, num, 3, dl), 3);
            CHECK_EQ((size_t)atoi(num), len);
            CHECK_EQ(pz_reader_exact(&r, got, len, dl), (ssize_t)len);
            CHECK(memcmp(got, want, len) == 0);
        } else {
            const void *p;
            size_t n = 0;
            CHECK_EQ(pz_reader_frame(&r, &p, &n, 256, dl), 1);
            CHECK_EQ(n, len);
            CHECK(memcmp(p, want, len) == 0);
        }
    }
    const char *line;
    CHECK_EQ(pz_reader_line(&r, &line, 256, pz_now() + 30 * SEC), 0); /* clean end */
    CHECK_EQ(pz_join(t, NULL), 0);
    free(rbuf);
    pz_close(sv[0]);
    pz_close(sv[1]);
    return NULL;
}

static void test_bufio_stream(void **state)
{
    (void)state;
    run_in_runtime(2, stream_main, NULL);
}

/* ---- limits: a long line or frame is -EMSGSIZE, never a read past the
 * buffer; what was buffered stays ---- */

static void *limits_main(void *arg)
{
    (void)arg;
    int sv[2];
    pair(sv);
    char big[300];
    memset(big, 'x', sizeof big);
    CHECK_EQ(write(sv[1], big, sizeof big), (ssize_t)sizeof big);
    CHECK_EQ(write(sv[1], "\nshort\n", 7), 7);
    unsigned char *buf = malloc(64);
    pz_reader_t r;
    pz_reader_init(&r, sv[0], buf, 64);
    const char *line;
    /* Limit under the buffer size: fails once 10 bytes came without '\n'. */
    CHECK_EQ(pz_reader_line(&r, &line, 10, pz_now() + SEC), -EMSGSIZE);
    CHECK(pz_reader_buffered(&r) >= 10);
    /* The buffer itself bounds a line. */
    CHECK_EQ(pz_reader_line(&r, &line, 1000, pz_now() + SEC), -EMSGSIZE);
    CHECK_EQ(pz_reader_buffered(&r), 64);
    /* Skip the long line through peek/consume, as a caller resyncing. */
    for (;;) {
        const void *p;
        ssize_t n = pz_reader_peek(&r, &p, 1, pz_now() + SEC);
        CHECK(n > 0);
        const char *nl = memchr(p, '\n', (size_t)n);
        if (nl) {
            pz_reader_consume(&r, (size_t)(nl - (const char *)p) + 1);
            break;
        }
        pz_reader_consume(&r, (size_t)n);
    }
    CHECK_EQ(pz_reader_line(&r, &line, 64, pz_now() + SEC), 6);
    CHECK(memcmp(line, "short\n", 6) == 0);
    /* A frame longer than its limit, then one longer than the buffer. */
    unsigned char h[4] = {0, 0, 0, 100};
    CHECK_EQ(write(sv[1], h, 4), 4);
    const void *p;
    size_t n;
    CHECK_EQ(pz_reader_frame(&r, &p, &n, 50, pz_now() + SEC), -EMSGSIZE);
    CHECK_EQ(pz_reader_frame(&r, &p, &n, 1000, pz_now() + SEC), -EMSGSIZE);
    CHECK_EQ(pz_reader_buffered(&r), 4);
    CHECK_EQ(pz_reader_peek(&r, &p, 65, pz_now() + SEC), -EMSGSIZE);
    free(buf);
    pz_close(sv[0]);
    pz_close(sv[1]);
    return NULL;
}

static void test_bufio_limits(void **state)
{
    (void)state;
    run_in_runtime(2, limits_main, NULL);
}

/* ---- deadlines lose nothing; the end inside an item is -EPROTO ---- */

static void *deadline_main(void *arg)
{
    (void)arg;
    int sv[2];
    pair(sv);
    unsigned char buf[128];
    pz_reader_t r;
    pz_reader_init(&r, sv[0], buf, sizeof buf);
    const char *line;
    CHECK_EQ(write(sv[1], "hel", 3), 3);
    CHECK_EQ(pz_reader_line(&r, &line, 128, pz_now() + 5 * MS), -ETIMEDOUT);
    CHECK_EQ(write(sv[1], "lo\nab", 5), 5);
    CHECK_EQ(pz_reader_line(&r, &line, 128, pz_now() + SEC), 6);
    CHECK(memcmp(line, "hello\n", 6) == 0);
    char four[4];
    CHECK_EQ(pz_reader_exact(&r, four, 4, pz_now() + 5 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_reader_buffered(&r), 2); /* "ab" still there */
    CHECK_EQ(write(sv[1], "cd", 2), 2);
    CHECK_EQ(pz_reader_exact(&r, four, 4, pz_now() + SEC), 4);
    CHECK(memcmp(four, "abcd", 4) == 0);
    /* A frame cut by the deadline, then completed. */
    unsigned char fr[7] = {0, 0, 0, 3, 'x', 'y', 'z'};
    CHECK_EQ(write(sv[1], fr, 5), 5);
    const void *p;
    size_t n;
    CHECK_EQ(pz_reader_frame(&r, &p, &n, 100, pz_now() + 5 * MS), -ETIMEDOUT);
    CHECK_EQ(write(sv[1], fr + 5, 2), 2);
    CHECK_EQ(pz_reader_frame(&r, &p, &n, 100, pz_now() + SEC), 1);
    CHECK(n == 3 && memcmp(p, "xyz", 3) == 0);
    /* The end of the stream inside an exact read, then a last line
     * without its newline. */
    CHECK_EQ(write(sv[1], "tail", 4), 4);
    shutdown(sv[1], SHUT_WR);
    CHECK_EQ(pz_reader_line(&r, &line, 128, pz_now() + SEC), 4);
    CHECK(memcmp(line, "tail", 4) == 0);
    CHECK_EQ(pz_reader_line(&r, &line, 128, pz_now() + SEC), 0);
    CHECK_EQ(pz_reader_exact(&r, four, 4, pz_now() + SEC), 0);
    pz_close(sv[0]);
    pz_close(sv[1]);

    pair(sv);
    pz_reader_init(&r, sv[0], buf, sizeof buf);
    CHECK_EQ(write(sv[1], "ab", 2), 2);
    shutdown(sv[1], SHUT_WR);
    CHECK_EQ(pz_reader_exact(&r, four, 4, pz_now() + SEC), -EPROTO);
    pz_close(sv[0]);
    pz_close(sv[1]);

    pair(sv);
    pz_reader_init(&r, sv[0], buf, sizeof buf);
    CHECK_EQ(write(sv[1], fr, 5), 5);
    shutdown(sv[1], SHUT_WR);
    CHECK_EQ(pz_reader_frame(&r, &p, &n, 100, pz_now() + SEC), -EPROTO);
    pz_close(sv[0]);
    pz_close(sv[1]);
    return NULL;
}

static void test_bufio_deadlines_and_end(void **state)
{
    (void)state;
    run_in_runtime(2, deadline_main, NULL);
}

/* ---- writer: big writes bypass the buffer; a gone peer is sticky;
 * a flush that times out keeps the rest ---- */

static void *writer_main(void *arg)
{
    (void)arg;
    int sv[2];
    pair(sv);
    int small = 4096;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    unsigned char wb[64];
    pz_writer_t w;
    pz_writer_init(&w, sv[1], wb, sizeof wb);
    static unsigned char big[1 << 20];
    memset(big, 'q', sizeof big);
    /* Fills the socket: nobody reads, the flush times out, keeps the rest. */
    CHECK_EQ(pz_writer_write(&w, "head", 4, pz_now() + SEC), 4);
    CHECK_EQ(pz_writer_write(&w, big, sizeof big, pz_now() + 20 * MS), -ETIMEDOUT);
    CHECK_EQ(pz_writer_printf(&w, pz_now() + SEC, "%d", 7), 1);
    CHECK_EQ(pz_writer_buffered(&w), 1);
    char huge[100];
    memset(huge, 'h', sizeof huge - 1);
    huge[99] = 0;
    CHECK_EQ(pz_writer_printf(&w, pz_now() + SEC, "%s", huge), -EMSGSIZE);
    pz_close(sv[0]); /* the peer goes */
    int r = pz_writer_flush(&w, pz_now() + SEC);
    CHECK(r == -EPIPE || r == -ECONNRESET);
    CHECK_EQ(pz_writer_write(&w, "x", 1, pz_now() + SEC), r); /* sticky */
    CHECK_EQ(pz_writer_flush(&w, pz_now() + SEC), r);
    pz_close(sv[1]);
    return NULL;
}

static void test_bufio_writer(void **state)
{
    (void)state;
    run_in_runtime(2, writer_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bufio_stream),
        cmocka_unit_test(test_bufio_limits),
        cmocka_unit_test(test_bufio_deadlines_and_end),
        cmocka_unit_test(test_bufio_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
