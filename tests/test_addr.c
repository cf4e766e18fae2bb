/* Addresses: port 0 gives the bound address back, ports out of range are
 * refused by listen and dial, name resolution failures come back as
 * their own codes (named by pz_strerror, not printed). */
#include "helpers.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


static void *addr_main(void *arg)
{
    (void)arg;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int lfd = pz_tcp_listen_addr("127.0.0.1:0", (struct sockaddr *)&ss, &len);
    CHECK(lfd >= 0);
    CHECK_EQ(ss.ss_family, AF_INET);
    CHECK_EQ(len, sizeof(struct sockaddr_in));
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    CHECK(port > 0);
    CHECK_EQ(pz_sock_port(lfd), port);
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    int c = pz_tcp_dial(hp, pz_now() + 10 * SEC);
    CHECK(c >= 0);
    int a = pz_accept(lfd, NULL, NULL, pz_now() + 10 * SEC);
    CHECK(a >= 0);
    CHECK_EQ(pz_sock_port(a), port);
    pz_close(a);
    pz_close(c);
    pz_close(lfd);

    int v6 = pz_tcp_listen("[::1]:0");
    if (v6 >= 0) { /* a machine without IPv6 loopback skips only this */
        CHECK(pz_sock_port(v6) > 0);
        pz_close(v6);
    }

    /* Ports out of range, or not a number. */
    const char *bad[] = {"127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80a",
                         "127.0.0.1:", "127.0.0.1:0000080", ":http"};
    capture_stderr_begin();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(pz_tcp_listen(bad[i]), -EINVAL);
        CHECK_EQ(pz_tcp_dial(bad[i], pz_now() + SEC), -EINVAL);
    }
    const char *out = capture_stderr_end_quiet();
    CHECK(strstr(out, "port 0-65535") != NULL);
    int top = pz_tcp_listen("127.0.0.1:65535");
    CHECK(top >= 0 || top == -EADDRINUSE);
    if (top >= 0)
        pz_close(top);

    /* A name that cannot resolve: its own code, nothing printed. */
    capture_stderr_begin();
    int r = pz_tcp_dial("no-such-host.invalid:80", pz_now() + 30 * SEC);
    out = capture_stderr_end_quiet();
    CHECK(r == PZ_EDNS_NONAME || r == PZ_EDNS_AGAIN || r == PZ_EDNS_FAIL || r == PZ_EDNS_NODATA);
    CHECK(r != -EADDRNOTAVAIL);
    CHECK_EQ(strlen(out), 0);
    r = pz_tcp_listen("no-such-host.invalid:0");
    CHECK(r <= PZ_EDNS_NONAME && r >= PZ_EDNS_OTHER);
    return NULL;
}

static void test_addr(void **state)
{
    (void)state;
    run_in_runtime(2, addr_main, NULL);
}

static void test_dns_error_names(void **state)
{
    (void)state;
    const int codes[] = {PZ_EDNS_NONAME, PZ_EDNS_AGAIN, PZ_EDNS_FAIL, PZ_EDNS_NODATA, PZ_EDNS_OTHER};
    for (size_t i = 0; i < 5; i++) {
        const char *s = pz_strerror(codes[i]);
        CHECK(strstr(s, "Unknown") == NULL);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(s, pz_strerror(codes[j])) != 0);
        CHECK(codes[i] < -200); /* apart from every errno value */
    }
    CHECK(strcmp(pz_strerror(PZ_EDNS_NONAME), "host not known") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr),
        cmocka_unit_test(test_dns_error_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
