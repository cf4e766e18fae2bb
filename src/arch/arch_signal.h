/*
 * The platform layer's signal calls (Linux: signal masks and signalfd),
 * used by the runtime's mask registry (src/runtime/sigmask.c) and by the
 * signal waits of the I/O layer (src/io/signal.c).
 */
#ifndef PZ_ARCH_SIGNAL_H
#define PZ_ARCH_SIGNAL_H

#include <signal.h>
#include <stdbool.h>

/* Blocks, on the calling thread, every signal that arrives
 * asynchronously: all but the ones a fault or abort() raises on the
 * faulting thread itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
 * SIGSYS, SIGABRT), which must keep reaching it (the stack-overflow
 * report runs on SIGSEGV).  Stores the previous mask in *old if old is
 * not NULL. */
void pz__sig_block_async(sigset_t *old);

/* pthread_sigmask wrappers: 0 or a negative errno. */
int pz__sig_block(const sigset_t *set, sigset_t *old);
int pz__sig_setmask(const sigset_t *set);

/* True if the signal can be waited for: a valid number, not one of the
 * fault signals above, not SIGKILL or SIGSTOP. */
bool pz__sig_waitable(int sig);

/* A non-blocking, close-on-exec signalfd for set; a descriptor or a
 * negative errno. */
int pz__signalfd_open(const sigset_t *set);
/* Reads one signal from a signalfd: its number, -EAGAIN if none is
 * pending, or a negative errno. */
int pz__signalfd_take(int fd);

/* Ends the process as signal sig's default action does (for SIGINT and
 * SIGTERM: killed by the signal, which a shell shows as 128 + sig).
 * Falls back to _exit(128 + sig) if the signal does not kill. */
_Noreturn void pz__sig_die(int sig);

#endif
