/* Linux implementation of the platform layer declared in arch.h. */
#define _GNU_SOURCE
#include "arch.h"

#include <errno.h>
#include <stdbool.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int pz__futex_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline)
{
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
        ts.tv_sec = (time_t)(deadline / 1000000000);
        ts.tv_nsec = (long)(deadline % 1000000000);
        tsp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a
     * retry after EINTR does not stretch the wait. */
    long r = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG,
                     expected, tsp, NULL, FUTEX_BITSET_MATCH_ANY);
    if (r == 0)
        return 0;
    if (errno == EAGAIN)
        return -EAGAIN;
    if (errno == ETIMEDOUT)
        return -ETIMEDOUT;
    return -EINTR;
}

int pz__futex_wake(_Atomic uint32_t *addr, int count)
{
    long r = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, count, NULL, NULL, 0);
    return r < 0 ? -errno : (int)r;
}

/* ---- asymmetric fences ---- */

bool pz__arch_heavy_fence_init(void)
{
#ifdef __NR_membarrier
    long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED))
        return false;
    return syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
    return false;
#endif
}

bool pz__arch_heavy_fence(void)
{
#ifdef __NR_membarrier
    /* Documented not to fail once registered, but a sandbox (seccomp) or
     * a checkpoint-restore may refuse it later: the caller must know.
     * 0.1 us alone, 0.3 us with another thread running (an IPI), on a
     * 2-vCPU VM. */
    return syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
    return false;
#endif
}

int64_t pz__clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t pz__clock_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int pz__cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

size_t pz__page_size(void)
{
    static size_t page;
    if (!page)
        page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

/* 0: not probed yet; otherwise the PZ__GUARD_* the kernel supports. */
static _Atomic int probed_guard;

static int probe_guard(void)
{
    size_t page = pz__page_size();
    void *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return PZ__GUARD_MPROTECT;
    /* EINVAL on kernels without guard regions.  An emulator (qemu-user)
     * may accept advice it does not pass on, so the guard is also checked:
     * the kernel must refuse to read it (EFAULT). */
    int kind = PZ__GUARD_MPROTECT;
    int fds[2];
    if (madvise(p, page, MADV_GUARD_INSTALL) == 0 && pipe2(fds, O_CLOEXEC) == 0) {
        if (write(fds[1], p, 1) < 0 && errno == EFAULT)
            kind = PZ__GUARD_MADVISE;
        close(fds[0]);
        close(fds[1]);
    }
    munmap(p, 2 * page);
    return kind;
}

int pz__stack_guard_kind(void)
{
    const char *forced = getenv("PLAZA_STACK_GUARD");
    if (forced && strcmp(forced, "mprotect") == 0)
        return PZ__GUARD_MPROTECT;
    int kind = atomic_load_explicit(&probed_guard, memory_order_relaxed);
    if (!kind) {
        kind = probe_guard();
        atomic_store_explicit(&probed_guard, kind, memory_order_relaxed);
    }
    return kind;
}

int pz__stack_map(size_t size, void **base)
{
    if (pz__fault(PZ__FAULT_MMAP))
        return -ENOMEM;
    /* MAP_NORESERVE: a stack costs only the pages a task touches, so the
     * commit charge of 100 000 idle tasks stays what they use. */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK,
                   -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    *base = p;
    return 0;
}

int pz__stack_guard(void *addr, size_t len, int kind)
{
    int r = kind == PZ__GUARD_MADVISE ? madvise(addr, len, MADV_GUARD_INSTALL) : mprotect(addr, len, PROT_NONE);
    return r == 0 ? 0 : -errno;
}

void pz__stack_discard(void *addr, size_t len)
{
    madvise(addr, len, MADV_DONTNEED);
}

void pz__stack_unmap(void *base, size_t size)
{
    munmap(base, size);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void pz__memory_prefault(void *addr, size_t len)
{
    uintptr_t page = (uintptr_t)pz__page_size();
    uintptr_t lo = ((uintptr_t)addr + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)addr + len) & ~(page - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE); /* best effort: EINVAL before 5.14 */
}

void pz__thread_precise_timers(void)
{
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
}

void pz__thread_set_name(const char *name)
{
    pthread_setname_np(pthread_self(), name);
}

void pz__thread_stack_bounds(void **lo, size_t *size)
{
    pthread_attr_t attr;
    *lo = NULL;
    *size = 0;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, lo, size);
        pthread_attr_destroy(&attr);
    }
}

void *pz__arch_context_init(void *lo, void *hi, void (*entry)(void *), void *arg)
{
    (void)lo;
    uintptr_t top = (uintptr_t)hi & ~(uintptr_t)15;
#if defined(__x86_64__)
    extern void pz__arch_context_start(void);
    /* After pz__arch_switch pops the 64-byte frame below and returns into
     * pz__arch_context_start, rsp must be 16-byte aligned (see switch.S). */
    uint64_t *sp = (uint64_t *)(top - 16);
    *--sp = (uint64_t)(uintptr_t)pz__arch_context_start; /* return address */
    *--sp = 0;                                          /* rbp */
    *--sp = 0;                                          /* rbx */
    *--sp = (uint64_t)(uintptr_t)entry;                 /* r12 */
    *--sp = (uint64_t)(uintptr_t)arg;                   /* r13 */
    *--sp = 0;                                          /* r14 */
    *--sp = 0;                                          /* r15 */
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ __volatile__("stmxcsr %0" : "=m"(mxcsr));
    __asm__ __volatile__("fnstcw %0" : "=m"(fpucw));
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    return sp;
#elif defined(__aarch64__)
    extern void pz__arch_context_start(void);
    uint64_t *sp = (uint64_t *)(top - 160);
    for (int i = 0; i < 20; i++)
        sp[i] = 0;
    sp[0] = (uint64_t)(uintptr_t)entry;                 /* x19 */
    sp[1] = (uint64_t)(uintptr_t)arg;                   /* x20 */
    sp[11] = (uint64_t)(uintptr_t)pz__arch_context_start; /* x30 */
    return sp;
#else
#error "plaza supports x86_64 and aarch64"
#endif
}

void pz__thread_sleep_until(int64_t deadline)
{
    struct timespec ts;
    if (deadline == INT64_MAX) {
        for (;;)
            pause();
    }
    ts.tv_sec = (time_t)(deadline / 1000000000);
    ts.tv_nsec = (long)(deadline % 1000000000);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ---- the poller ---- */

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>

int pz__poller_create(void)
{
    if (pz__fault(PZ__FAULT_POLLER))
        return -EMFILE;
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static uint32_t poller_interest(unsigned events)
{
    uint32_t k = EPOLLET;
    if (events & PZ__EV_READ)
        k |= EPOLLIN | EPOLLRDHUP;
    if (events & PZ__EV_WRITE)
        k |= EPOLLOUT;
    return k;
}

int pz__poller_add(int poller, int fd, void *data, unsigned events)
{
    if (pz__fault(PZ__FAULT_POLLER))
        return -ENOMEM;
    struct epoll_event ev = {.events = poller_interest(events), .data.ptr = data};
    if (epoll_ctl(poller, EPOLL_CTL_ADD, fd, &ev) == 0)
        return 0;
    return -errno;
}

int pz__poller_mod(int poller, int fd, void *data, unsigned events)
{
    struct epoll_event ev = {.events = poller_interest(events), .data.ptr = data};
    return epoll_ctl(poller, EPOLL_CTL_MOD, fd, &ev) == 0 ? 0 : -errno;
}

int pz__poller_del(int poller, int fd)
{
    return epoll_ctl(poller, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : -errno;
}

int pz__poller_wait(int poller, pz__event *events, int max, int64_t deadline)
{
    struct epoll_event evs[64];
    if (max > 64)
        max = 64;
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
        /* 0 is a look without waiting (the scheduler's polls between
         * tasks): no clock read for it. */
        int64_t left = deadline > 0 ? deadline - pz__clock_now() : 0;
        if (left < 0)
            left = 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        tsp = &ts;
    }
    /* epoll_pwait2 takes a nanosecond timeout; epoll_wait's milliseconds
     * would round a 100 us sleep up to 1 ms.  Kernels before 5.11 (and
     * qemu-user 7.2) lack it: then epoll_wait, rounding up. */
    static _Atomic bool no_pwait2;
    int n;
    if (!atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        n = epoll_pwait2(poller, evs, max, tsp, NULL);
        if (n < 0 && errno == ENOSYS) {
            atomic_store_explicit(&no_pwait2, true, memory_order_relaxed);
            return pz__poller_wait(poller, events, max, deadline);
        }
    } else {
        int ms = -1;
        if (tsp)
            ms = (int)((tsp->tv_sec * 1000000000LL + tsp->tv_nsec + 999999) / 1000000);
        n = epoll_wait(poller, evs, max, ms);
    }
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        unsigned e = 0, k = evs[i].events;
        if (k & (EPOLLIN | EPOLLRDHUP | EPOLLPRI))
            e |= PZ__EV_READ;
        if (k & EPOLLRDHUP)
            e |= PZ__EV_RDHUP;
        if (k & EPOLLOUT)
            e |= PZ__EV_WRITE;
        if (k & EPOLLHUP)
            e |= PZ__EV_HUP | PZ__EV_READ | PZ__EV_WRITE;
        if (k & EPOLLERR)
            e |= PZ__EV_ERR | PZ__EV_READ | PZ__EV_WRITE;
        events[i].data = evs[i].data.ptr;
        events[i].events = e;
    }
    return n;
}

int pz__waker_create(void)
{
    if (pz__fault(PZ__FAULT_EVENTFD))
        return -EMFILE;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static void waker_drain(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
}

/* The waker is registered edge-triggered (pz__poller_add), and every write
 * to an eventfd is a new edge, whatever its counter holds: so the poller
 * never needs to read it, which saves a system call per wake-up.  The
 * counter only grows; a write fails with EAGAIN once it would pass
 * 2^64 - 2, and then a read resets it and the write is made again. */
void pz__waker_signal(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0 && errno == EAGAIN) {
        waker_drain(fd);
        ssize_t r = write(fd, &one, sizeof one);
        (void)r;
    }
}

bool pz__fd_is_stream(int fd, bool *socket)
{
    int type = 0;
    socklen_t len = sizeof type;
    *socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
    if (*socket)
        return type == SOCK_STREAM;
    struct stat st;
    return errno == ENOTSOCK && fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

int pz__set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

int pz__thread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    if (pz__fault(PZ__FAULT_THREAD))
        return -EAGAIN;
    int e = pthread_create(th, attr, fn, arg);
    return -e;
}

void *pz__calloc(size_t n, size_t size)
{
    if (pz__fault(PZ__FAULT_MALLOC))
        return NULL;
    return calloc(n, size);
}

void pz__close_fd(int fd)
{
    close(fd);
}

/* Whether the system call numbers the kernel shows in /proc/<tid>/syscall
 * are this architecture's.  They are not under a user-mode emulator
 * (qemu-user runs an aarch64 program as an x86_64 process, so the kernel
 * shows the host's numbers).  The check reads the calling thread's own
 * file: while the kernel produces it, the thread is inside read(), so the
 * first number must be this architecture's SYS_read.  Computed once; a
 * thread that races the first computation computes the same answer. */
bool pz__arch_syscall_numbers_native(void)
{
    static _Atomic int known; /* 0 unknown, 1 native, 2 foreign */
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (k)
        return k == 1;
    char path[64], text[64];
    snprintf(path, sizeof path, "/proc/self/task/%ld/syscall", (long)syscall(SYS_gettid));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, text, sizeof text - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return false; /* no file (no /proc, or a kernel without it): say numbers only; retry next time */
    text[n] = '\0';
    k = strtol(text, NULL, 10) == SYS_read ? 1 : 2;
    atomic_store_explicit(&known, k, memory_order_relaxed);
    return k == 1;
}

/* The name of a few system calls a stalled worker may sit in (the numbers
 * of this architecture), for the monitor's stall reports; NULL for others,
 * and for every number when the kernel's numbers are not this
 * architecture's (see pz__arch_syscall_numbers_native). */
const char *pz__arch_syscall_name(long nr)
{
    if (!pz__arch_syscall_numbers_native())
        return NULL;
    switch (nr) {
#if defined(__x86_64__)
    case 0: return "read";
    case 1: return "write";
    case 7: return "poll";
    case 17: return "pread64";
    case 18: return "pwrite64";
    case 23: return "select";
    case 35: return "nanosleep";
    case 42: return "connect";
    case 43: return "accept";
    case 45: return "recvfrom";
    case 61: return "wait4";
    case 74: return "fsync";
    case 202: return "futex";
    case 230: return "clock_nanosleep";
    case 232: return "epoll_wait";
    case 270: return "pselect6";
    case 271: return "ppoll";
    case 281: return "epoll_pwait";
#elif defined(__aarch64__)
    case 22: return "epoll_pwait";
    case 63: return "read";
    case 64: return "write";
    case 67: return "pread64";
    case 68: return "pwrite64";
    case 72: return "pselect6";
    case 73: return "ppoll";
    case 82: return "fsync";
    case 98: return "futex";
    case 101: return "nanosleep";
    case 115: return "clock_nanosleep";
    case 202: return "accept";
    case 203: return "connect";
    case 207: return "recvfrom";
    case 260: return "wait4";
#endif
    default: return NULL;
    }
}
