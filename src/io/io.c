/*
 * Task-suspending descriptor calls on top of the runtime's poller driver
 * (src/runtime/driver.c).
 *
 * Every call follows one loop: snapshot the source's readiness word, try
 * the non-blocking system call, and on EAGAIN clear the readiness bit if no
 * event came meanwhile, then park until the bit is set again, the deadline
 * passes or the task is cancelled.  Outside a task (or with no runtime) the
 * caller's thread waits in poll(2) instead.
 */
#define _GNU_SOURCE
#include "io_internal.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef PZ_TSAN
#include <sanitizer/tsan_interface.h>
#endif

/* One system call attempt: returns >= 0 on success or -errno. */
typedef ssize_t (*io_try_fn)(int fd, void *ctx);

/* Where the caller will wait, or NULL: no runtime or not in a task. */
static pz__io_source *source_for(int fd, pz__runtime **rtp)
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
        atomic_store_explicit(&src->readiness, 0, memory_order_relaxed);
#ifdef PZ_TSAN
        /* Pairs with the reactor's acquire: epoll carries this edge. */
        __tsan_release(src);
#endif
        if (pz__set_nonblocking(fd) < 0 || pz__poller_add(rt->poller, fd, src) < 0)
            kind = PZ__SRC_BLOCKING; /* a regular file, or not pollable */
        atomic_store_explicit(&src->kind, kind, memory_order_release);
    }
    pz__spin_unlock(&src->lock);
    return src;
}

/* Parks until bit is set in src's readiness; 0 or a negative error. */
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
    return (void *)(intptr_t)b->fn(b->fd, b->ctx);
}

static ssize_t io_loop(int fd, uint64_t bit, io_try_fn fn, void *ctx, int64_t deadline)
{
    if (fd < 0)
        return -EBADF;
    pz__runtime *rt = NULL;
    pz__io_source *src = source_for(fd, &rt);
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
        ssize_t n = fn(fd, ctx);
        if (n != -EAGAIN && n != -EWOULDBLOCK && n != -EINTR)
            return n;
        if (n == -EINTR)
            continue;
        if (!src) {
            int r = thread_wait(fd, bit == PZ__IO_READ ? POLLIN : POLLOUT, deadline);
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

static inline ssize_t result_of(ssize_t n)
{
    return n < 0 ? -errno : n;
}

struct buf_ctx {
    void *buf;
    size_t n;
    int flags;
};

static ssize_t try_read(int fd, void *ctx)
{
    struct buf_ctx *c = ctx;
    return result_of(read(fd, c->buf, c->n));
}

static ssize_t try_recv(int fd, void *ctx)
{
    struct buf_ctx *c = ctx;
    return result_of(recv(fd, c->buf, c->n, c->flags));
}

static ssize_t try_send(int fd, void *ctx)
{
    struct buf_ctx *c = ctx;
    return result_of(send(fd, c->buf, c->n, c->flags | MSG_NOSIGNAL));
}

struct iov_ctx {
    const struct iovec *iov;
    int cnt;
};

static ssize_t try_readv(int fd, void *ctx)
{
    struct iov_ctx *c = ctx;
    return result_of(readv(fd, c->iov, c->cnt));
}

/* Writes go through sendmsg with MSG_NOSIGNAL, so a closed peer is -EPIPE
 * rather than SIGPIPE; a descriptor that is not a socket gets writev. */
static ssize_t try_writev(int fd, void *ctx)
{
    struct iov_ctx *c = ctx;
    struct msghdr m = {.msg_iov = (struct iovec *)c->iov, .msg_iovlen = (size_t)c->cnt};
    ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK)
        n = writev(fd, c->iov, c->cnt);
    return result_of(n);
}

ssize_t pz_read(int fd, void *buf, size_t n, int64_t deadline)
{
    struct buf_ctx c = {buf, n, 0};
    return io_loop(fd, PZ__IO_READ, try_read, &c, deadline);
}

ssize_t pz_write(int fd, const void *buf, size_t n, int64_t deadline)
{
    struct iovec one = {(void *)buf, n};
    return pz_writev(fd, &one, 1, deadline);
}

ssize_t pz_write_all(int fd, const void *buf, size_t n, int64_t deadline)
{
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
    struct iov_ctx c = {iov, iovcnt};
    return io_loop(fd, PZ__IO_READ, try_readv, &c, deadline);
}

ssize_t pz_writev(int fd, const struct iovec *iov, int iovcnt, int64_t deadline)
{
    struct iov_ctx c = {iov, iovcnt};
    return io_loop(fd, PZ__IO_WRITE, try_writev, &c, deadline);
}

ssize_t pz_recv(int fd, void *buf, size_t n, int flags, int64_t deadline)
{
    struct buf_ctx c = {buf, n, flags};
    return io_loop(fd, PZ__IO_READ, try_recv, &c, deadline);
}

ssize_t pz_send(int fd, const void *buf, size_t n, int flags, int64_t deadline)
{
    struct buf_ctx c = {(void *)buf, n, flags};
    return io_loop(fd, PZ__IO_WRITE, try_send, &c, deadline);
}

struct accept_ctx {
    struct sockaddr *addr;
    socklen_t *len;
};

static ssize_t try_accept(int fd, void *ctx)
{
    struct accept_ctx *c = ctx;
    return result_of(accept4(fd, c->addr, c->len, SOCK_NONBLOCK | SOCK_CLOEXEC));
}

int pz_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int64_t deadline)
{
    struct accept_ctx c = {addr, addrlen};
    return (int)io_loop(fd, PZ__IO_READ, try_accept, &c, deadline);
}

static ssize_t try_nothing(int fd, void *ctx)
{
    (void)fd;
    bool *first = ctx;
    if (*first) {
        *first = false;
        return -EAGAIN;
    }
    return 0;
}

int pz_wait_fd(int fd, int events, int64_t deadline)
{
    if (fd < 0 || !(events & (PZ_READABLE | PZ_WRITABLE)))
        return -EINVAL;
    struct pollfd p = {.fd = fd, .events = (short)(((events & PZ_READABLE) ? POLLIN : 0) |
                                                   ((events & PZ_WRITABLE) ? POLLOUT : 0))};
    for (;;) {
        /* Ask the kernel first: readiness that came before any wait. */
        int n = poll(&p, 1, 0);
        if (n > 0) {
            int ready = 0;
            if (p.revents & (POLLIN | POLLHUP | POLLERR))
                ready |= events & PZ_READABLE;
            if (p.revents & (POLLOUT | POLLHUP | POLLERR))
                ready |= events & PZ_WRITABLE;
            if (p.revents & POLLNVAL)
                return -EBADF;
            if (ready)
                return ready;
        }
        bool first = true;
        ssize_t r = io_loop(fd, (events & PZ_READABLE) ? PZ__IO_READ : PZ__IO_WRITE, try_nothing, &first, deadline);
        if (r < 0)
            return (int)r;
    }
}

int pz_connect(int fd, const struct sockaddr *addr, socklen_t addrlen, int64_t deadline)
{
    pz__runtime *rt = NULL;
    if (source_for(fd, &rt) == NULL)
        pz__set_nonblocking(fd);
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
    return 0;
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
        pz__report("cannot parse address \"%s\" (want host:port, [v6]:port or :port)", hostport ? hostport : "(null)");
        return -EINVAL;
    }
    struct resolve r = {host, port, passive, NULL, 0};
    /* Name lookups block: they run on the blocking pool. */
    int e = pz_blocking(resolve_fn, &r, NULL);
    if (e < 0)
        return e;
    if (r.err) {
        pz__report("cannot resolve \"%s\": %s", hostport, gai_strerror(r.err));
        return r.err == EAI_SYSTEM ? -errno : -EADDRNOTAVAIL;
    }
    *out = r.res;
    return 0;
}

int pz_tcp_listen(const char *hostport)
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
