/*
 * plaza I/O: socket calls that suspend the calling task until the
 * descriptor is ready, the deadline passes or the task is cancelled.
 *
 * The runtime registers each descriptor once with its poller (epoll,
 * edge-triggered) the first time a call here uses it, and makes it
 * non-blocking.  A worker with nothing to run waits in the poller, so
 * readiness wakes exactly the tasks waiting on that descriptor.  Called
 * outside a task, the calls block the calling thread (poll).  A descriptor
 * the poller cannot watch (a regular file) is served by the blocking pool,
 * transparently.
 *
 * Every call returns a negative errno value on failure: -ETIMEDOUT at the
 * deadline (absolute pz_now() nanoseconds, PZ_FOREVER for none),
 * -ECANCELED when the task is cancelled, -EBADF if the descriptor is closed
 * with pz_close while a task waits on it, or the system call's own error.
 *
 * Arguments, checked in this order (tests/test_bad_args.c checks each):
 *   - a size over SSIZE_MAX (a negative ssize_t passed as size_t) gives
 *     -EINVAL at once (pz_read, pz_write, pz_write_all, pz_recv, pz_send);
 *     a negative iovcnt or one over IOV_MAX gives -EINVAL (pz_readv,
 *     pz_writev); pz_wait_fd gives -EINVAL for events with no known bit
 *     or an unknown one;
 *   - a negative descriptor, or one that is not open (closed, or closed
 *     by pz_close), gives -EBADF;
 *   - a NULL buffer, iovec array or address with a size above 0 is passed
 *     to the system call and comes back as its error when the call
 *     reaches the kernel (-EFAULT; a read that would block first times
 *     out or waits as usual, except under an emulator such as qemu-user,
 *     which may check the buffer first); a zero size with any buffer is a call of
 *     size 0 (pz_write_all of 0 bytes returns 0);
 *   - flags go to the system call unchanged: recv(2) refuses some unknown
 *     bits with -EINVAL, send(2) ignores bits it does not know;
 *   - pz_accept may be given NULL addr and addrlen (the peer is not
 *     stored); pz_tcp_listen_addr stores the address only when both addr
 *     and addrlen are given (a *addrlen too small truncates it, and
 *     *addrlen says how long it was);
 *   - pz_tcp_listen, pz_tcp_listen_addr, pz_tcp_dial: a NULL or malformed
 *     hostport gives -EINVAL (reported);
 *   - pz_sock_port of a socket that is not TCP or UDP over IP gives
 *     -EAFNOSUPPORT.
 * A deadline in the past (any value below pz_now(), negative ones too)
 * means "do not wait": the call tries once and returns -ETIMEDOUT if it
 * would block.  The calls work outside a task too (they block the
 * thread).
 *
 * Close descriptors that plaza has seen with pz_close: it forgets the
 * registration first, so a new descriptor that gets the same number starts
 * clean, and it wakes any task still waiting on it.
 */
#ifndef PLAZA_IO_H
#define PLAZA_IO_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PZ_READABLE 1
#define PZ_WRITABLE 2

ssize_t pz_read(int fd, void *buf, size_t n, int64_t deadline);
ssize_t pz_write(int fd, const void *buf, size_t n, int64_t deadline);
/* Writes all n bytes unless an error or the deadline stops it; returns n or
 * a negative error (some bytes may have been written then). */
ssize_t pz_write_all(int fd, const void *buf, size_t n, int64_t deadline);
ssize_t pz_readv(int fd, const struct iovec *iov, int iovcnt, int64_t deadline);
ssize_t pz_writev(int fd, const struct iovec *iov, int iovcnt, int64_t deadline);
ssize_t pz_recv(int fd, void *buf, size_t n, int flags, int64_t deadline);
/* Sends and writes never raise SIGPIPE: a closed peer, or a pipe without
 * reader, gives -EPIPE (docs/io.md says how, for pipes). */
ssize_t pz_send(int fd, const void *buf, size_t n, int flags, int64_t deadline);
/* Returns the new connection's descriptor (non-blocking, close-on-exec). */
int pz_accept(int fd, struct sockaddr *addr, socklen_t *addrlen, int64_t deadline);
int pz_connect(int fd, const struct sockaddr *addr, socklen_t addrlen, int64_t deadline);
/* Waits until fd is ready for any of the PZ_READABLE/PZ_WRITABLE events
 * asked; returns the ready ones, or -EINVAL if events asks for neither or
 * has another bit set. */
int pz_wait_fd(int fd, int events, int64_t deadline);
/* Waits until fd may have input, for a descriptor that other code reads
 * (a library that makes its own recv calls, such as libpq): one look
 * (poll) and, if nothing is there, the wait for the poller's next
 * readability event, after which it returns without looking again, so a
 * wait costs one system call where pz_wait_fd makes two.  The caller's
 * own read then finds what came (an event can be spurious: that read says
 * EAGAIN, and the caller waits again).  Returns 0, or -ETIMEDOUT,
 * -ECANCELED, -EBADF. */
int pz_wait_input(int fd, int64_t deadline);

/* "host:port", "[v6addr]:port" or ":port" (all addresses); the port is a
 * decimal number from 0 to 65535 (else -EINVAL), 0 for one the kernel
 * picks.  Returns a listening TCP socket (SO_REUSEADDR, backlog 1024), or
 * a negative error (a PZ_EDNS_* code when the host cannot be resolved). */
int pz_tcp_listen(const char *hostport);
/* The same, storing the bound address (with the port the kernel picked)
 * in *addr, of at most *addrlen bytes, and its length in *addrlen. */
int pz_tcp_listen_addr(const char *hostport, struct sockaddr *addr, socklen_t *addrlen);
/* The local port of a TCP or UDP socket (IPv4 or IPv6), or a negative
 * error. */
int pz_sock_port(int fd);
/* Resolves host (on the blocking pool) and connects to the first address
 * that answers; TCP_NODELAY is set.  Returns the connected socket, -EINVAL
 * for a malformed address or a port out of 0-65535, a PZ_EDNS_* code
 * (runtime.h) when the name cannot be resolved, or the connection's
 * error. */
int pz_tcp_dial(const char *hostport, int64_t deadline);

/* Forgets fd's registration, wakes its waiters (-EBADF) and closes it. */
int pz_close(int fd);

#ifdef __cplusplus
}
#endif
#endif
