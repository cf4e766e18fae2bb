/* dbserver: the loopback "database" the logic-section workloads talk to.
 *
 *     dbserver port=N delay_us=D seconds=S
 *
 * Listens on 127.0.0.1:N (N=0: any free port) and prints the port it got as
 * the first line of stdout ("port=N"), so a driver can start it without
 * guessing a free port.  For every 16-byte request on a connection it sends
 * the same 16 bytes back D microseconds after the request arrived: the
 * stand-in for a query that takes D µs on a database.  It exits by itself
 * after S seconds, or at SIGTERM/SIGINT, and then prints on stderr the
 * delays it actually gave (measured from the moment the request was read to
 * just before the reply is written).
 *
 * It is plain C with one thread per connection, not plaza, so it treats
 * every client (plaza, tokio, Go) alike.  Why one thread per connection:
 * the delay must be per request and must not hold up the other connections;
 * a thread that sleeps until its own deadline gives both with no timer
 * bookkeeping, and the clients open at most a few dozen connections.
 *
 * How the delay is made, and why:
 *   - D >= 100: clock_nanosleep(TIMER_ABSTIME) to WAKE_EARLY_NS before the
 *     deadline, with the thread's timer slack set to 1 ns (the default 50 µs
 *     slack would add up to 50 µs to every delay), then a busy-wait to the
 *     deadline.  Sleeping most of the delay costs no CPU, which matters on a
 *     small machine where the clients need the cores.
 *   - 0 < D < 100: a busy-wait on the connection's own thread until the
 *     deadline: a sleep this short overshoots by the wake-up latency
 *     (tens of µs), which would be a large error on 50 µs.  Only the
 *     connection with a request in flight spins.
 *   - D = 0: the reply is written at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 16

/* A thread woken from clock_nanosleep on this kind of machine (a VM) runs
 * 30-50 µs after its deadline even with 1 ns of slack; waking this much
 * early and spinning the rest puts the reply within a few µs of it, at the
 * price of about 7% of a core per 1 ms request in flight. */
#define WAKE_EARLY_NS 75000

static long delay_ns;

/* Delay statistics across all connections: a count, a sum and the largest
 * overshoot, plus a coarse histogram of the overshoot in µs (the last bin
 * takes everything above) for the p50/p99 printed at exit. */
#define OVER_BINS 1001
static _Atomic uint64_t stat_n, stat_sum_ns, stat_max_ns;
static _Atomic uint64_t over_hist[OVER_BINS];

static volatile sig_atomic_t stopping;

static void on_stop(int sig)
{
    (void)sig;
    stopping = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wait_until(int64_t deadline)
{
    if (delay_ns >= 100000) {
        int64_t wake = deadline - WAKE_EARLY_NS;
        struct timespec ts = {wake / 1000000000, wake % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
    }
    /* Short delays spin all the way; long ones spin over the last
     * WAKE_EARLY_NS only. */
    while (now_ns() < deadline)
        ;
}

static void record(int64_t given)
{
    uint64_t g = given > 0 ? (uint64_t)given : 0;
    atomic_fetch_add_explicit(&stat_n, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&stat_sum_ns, g, memory_order_relaxed);
    uint64_t m = atomic_load_explicit(&stat_max_ns, memory_order_relaxed);
    while (g > m && !atomic_compare_exchange_weak(&stat_max_ns, &m, g))
        ;
    uint64_t over_us = g > (uint64_t)delay_ns ? (g - (uint64_t)delay_ns) / 1000 : 0;
    if (over_us >= OVER_BINS)
        over_us = OVER_BINS - 1;
    atomic_fetch_add_explicit(&over_hist[over_us], 1, memory_order_relaxed);
}

static bool read_full(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            return false;
    }
    return true;
}

static bool write_full(int fd, const char *buf, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = send(fd, buf + put, n - put, MSG_NOSIGNAL);
        if (r > 0)
            put += (size_t)r;
        else if (r < 0 && errno == EINTR)
            continue;
        else
            return false;
    }
    return true;
}

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    /* Timer slack is per thread; 1 ns makes the sleep wake at the deadline. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    char buf[MSG];
    while (read_full(fd, buf, MSG)) {
        int64_t t0 = now_ns();
        if (delay_ns > 0)
            wait_until(t0 + delay_ns);
        record(now_ns() - t0);
        if (!write_full(fd, buf, MSG))
            break;
    }
    close(fd);
    return NULL;
}

static long arg(int argc, char **argv, const char *key, long def)
{
    size_t k = strlen(key);
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], key, k) == 0 && argv[i][k] == '=')
            return strtol(argv[i] + k + 1, NULL, 10);
    return def;
}

static uint64_t over_pct(uint64_t n, int pct)
{
    uint64_t want = (n * (uint64_t)pct + 99) / 100, seen = 0;
    for (int b = 0; b < OVER_BINS; b++) {
        seen += atomic_load(&over_hist[b]);
        if (seen >= want && want > 0)
            return (uint64_t)b;
    }
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strchr(argv[i], '=') ||
            (strncmp(argv[i], "port=", 5) && strncmp(argv[i], "delay_us=", 9) && strncmp(argv[i], "seconds=", 8))) {
            fprintf(stderr, "usage: dbserver port=N delay_us=D seconds=S\n");
            return 64;
        }
    }
    long port = arg(argc, argv, "port", 0);
    delay_ns = arg(argc, argv, "delay_us", 0) * 1000;
    long seconds = arg(argc, argv, "seconds", 60);
    if (port < 0 || port > 65535 || delay_ns < 0 || seconds <= 0) {
        fprintf(stderr, "dbserver: bad port, delay_us or seconds\n");
        return 64;
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
        perror("dbserver: bind/listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("port=%d\n", ntohs(sa.sin_port));
    fflush(stdout);

    /* SIGTERM/SIGINT stay blocked everywhere but in the main thread's ppoll,
     * so the signal always interrupts the accept loop, which then reports. */
    struct sigaction sact = {.sa_handler = on_stop};
    sigemptyset(&sact.sa_mask);
    sigaction(SIGTERM, &sact, NULL);
    sigaction(SIGINT, &sact, NULL);
    sigset_t stop_set, open_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_set, &open_set);
    sigdelset(&open_set, SIGTERM);
    sigdelset(&open_set, SIGINT);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int64_t end = now_ns() + (int64_t)seconds * 1000000000;
    long conns = 0;
    while (!stopping) {
        int64_t left = end - now_ns();
        if (left <= 0)
            break;
        struct pollfd p = {lfd, POLLIN, 0};
        struct timespec ts = {left / 1000000000, left % 1000000000};
        int r = ppoll(&p, 1, &ts, &open_set);
        if (r <= 0)
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        /* Replies are 16 bytes: send each at once. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &attr, serve, (void *)(intptr_t)fd) != 0) {
            close(fd);
            continue;
        }
        conns++;
    }
    uint64_t n = atomic_load(&stat_n);
    fprintf(stderr,
            "dbserver: delay_us=%ld: %ld connections, %llu requests; delay given: mean %.1f us, "
            "max %.1f us; overshoot p50 <%llu us, p99 <%llu us\n",
            delay_ns / 1000, conns, (unsigned long long)n,
            n ? (double)atomic_load(&stat_sum_ns) / (double)n / 1000.0 : 0.0,
            (double)atomic_load(&stat_max_ns) / 1000.0, (unsigned long long)over_pct(n, 50) + 1,
            (unsigned long long)over_pct(n, 99) + 1);
    /* Connection threads may still be in a read; exiting ends them. */
    return 0;
}
