/*
 * Task-suspending descriptor calls on top of the runtime's poller driver
 * (src/runtime/driver.c).
 *
 * Every call follows one loop: snapshot the source's readiness word, try
 * the non-blocking system call, and on EAGAIN clear the readiness bit if no
 * event came meanwhile, then park until the bit is set again, the deadline
 * passes or the task is cancelled.  A write that finds the descriptor not
 * writable while the poller does not watch writability first asks it to
 * and tries again (src/runtime/driver.c: descriptors are registered for
 * reading alone, so request/response traffic gets no writability edges).
 * Outside a task (or with no runtime) the caller's thread waits in poll(2)
 * instead.
 */
#define _GNU_SOURCE
#include "io_internal.h"
#include "kit_io.h"
#include "../arch/sysio.h"

#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PZ_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* One system call attempt: returns >= 0 on success or -errno.  sock says
 * that fd is known to be a socket: a read or a write of one buffer then
 * goes through recvfrom or sendto, which take a shorter path through the
 * kernel than read and sendmsg (no file-position lock, no message header
 * to copy in). */
typedef ssize_t (*io_try_fn)(int fd, void *ctx, bool sock);

/* Where the caller will wait, or NULL: no runtime or not in a task, or
 * *err < 0: fd is no open descriptor (-EBADF), and nothing is recorded
 * for its number (a descriptor that gets the number later starts clean).
 * A descriptor seen for the first time is registered with the poller for
 * the events asked (PZ__EV_READ, and PZ__EV_WRITE for a connect, which
 * waits for writability at once; others ask for it when a call finds the
 * descriptor not writable: src/runtime/driver.c). */
static pz__io_source *source_register(int fd, pz__runtime **rtp, int *err, unsigned events)
{
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
    if (!rt || !rt->io_chunks || !pz__current_task())
        return NULL;
    pz__io_source *src = pz__io_source_of(rt, fd);
    if (!src)
        return NULL;
    *rtp = rt;
    if (atomic_load_explicit(&src->kind, memory_order_acquire) != PZ__SRC_NEW)
        return src;
    pz__spin_lock(&src->lock);
    if (atomic_load_explicit(&src->kind, memory_order_relaxed) == PZ__SRC_NEW) {
        int kind = PZ__SRC_POLLED;
        src->fd = fd;
        /* Both bits set: nothing is known yet, so the first look asks the
         * kernel.  A clear bit means "someone found it not ready, and no
         * event came since", which pz_select trusts without a system call
         * (src/io/select.c). */
        bool watch = events & PZ__EV_WRITE;
        atomic_store_explicit(&src->interest_changes, 0, memory_order_relaxed);
        atomic_store_explicit(&src->readiness, PZ__IO_READ | PZ__IO_WRITE | (watch ? PZ__IO_WATCH_WRITE : 0),
                              memory_order_relaxed);
#ifdef PZ_TSAN
        /* Pairs with the reactor's acquire: epoll carries this edge. */
        __tsan_release(src);
#endif
        int r = pz__set_nonblocking(fd);
        if (r == 0)
            r = pz__poller_add(rt->poller, fd, src, watch ? PZ__EV_READ | PZ__EV_WRITE : PZ__EV_READ);
        if (r < 0 && r != -EPERM) {
            /* Not open (-EBADF), or the poller is out of memory: nothing
             * is recorded, the call fails, a later call tries again. */
            pz__spin_unlock(&src->lock);
            *err = r;
            return NULL;
        }
        if (r < 0) {
            kind = PZ__SRC_BLOCKING; /* a regular file: epoll says EPERM */
            atomic_fetch_and_explicit(&src->readiness, ~(uint64_t)PZ__IO_WATCH_WRITE, memory_order_relaxed);
        }
        src->socket = false;
        src->stream = kind == PZ__SRC_POLLED && pz__fd_is_stream(fd, &src->socket);
        atomic_store_explicit(&src->kind, kind, memory_order_release);
    }
    pz__spin_unlock(&src->lock);
    return src;
}

static pz__io_source *source_for_err(int fd, pz__runtime **rtp, int *err)
{
    return source_register(fd, rtp, err, PZ__EV_READ);
}

static pz__io_source *source_for(int fd, pz__runtime **rtp)
{
    int err = 0;
    return source_for_err(fd, rtp, &err);
}

/* Waits in the driver until bit is set in src's readiness; 0 or a
 * negative error. */
static int wait_ready(pz__runtime *rt, pz__io_source *src, uint64_t bit, int64_t deadline)
{
    return pz__driver_wait(rt, src, bit, deadline);
}

/* The calling thread waits in poll(2) (no task to suspend). */
static int thread_wait(int fd, short events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int timeout = -1;
        if (deadline != PZ_FOREVER) {
            int64_t left = deadline - pz_now();
            if (left <= 0)
                return -ETIMEDOUT;
            timeout = (int)((left + 999999) / 1000000);
        }
        int n = poll(&p, 1, timeout);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

struct blocking_call {
    io_try_fn fn;
    int fd;
    void *ctx;
};

static void *run_blocking(void *arg)
{
    struct blocking_call *b = arg;
    return (void *)(intptr_t)b->fn(b->fd, b->ctx, false);
}

/* A read of a byte stream that returned fewer bytes than it asked for has
 * emptied the stream: its readiness bit is cleared then as after EAGAIN
 * (if no event came since the snapshot), so that the next pz_select on it
 * waits for the next edge without asking the kernel first.  The edge of
 * data that arrives after the read comes after the snapshot, so the CAS
 * fails and the bit stays.  Not after 0, nor once the poller has reported
 * the peer's end (ENDED; an end that comes later is an event, so the CAS
 * fails or the bits are set after it): no edge follows an end of stream,
 * and a reader must see it again.  Not for a peek (the bytes are
 * still there), not for a datagram socket (one datagram per read, however
 * many are queued).  *asked is set by the try function to the size it
 * passed to the system call; NULL for calls this does not apply to. */
static inline void note_short_read(pz__io_source *src, uint64_t seen, ssize_t n, const size_t *asked)
{
    if (asked && src && src->stream && n > 0 && (size_t)n < *asked && (seen & PZ__IO_READ) &&
        !(seen & PZ__IO_ENDED))
        atomic_compare_exchange_strong_explicit(&src->readiness, &seen, seen & ~(uint64_t)PZ__IO_READ,
                                                memory_order_acq_rel, memory_order_acquire);
}

static ssize_t io_loop(int fd, uint64_t bit, io_try_fn fn, void *ctx, int64_t deadline, const size_t *asked)
{
    if (fd < 0)
        return -EBADF;
    pz__runtime *rt = NULL;
    int err = 0;
    pz__io_source *src = source_for_err(fd, &rt, &err);
    if (err < 0)
        return err;
    if (src && atomic_load_explicit(&src->kind, memory_order_acquire) == PZ__SRC_BLOCKING) {
        struct blocking_call b = {fn, fd, ctx};
        void *res;
        int r = pz_blocking(run_blocking, &b, &res);
        return r < 0 ? r : (ssize_t)(intptr_t)res;
    }
    if (!src)
        pz__set_nonblocking(fd); /* the thread waits in poll, never in the call */
    else
        pz__coop_tick(); /* a connection that is always ready must not keep its worker */
    for (;;) {
        uint64_t seen = src ? atomic_load_explicit(&src->readiness, memory_order_acquire) : 0;
        if (seen & PZ__IO_CLOSED)
            return -EBADF;
        /* A clear bit says the last look found the descriptor not ready (the
         * call said -EAGAIN, or a read of a stream came back short) and no
         * event has come since: the call would fail, so wait for the event at
         * once, as pz_select does (one system call less per request on a
         * connection that waits between requests).  Not after an end of
         * stream (no event follows it), and not once the deadline has passed:
         * a caller that only tries gets the kernel's own answer, which can be
         * ahead of the events the poller has seen. */
        ssize_t n;
        if (src && !(seen & (bit | PZ__IO_ENDED)) && !pz__deadline_reached(deadline))
            n = -EAGAIN;
        else
            n = fn(fd, ctx, src && src->socket);
        if (n != -EAGAIN && n != -EWOULDBLOCK && n != -EINTR) {
            note_short_read(src, seen, n, asked);
            return n;
        }
        if (n == -EINTR)
            continue;
        if (!src) {
            int r = thread_wait(fd, bit == PZ__IO_READ ? POLLIN : POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        /* The poller reports writability only once asked (the rule in
         * src/runtime/driver.c): ask, then try the call again, which sees
         * writability that came before the poller watched for it. */
        if (bit == PZ__IO_WRITE && (seen & PZ__IO_WRITE) && !(seen & PZ__IO_WATCH_WRITE)) {
            int r = pz__driver_watch_write(rt, src);
            if (r < 0)
                return r;
            continue;
        }
        /* Clear the bit only if no event came since the snapshot. */
        if (seen & bit) {
            uint64_t cleared = seen & ~bit;
            if (!atomic_compare_exchange_strong_explicit(&src->readiness, &seen, cleared, memory_order_acq_rel,
                                                         memory_order_acquire))
                continue;
        } else if (atomic_load_explicit(&src->readiness, memory_order_acquire) != seen) {
            continue;
        }
        int r = wait_ready(rt, src, bit, deadline);
        if (r < 0)
            return r;
    }
}

struct buf_ctx {
    void *buf;
    size_t n;
    int flags;
    size_t asked; /* what the last attempt asked for (note_short_read) */
};

static ssize_t try_read(int fd, void *ctx, bool sock)
{
    struct buf_ctx *c = ctx;
    c->asked = pz__fault_short(c->n);
    return sock ? pz__arch_recv(fd, c->buf, c->asked, 0) : pz__arch_read(fd, c->buf, c->asked);
}

static ssize_t try_recv(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct buf_ctx *c = ctx;
    c->asked = pz__fault_short(c->n);
    return pz__arch_recv(fd, c->buf, c->asked, c->flags);
}

static ssize_t try_send(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct buf_ctx *c = ctx;
    return pz__arch_send(fd, c->buf, pz__fault_short(c->n), c->flags | MSG_NOSIGNAL);
}

struct iov_ctx {
    const struct iovec *iov;
    int cnt;
    size_t asked; /* readv: the buffers' total size */
};

static ssize_t try_readv(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct iov_ctx *c = ctx;
    return pz__arch_readv(fd, c->iov, c->cnt);
}

/* writev on a descriptor that is not a socket (a pipe, a FIFO, a tty)
 * without SIGPIPE: the signal is blocked on the calling thread around the
 * call, and one the call raised is taken off the thread before the mask
 * comes back (a write to a pipe without reader directs it at the writing
 * thread).  Three system calls more than a plain writev (two when no
 * SIGPIPE came), paid only by pipes; sockets keep one sendmsg with
 * MSG_NOSIGNAL.  A SIGPIPE the thread already had blocked is left alone
 * (whoever blocked it collects it), except on a worker: workers run with
 * the asynchronous signals blocked by plaza itself (signal.h), so nobody
 * else would ever collect it there. */
static ssize_t writev_nosignal(int fd, const struct iovec *iov, int cnt)
{
    sigset_t pipe_only, old;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
    ssize_t n = writev(fd, iov, cnt);
    int e = errno;
    if (n < 0 && e == EPIPE && (!sigismember(&old, SIGPIPE) || pz__current_worker() != NULL)) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return n;
}

/* Writes go through sendmsg with MSG_NOSIGNAL, so a closed peer is -EPIPE
 * rather than SIGPIPE; a descriptor that is not a socket gets writev with
 * SIGPIPE held off. */
static ssize_t try_writev(int fd, void *ctx, bool sock)
{
    struct iov_ctx *c = ctx;
    struct iovec first;
    int cnt = c->cnt;
    const struct iovec *iov = c->iov;
    if (cnt > 0 && pz__fault_short(2) == 1) {
        /* A short write: only part of the first buffer. */
        first = iov[0];
        first.iov_len = pz__fault_short(first.iov_len);
        iov = &first;
        cnt = 1;
    }
    /* A NULL array stays the kernel's to refuse (-EFAULT), as below. */
    if (sock && cnt == 1 && iov)
        return pz__arch_send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt};
    ssize_t n = pz__arch_sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n == -ENOTSOCK)
        n = pz__sysio_result(writev_nosignal(fd, iov, cnt));
    return n;
}

/* A size over SSIZE_MAX (a negative ssize_t cast to size_t, usually) has
 * no meaning for the calls that return a byte count: pz_write_all would
 * return it as a negative "error". */
#define SIZE_BAD(n) ((n) > (size_t)SSIZE_MAX)

ssize_t pz_read(int fd, void *buf, size_t n, int64_t deadline)
{
    if (SIZE_BAD(n))
        return -EINVAL;
    struct buf_ctx c = {buf, n, 0, 0};
    return io_loop(fd, PZ__IO_READ, try_read, &c, deadline, &c.asked);
}

ssize_t pz_write(int fd, const void *buf, size_t n, int64_t deadline)
{
    if (SIZE_BAD(n))
        return -EINVAL;
    struct iovec one = {(void *)buf, n};
    return pz_writev(fd, &one, 1, deadline);
}

ssize_t pz_write_all(int fd, const void *buf, size_t n, int64_t deadline)
{
    if (SIZE_BAD(n))
        return -EINVAL;
    size_t done = 0;
    while (done < n) {
        ssize_t w = pz_write(fd, (const char *)buf + done, n - done, deadline);
        if (w < 0)
            return w;
        done += (size_t)w;
    }
    return (ssize_t)n;
}

ssize_t pz_readv(int fd, const struct iovec *iov, int iovcnt, int64_t deadline)
{
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL; /* sendmsg would say -EMSGSIZE for a negative count */
    struct iov_ctx c = {iov, iovcnt, 0};
    /* A NULL iov is the kernel's to refuse (-EFAULT), not read here. */
    for (int i = 0; iov && i < iovcnt; i++)
        c.asked = iov[i].iov_len > SIZE_MAX - c.asked ? SIZE_MAX : c.asked + iov[i].iov_len;
    return io_loop(fd, PZ__IO_READ, try_readv, &c, deadline, iov ? &c.asked : NULL);
}

ssize_t pz_writev(int fd, const struct iovec *iov, int iovcnt, int64_t deadline)
{
    if (iovcnt < 0 || iovcnt > IOV_MAX)
        return -EINVAL; /* sendmsg would say -EMSGSIZE for a negative count */
    struct iov_ctx c = {iov, iovcnt, 0};
    return io_loop(fd, PZ__IO_WRITE, try_writev, &c, deadline, NULL);
}

ssize_t pz_recv(int fd, void *buf, size_t n, int flags, int64_t deadline)
{
    if (SIZE_BAD(n))
        return -EINVAL;
    struct buf_ctx c = {buf, n, flags, 0};
    return io_loop(fd, PZ__IO_READ, try_recv, &c, deadline, (flags & MSG_PEEK) ? NULL : &c.asked);
}

ssize_t pz_send(int fd, const void *buf, size_t n, int flags, int64_t deadline)
{
    if (SIZE_BAD(n))
        return -EINVAL;
    struct buf_ctx c = {(void *)buf, n, flags, 0};
    return io_loop(fd, PZ__IO_WRITE, try_send, &c, deadline, NULL);
}

struct accept_ctx {
    struct sockaddr *addr;
    socklen_t *len;
};

static ssize_t try_accept(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct accept_ctx *c = ctx;
    if (pz__fault(PZ__FAULT_ACCEPT))
        return -EMFILE;
    return pz__sysio_result(accept4(fd, c->addr, c->len, SOCK_NONBLOCK | SOCK_CLOEXEC));
}

int pz_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int64_t deadline)
{
    struct accept_ctx c = {addr, addrlen};
    return (int)io_loop(fd, PZ__IO_READ, try_accept, &c, deadline, NULL);
}

/* Readiness as poll(2) sees it now: the PZ_* events asked that are ready,
 * or -EAGAIN.  pz_wait_fd asks it inside io_loop, after io_loop's snapshot
 * of the source's readiness bits: an edge the poller reports after the
 * snapshot changes the bits, so io_loop's clearing CAS fails and it asks
 * again; an edge reported before the snapshot is readiness this poll sees.
 * (Polling before the snapshot instead loses the edge that falls between
 * the two: the CAS then clears a bit nobody looked behind.) */
struct poll_ctx {
    int events; /* PZ_READABLE | PZ_WRITABLE */
};

static ssize_t try_poll(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct poll_ctx *c = ctx;
    struct pollfd p = {.fd = fd, .events = (short)(((c->events & PZ_READABLE) ? POLLIN : 0) |
                                                   ((c->events & PZ_WRITABLE) ? POLLOUT : 0))};
    int n = poll(&p, 1, 0);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EAGAIN;
    if (p.revents & POLLNVAL)
        return -EBADF;
    int ready = 0;
    if (p.revents & (POLLIN | POLLHUP | POLLERR))
        ready |= c->events & PZ_READABLE;
    if (p.revents & (POLLOUT | POLLHUP | POLLERR))
        ready |= c->events & PZ_WRITABLE;
    return ready ? ready : -EAGAIN;
}

/* Waits until fd is readable or writable.  Snapshot of the readiness bits
 * first, then poll: ready now returns what is ready; otherwise the bits
 * are cleared only if no event came since the snapshot (else look again).
 * Then waits in the driver for either bit (src/runtime/driver.c: checked
 * under the source's lock, woken by an event of either direction).
 * Returns the ready events, 0 to look again, or an error. */
static int wait_either(int fd, int64_t deadline)
{
    struct poll_ctx both = {PZ_READABLE | PZ_WRITABLE};
    pz__runtime *rt = NULL;
    int err = 0;
    pz__io_source *src = source_for_err(fd, &rt, &err);
    if (err < 0)
        return err;
    if (!src || atomic_load_explicit(&src->kind, memory_order_acquire) == PZ__SRC_BLOCKING) {
        ssize_t n = try_poll(fd, &both, false);
        if (n != -EAGAIN)
            return (int)n;
        int r = thread_wait(fd, POLLIN | POLLOUT, deadline);
        return r < 0 ? r : 0;
    }
    uint64_t seen = atomic_load_explicit(&src->readiness, memory_order_acquire);
    if (seen & PZ__IO_CLOSED)
        return -EBADF;
    ssize_t n = try_poll(fd, &both, false);
    if (n != -EAGAIN)
        return n == -EINTR ? 0 : (int)n;
    /* poll said neither: the bits are stale unless an event came since;
     * WRITE is cleared only once the poller watches writability (then
     * look again: src/runtime/driver.c). */
    if ((seen & PZ__IO_WRITE) && !(seen & PZ__IO_WATCH_WRITE)) {
        int r = pz__driver_watch_write(rt, src);
        return r < 0 ? r : 0;
    }
    if ((seen & (PZ__IO_READ | PZ__IO_WRITE)) &&
        !atomic_compare_exchange_strong_explicit(&src->readiness, &seen, seen & ~(uint64_t)(PZ__IO_READ | PZ__IO_WRITE),
                                                 memory_order_acq_rel, memory_order_acquire))
        return 0; /* an event came: look again */
    /* A driver waiter for both bits is woken by an event of either. */
    return pz__driver_wait(rt, src, PZ__IO_READ | PZ__IO_WRITE, deadline);
}

/* pz_wait_input's look: poll(2) the first time io_loop asks (with the
 * readiness snapshot taken before it, as try_poll); every later time "may
 * have input" without a system call.  io_loop asks again only after the
 * poller reported readability (wait_ready returned), or when an event came
 * between its snapshot and the clearing of the bit: in both an event came
 * after a look that found nothing, which is the answer the caller wants. */
struct input_ctx {
    bool looked;
};

static ssize_t try_input(int fd, void *ctx, bool sock)
{
    (void)sock;
    struct input_ctx *c = ctx;
    if (c->looked)
        return 1;
    c->looked = true;
    struct poll_ctx readable = {PZ_READABLE};
    return try_poll(fd, &readable, sock);
}

int pz_wait_input(int fd, int64_t deadline)
{
    struct input_ctx c = {false};
    ssize_t r = io_loop(fd, PZ__IO_READ, try_input, &c, deadline, NULL);
    return r < 0 ? (int)r : 0;
}

int pz_wait_fd(int fd, int events, int64_t deadline)
{
    if (fd < 0)
        return -EBADF;
    if (!(events & (PZ_READABLE | PZ_WRITABLE)) || (events & ~(PZ_READABLE | PZ_WRITABLE)))
        return -EINVAL;
    events &= PZ_READABLE | PZ_WRITABLE;
    if (events == (PZ_READABLE | PZ_WRITABLE)) {
        for (;;) {
            int r = wait_either(fd, deadline);
            if (r != 0)
                return r;
        }
    }
    struct poll_ctx one = {events};
    return (int)io_loop(fd, events == PZ_READABLE ? PZ__IO_READ : PZ__IO_WRITE, try_poll, &one, deadline, NULL);
}

int pz_connect(int fd, const struct sockaddr *addr, socklen_t addrlen, int64_t deadline)
{
    /* Said here, not left to connect(2): which of a bad descriptor and a
     * bad address a kernel (or an emulator) reports first varies. */
    if (fd < 0)
        return -EBADF;
    pz__runtime *rt = NULL;
    int bad = 0;
    /* Registered watching writability: the connect waits for it. */
    if (source_register(fd, &rt, &bad, PZ__EV_READ | PZ__EV_WRITE) == NULL)
        pz__set_nonblocking(fd); /* a failed registration is tried again by the wait */
    if (connect(fd, addr, addrlen) == 0)
        return 0;
    if (errno != EINPROGRESS && errno != EINTR)
        return -errno;
    int r = pz_wait_fd(fd, PZ_WRITABLE, deadline);
    if (r < 0)
        return r;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

/* Splits "host:port" / "[v6]:port" / ":port". */
static int split_hostport(const char *hp, char *host, size_t hostcap, char *port, size_t portcap)
{
    if (!hp)
        return -EINVAL;
    const char *colon;
    if (hp[0] == '[') {
        const char *end = strchr(hp, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        if ((size_t)(end - hp - 1) >= hostcap)
            return -EINVAL;
        memcpy(host, hp + 1, (size_t)(end - hp - 1));
        host[end - hp - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon || (size_t)(colon - hp) >= hostcap)
            return -EINVAL;
        memcpy(host, hp, (size_t)(colon - hp));
        host[colon - hp] = '\0';
    }
    if (strlen(colon + 1) == 0 || strlen(colon + 1) >= portcap)
        return -EINVAL;
    strcpy(port, colon + 1);
    return pz__port_check(port);
}

struct resolve {
    const char *host;
    const char *port;
    int passive;
    struct addrinfo *res;
    int err;
};

static void *resolve_fn(void *arg)
{
    struct resolve *r = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = r->passive ? AI_PASSIVE : AI_ADDRCONFIG};
    r->err = getaddrinfo(r->host[0] ? r->host : NULL, r->port, &hints, &r->res);
    return NULL;
}

static int resolve(const char *hostport, int passive, struct addrinfo **out)
{
    char host[256], port[32];
    if (split_hostport(hostport, host, sizeof host, port, sizeof port) < 0) {
        pz__report("cannot parse address \"%s\" (want host:port, [v6]:port or :port, port 0-65535)",
                   hostport ? hostport : "(null)");
        return -EINVAL;
    }
    struct resolve r = {host, port, passive, NULL, 0};
    /* Name lookups block: they run on the blocking pool. */
    int e = pz_blocking(resolve_fn, &r, NULL);
    if (e < 0)
        return e;
    if (r.err) {
        return pz__dns_error(r.err, errno);
    }
    *out = r.res;
    return 0;
}

int pz_tcp_listen(const char *hostport)
{
    return pz_tcp_listen_addr(hostport, NULL, NULL);
}

int pz_tcp_listen_addr(const char *hostport, struct sockaddr *addr, socklen_t *addrlen)
{
    struct addrinfo *res;
    int e = resolve(hostport, 1, &res);
    if (e < 0)
        return e;
    int err = -EADDRNOTAVAIL;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
            freeaddrinfo(res);
            if (addr && addrlen && getsockname(fd, addr, addrlen) < 0) {
                err = -errno;
                close(fd);
                return err;
            }
            return fd;
        }
        err = -errno;
        close(fd);
    }
    freeaddrinfo(res);
    return err;
}

int pz_tcp_dial(const char *hostport, int64_t deadline)
{
    struct addrinfo *res;
    int e = resolve(hostport, 0, &res);
    if (e < 0)
        return e;
    int err = -EADDRNOTAVAIL;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        err = pz_connect(fd, a->ai_addr, a->ai_addrlen, deadline);
        if (err == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            freeaddrinfo(res);
            return fd;
        }
        pz_close(fd);
        if (err == -ETIMEDOUT || err == -ECANCELED)
            break;
    }
    freeaddrinfo(res);
    return err;
}

int pz_close(int fd)
{
    if (fd < 0)
        return -EBADF;
    pz__runtime *rt = atomic_load_explicit(&pz__rt, memory_order_acquire);
    if (rt && rt->io_chunks) {
        pz__io_source *src = pz__io_source_of(rt, fd);
        if (src && atomic_load_explicit(&src->kind, memory_order_acquire) != PZ__SRC_NEW) {
            pz__spin_lock(&src->lock);
            if (atomic_load_explicit(&src->kind, memory_order_relaxed) == PZ__SRC_POLLED)
                pz__poller_del(rt->poller, fd);
            atomic_store_explicit(&src->kind, PZ__SRC_NEW, memory_order_release);
            pz__spin_unlock(&src->lock);
            /* Wake anyone still waiting; they see CLOSED and return -EBADF. */
            pz__io_source_signal(src, PZ__SIG_CLOSED);
        }
    }
    return close(fd) == 0 ? 0 : -errno;
}

pz__io_source *pz__io_source_register(int fd, pz__runtime **rtp)
{
    return source_for(fd, rtp);
}
