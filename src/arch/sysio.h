/* Descriptor I/O for the reactor's attempts (src/io/io.c): read, readv,
 * recv, send and sendmsg, each returning the count or -errno.
 *
 * The C library's wrappers of these calls are cancellation points: around
 * every call they switch the thread's cancellation type on and off, two
 * atomic read-modify-writes of the thread's descriptor (about 2% of an
 * echo server's CPU time at 1 000 connections, `perf record`).  A worker
 * thread is never cancelled (plaza cancels tasks, not threads), so the
 * calls go to the kernel through syscall(), which is not a cancellation
 * point.  Sanitizer builds keep the C library's functions: the sanitizers
 * intercept them (AddressSanitizer checks the buffers, ThreadSanitizer
 * orders a write to a descriptor before the read that sees it), and a raw
 * call would hide both from them. */
#ifndef PZ_ARCH_SYSIO_H
#define PZ_ARCH_SYSIO_H

#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PZ__SYSIO_LIBC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define PZ__SYSIO_LIBC 1
#endif
#endif

static inline ssize_t pz__sysio_result(long n)
{
    return n < 0 ? -errno : (ssize_t)n;
}

#ifdef PZ__SYSIO_LIBC
static inline ssize_t pz__arch_read(int fd, void *buf, size_t n)
{
    return pz__sysio_result(read(fd, buf, n));
}
static inline ssize_t pz__arch_readv(int fd, const struct iovec *iov, int cnt)
{
    return pz__sysio_result(readv(fd, iov, cnt));
}
static inline ssize_t pz__arch_recv(int fd, void *buf, size_t n, int flags)
{
    return pz__sysio_result(recv(fd, buf, n, flags));
}
static inline ssize_t pz__arch_send(int fd, const void *buf, size_t n, int flags)
{
    return pz__sysio_result(send(fd, buf, n, flags));
}
static inline ssize_t pz__arch_sendmsg(int fd, const struct msghdr *m, int flags)
{
    return pz__sysio_result(sendmsg(fd, m, flags));
}
#else
static inline ssize_t pz__arch_read(int fd, void *buf, size_t n)
{
    return pz__sysio_result(syscall(SYS_read, fd, buf, n));
}
static inline ssize_t pz__arch_readv(int fd, const struct iovec *iov, int cnt)
{
    return pz__sysio_result(syscall(SYS_readv, fd, iov, cnt));
}
static inline ssize_t pz__arch_recv(int fd, void *buf, size_t n, int flags)
{
    return pz__sysio_result(syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL));
}
static inline ssize_t pz__arch_send(int fd, const void *buf, size_t n, int flags)
{
    return pz__sysio_result(syscall(SYS_sendto, fd, buf, n, flags, NULL, 0));
}
static inline ssize_t pz__arch_sendmsg(int fd, const struct msghdr *m, int flags)
{
    return pz__sysio_result(syscall(SYS_sendmsg, fd, m, flags));
}
#endif

#endif
