/* The advisor's live page, read by a real headless browser.
 *
 * A runtime runs a data section behind pz_mutex and a logic section (a
 * 1 ms sleep) behind pz_async_mutex, and a channel whose receives wait,
 * while the advisor serves its page (PLAZA_ADVISOR_HTTP=127.0.0.1:0).
 * Debian's chromium loads the page, runs its script and prints the DOM:
 * each lock must be there with its verdict, the channel in the channels'
 * table with its waits and histogram.  /advisor.json is fetched over a socket and parsed with
 * jansson.  Without chromium the test fails (it is in the test group of
 * scripts/install-deps.sh). */
#include "helpers.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pz_mutex_t page_data;
static pz_async_mutex_t page_logic;
static _Atomic bool stop;
static _Atomic long data_rounds, logic_rounds;
static uint64_t counter;
static int ready_fd = -1;

static void *data_task(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        for (int i = 0; i < 1000; i++) {
            pz_mutex_lock(&page_data);
            counter++;
            pz_mutex_unlock(&page_data);
        }
        atomic_fetch_add(&data_rounds, 1);
        pz_sleep(100 * US);
    }
    return NULL;
}

static void *logic_task(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        CHECK(pz_async_mutex_lock(&page_logic) == 0);
        pz_sleep(1 * MS);
        CHECK(pz_async_mutex_unlock(&page_logic) == 0);
        atomic_fetch_add(&logic_rounds, 1);
    }
    return NULL;
}

/* A channel whose receives wait: one in two gives up at its deadline. */
static pz_chan_t *page_chan;
static _Atomic long chan_rounds;

static void *chan_receiver(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int v;
        int r = pz_chan_recv_until(page_chan, &v, pz_now() + 200 * US);
        CHECK(r == 0 || r == -ETIMEDOUT);
        atomic_fetch_add(&chan_rounds, 1);
    }
    return NULL;
}

static void *chan_sender(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int v = 1;
        pz_sleep(300 * US);
        /* The receiver is there every 200 us; a loaded machine may keep
         * it off a CPU past the deadline, which is a wait that gave up
         * too (the page shows both). */
        int r = pz_chan_send_until(page_chan, &v, pz_now() + 10 * MS);
        CHECK(r == 0 || r == -ETIMEDOUT);
    }
    return NULL;
}

struct browse {
    int port;
    char *dom;
};

/* Runs on the blocking pool.  chromium is started with posix_spawn and
 * an empty signal mask: plaza's threads block the asynchronous signals,
 * and a child started with popen would inherit that mask. */
static void *run_chromium(void *arg)
{
    struct browse *b = arg;
    char dir[] = "/tmp/plaza-chromium-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char out[64], cmd[1024];
    snprintf(out, sizeof out, "%s.dom", dir);
    snprintf(cmd, sizeof cmd,
             "chromium --headless --no-sandbox --disable-gpu --disable-background-networking "
             "--disable-component-update --disable-sync --no-first-run --user-data-dir=%s "
             "--dump-dom http://127.0.0.1:%d/ >%s 2>%s.err; rm -rf %s",
             dir, b->port, out, dir, dir);
    posix_spawnattr_t attr;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    CHECK(posix_spawnattr_init(&attr) == 0);
    CHECK(posix_spawnattr_setsigmask(&attr, &none) == 0);
    CHECK(posix_spawnattr_setsigdefault(&attr, &all) == 0);
    CHECK(posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) == 0);
    /* Nor may it inherit the runtime's descriptors (its poller, the
     * page's listening socket): chromium's processes talk over inherited
     * descriptors of their own. */
    posix_spawn_file_actions_t fa;
    CHECK(posix_spawn_file_actions_init(&fa) == 0);
    CHECK(posix_spawn_file_actions_addclosefrom_np(&fa, 3) == 0);
    char *argv[] = {"sh", "-c", cmd, NULL};
    pid_t pid;
    CHECK(posix_spawnp(&pid, "sh", &fa, &attr, argv, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        CHECK(errno == EINTR);
    FILE *f = fopen(out, "r");
    size_t cap = 1 << 20, n = 0;
    b->dom = malloc(cap);
    CHECK(b->dom);
    if (f) {
        size_t r;
        while ((r = fread(b->dom + n, 1, cap - 1 - n, f)) > 0)
            n += r;
        fclose(f);
    }
    b->dom[n] = 0;
    unlink(out);
    char err[80];
    snprintf(err, sizeof err, "%s.err", dir);
    if (n == 0) {
        FILE *e = fopen(err, "r");
        char line[512];
        while (e && fgets(line, sizeof line, e))
            fputs(line, stderr);
        if (e)
            fclose(e);
    }
    unlink(err);
    return NULL;
}

/* The DOM row (<tr class="lock">...</tr>) of the lock with this name. */
static const char *row_of(const char *dom, const char *name, char *out, size_t cap)
{
    char key[128];
    snprintf(key, sizeof key, "<td class=\"name\">%s</td>", name);
    const char *at = strstr(dom, key);
    if (!at)
        return NULL;
    const char *start = at;
    while (start > dom && strncmp(start, "<tr", 3) != 0)
        start--;
    const char *end = strstr(at, "</tr>");
    if (!end)
        return NULL;
    size_t n = (size_t)(end - start) < cap - 1 ? (size_t)(end - start) : cap - 1;
    memcpy(out, start, n);
    out[n] = 0;
    return out;
}

static json_t *fetch_json(int port)
{
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    int fd = pz_tcp_dial(hp, pz_now() + 10 * SEC);
    if (fd < 0)
        fprintf(stderr, "dial %s: %s\n", hp, pz_strerror(fd));
    CHECK(fd >= 0);
    const char req[] = "GET /advisor.json HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK(pz_write_all(fd, req, sizeof req - 1, pz_now() + 10 * SEC) == (ssize_t)(sizeof req - 1));
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    CHECK(buf);
    ssize_t r;
    while ((r = pz_read(fd, buf + n, cap - 1 - n, pz_now() + 10 * SEC)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    pz_close(fd);
    CHECK(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    const char *body = strstr(buf, "\r\n\r\n");
    CHECK(body);
    json_error_t err;
    json_t *root = json_loads(body + 4, 0, &err);
    CHECK(root);
    free(buf);
    return root;
}

static void *page_main(void *arg)
{
    (void)arg;
    pz_task_t *d = pz_spawn(data_task, NULL), *l = pz_spawn(logic_task, NULL);
    pz_task_t *cr = pz_spawn(chan_receiver, NULL), *cs = pz_spawn(chan_sender, NULL);
    CHECK(d && l && cr && cs);
    int64_t deadline = pz_now() + 60 * SEC;
    while ((pz_advisor_http_port() == 0 || atomic_load(&data_rounds) < 5 || atomic_load(&logic_rounds) < 20 ||
            atomic_load(&chan_rounds) < 10) &&
           pz_now() < deadline)
        pz_sleep(5 * MS);
    int port = pz_advisor_http_port();
    CHECK(port > 0);

    json_t *root = fetch_json(port);
    json_t *locks = json_object_get(root, "locks");
    CHECK(json_is_array(locks));
    int seen = 0;
    size_t i;
    json_t *lk;
    json_array_foreach(locks, i, lk)
    {
        const char *name = json_string_value(json_object_get(lk, "name"));
        const char *verdict = json_string_value(json_object_get(lk, "verdict"));
        CHECK(name && verdict);
        if (strcmp(name, "page_data") == 0) {
            CHECK(strcmp(verdict, "data") == 0);
            seen++;
        } else if (strcmp(name, "page_logic") == 0) {
            CHECK(strcmp(verdict, "logic") == 0);
            seen++;
        }
    }
    CHECK(seen == 2);
    /* The channel: its receives waited, some gave up, and its waits have
     * a histogram. */
    json_t *chans = json_object_get(root, "channels");
    CHECK(json_is_array(chans));
    bool chan_seen = false;
    json_array_foreach(chans, i, lk)
    {
        const char *name = json_string_value(json_object_get(lk, "name"));
        if (!name || strcmp(name, "page_chan") != 0)
            continue;
        chan_seen = true;
        CHECK(json_integer_value(json_object_get(lk, "recv_waits")) > 0);
        CHECK(json_array_size(json_object_get(lk, "wait_hist")) > 0);
    }
    CHECK(chan_seen);

    /* Ready: the parent, a process with no runtime, runs the browser. */
    char line[32];
    int ln = snprintf(line, sizeof line, "%d\n", port);
    CHECK(write(ready_fd, line, (size_t)ln) == ln);
    while (!atomic_load(&stop))
        pz_sleep(10 * MS);
    json_decref(root);
    CHECK(pz_join(d, NULL) == 0);
    CHECK(pz_join(l, NULL) == 0);
    CHECK(pz_join(cr, NULL) == 0);
    CHECK(pz_join(cs, NULL) == 0);
    return NULL;
}

static void on_term(int sig)
{
    (void)sig;
    atomic_store(&stop, true);
}

/* The child: the program whose locks the page shows. */
static void serve_page(void)
{
    CHECK(setenv("PLAZA_ADVISOR_HTTP", "127.0.0.1:0", 1) == 0);
    CHECK(pz_advisor_enable("") == 0);
    CHECK(pz_lock_name(&page_data, "page_data") == 0);
    CHECK(pz_lock_name(&page_logic, "page_logic") == 0);
    page_chan = pz_chan_create(sizeof(int), 1);
    CHECK(page_chan);
    CHECK(pz_lock_name(page_chan, "page_chan") == 0);
    signal(SIGTERM, on_term);
    run_in_runtime(2, page_main, NULL);
    pz_advisor_disable();
    pz_chan_destroy(page_chan);
}

static void test_page_in_browser(void **state)
{
    (void)state;
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(p[0]);
        ready_fd = p[1];
        serve_page();
        _exit(0);
    }
    close(p[1]);
    char line[32] = "";
    ssize_t n = read(p[0], line, sizeof line - 1);
    CHECK(n > 0);
    line[n] = 0;
    struct browse b = {atoi(line), NULL};
    CHECK(b.port > 0);
    run_chromium(&b);
    kill(child, SIGTERM);
    int status;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    if (!strstr(b.dom, "<table"))
        fprintf(stderr, "chromium printed no page (is it installed? scripts/install-deps.sh test):\n%.2000s\n",
                b.dom);
    CHECK(strstr(b.dom, "<table") != NULL);
    /* Every lock of the running program is in the page, with its verdict
     * in its row: the rows are drawn by the page's script. */
    char row[16384];
    CHECK(row_of(b.dom, "page_data", row, sizeof row));
    CHECK(strstr(row, "<td class=\"verdict data\">data</td>") != NULL);
    CHECK(strstr(row, "<canvas") != NULL);
    CHECK(row_of(b.dom, "page_logic", row, sizeof row));
    CHECK(strstr(row, "<td class=\"verdict logic\">logic</td>") != NULL);
    CHECK(strstr(b.dom, "<tr class=\"lock\">") != NULL);
    /* The channel, in the channels' table, with its counts and its canvas. */
    CHECK(row_of(b.dom, "page_chan", row, sizeof row));
    CHECK(strncmp(row, "<tr class=\"chan\">", 17) == 0);
    CHECK(strstr(row, "<td class=\"recv_waits\">0</td>") == NULL);
    CHECK(strstr(row, "<td class=\"recv_waits\">") != NULL);
    CHECK(strstr(row, "<canvas") != NULL);
    CHECK(strstr(b.dom, "id=\"nochan\" style=\"display: none;\"") != NULL);
    free(b.dom);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page_in_browser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
