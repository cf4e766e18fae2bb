#!/usr/bin/env python3
"""End-to-end tests of plaza-weather over loopback.

    test_weather.py BINARY CASE [sqlite|pg]

Each case starts its own service on a free port and a fresh database,
drives it over real sockets and checks what the database holds afterwards.
With sqlite (the default) the database is a file in a temporary directory
(sqlite3 reads the file the service writes; WAL lets it read while the
service runs).  With pg it is a new database on the PostgreSQL test server
named by the state file in PLAZA_PG_STATE (scripts/pg-test-server.sh),
created for the case and dropped after it, read with psql.  Nothing waits for a quiet machine:
every wait is for a state (a line on stdout, a process exit, a response)
with a generous deadline, and timing assertions compare against margins
many times the expected figure.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1]
CASE = sys.argv[2]
BACKEND = sys.argv[3] if len(sys.argv) > 3 else "sqlite"
SEEDED = 64 * 32
failures = []
servers = []  # every service started, killed at the end if a check raised before stopping it
pg_databases = []  # databases created on the PostgreSQL test server, dropped at the end
PG_ADMIN = None  # conninfo of the test server's own database


def pg_admin():
    global PG_ADMIN
    if PG_ADMIN is None:
        state = os.environ.get("PLAZA_PG_STATE")
        if not state or not os.path.exists(state):
            print("no PostgreSQL test server: PLAZA_PG_STATE=%r (scripts/pg-test-server.sh)" % state)
            # As the C tests: a skip (77) only when asked for, else a failure.
            sys.exit(77 if os.environ.get("PLAZA_PG_ALLOW_SKIP") == "1" else 1)
        env = {}
        for line in open(state):
            k, _, v = line.strip().partition("=")
            env[k] = v.strip("'")
        PG_ADMIN = env["PLAZA_PG_URL"]
    return PG_ADMIN


def psql(conninfo, *commands):
    """Runs the commands in one psql session; the rows of the last, as lists of strings."""
    args = ["psql", conninfo, "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"]
    for c in commands:
        args += ["-c", c]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit("psql failed: %s" % r.stderr.strip())
    return [l.split("|") for l in r.stdout.splitlines() if l]


def fresh_db(tmp, name="weather.db"):
    """A new empty database: a file name for SQLite, a new database on the test server for pg."""
    if BACKEND != "pg":
        return os.path.join(tmp, name)
    db = "wx_%d_%d" % (os.getpid(), len(pg_databases))
    psql(pg_admin(), "DROP DATABASE IF EXISTS %s" % db, "CREATE DATABASE %s" % db)
    pg_databases.append(db)
    return "pg:" + pg_admin().replace("dbname=postgres", "dbname=" + db)


def query(db, sql):
    """The rows of sql on the service's database, as tuples of numbers or strings."""
    if BACKEND == "pg":
        def conv(v):
            try:
                return int(v)
            except ValueError:
                try:
                    return float(v)
                except ValueError:
                    return v
        return [tuple(conv(v) for v in row) for row in psql(db[3:], sql)]
    c = sqlite3.connect(db, timeout=10)
    r = c.execute(sql).fetchall()
    c.close()
    return r


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    else:
        print("ok:", what, flush=True)


class Server:
    def __init__(self, tmp, *extra, db=None, workers=2, log="serve.log"):
        self.db = db or fresh_db(tmp)
        self.log = open(os.path.join(tmp, log), "a+")
        self.p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--db", self.db,
                                   "--workers", str(workers)] + list(extra),
                                  stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.p.stdout.readline()
        if "listening on" not in line:
            self.p.kill()
            raise SystemExit("the service did not start: %r (log: %s)" % (line, self.log_text()))
        servers.append(self)
        self.killed = False  # set once the test stops or kills it on purpose
        self.addr = line.split("listening on ")[1].split()[0]
        host, port = self.addr.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.killed = True  # its exit status is the caller's to check
        self.p.send_signal(sig)
        try:
            status = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            status = None
        if status != 0 and sig == signal.SIGTERM:
            print("the service's log:\n" + self.log_text()[-3000:])
        return status


class Conn:
    """A keep-alive HTTP/1.1 client on a raw socket."""

    def __init__(self, srv, timeout=30):
        self.s = socket.create_connection((srv.host, srv.port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def request(self, method, path, body=None, headers=""):
        if body is not None:
            b = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send(("%s %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n" %
                       (method, path, len(b), headers)).encode() + b)
        else:
            self.send(("%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, path, headers)).encode())
        return self.response()

    def response(self):
        """(status, headers dict, body bytes); status 0 if the connection closed first."""
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                return 0, {}, b""
            self.buf += d
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                break
            self.buf += d
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, hdrs, body

    def closed(self):
        """True if the server closes the connection (EOF) within the timeout."""
        try:
            return self.s.recv(1) == b""
        except (ConnectionResetError, socket.timeout):
            return False

    def close(self):
        self.s.close()


def rows(db):
    return query(db, "SELECT count(*) FROM readings")[0][0]


def run_load(srv, tmp, duration, post, get, conns=16, batch=5, name="acked.txt"):
    acked = os.path.join(tmp, name)
    p = subprocess.Popen([BIN, "load", "--target", srv.addr, "--connections", str(conns), "--duration",
                          str(duration), "--post-rate", str(post), "--get-rate", str(get), "--batch", str(batch),
                          "--acked", acked, "--json"], stdout=subprocess.PIPE, text=True)
    return p, acked


def finish_load(p):
    out, _ = p.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def verify(db, acked):
    if BACKEND == "pg":
        return verify_pg(db, acked)
    r = subprocess.run([BIN, "verify", "--db", db, "--acked", acked], capture_output=True, text=True)
    print(r.stdout.strip(), r.stderr.strip())
    parts = dict(x.strip().split(" ") for x in r.stdout.strip().split(","))
    return r.returncode, int(parts["acknowledged"]), int(parts["missing"]), int(parts["rows"])


def verify_pg(db, acked):
    """plaza-weather verify's check on PostgreSQL: every acknowledged reading
    (a reading acknowledged k times at least k times) is stored."""
    n = sum(1 for _ in open(acked))
    missing = psql(db[3:], "CREATE TEMP TABLE acked(city text, time bigint, temperature float8)",
                   "\\copy acked FROM '%s' WITH (FORMAT text, DELIMITER ' ')" % acked,
                   "SELECT coalesce(sum(a.n - (SELECT count(*) FROM readings r WHERE r.city = a.city AND"
                   " r.time = a.time AND abs(r.temperature - a.temperature) < 1e-9)), 0)"
                   " FROM (SELECT city, time, temperature, count(*) AS n FROM acked GROUP BY 1, 2, 3) a"
                   " WHERE a.n > (SELECT count(*) FROM readings r WHERE r.city = a.city AND r.time = a.time"
                   " AND abs(r.temperature - a.temperature) < 1e-9)")[0][0]
    nrows = rows(db)
    print("acknowledged %d, missing %s, rows %d" % (n, missing, nrows))
    return 0, n, int(missing), nrows


# ---------------------------------------------------------------------------

def case_readings(tmp):
    """Readings posted by many connections are all stored; every GET sees a posted temperature."""
    srv = Server(tmp)
    load, acked = run_load(srv, tmp, 3, 300, 300, conns=24, batch=5)
    seen = []
    stop = time.time() + 2.5

    def getter(k):
        c = Conn(srv)
        i = k
        while time.time() < stop:
            st, _, body = c.request("GET", "/weather/city%02d" % (i % 64))
            if st == 200:
                j = json.loads(body)
                seen.append((j["city"], j["temperature"]))
            else:
                seen.append(("status", st))
            i += 7
        c.close()

    ts = [threading.Thread(target=getter, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    res = finish_load(load)
    status = srv.stop()
    check(status == 0, "the service exits 0 after SIGTERM (got %r)" % status)
    post = res["post_readings"]
    check(post["status"]["2xx"] > 0 and post["status"]["5xx"] == 0 and post["status"]["4xx"] == 0,
          "POSTs acknowledged, none refused: %r" % post["status"])
    rc, n_acked, missing, nrows = verify(srv.db, acked)
    check(n_acked == res["acked_readings"] and n_acked > 0, "the acked file lists every acknowledged reading")
    check(missing == 0, "every acknowledged reading is in the database (%d missing)" % missing)
    # Every POST either got its 200 or failed on the client's side; nothing
    # else may be stored.
    errors = post["status"]["conn_errors"]
    check(nrows >= SEEDED + n_acked and nrows <= SEEDED + n_acked + errors * 5,
          "rows %d = seeded %d + acknowledged %d (+ at most the %d failed POSTs)" % (nrows, SEEDED, n_acked, errors))
    posted = {}
    for city, t in query(srv.db, "SELECT city, temperature FROM readings"):
        posted.setdefault(city, []).append(t)
    bad = [x for x in seen if x[0] == "status" or not any(abs(x[1] - t) < 1e-9 for t in posted.get(x[0], []))]
    check(len(seen) > 20 and not bad,
          "%d GETs, each saw a temperature some sensor posted (or the seed): bad %r" % (len(seen), bad[:5]))


def case_forecast_lock(tmp):
    """The forecast lock is held across the database call while other requests keep being served."""
    delay = 400
    srv = Server(tmp, "--db-delay-ms", str(delay), "--db-delay-city", "city00", "--forecast-ttl-ms", "0",
                 "--refresh-ms", "3600000", "--lock-timeout-ms", "30000")
    stop = threading.Event()
    slow, fast = [], []

    def slow_getter():
        c = Conn(srv)
        while not stop.is_set():
            t = time.monotonic()
            st, _, _ = c.request("GET", "/weather/city00")
            slow.append((st, time.monotonic() - t))
        c.close()

    def fast_getter(k):
        c = Conn(srv)
        i = k
        while not stop.is_set():
            t = time.monotonic()
            st, _, _ = c.request("GET", "/weather/city%02d" % (1 + i % 63))
            fast.append((st, time.monotonic() - t))
            i += 1
        c.close()

    ts = [threading.Thread(target=slow_getter) for _ in range(3)]
    ts += [threading.Thread(target=fast_getter, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    # Wait for a state, not a time: enough slow refreshes have completed.
    deadline = time.time() + 120
    while len(slow) < 9 and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in ts:
        t.join()
    m = json.loads(Conn(srv).request("GET", "/metrics")[2])
    srv.stop()
    check(len(slow) >= 9 and all(st == 200 for st, _ in slow), "%d GETs of the slow city answered 200" % len(slow))
    check(min(d for _, d in slow) >= delay / 1000 * 0.9,
          "each GET of city00 waited for a refresh under the lock (min %.3f s)" % min(d for _, d in slow))
    hold_max_ms = m["locks"]["forecast"]["hold"]["max_us"] / 1000
    check(hold_max_ms >= delay * 0.9, "the forecast lock was held across the database call (max hold %.0f ms)" %
          hold_max_ms)
    lat = sorted(d for _, d in fast)
    p99 = lat[int(len(lat) * 0.99)] if lat else 1e9
    check(len(fast) > 50 and all(st == 200 for st, _ in fast),
          "%d GETs of the other cities served meanwhile" % len(fast))
    check(p99 < delay / 1000 / 2,
          "p99 of GET /weather for the other cities %.1f ms, well under the %d ms database delay" % (p99 * 1000, delay))


def case_single_flight(tmp):
    """Waiters behind a refresh find the forecast fresh and do not query again."""
    delay = 1500  # the window in which the six GETs must all arrive
    srv = Server(tmp, "--db-delay-ms", str(delay), "--db-delay-city", "city00", "--forecast-ttl-ms", "60000",
                 "--refresh-ms", "3600000", "--lock-timeout-ms", "30000")
    # No forecast is computed yet (the refresher's first pass is an hour
    # away): the first GET refreshes city00, taking the delay under the
    # lock; the others queue behind it and must find it fresh, so all share
    # one computed_at.
    results = []

    def getter():
        c = Conn(srv)
        results.append(json.loads(c.request("GET", "/weather/city00")[2]))
        c.close()

    ts = [threading.Thread(target=getter) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m = json.loads(Conn(srv).request("GET", "/metrics")[2])
    srv.stop()
    stamps = {r["forecast"]["computed_at"] for r in results}
    check(len(results) == 6 and len(stamps) == 1, "6 concurrent GETs share one forecast computation: %r" % stamps)
    check(m["locks"]["forecast"]["hold"]["max_us"] >= delay * 900, "the refresh held the lock across the delay")
    check(all(r["forecast"]["based_on"] == 32 for r in results), "the forecast is based on the 32 seeded readings")


def case_bad_input(tmp):
    """Bad input gets a clear answer, closes only its own connection, costs nothing else."""
    srv = Server(tmp)
    before = rows(srv.db)

    c = Conn(srv)
    c.send(b"THIS IS NOT HTTP\r\n\r\n")
    st, h, b = c.response()
    check(st == 400 and "error" in json.loads(b), "malformed request line: 400 %r" % b)
    check(c.closed(), "the connection is closed after 400")

    c = Conn(srv)
    st, h, b = c.request("POST", "/readings", b'{"readings":[{"city":"city01","temperature":')
    check(st == 400 and json.loads(b)["error"].startswith("malformed JSON"), "bad JSON: 400 %r" % b)
    check(c.closed(), "the connection is closed after a 400 for bad JSON")

    for body, what in [({"readings": []}, "no readings"), ({"readings": [{"city": "city01"}]}, "no temperature"),
                       ({"readings": [{"city": "city01", "temperature": "warm"}]}, "a string temperature"),
                       ({"readings": [{"city": 1, "temperature": 1}]}, "a number city"),
                       ({"readings": [{"city": "city01", "temperature": 1, "time": 1.5}]}, "a fractional time"),
                       ({"nothing": 1}, "no readings array"), ([1, 2], "an array body"),
                       ({"readings": [{"city": "city01", "temperature": 1, "x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}]},
                        "a reading nested 20 deep"),
                       ({"readings": [{"city": "city01", "temperature": 1}] * 1001}, "1001 readings")]:
        c = Conn(srv)
        st, _, b = c.request("POST", "/readings", body)
        check(st == 400, "%s: 400 %r" % (what, b[:80]))
        c.close()

    c = Conn(srv)
    st, _, b = c.request("POST", "/readings", b'{"readings":' + b"[" * 2040 + b"]" * 2040 + b"}")
    check(st == 400, "JSON nested 2040 deep: 400 before it is parsed %r" % b[:80])
    c.close()

    c = Conn(srv)
    st, _, b = c.request("GET", "/weather/atlantis")
    check(st == 404 and "unknown city" in json.loads(b)["error"], "unknown city GET: 404 %r" % b)
    st, _, b = c.request("POST", "/readings",
                         {"readings": [{"city": "city01", "temperature": 1.0}, {"city": "atlantis", "temperature": 2}]})
    check(st == 404, "a POST naming an unknown city: 404 %r" % b)
    st, _, b = c.request("GET", "/nowhere")
    check(st == 404, "unknown path: 404")
    st, h, b = c.request("DELETE", "/readings")
    check(st == 405 and h.get("allow") == "POST", "wrong method: 405 with Allow: POST (%r)" % h)
    st, h, b = c.request("POST", "/healthz", b"{}")
    check(st == 405 and h.get("allow") == "GET", "POST /healthz: 405 with Allow: GET")
    st, _, b = c.request("GET", "/healthz")
    check(st == 200, "the connection stays open after 404 and 405")
    c.close()

    c = Conn(srv)
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\n\r\n")
    st, _, b = c.response()
    check(st == 411, "POST without Content-Length: 411 %r" % b)
    c.close()

    c = Conn(srv)
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
    st, _, b = c.response()
    check(st == 413, "Content-Length over 1 MiB: 413 before the body is sent %r" % b)
    check(c.closed(), "the connection is closed after 413")

    c = Conn(srv)
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    try:
        for _ in range(20):
            c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass
    st, _, b = c.response()
    check(st == 413, "a chunked body over 1 MiB: 413 %r" % b)

    c = Conn(srv)
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    st, _, b = c.response()
    check(st == 431, "a header block over 8 KiB: 431 %r" % b)
    check(c.closed(), "the connection is closed after 431")

    c = Conn(srv)
    body = json.dumps({"readings": [{"city": "city02", "temperature": 3.5, "time": 1}]}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked +
           b"GET /weather/city02 HTTP/1.1\r\nHost: t\r\n\r\n")
    st1, _, b1 = c.response()
    st2, _, b2 = c.response()
    check(st1 == 200 and json.loads(b1) == {"accepted": 1}, "a chunked POST is accepted %r" % b1)
    check(st2 == 200 and json.loads(b2)["temperature"] == 3.5, "a pipelined GET sees it %r" % b2)
    st, h, _ = c.request("GET", "/healthz", headers="Connection: close\r\n")
    check(st == 200 and h.get("connection") == "close" and c.closed(), "Connection: close is honoured")

    c = Conn(srv)
    body = json.dumps({"readings": [{"city": "city03", "temperature": 4.5, "time": 2}]}).encode()
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    st, _, _ = c.response()
    check(st == 100, "Expect: 100-continue gets 100 before the body")
    c.send(body)
    st, _, b = c.response()
    check(st == 200, "then the POST is answered %r" % b)
    c.close()

    st, _, b = Conn(srv).request("GET", "/healthz")
    check(st == 200, "the service is healthy after all of it")
    m = json.loads(Conn(srv).request("GET", "/metrics")[2])
    check(m["writer"]["acked_readings"] == 2, "only the two valid readings were stored (%r)" % m["writer"])
    srv.stop()
    check(rows(srv.db) == before + 2, "the database holds exactly the two valid readings more")


def case_slow_client(tmp):
    """Slow clients get 408 and hold no worker: one worker serves everyone else meanwhile."""
    srv = Server(tmp, "--request-timeout-ms", "2000", workers=1)
    slow = []
    for _ in range(20):
        c = Conn(srv)
        c.send(b"GET /wea")
        slow.append(c)
    t0 = time.monotonic()
    served = 0
    worst = 0
    fc = Conn(srv)
    i = 0
    # Drip one more byte into every slow request while the others are served.
    while time.monotonic() - t0 < 1.5:
        for c in slow:
            try:
                c.send(b"t" if i % 2 else b"h")
            except OSError:
                pass
        for _ in range(20):
            t = time.monotonic()
            st, _, _ = fc.request("GET", "/weather/city05")
            worst = max(worst, time.monotonic() - t)
            served += st == 200
        i += 1
        time.sleep(0.1)
    statuses = []
    for c in slow:
        c.s.settimeout(30)
        st, h, b = c.response()
        statuses.append(st)
    check(all(s == 408 for s in statuses), "every slow client got 408: %r" % statuses)
    check(served >= 100, "%d requests served by the single worker while 20 clients dripped bytes" % served)
    check(worst < 1.5, "the slowest of them took %.0f ms (under the slow clients' 2 s deadline: they held no worker)" %
          (worst * 1000))
    st, _, _ = Conn(srv).request("GET", "/healthz")
    check(st == 200, "still healthy")
    check(srv.stop() == 0, "exits 0")


def case_shutdown(tmp):
    """SIGTERM: stop accepting, finish in-flight requests, flush the writer, exit 0, lose nothing."""
    srv = Server(tmp)
    load, acked = run_load(srv, tmp, 4, 400, 400, conns=16, batch=10)
    # Wait for a state: some readings committed.
    m = {}
    deadline = time.time() + 60
    while time.time() < deadline:
        m = json.loads(Conn(srv).request("GET", "/metrics")[2])
        if m["writer"]["acked_readings"] >= 500:
            break
        time.sleep(0.05)
    status = srv.stop()
    res = finish_load(load)
    check(status == 0, "exit status 0 after SIGTERM under load (got %r)" % status)
    check("stopped:" in srv.log_text(), "the service logged its stop")
    rc, n, missing, nrows = verify(srv.db, acked)
    check(n > 0 and missing == 0, "%d acknowledged readings, %d missing" % (n, missing))
    # In-flight requests were finished: nothing stored that was not acknowledged.
    check(nrows == SEEDED + n, "rows %d = seeded + acknowledged %d" % (nrows, SEEDED + n))
    check(res["post_readings"]["status"]["5xx"] == 0, "no 503 during the shutdown")

    # A second signal exits at once, even with a request still open.
    # A POST whose body is still arriving at SIGTERM is received and
    # answered; an idle connection is closed.
    srv = Server(tmp, db=fresh_db(tmp, "inflight.db"))
    idle = Conn(srv)
    st, _, _ = idle.request("GET", "/healthz")
    c = Conn(srv)
    body = json.dumps({"readings": [{"city": "city11", "temperature": -11.125, "time": 9}]}).encode()
    c.send(b"POST /readings HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
    wait_in_progress(srv, 1)
    srv.p.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while "finishing in-flight" not in srv.log_text() and srv.p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    check(idle.closed(), "an idle connection is closed at SIGTERM")
    c.send(body[10:])
    st, h, b = c.response()
    check(st == 200 and h.get("connection") == "close", "the POST in flight is answered 200, Connection: close")
    check(srv.p.wait(30) == 0, "then the service exits 0")
    check(query(srv.db, "SELECT count(*) FROM readings WHERE temperature = -11.125")[0][0] == 1,
          "and its reading is stored")

    # A request stuck behind a 30 s database call keeps the first shutdown
    # waiting.
    srv = Server(tmp, "--db-delay-ms", "30000", "--db-delay-city", "city00", "--lock-timeout-ms", "60000",
                 db=fresh_db(tmp, "second.db"))
    c = Conn(srv)
    c.send(b"GET /weather/city00 HTTP/1.1\r\nHost: t\r\n\r\n")
    # The request must be in the service (inside its 30 s database call)
    # before the signal, or its connection is idle and closed at once.
    wait_in_progress(srv, 1)
    srv.p.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while "finishing in-flight" not in srv.log_text() and srv.p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    check(srv.p.poll() is None, "the first signal waits for the request in flight")
    t = time.monotonic()
    status = srv.stop(signal.SIGINT, timeout=30)
    check(status is not None and status != 0 and time.monotonic() - t < 10,
          "a second signal exits at once (status %r)" % status)


def wait_in_progress(srv, n):
    """Waits until n requests besides the asking /metrics one are in the
    service (received in part or whole, not answered)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        m = json.loads(Conn(srv).request("GET", "/metrics")[2])
        if m["connections"]["requests_in_progress"] >= n + 1:
            return
        time.sleep(0.01)
    check(False, "%d requests in progress within 30 s" % n)


def case_kill9(tmp):
    """kill -9 loses no acknowledged reading; the service restarts on the same file."""
    srv = Server(tmp)
    load, acked = run_load(srv, tmp, 4, 400, 200, conns=16, batch=10)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = json.loads(Conn(srv).request("GET", "/metrics")[2])
        if m["writer"]["acked_readings"] >= 1000:
            break
        time.sleep(0.05)
    srv.killed = True
    srv.p.kill()
    srv.p.wait()
    finish_load(load)
    rc, n, missing, nrows = verify(srv.db, acked)
    check(n >= 1000 and missing == 0, "after kill -9: %d acknowledged readings, %d missing" % (n, missing))
    srv2 = Server(tmp, db=srv.db)
    st, _, b = Conn(srv2).request("GET", "/healthz")
    check(st == 200, "the service restarts on the same file and is healthy")
    st, _, b = Conn(srv2).request("GET", "/weather/city10")
    check(st == 200, "and answers")
    check(srv2.stop() == 0, "and stops cleanly")
    check(rows(srv.db) == nrows, "the restart did not seed again or lose rows")


def case_unavailable(tmp):
    """A database that fails under the service: 503 with a log line, no crash, no false acknowledgement."""
    srv = Server(tmp)
    c = Conn(srv)
    st, _, _ = c.request("POST", "/readings", {"readings": [{"city": "city01", "temperature": 1.0, "time": 5}]})
    check(st == 200, "a POST is stored while the database is fine")
    # Another process takes the write lock and holds it past the service's
    # busy timeout (5 s): the writer's commit fails.
    db = sqlite3.connect(srv.db, timeout=1, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    t = time.monotonic()
    st, _, b = c.request("POST", "/readings", {"readings": [{"city": "city01", "temperature": 2.0, "time": 6}]})
    check(st == 503, "a POST while the database stays locked: 503 %r after %.1f s" % (b, time.monotonic() - t))
    st, _, _ = c.request("GET", "/healthz")
    check(st == 503, "healthz says unavailable")
    db.execute("ROLLBACK")
    db.close()
    st, _, _ = c.request("POST", "/readings", {"readings": [{"city": "city01", "temperature": 3.0, "time": 7}]})
    check(st == 200, "and recovers once the lock is gone")
    st, _, _ = c.request("GET", "/healthz")
    check(st == 200, "healthz says ok again")
    check(srv.stop() == 0, "exits 0")
    check("plaza-weather: storage:" in srv.log_text(), "the failure was logged")
    d = sqlite3.connect(srv.db)
    got = sorted(t for (t,) in d.execute("SELECT temperature FROM readings WHERE time IN (5, 6, 7)"))
    check(got == [1.0, 3.0], "the refused reading is not stored, the acknowledged ones are: %r" % got)


def case_full(tmp):
    """A full database: 503 with a log line, no crash, every acknowledged reading kept; a corrupt file refused."""
    srv = Server(tmp, "--db-grow-pages", "40")
    c = Conn(srv)
    acked, refused, t = [], 0, 0
    for i in range(400):
        body = {"readings": [{"city": "city%02d" % (k % 64), "temperature": 0.5 + k, "time": 100000 + i}
                             for k in range(200)]}
        st, _, b = c.request("POST", "/readings", body)
        if st == 200:
            acked.append(i)
        elif st == 503:
            refused += 1
            if refused >= 3:
                break
        else:
            check(False, "unexpected answer %d %r" % (st, b))
            break
    check(len(acked) > 0 and refused >= 3, "POSTs acknowledged until the database was full (%d), then 503" %
          len(acked))
    st, _, _ = c.request("GET", "/healthz")
    check(st == 503, "healthz says unavailable")
    st, _, _ = c.request("GET", "/weather/city01")
    check(st == 200, "GETs are still answered")
    check(srv.stop() == 0, "exits 0")
    check("database or disk is full" in srv.log_text(), "the log names the cause")
    d = sqlite3.connect(srv.db)
    times = {t for (t,) in d.execute("SELECT DISTINCT time FROM readings WHERE time BETWEEN 100000 AND 100400")}
    per = dict(d.execute("SELECT time, count(*) FROM readings WHERE time BETWEEN 100000 AND 100400 GROUP BY time").fetchall())
    d.close()
    check(all(100000 + i in times and per[100000 + i] == 200 for i in acked),
          "every acknowledged batch is stored whole")
    check(len(times) == len(acked), "and nothing refused is stored (%d batches stored)" % len(times))

    bad = os.path.join(tmp, "garbage.db")
    with open(bad, "wb") as f:
        f.write(b"this is not a database" * 100)
    p = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--db", bad], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode == 1 and "not a database" in p.stderr,
          "a corrupt file is refused at start with a message: %d %r" % (p.returncode, p.stderr.strip()))


def read_holds(path):
    """The distributed holds in a --refresh-log file: {(pid, token): hold}, each
    hold {city, token, pid, start, end (None while open), outcome}, times in ns."""
    holds = {}
    if not os.path.exists(path):
        return holds
    for line in open(path):
        f = line.split()
        if len(f) < 5:
            continue  # a line being written
        key = (int(f[4]), int(f[2]))
        if f[0] == "A":
            holds[key] = dict(city=f[1], token=int(f[2]), pid=int(f[4]), start=int(f[3]), end=None, outcome=None)
        elif f[0] == "R" and key in holds and len(f) >= 6:
            holds[key]["end"] = int(f[3])
            holds[key]["outcome"] = f[5]
    return holds


def wait_hold(path, pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for h in read_holds(path).values():
            if pred(h):
                return h
        time.sleep(0.01)
    raise SystemExit("timed out waiting for %s" % what)


def case_replicas(tmp):
    """Replicas on one PostgreSQL database: one refresh of a city at a time across all of
    them, every acknowledged reading stored, a killed holder blocks nobody past the lease,
    a paused holder's stale write refused by its fencing token."""
    log = os.path.join(tmp, "holds.txt")
    lease_ms = 2000
    common = ["--refresh-log", log, "--lock-lease-ms", str(lease_ms), "--lock-timeout-ms", "20000"]
    db = fresh_db(tmp)
    reps = [Server(tmp, "--forecast-ttl-ms", "100", "--refresh-ms", "400", *common, db=db, log="r%d.log" % k)
            for k in range(3)]

    # 1. Three replicas under load, each with its own generator; forecasts
    # refreshed by GETs (TTL 100 ms) and by each replica's refresher.
    loads = [run_load(r, tmp, 3, 100, 150, conns=8, batch=5, name="acked%d.txt" % k) for k, r in enumerate(reps)]
    results = [finish_load(p) for p, _ in loads]
    n_acked = 0
    for k, (res, (_, acked)) in enumerate(zip(results, loads)):
        post, get = res["post_readings"], res["get_weather"]
        check(post["status"]["2xx"] > 0 and post["status"]["5xx"] == 0 and post["status"]["4xx"] == 0,
              "replica %d: POSTs acknowledged, none refused: %r" % (k, post["status"]))
        check(get["status"]["2xx"] > 0 and get["status"]["5xx"] == 0 and get["status"]["4xx"] == 0,
              "replica %d: GETs answered: %r" % (k, get["status"]))
        rc, n, missing, nrows = verify(db, acked)
        check(n > 0 and missing == 0, "replica %d: %d acknowledged readings, %d missing" % (k, n, missing))
        n_acked += n
    check(rows(db) == SEEDED + n_acked, "rows %d = seeded + every replica's acknowledged %d" % (rows(db), n_acked))
    phase1 = read_holds(log)
    writers = {h["pid"] for h in phase1.values() if h["outcome"] == "wrote"}
    check(len(writers) >= 2, "forecasts written by %d replicas" % len(writers))
    check(any(h["outcome"] == "fresh" for h in phase1.values()),
          "a replica found a forecast another had just refreshed and adopted it")

    # 2. A replica killed with SIGKILL while it holds city00's lock (its
    # query of city00 made 30 s slow): another replica takes the lock at
    # once, well within the lease (the kernel closes the killed process's
    # connections and the server ends its sessions).
    victim = Server(tmp, "--db-delay-ms", "30000", "--db-delay-city", "city00", "--forecast-ttl-ms", "0",
                    "--refresh-ms", "3600000", *common, db=db, log="victim.log")
    vc = Conn(victim)
    vc.send(b"GET /weather/city00 HTTP/1.1\r\nHost: t\r\n\r\n")
    held = wait_hold(log, lambda h: h["pid"] == victim.p.pid and h["city"] == "city00", "the victim's hold")
    t_kill = time.time_ns()  # before the kill: whatever happens after it happens after this
    victim.killed = True
    victim.p.kill()
    victim.p.wait()
    c0 = Conn(reps[0])
    st, _, _ = c0.request("GET", "/weather/city00", headers="")
    nxt = wait_hold(log, lambda h: h["city"] == "city00" and h["pid"] != victim.p.pid and h["start"] > held["start"],
                    "another replica's hold of city00")
    check(st == 200, "a GET of city00 on another replica answers 200 after the kill")
    check(nxt["token"] > held["token"], "its token %d is higher than the killed holder's %d" %
          (nxt["token"], held["token"]))
    check(nxt["start"] >= t_kill, "it had the lock only after the kill (%.1f ms after)" % ((nxt["start"] - t_kill) / 1e6))
    check(nxt["start"] - t_kill < lease_ms * 10**6,
          "within the %d ms lease of the kill (%.1f ms)" % (lease_ms, (nxt["start"] - t_kill) / 1e6))

    # 3. A replica paused (SIGSTOP) while it holds city01's lock: the
    # server ends its session after the lease, another replica takes the
    # lock and writes; resumed, the paused one's write carries a stale token
    # and is refused; the newer forecast stays.
    delay_ms = 6000
    paused = Server(tmp, "--db-delay-ms", str(delay_ms), "--db-delay-city", "city01", "--forecast-ttl-ms", "0",
                    "--refresh-ms", "3600000", *common, db=db, log="paused.log")
    answer = []

    def paused_get():
        c = Conn(paused, timeout=120)
        answer.append(c.request("GET", "/weather/city01"))
        c.close()

    t = threading.Thread(target=paused_get)
    t.start()
    old = wait_hold(log, lambda h: h["pid"] == paused.p.pid and h["city"] == "city01", "the paused one's hold")
    paused.p.send_signal(signal.SIGSTOP)
    t_stop = time.time_ns()
    check(t_stop - old["start"] < delay_ms * 10**6 // 2, "paused inside its slow refresh, before its write")
    c1 = Conn(reps[1])
    deadline = time.time() + 60
    new = None
    while new is None and time.time() < deadline:
        c1.request("GET", "/weather/city01")
        new = next((h for h in read_holds(log).values() if h["city"] == "city01" and h["pid"] != paused.p.pid and
                    h["token"] > old["token"] and h["outcome"] == "wrote"), None)
    check(new is not None, "another replica took city01's lock and wrote its forecast while the holder was paused")
    if new is None:
        return
    check(new["start"] - old["start"] >= lease_ms * 10**6 * 0.9,
          "only once the lease had run out (%.0f ms after the paused one's grant)" %
          ((new["start"] - old["start"]) / 1e6))
    paused.p.send_signal(signal.SIGCONT)
    t.join(120)
    stale = wait_hold(log, lambda h: h["pid"] == paused.p.pid and h["token"] == old["token"] and h["end"],
                      "the resumed holder's end")
    check(stale["outcome"] == "stale", "the resumed holder's write was refused as stale (%s)" % stale["outcome"])
    check(answer and answer[0][0] == 200, "its GET is answered 200 with the newer forecast")
    stored = query(db, "SELECT token FROM forecasts WHERE city = 'city01'")[0][0]
    check(stored >= new["token"] and stored != old["token"],
          "the stored forecast of city01 carries token %d, not the stale %d" % (stored, old["token"]))
    check(paused.stop() == 0, "the resumed replica stops cleanly")
    check("token %d is stale" % old["token"] in paused.log_text() and "was lost while held" in paused.log_text(),
          "and logged the refused write and the lost lock")

    for k, r in enumerate(reps):
        m = json.loads(Conn(r).request("GET", "/metrics")[2])
        check(m["replicas"]["refused_stale"] == 0, "replica %d had no write refused" % k)
        check(r.stop() == 0, "replica %d stops cleanly" % k)

    # Over every hold of every replica: per city, tokens rise in the order
    # the locks were granted, and no two holds overlap in time, but for the
    # paused holder's, which lost its lock (the window the token closes),
    # and the killed one's, which ended with its process.
    holds = sorted(read_holds(log).values(), key=lambda h: (h["city"], h["start"]))
    overlaps, order = [], []
    by_city = {}
    for h in holds:
        by_city.setdefault(h["city"], []).append(h)
    for city, hs in by_city.items():
        for a, b in zip(hs, hs[1:]):
            if b["token"] <= a["token"]:
                order.append((city, a["token"], b["token"]))
        live = [h for h in hs if h["outcome"] not in ("stale", None)]
        for a, b in zip(live, live[1:]):
            if b["start"] < a["end"]:
                overlaps.append((city, a["pid"], a["token"], b["pid"], b["token"], (a["end"] - b["start"]) / 1e3))
    check(len(holds) > 200, "%d holds recorded" % len(holds))
    check(not order, "tokens rise in grant order for every city: %r" % order[:5])
    check(not overlaps, "no two refreshes of a city overlapped: %r" % overlaps[:5])
    # The stored forecast of each city was written by its highest writing token.
    top = {}
    for h in holds:
        if h["outcome"] == "wrote":
            top[h["city"]] = max(top.get(h["city"], 0), h["token"])
    stored = dict(query(db, "SELECT city, token FROM forecasts"))
    wrong = {c: (stored.get(c), t) for c, t in top.items() if stored.get(c) != t}
    check(not wrong, "every city's stored forecast carries the highest token that wrote it: %r" % list(wrong.items())[:5])


CASES = {k[5:]: v for k, v in globals().items() if k.startswith("case_")}
# The cases that need the SQLite file itself (locking it from another
# process, capping its growth), and those that need replicas on PostgreSQL.
SQLITE_ONLY = {"unavailable", "full"}
PG_ONLY = {"replicas"}

if __name__ == "__main__":
    if CASE not in CASES or BACKEND not in ("sqlite", "pg"):
        raise SystemExit("unknown case %s or back end %s; cases: %s" % (CASE, BACKEND, " ".join(CASES)))
    if (BACKEND == "pg" and CASE in SQLITE_ONLY) or (BACKEND != "pg" and CASE in PG_ONLY):
        raise SystemExit("the case %s does not run on %s" % (CASE, BACKEND))
    with tempfile.TemporaryDirectory(prefix="plaza-weather-test-") as tmp:
        try:
            CASES[CASE](tmp)
        finally:
            for srv in servers:
                p = srv.p
                # A service that died of a signal while the test was not
                # stopping it (a crash, a sanitizer's abort) is the likeliest
                # cause of whatever failed: its log says why, and the
                # temporary directory goes with the test.
                if p.poll() is not None and p.returncode < 0 and not srv.killed:
                    failures.append("a service exited with %d" % p.returncode)
                    print("FAIL: a service (pid %d) exited with %d; its log:\n%s" %
                          (p.pid, p.returncode, srv.log_text()[-6000:]), flush=True)
                if p.poll() is None:
                    if p.returncode is None:
                        try:
                            p.send_signal(signal.SIGCONT)
                        except OSError:
                            pass
                    p.kill()
                    p.wait()
            for db in pg_databases:
                try:
                    psql(pg_admin(), "DROP DATABASE IF EXISTS %s WITH (FORCE)" % db)
                except SystemExit as e:
                    print("could not drop %s: %s" % (db, e))
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all checks passed")
