#!/bin/sh
# The weather service of plaza (apps/weather) beside its Rust and Go peers
# (bench/peers/weather-rust, bench/peers/weather-go) under the same load.
#
#   usage: bench/weather.sh [LOAD]          (from the top of the tree, after building)
#
# LOAD is the load generator: a plaza-weather binary (its `load` subcommand, open loop:
# requests leave at scheduled instants and latency runs from the instant, so a stalled
# server cannot hide its stall; the default is build/apps/weather/plaza-weather), or the
# word `wrk` (closed loop with a pause per connection, bench/peers/weather.lua: a slow
# server is sent less and its latency is under-reported; for when plaza-weather is not
# built).
#
# Each server runs in its own process on 2 workers (tokio worker threads, GOMAXPROCS,
# plaza workers) with a fresh database in a temporary directory; all are started first and
# measured in turn, rate by rate, so a noisy moment of the machine hits every system. Then:
#   1. fixed rates: for each total rate of RATES, POST_SHARE of it POSTs of BATCH readings
#      and the rest GETs of random cities, over CONNECTIONS connections for DURATION
#      seconds: requests/s, p50/p99/p99.9/max per endpoint, errors;
#   2. the search: from SEARCH_FROM, the rate is multiplied by SEARCH_STEP while a system's
#      p99 of both endpoints stays at or under P99_MS (no errors, at least 95% of the
#      offered rate served) in one of SEARCH_TRIES runs (a burst of other work on a shared
#      machine should not end the search); it prints the last rate each system passed.
# The load generator runs on the same 2 cores (LOAD_WORKERS threads): it takes part of them.
# Every row also says how busy the machine was with other processes during the run (the
# CPU time of everything but the measured server and the generator, in % of one core).
#
# Environment (defaults): SYSTEMS="plaza rust go", PLAZA=build/apps/weather/plaza-weather,
# RUST=bench/peers/bin/weather-rust, GO=bench/peers/bin/weather-go, RATES="1000 4000 8000",
# POST_SHARE=0.2, BATCH=10, CONNECTIONS=32, DURATION=5, P99_MS=10, SEARCH_FROM=2000,
# SEARCH_STEP=1.5, SEARCH_MAX=64000, SEARCH_DURATION=4, SEARCH_TRIES=2, LOAD_WORKERS=1,
# OUT=bench/results/weather-<time>.csv (one line per endpoint per run). SEARCH_MAX below
# SEARCH_FROM skips the search.
# With the defaults a run takes about 3-4 minutes.
cd "$(dirname "$0")/.." || exit 2
exec python3 - "$@" << 'EOF'
import json, os, platform, re, resource, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

env = os.environ.get
SYSTEMS = env("SYSTEMS", "plaza rust go").split()
BINARIES = {"plaza": [env("PLAZA", "build/apps/weather/plaza-weather"), "serve"],
            "rust": [env("RUST", "bench/peers/bin/weather-rust")],
            "go": [env("GO", "bench/peers/bin/weather-go")]}
RATES = [float(r) for r in env("RATES", "1000 4000 8000").split()]
POST_SHARE = float(env("POST_SHARE", "0.2"))
BATCH = int(env("BATCH", "10"))
CONNECTIONS = int(env("CONNECTIONS", "32"))
DURATION = float(env("DURATION", "5"))
P99_MS = float(env("P99_MS", "10"))
SEARCH_FROM = float(env("SEARCH_FROM", "2000"))
SEARCH_STEP = float(env("SEARCH_STEP", "1.5"))
SEARCH_MAX = float(env("SEARCH_MAX", "64000"))
SEARCH_DURATION = float(env("SEARCH_DURATION", "4"))
SEARCH_TRIES = int(env("SEARCH_TRIES", "2"))
LOAD_WORKERS = int(env("LOAD_WORKERS", "1"))
LOAD = sys.argv[1] if len(sys.argv) > 1 else "build/apps/weather/plaza-weather"
OUT = env("OUT", time.strftime("bench/results/weather-%Y%m%d-%H%M%S.csv"))
ENDPOINTS = ["post_readings", "get_weather"]


def say(*a):
    print(*a, file=sys.stderr, flush=True)


HZ = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq, steal)."""
    f = open("/proc/stat").readline().split()
    return sum(int(f[i]) for i in (1, 2, 3, 6, 7, 8)) / HZ


def process_cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """One service in its own process on a free port, 2 workers, a fresh database."""

    def __init__(self, name, tmp):
        self.name = name
        self.port = free_port()
        self.log = open(os.path.join(tmp, name + ".log"), "w")
        cmd = BINARIES[name] + ["--listen", f"127.0.0.1:{self.port}", "--db", os.path.join(tmp, name + ".db"),
                                "--workers", "2"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"weather: {name} did not start ({' '.join(cmd)}); see {self.log.name}")
            time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 30 s"
        if code != 0:
            say(f"weather: {self.name} exited with {code} after SIGTERM")


def load_plaza(port, rate, seconds):
    """plaza-weather load --json: {endpoint: {rps, p50_us, ...}}, late sends."""
    cmd = [LOAD, "load", "--target", f"127.0.0.1:{port}", "--connections", str(CONNECTIONS),
           "--duration", str(seconds), "--post-rate", str(rate * POST_SHARE),
           "--get-rate", str(rate * (1 - POST_SHARE)), "--batch", str(BATCH),
           "--workers", str(LOAD_WORKERS), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    try:
        j = json.loads(out.stdout)
    except ValueError:
        raise SystemExit(f"weather: {' '.join(cmd)} printed no JSON: {out.stdout!r} {out.stderr!r}")
    res = {}
    for e in ENDPOINTS:
        x = j[e]
        errors = x["status"]["4xx"] + x["status"]["5xx"] + x["status"]["3xx"] + x["status"]["conn_errors"]
        res[e] = dict(rps=x["rps"], p50_us=x["p50_us"], p99_us=x["p99_us"], p999_us=x["p999_us"],
                      max_us=x["max_us"], errors=errors)
    return res, j.get("late_sends", 0)


def load_wrk(port, rate, seconds):
    """Two wrk processes at once, one per endpoint, each paced by weather.lua's delay()."""
    procs = {}
    for e, kind, share in (("post_readings", "post", POST_SHARE), ("get_weather", "get", 1 - POST_SHARE)):
        if share <= 0:
            continue
        conns = max(1, round(CONNECTIONS * share))
        pause_ms = max(0, round(conns * 1000 / (rate * share)))
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "-s", "bench/peers/weather.lua",
               f"http://127.0.0.1:{port}", "--", kind, str(BATCH), str(pause_ms)]
        procs[e] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = {}
    for e, p in procs.items():
        out, err = p.communicate(timeout=seconds + 60)
        m = re.search(r"^WEATHER (.*)$", out, re.M)
        if not m:
            raise SystemExit(f"weather: wrk printed no WEATHER line: {out!r} {err!r}")
        f = dict(kv.split("=") for kv in m.group(1).split())
        res[e] = dict(rps=int(f["requests"]) / float(f["seconds"]), p50_us=float(f["p50_us"]),
                      p99_us=float(f["p99_us"]), p999_us=float(f["p999_us"]), max_us=float(f["max_us"]),
                      errors=int(f["non2xx"]) + int(f["errors"]))
    return res, None


measure = load_wrk if LOAD == "wrk" else load_plaza
if LOAD != "wrk" and not os.access(LOAD, os.X_OK):
    raise SystemExit(f"weather: no load generator {LOAD} (build plaza, or pass wrk)")
if LOAD == "wrk" and not shutil.which("wrk"):
    raise SystemExit("weather: wrk not found (scripts/install-deps.sh bench)")
for s in SYSTEMS:
    if s not in BINARIES:
        raise SystemExit(f"weather: unknown system {s} (plaza, rust, go)")
    if not os.access(BINARIES[s][0], os.X_OK):
        raise SystemExit(f"weather: {BINARIES[s][0]} missing (make build; make -C bench/peers weather)")

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# weather services, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}: "
      f"{os.cpu_count()} x {cpu}, load average {os.getloadavg()[0]:.1f} at start")
gen = "wrk (closed loop, bench/peers/weather.lua)" if LOAD == "wrk" else f"{LOAD} load (open loop, {LOAD_WORKERS} worker)"
print(f"# load: {gen}; {CONNECTIONS} connections, {POST_SHARE:.0%} POSTs of {BATCH} readings, "
      f"the rest GET /weather/<random city>; servers on 2 workers each; the generator shares the cores")
os.makedirs(os.path.dirname(OUT) or ".", exist_ok=True)
csv = open(OUT, "w")
csv.write("phase,system,offered_rps,endpoint,rps,p50_us,p99_us,p999_us,max_us,errors,late_sends,"
          "server_cpu_pct,others_cpu_pct\n")

tmp = tempfile.mkdtemp(prefix="weather-bench.")
servers = {}
try:
    for s in SYSTEMS:
        servers[s] = Server(s, tmp)
    say(f"weather: servers up: " + ", ".join(f"{s} on {servers[s].port}" for s in SYSTEMS))

    def run(phase, s, rate, seconds):
        pid = servers[s].proc.pid
        b0, p0, c0, t0 = machine_busy_s(), process_cpu_s(pid), children_cpu_s(), time.time()
        res, late = measure(servers[s].port, rate, seconds)
        b1, p1, c1, t1 = machine_busy_s(), process_cpu_s(pid), children_cpu_s(), time.time()
        server_pct = (p1 - p0) / (t1 - t0) * 100
        others_pct = max(0.0, ((b1 - b0) - (p1 - p0) - (c1 - c0)) / (t1 - t0) * 100)
        for r in res.values():
            r["server_cpu"], r["others_cpu"] = server_pct, others_pct
        for e in ENDPOINTS:
            r = res.get(e)
            if r:
                csv.write(f"{phase},{s},{rate:.0f},{e},{r['rps']:.1f},{r['p50_us']:.1f},{r['p99_us']:.1f},"
                          f"{r['p999_us']:.1f},{r['max_us']:.1f},{r['errors']},{'' if late is None else late},"
                          f"{server_pct:.0f},{others_pct:.0f}\n")
        csv.flush()
        return res, late

    print("\n## Fixed rates (total offered requests/s; latencies in ms)\n")
    print("| offered | system | endpoint | req/s | p50 | p99 | p99.9 | max | errors | late sends | server CPU % | others' CPU % |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rate in RATES:
        for s in SYSTEMS:
            say(f"weather: {s} at {rate:.0f}/s for {DURATION:g} s")
            res, late = run("fixed", s, rate, DURATION)
            for e in ENDPOINTS:
                r = res.get(e)
                if r:
                    print(f"| {rate:.0f} | {s} | {e} | {r['rps']:.0f} | {r['p50_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} "
                          f"| {r['p999_us'] / 1e3:.2f} | {r['max_us'] / 1e3:.2f} | {r['errors']} | {'' if late is None else late} "
                          f"| {r['server_cpu']:.0f} | {r['others_cpu']:.0f} |")

    if SEARCH_MAX < SEARCH_FROM:
        say(f"weather: every run's figures: {OUT}")
        raise SystemExit(0)  # the search is skipped (the finally clause stops the servers)
    print(f"\n## Requests/s at p99 <= {P99_MS:g} ms (both endpoints, no errors, >= 95% of the offered rate "
          f"served, best of {SEARCH_TRIES} tries)\n")
    best = {s: None for s in SYSTEMS}
    active = list(SYSTEMS)
    rate = SEARCH_FROM
    while active and rate <= SEARCH_MAX:
        for s in list(active):
            for attempt in range(1, SEARCH_TRIES + 1):
                say(f"weather: search: {s} at {rate:.0f}/s for {SEARCH_DURATION:g} s (try {attempt})")
                res, late = run("search", s, rate, SEARCH_DURATION)
                p99 = max(res[e]["p99_us"] for e in res) / 1e3
                served = sum(res[e]["rps"] for e in res)
                errors = sum(res[e]["errors"] for e in res)
                ok = p99 <= P99_MS and errors == 0 and served >= 0.95 * rate
                others = next(iter(res.values()))["others_cpu"]
                say(f"weather:   {served:.0f} req/s served, p99 {p99:.2f} ms, {errors} errors, "
                    f"others used {others:.0f}% of a core: {'pass' if ok else 'fail'}")
                if ok:
                    best[s] = (rate, served, p99, others)
                    break
            else:
                active.remove(s)
        rate *= SEARCH_STEP
    print("| system | highest passing offered rate | req/s served there | p99 there (ms) | others' CPU % then |")
    print("|---|---:|---:|---:|---:|")
    for s in SYSTEMS:
        b = best[s]
        if b is None:
            print(f"| {s} | below {SEARCH_FROM:.0f} | | | |")
        else:
            more = " (search ceiling)" if s in active else ""
            print(f"| {s} | {b[0]:.0f}{more} | {b[1]:.0f} | {b[2]:.2f} | {b[3]:.0f} |")
finally:
    for s in servers.values():
        s.stop()
    shutil.rmtree(tmp, ignore_errors=True)
say(f"weather: every run's figures: {OUT}")
EOF
