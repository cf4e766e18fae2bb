/*
 * The platform layer: everything plaza does that depends on the processor or
 * the kernel is declared here and implemented under src/arch/.  The rest of
 * the library is portable C11 on top of it.
 */
#ifndef PZ_ARCH_H
#define PZ_ARCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Switches from the running context to the one whose stack pointer is
 * load_sp, storing the running context's stack pointer in *save_sp.  Returns
 * when some other context switches back to *save_sp. */
void pz__arch_switch(void **save_sp, void *load_sp);

/* Prepares a fresh stack [lo, hi) so that switching to the returned stack
 * pointer calls entry(arg) on it.  entry must never return. */
void *pz__arch_context_init(void *lo, void *hi, void (*entry)(void *), void *arg);

/* A hint to the processor that the caller is spinning. */
static inline void pz__arch_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* Futex wrappers (private futexes).  pz__futex_wait sleeps while *addr ==
 * expected, until woken or until the absolute CLOCK_MONOTONIC deadline in
 * nanoseconds passes (deadline < 0: no deadline).  Returns 0 when woken (or
 * spuriously), -EAGAIN when *addr differed, -ETIMEDOUT, -EINTR. */
int pz__futex_wait(_Atomic uint32_t *addr, uint32_t expected, int64_t deadline);
int pz__futex_wake(_Atomic uint32_t *addr, int count);

/* Monotonic clock in nanoseconds. */
/* Asymmetric fences (Linux membarrier, private expedited).  After
 * pz__arch_heavy_fence() returns, every other thread of the process has
 * executed a full memory barrier at some point since the call began (or is
 * not running, which implies one): so a thread that pairs its own accesses
 * with only a compiler barrier is ordered against the caller as if both had
 * fenced.  pz__arch_heavy_fence_init() registers the process once and
 * returns false if the kernel (or an emulator, or a sandbox) cannot do it;
 * then nobody may rely on the pairing.  pz__arch_heavy_fence() returns
 * false if the fence did not run (the kernel refused it): then the caller
 * is ordered against nobody. */
bool pz__arch_heavy_fence_init(void);
bool pz__arch_heavy_fence(void);

int64_t pz__clock_now(void);
/* The monotonic clock at the kernel tick's resolution (1-4 ms on Linux),
 * for decisions that only need "about a millisecond": it costs a quarter
 * of pz__clock_now. */
int64_t pz__clock_coarse(void);

/* How far behind pz__clock_now the coarse clock can be: it is the time of
 * the last tick (1-10 ms behind at HZ 1000-100), never ahead.  A tickless
 * idle processor stops its tick, but the thread asking runs, so some
 * processor keeps the timekeeping; 20 ms leaves room for a late tick. */
#define PZ__CLOCK_COARSE_SLACK_NS (20 * 1000 * 1000)

/* Whether deadline (ns; INT64_MAX never comes) may have come: it is within
 * the slack of the coarse clock, or behind it.  Deadlines are nearly always
 * far off when they are checked (a request's timeout, seconds away), so
 * this read of the coarse clock answers most checks, and only a deadline
 * that is near needs the precise clock.  A wait with a deadline checks it
 * twice, and the precise reads were the largest item of the reactor's work
 * in user space on an echo round trip (about 2% of the server's CPU time,
 * `perf record`). */
static inline bool pz__deadline_near(int64_t deadline)
{
    return deadline != INT64_MAX && (deadline <= INT64_MIN + PZ__CLOCK_COARSE_SLACK_NS ||
                                     deadline - PZ__CLOCK_COARSE_SLACK_NS <= pz__clock_coarse());
}

/* Whether the monotonic clock has reached deadline. */
static inline bool pz__deadline_reached(int64_t deadline)
{
    return pz__deadline_near(deadline) && deadline <= pz__clock_now();
}

/* Sleeps the calling thread until the CLOCK_MONOTONIC deadline (ns);
 * INT64_MAX sleeps forever. */
void pz__thread_sleep_until(int64_t deadline);

/* Number of online processors. */
int pz__cpu_count(void);

/* Memory for task stacks.
 *
 * pz__stack_map reserves size bytes (a multiple of the page size) readable
 * and writable, committing nothing (pages come when touched), and stores
 * the base in *base; 0 or -errno (-ENOMEM when memory or the kernel's
 * mapping count runs out).  pz__stack_guard makes [addr, addr + len)
 * fault on any access, the way pz__stack_guard_kind chose:
 *
 * - PZ__GUARD_MADVISE: madvise(MADV_GUARD_INSTALL) (Linux 6.13): the guard
 *   lives in the page tables, so the mapping stays one memory area, however
 *   many guards it holds, and neighbouring mappings may merge;
 * - PZ__GUARD_MPROTECT: mprotect(PROT_NONE): every guard splits the mapping
 *   and costs the kernel two more memory areas (vm.max_map_count).
 *
 * pz__stack_guard_kind probes the kernel (one page mapped, guarded and
 * unmapped) the first time, unless the environment variable
 * PLAZA_STACK_GUARD says "mprotect" or "madvise"; it reads that variable
 * at every call, so a test can force the fallback.  pz__stack_discard
 * gives the pages of [addr, addr + len) back (they read as zero again);
 * guards stay in place. */
enum { PZ__GUARD_MADVISE = 1, PZ__GUARD_MPROTECT = 2 };
size_t pz__page_size(void);
int pz__stack_guard_kind(void);
int pz__stack_map(size_t size, void **base);
int pz__stack_guard(void *addr, size_t len, int kind);
void pz__stack_discard(void *addr, size_t len);
void pz__stack_unmap(void *base, size_t size);

/* Faults in, for writing, the whole pages inside [addr, addr + len) in one
 * system call (madvise(MADV_POPULATE_WRITE), Linux 5.14), so that memory
 * about to be used in full is not taken one page fault at a time; where
 * the kernel lacks it, nothing happens and the pages come when touched. */
void pz__memory_prefault(void *addr, size_t len);

/* Makes the kernel's timer slack of the calling thread as small as it goes,
 * so a sleep of 100 us is not rounded up by the default 50 us slack. */
void pz__thread_precise_timers(void);

/* Names the calling thread (visible in top, gdb, perf). */
void pz__thread_set_name(const char *name);

/* The bounds of the calling thread's own stack. */
void pz__thread_stack_bounds(void **lo, size_t *size);

/* The I/O poller (epoll on Linux), edge-triggered.  Events are reported as
 * PZ__EV_* bits with the pointer given at registration. */
enum { PZ__EV_READ = 1, PZ__EV_WRITE = 2, PZ__EV_HUP = 4, PZ__EV_ERR = 8, PZ__EV_RDHUP = 16 };
typedef struct pz__event {
    void *data;
    unsigned events;
} pz__event;
int pz__poller_create(void);
/* Registers fd, edge-triggered, for the readiness events asked
 * (PZ__EV_READ: readable and the peer's end of stream; PZ__EV_WRITE:
 * writable; hang-ups and errors are always reported).  Returns 0, -EPERM
 * for a descriptor the poller cannot watch (a regular file), or another
 * negative errno. */
int pz__poller_add(int poller, int fd, void *data, unsigned events);
/* Changes the events fd is registered for.  A readiness asked for that
 * holds already is reported as an event (the kernel looks at the
 * descriptor again), but src/runtime/driver.c does not rely on it. */
int pz__poller_mod(int poller, int fd, void *data, unsigned events);
int pz__poller_del(int poller, int fd);
/* Waits until an event or the absolute deadline (ns; < 0: none; a past
 * deadline does not block).  Returns the number of events or -errno. */
int pz__poller_wait(int poller, pz__event *events, int max, int64_t deadline);
/* A wake-up descriptor (eventfd) that the poller watches. */
int pz__waker_create(void);
void pz__waker_signal(int fd);
int pz__set_nonblocking(int fd);
/* Whether fd is a byte stream whose read returns everything it has up to
 * the size asked: a stream socket or a pipe/FIFO (not a datagram socket,
 * not a terminal, not a file).  *socket says whether it is a socket. */
bool pz__fd_is_stream(int fd, bool *socket);

/* pthread_create, returning 0 or -errno (a fault site). */
int pz__thread_create(pthread_t *th, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);
/* calloc (a fault site). */
void *pz__calloc(size_t n, size_t size);
void pz__close_fd(int fd);

/* linux.c: the name of system call nr on this architecture, or NULL. */
const char *pz__arch_syscall_name(long nr);
/* False when /proc shows system call numbers of another architecture (a
 * user-mode emulator such as qemu-user): then no number is named. */
bool pz__arch_syscall_numbers_native(void);

/* unwind.c: backtraces of suspended contexts and symbols (see there). */
/* The return addresses of a context suspended by pz__arch_switch with the
 * saved stack pointer sp, innermost first; the count (0: not available). */
int pz__arch_backtrace_saved(void *sp, void **frames, int max);
/* A symbol session for pz__arch_symbolize (NULL: none, addresses only). */
void *pz__arch_symbols_open(void);
void pz__arch_symbols_close(void *session);
/* "symbol (file.c:line)" for addr, or what can be had; is_return: addr is
 * a return address (the call is just before it). */
void pz__arch_symbolize(void *session, void *addr, bool is_return, char *buf, size_t size);
/* Runs fn(arg) on a thread of its own (the default stack, megabytes) and
 * waits for it: for work that needs more stack than a task may have, such
 * as libdw reading a program's DWARF (a 128 KiB task stack overflowed in
 * it).  Runs fn in place if no thread can be made. */
void pz__arch_run_on_own_stack(void (*fn)(void *), void *arg);

#include "fault.h"

#endif
