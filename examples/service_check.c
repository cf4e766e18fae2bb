#define _DEFAULT_SOURCE
/*
 * The test of examples/service.c: starts it on a free port, speaks its
 * protocol (including a line over the limit), keeps one connection idle,
 * sends SIGTERM, and checks that the idle connection is told BYE, that
 * the service says it stopped and that it exits with status 0.
 *
 *   service_check path/to/service
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child;

static void fail(const char *what)
{
    fprintf(stderr, "service_check: %s (errno %d)\n", what, errno);
    if (child > 0)
        kill(child, SIGKILL); /* or ctest would wait for its output */
    exit(1);
}

/* Reads one line (up to '\n') within 30 s; "" at end of stream. */
static void read_line(int fd, char *out, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0)
            fail("timed out reading");
        ssize_t k = read(fd, out + n, 1);
        if (k < 0 && errno == ECONNRESET)
            k = 0;
        if (k < 0)
            fail("read failed");
        if (k == 0)
            break;
        if (out[n++] == '\n')
            break;
    }
    out[n] = '\0';
}

static void send_str(int fd, const char *s)
{
    size_t len = strlen(s);
    if (write(fd, s, len) != (ssize_t)len)
        fail("write failed");
}

static void expect(int fd, const char *send, const char *want)
{
    char line[512];
    if (send)
        send_str(fd, send);
    read_line(fd, line, sizeof line);
    if (strncmp(line, want, strlen(want)) != 0) {
        fprintf(stderr, "service_check: sent %.40s got \"%s\", want \"%s\"\n", send ? send : "(nothing)", line, want);
        fail("unexpected answer");
    }
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
        fail("cannot connect");
    return fd;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        fail("usage: service_check path/to/service");
    alarm(100);
    int out[2];
    if (pipe(out) < 0)
        fail("pipe");
    pid_t pid = fork();
    child = pid;
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        execl(argv[1], argv[1], "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[512];
    read_line(out[0], line, sizeof line);
    int port = 0;
    if (sscanf(line, "listening on %d", &port) != 1 || port <= 0)
        fail("no \"listening on PORT\" line");

    int a = dial(port), idle = dial(port);
    expect(a, "PING\n", "PONG");
    expect(a, "SET colour blue\n", "OK");
    expect(a, "GET colour\n", "VALUE blue");
    expect(a, "GET shape\n", "NONE");
    expect(a, "STATS\n", "STATS ");
    char big[3000];
    memset(big, 'x', sizeof big - 2);
    big[sizeof big - 2] = '\n';
    big[sizeof big - 1] = '\0';
    expect(a, big, "ERR line too long");
    expect(a, NULL, ""); /* and the connection closes */
    close(a);

    if (kill(pid, SIGTERM) < 0)
        fail("kill");
    expect(idle, NULL, "BYE");
    expect(idle, NULL, "");
    close(idle);
    read_line(out[0], line, sizeof line);
    if (strncmp(line, "stopped: 2 connections, 5 requests", 34) != 0) {
        fprintf(stderr, "service_check: last words \"%s\"\n", line);
        fail("unexpected last words");
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        fail("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "service_check: the service ended with status %#x\n", status);
        return 1;
    }
    printf("service_check: served, stopped on SIGTERM, exit status 0\n");
    return 0;
}
