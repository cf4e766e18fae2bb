/* Linux implementation of the platform layer declared in arch.h. */
#define _GNU_SOURCE
#include "arch.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
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

int64_t pz__clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

void *pz__stack_map(size_t size, size_t guard)
{
    /* MAP_NORESERVE: a stack costs only the pages a task touches, so the
     * commit charge of 100 000 idle tasks stays what they use. */
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    if (guard && mprotect(base, guard, PROT_NONE) != 0) {
        munmap(base, size);
        return NULL;
    }
    return base;
}

void pz__stack_unmap(void *base, size_t size)
{
    munmap(base, size);
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
