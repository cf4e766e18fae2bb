/* Linux implementation of the signal calls declared in arch_signal.h. */
#define _GNU_SOURCE
#include "arch_signal.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <unistd.h>

static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};

void pz__sig_block_async(sigset_t *old)
{
    sigset_t set;
    sigfillset(&set);
    for (size_t i = 0; i < sizeof fault_signals / sizeof fault_signals[0]; i++)
        sigdelset(&set, fault_signals[i]);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

int pz__sig_block(const sigset_t *set, sigset_t *old)
{
    return -pthread_sigmask(SIG_BLOCK, set, old);
}

int pz__sig_setmask(const sigset_t *set)
{
    return -pthread_sigmask(SIG_SETMASK, set, NULL);
}

bool pz__sig_waitable(int sig)
{
    if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP)
        return false;
    for (size_t i = 0; i < sizeof fault_signals / sizeof fault_signals[0]; i++)
        if (sig == fault_signals[i])
            return false;
    return true;
}

int pz__signalfd_open(const sigset_t *set)
{
    int fd = signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int pz__signalfd_take(int fd)
{
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    if (n < 0)
        return -errno;
    if ((size_t)n != sizeof si)
        return -EIO;
    return (int)si.ssi_signo;
}

_Noreturn void pz__sig_die(int sig)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    /* Raised at this thread and unblocked here, so it is delivered before
     * pthread_sigmask returns. */
    raise(sig);
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    _exit(128 + sig);
}
