/*
 * plaza buffered I/O: a reader that reads lines, exact byte counts and
 * length-prefixed frames from a descriptor, and a writer with flush, both
 * with deadlines (absolute pz_now() nanoseconds, PZ_FOREVER for none).
 *
 * Neither allocates: the caller gives each its buffer (a fixed array in a
 * connection's struct, or on the task's stack), and nothing longer than
 * the buffer is ever read as one item.  What a reader call returns points
 * into the buffer and stays valid until the next call on the reader.
 *
 * Results: > 0 with an item (its length), 0 at a clean end of the stream
 * (the peer closed between items), or a negative error: -ETIMEDOUT,
 * -ECANCELED, -EMSGSIZE (an item longer than the limit or the buffer),
 * -EPROTO (the stream ended inside an item), or pz_read's own errors.  A
 * deadline or a cancel loses nothing: the bytes read so far stay buffered
 * and the next call goes on from them.  After -EMSGSIZE the long item's
 * bytes are still buffered (pz_reader_consume them, or close the
 * connection: the stream is out of step).
 */
#ifndef PLAZA_BUFIO_H
#define PLAZA_BUFIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pz_reader {
    int fd;
    unsigned char *buf;
    size_t cap;
    size_t start, end; /* buffered bytes: buf[start, end) */
    size_t scanned;    /* bytes after start known to hold no '\n' */
    int eof;           /* the descriptor said end of stream */
} pz_reader_t;

/* cap >= 1.  The reader reads fd with pz_read. */
void pz_reader_init(pz_reader_t *r, int fd, void *buf, size_t cap);

/* Reads one line, up to and including its '\n', and stores where it
 * starts in *line; returns its length.  A line (with its '\n') longer than
 * limit or than the buffer gives -EMSGSIZE as soon as that many bytes
 * came without one.  A last line without '\n' before the end of the
 * stream is returned as it is. */
ssize_t pz_reader_line(pz_reader_t *r, const char **line, size_t limit, int64_t deadline);

/* Copies exactly n bytes into dst.  Returns n, 0 if the stream ended
 * before the first byte, or -EPROTO if it ended after some (they are
 * consumed).  Any n: one longer than the buffer reads past it straight
 * into dst, and then a deadline or a cancel leaves the bytes already
 * copied consumed (out of step); one that fits consumes nothing until
 * all n are there. */
ssize_t pz_reader_exact(pz_reader_t *r, void *dst, size_t n, int64_t deadline);

/* Reads one frame: a 4-byte big-endian length, then that many bytes.
 * Stores where the payload starts in *payload and its length in *len;
 * returns 1, 0 at a clean end before a frame, -EMSGSIZE if the length is
 * over limit or the payload does not fit in the buffer beside its
 * header, -EPROTO if the stream ends inside the frame. */
int pz_reader_frame(pz_reader_t *r, const void **payload, size_t *len, size_t limit, int64_t deadline);

/* Waits until at least min bytes are buffered (min <= the buffer's size,
 * else -EMSGSIZE) and returns how many are, with *data pointing at them;
 * fewer than min only at the end of the stream (0 when nothing is left).
 * Nothing is consumed: feed them to a parser, then pz_reader_consume what
 * it used.  min 0 returns what is buffered without reading. */
ssize_t pz_reader_peek(pz_reader_t *r, const void **data, size_t min, int64_t deadline);
/* Drops n buffered bytes (at most what is buffered). */
void pz_reader_consume(pz_reader_t *r, size_t n);
size_t pz_reader_buffered(const pz_reader_t *r);

typedef struct pz_writer {
    int fd;
    unsigned char *buf;
    size_t cap, len;
    int err; /* the first write error other than a deadline or a cancel */
} pz_writer_t;

/* cap >= 1.  The writer writes fd with pz_write. */
void pz_writer_init(pz_writer_t *w, int fd, void *buf, size_t cap);
/* Buffers n bytes, writing the buffer out when it fills (a write larger
 * than the buffer goes out directly after it).  Returns n or a negative
 * error.  On -ETIMEDOUT or -ECANCELED, some of the data may have been
 * buffered or written: the stream is out of step unless the caller
 * knows better.  Any other write error is kept and returned by every
 * later call (the peer is gone). */
ssize_t pz_writer_write(pz_writer_t *w, const void *data, size_t n, int64_t deadline);
/* Formats into the buffer (flushing first if it does not fit);
 * -EMSGSIZE if the text is longer than the whole buffer. */
ssize_t pz_writer_printf(pz_writer_t *w, int64_t deadline, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes out what is buffered.  0 or a negative error; on -ETIMEDOUT
 * the bytes not yet written stay buffered for the next flush. */
int pz_writer_flush(pz_writer_t *w, int64_t deadline);
size_t pz_writer_buffered(const pz_writer_t *w);

#ifdef __cplusplus
}
#endif
#endif
