/* An accept loop at RLIMIT_NOFILE: with the process out of descriptors,
 * pz_accept returns -EMFILE (it does not hang or spin), the connections
 * already accepted keep being served, and once a descriptor is free the
 * connection still waiting in the backlog is accepted. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CLIENTS = 4 };

static int highest_descriptor(void)
{
    int hi = -1;
    for (int fd = 0; fd < 4096; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            hi = fd;
    return hi;
}

static void *limit_main(void *arg)
{
    (void)arg;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_EQ(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(lfd, 16), 0);
    socklen_t len = sizeof a;
    CHECK_EQ(getsockname(lfd, (struct sockaddr *)&a, &len), 0);

    /* Every client connects before the limit comes down: the handshakes
     * complete into the backlog. */
    int clients[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(clients[i] >= 0);
        CHECK_EQ(pz_connect(clients[i], (struct sockaddr *)&a, sizeof a, pz_now() + 5000000000), 0);
    }

    struct rlimit old;
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    /* Room for exactly two more descriptors: new ones take the lowest
     * free numbers and the limit bounds the number, so the holes below
     * the highest descriptor are filled first. */
    int hi = highest_descriptor();
    int fillers[4096], nfill = 0;
    for (;;) {
        int f = dup(0);
        CHECK(f >= 0);
        if (f > hi) {
            close(f);
            break;
        }
        fillers[nfill++] = f;
    }
    struct rlimit low = {.rlim_cur = (rlim_t)(hi + 1 + 2), .rlim_max = old.rlim_max};
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);

    int served[CLIENTS];
    int nserved = 0;
    for (int i = 0; i < 2; i++) {
        served[nserved] = pz_accept(lfd, NULL, NULL, pz_now() + 5000000000);
        CHECK(served[nserved] >= 0);
        nserved++;
    }
    /* Out of descriptors: an error, at once, not a wait. */
    int64_t t0 = pz_now();
    CHECK_EQ(pz_accept(lfd, NULL, NULL, pz_now() + 5000000000), -EMFILE);
    CHECK(pz_now() - t0 < 4000000000);

    /* The connections accepted are still served. */
    for (int i = 0; i < nserved; i++) {
        CHECK_EQ(write(clients[i], "ping", 4), 4);
        char buf[8];
        CHECK_EQ(pz_read(served[i], buf, sizeof buf, pz_now() + 5000000000), 4);
        CHECK_EQ(pz_write(served[i], buf, 4, pz_now() + 5000000000), 4);
        CHECK_EQ(read(clients[i], buf, sizeof buf), 4);
    }

    /* A descriptor comes free: the waiting connection is accepted. */
    pz_close(served[0]);
    close(clients[0]);
    int again = pz_accept(lfd, NULL, NULL, pz_now() + 5000000000);
    CHECK(again >= 0);
    CHECK_EQ(write(clients[2], "x", 1), 1);
    char c;
    CHECK_EQ(pz_read(again, &c, 1, pz_now() + 5000000000), 1);
    CHECK_EQ(c, 'x');

    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    pz_close(again);
    pz_close(served[1]);
    for (int i = 1; i < CLIENTS; i++)
        close(clients[i]);
    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    pz_close(lfd);
    return NULL;
}

static void test_accept_at_descriptor_limit(void **state)
{
    (void)state;
    run_in_runtime(2, limit_main, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_at_descriptor_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
