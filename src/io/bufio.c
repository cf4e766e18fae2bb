/*
 * Buffered reader and writer (include/plaza/bufio.h).
 *
 * Reader invariant: buf[start, end) holds the bytes read from the
 * descriptor and not yet consumed, 0 <= start <= end <= cap, and
 * buf[start, start + scanned) holds no '\n' (so a line search resumes
 * where the last one stopped: reading a long line costs linear time, not
 * quadratic).  Bytes move to the front of the buffer only when the
 * buffered data does not leave enough room at the end for what a call
 * needs.  A call that waits keeps every byte it read in the buffer, so a
 * deadline or a cancel loses nothing.
 *
 * Writer invariant: buf[0, len) is accepted and not yet written; a
 * flush that writes part of it moves the rest to the front.
 */
#define _GNU_SOURCE
#include "plaza/bufio.h"
#include "plaza/io.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void pz_reader_init(pz_reader_t *r, int fd, void *buf, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->fd = fd;
    r->buf = buf;
    r->cap = cap;
}

size_t pz_reader_buffered(const pz_reader_t *r)
{
    return r->end - r->start;
}

void pz_reader_consume(pz_reader_t *r, size_t n)
{
    size_t have = r->end - r->start;
    if (n > have)
        n = have;
    r->start += n;
    r->scanned = r->scanned > n ? r->scanned - n : 0;
    if (r->start == r->end)
        r->start = r->end = 0;
}

/* Reads more into the buffer, making room at the end first.  Returns the
 * bytes read, 0 at the end of the stream, or a negative error; -EMSGSIZE
 * if the buffer is full of unconsumed bytes. */
static ssize_t fill(pz_reader_t *r, int64_t deadline)
{
    if (r->eof)
        return 0;
    if (r->end == r->cap) {
        if (r->start == 0)
            return -EMSGSIZE;
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->end -= r->start;
        r->start = 0;
    }
    ssize_t n = pz_read(r->fd, r->buf + r->end, r->cap - r->end, deadline);
    if (n > 0)
        r->end += (size_t)n;
    else if (n == 0)
        r->eof = 1;
    return n;
}

ssize_t pz_reader_peek(pz_reader_t *r, const void **data, size_t min, int64_t deadline)
{
    if (min > r->cap)
        return -EMSGSIZE;
    while (r->end - r->start < min) {
        if (r->cap - r->start < min) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        ssize_t n = fill(r, deadline);
        if (n < 0)
            return n;
        if (n == 0)
            break;
    }
    *data = r->buf + r->start;
    return (ssize_t)(r->end - r->start);
}

ssize_t pz_reader_line(pz_reader_t *r, const char **line, size_t limit, int64_t deadline)
{
    if (limit > r->cap)
        limit = r->cap;
    for (;;) {
        size_t have = r->end - r->start;
        unsigned char *nl = have > r->scanned ? memchr(r->buf + r->start + r->scanned, '\n', have - r->scanned) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - (r->buf + r->start)) + 1;
            if (len > limit)
                return -EMSGSIZE;
            *line = (const char *)r->buf + r->start;
            r->start += len;
            r->scanned = 0;
            if (r->start == r->end)
                r->start = r->end = 0; /* the line stays readable: nothing overwrites it before the next call */
            return (ssize_t)len;
        }
        r->scanned = have;
        if (have >= limit)
            return -EMSGSIZE;
        ssize_t n = fill(r, deadline);
        if (n < 0)
            return n;
        if (n == 0) {
            if (have == 0)
                return 0;
            *line = (const char *)r->buf + r->start;
            r->start = r->end = 0;
            r->scanned = 0;
            return (ssize_t)have;
        }
    }
}

ssize_t pz_reader_exact(pz_reader_t *r, void *dst, size_t n, int64_t deadline)
{
    if (n == 0)
        return 0;
    if (n <= r->cap) {
        /* Fits: wait until all n are buffered, then take them, so that a
         * deadline or a cancel consumes nothing. */
        const void *p;
        ssize_t have = pz_reader_peek(r, &p, n, deadline);
        if (have < 0)
            return have;
        if ((size_t)have < n) {
            pz_reader_consume(r, (size_t)have);
            return have == 0 ? 0 : -EPROTO;
        }
        memcpy(dst, p, n);
        pz_reader_consume(r, n);
        return (ssize_t)n;
    }
    /* Longer than the buffer: what is buffered, then straight into dst.
     * A deadline or a cancel here leaves the bytes already copied
     * consumed (documented). */
    unsigned char *out = dst;
    size_t got = r->end - r->start;
    memcpy(out, r->buf + r->start, got);
    pz_reader_consume(r, got);
    while (got < n) {
        ssize_t k = r->eof ? 0 : pz_read(r->fd, out + got, n - got, deadline);
        if (k < 0)
            return k;
        if (k == 0) {
            r->eof = 1;
            return got ? -EPROTO : 0;
        }
        got += (size_t)k;
    }
    return (ssize_t)n;
}

int pz_reader_frame(pz_reader_t *r, const void **payload, size_t *len, size_t limit, int64_t deadline)
{
    const void *p;
    ssize_t have = pz_reader_peek(r, &p, 4, deadline);
    if (have < 0)
        return (int)have;
    if (have < 4)
        return have == 0 ? 0 : -EPROTO;
    const unsigned char *h = p;
    size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | (size_t)h[3];
    if (n > limit || n > r->cap - 4)
        return -EMSGSIZE;
    have = pz_reader_peek(r, &p, 4 + n, deadline);
    if (have < 0)
        return (int)have;
    if ((size_t)have < 4 + n)
        return -EPROTO;
    *payload = (const unsigned char *)p + 4;
    *len = n;
    /* Consumed, but left in place until the next call. */
    r->start += 4 + n;
    r->scanned = 0;
    return 1;
}

/* ---- writer ---- */

void pz_writer_init(pz_writer_t *w, int fd, void *buf, size_t cap)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    w->buf = buf;
    w->cap = cap;
}

size_t pz_writer_buffered(const pz_writer_t *w)
{
    return w->len;
}

static int keep_error(pz_writer_t *w, ssize_t e)
{
    if (e != -ETIMEDOUT && e != -ECANCELED)
        w->err = (int)e;
    return (int)e;
}

int pz_writer_flush(pz_writer_t *w, int64_t deadline)
{
    if (w->err)
        return w->err;
    size_t done = 0;
    while (done < w->len) {
        ssize_t n = pz_write(w->fd, w->buf + done, w->len - done, deadline);
        if (n < 0) {
            memmove(w->buf, w->buf + done, w->len - done);
            w->len -= done;
            return keep_error(w, n);
        }
        done += (size_t)n;
    }
    w->len = 0;
    return 0;
}

ssize_t pz_writer_write(pz_writer_t *w, const void *data, size_t n, int64_t deadline)
{
    if (w->err)
        return w->err;
    if (n <= w->cap - w->len) {
        memcpy(w->buf + w->len, data, n);
        w->len += n;
        return (ssize_t)n;
    }
    int r = pz_writer_flush(w, deadline);
    if (r < 0)
        return r;
    if (n <= w->cap) {
        memcpy(w->buf, data, n);
        w->len = n;
        return (ssize_t)n;
    }
    ssize_t k = pz_write_all(w->fd, data, n, deadline);
    return k < 0 ? keep_error(w, k) : k;
}

ssize_t pz_writer_printf(pz_writer_t *w, int64_t deadline, const char *fmt, ...)
{
    if (w->err)
        return w->err;
    for (int pass = 0; pass < 2; pass++) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf((char *)w->buf + w->len, w->cap - w->len, fmt, ap);
        va_end(ap);
        if (k < 0)
            return -EINVAL;
        /* vsnprintf needs room for its '\0', which is not kept. */
        if ((size_t)k < w->cap - w->len) {
            w->len += (size_t)k;
            return k;
        }
        if ((size_t)k >= w->cap)
            return -EMSGSIZE;
        int r = pz_writer_flush(w, deadline);
        if (r < 0)
            return r;
    }
    return -EMSGSIZE;
}
