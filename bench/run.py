#!/usr/bin/python3
"""Runs plaza's benchmarks beside the peers and writes the results.

    bench/run.py [--quick] [--runs N]

Runs `bench-plaza all` and each peer's `all` (bench/peers/bin/) N times
(default 5; --quick: once), interleaved so that a noisy moment hits every
system alike.  Then the logic-section workloads (logic, bystanders,
wrong_lock; see bench/peers/README.md), which need a database: it starts
bench/peers/bin/dbserver once per delay (0, 50, 1000 µs) on a free loopback
port, runs each workload for plaza, tokio and Go with db_port= (2 s each;
--quick: 1 s), N times interleaved likewise, and stops the servers.  Then the
scheduling-under-overload workloads (ticker beside 100, 1000 and 10000
runnable tasks, 2 s each; blocking_section beside 100 and 1000, 5 s each;
--quick: 1 and 2 s), for plaza, tokio and Go, N times interleaved.  Then the
PostgreSQL client against libpq's blocking loop (bench/pg/run.sh: a throw-away
server, bench-pg's set; N times, 2 s per figure; --quick: once, 1 s), and the
weather service beside its Rust and Go peers (bench/weather.sh: fixed rates and
the search for the highest rate at a p99 target; --quick: two rates of 2 s, no
search).  Each is skipped, with a line saying why, when its programs are not
built (bench-pg needs libpq; the peers, make -C bench/peers).  It writes

    bench/results/<date>-<host>.csv   every measurement, with its run index
    bench/RESULTS.md                  medians, min-max, each peer's ratio to plaza
    bench/results/<date>-<host>/*.png one plot per workload

Progress goes to stderr.  Every figure carries the machine it was taken on.
"""
import argparse
import collections
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SYSTEMS = ["plaza", "tokio", "parking_lot", "std", "go", "boost_fiber", "pthread"]
HIGHER_IS_BETTER = {"rps", "sections_per_s", "bystander_ops_per_s", "utilisation", "connections",
                    "busy_ops_per_s", "client_ops_per_s"}
DB_DELAYS = [0, 50, 1000]


def logic_runs(seconds):
    """The logic-section invocations: (delay_us, [systems' binaries], workload, args).
    Go has no thread-blocking lock, so no lock=sync or wrong_lock rows (peer-go says so)."""
    t = f"seconds={seconds}"
    runs = []
    for d in DB_DELAYS:
        runs.append((d, ["plaza", "peer-tokio", "peer-go"], "logic", [f"delay_us={d}", t]))
    runs.append((1000, ["plaza", "peer-tokio", "peer-go"], "bystanders", ["lock=async", "delay_us=1000", t]))
    runs.append((1000, ["plaza", "peer-tokio"], "bystanders", ["lock=sync", "delay_us=1000", t]))
    runs.append((1000, ["plaza", "peer-tokio"], "wrong_lock", ["kind=logic_behind_sync", "delay_us=1000", t]))
    return runs


def overload_runs(seconds):
    """The scheduling-under-overload invocations: (systems' binaries, workload, args).
    A blocking section lasts 20 ms, so it runs 2.5 times longer than the ticker (2 s
    give the ticker 1000 samples, a section's 4 holders about 100, whose p99 would be
    their maximum)."""
    systems = ["plaza", "peer-tokio", "peer-go"]
    runs = [(systems, "ticker", [f"tasks={n}", f"seconds={seconds}"]) for n in (100, 1000, 10000)]
    runs += [(systems, "blocking_section", [f"clients={n}", f"seconds={seconds * 5 // 2}"]) for n in (100, 1000)]
    return runs


def run_overload(binaries, runs, seconds):
    """The overload workloads, `runs` times, interleaved like the `all` runs."""
    paths = dict(binaries)
    rows = []
    for r in range(1, runs + 1):
        for systems, workload, args in overload_runs(seconds):
            for name in systems:
                path = paths.get(name)
                if not path:
                    continue
                sys.stderr.write(f"bench: run {r}/{runs}: {name} {workload} {' '.join(args)} ... ")
                sys.stderr.flush()
                got, took = run_all(path, name, False, [workload] + args, timeout=seconds * 50 + 120)
                sys.stderr.write(f"{len(got)} figures in {took:.1f} s\n")
                rows.extend([str(r)] + g for g in got)
    return rows


class DbServer:
    """bin/dbserver on a free loopback port (it picks one and prints it), for at most
    `seconds`; stop() ends it and returns what it measured about its own delays."""

    def __init__(self, binary, delay_us, seconds):
        self.delay_us = delay_us
        self.proc = subprocess.Popen([binary, "port=0", f"delay_us={delay_us}", f"seconds={seconds}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("port="):
            self.proc.kill()
            raise RuntimeError(f"dbserver delay_us={delay_us} did not start: {line!r}")
        self.port = int(line.split("=", 1)[1])
        deadline = time.time() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"dbserver delay_us={delay_us} does not accept on {self.port}")
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.strip()


def machine():
    """The machine as RESULTS.md heads its section: cores, the CPU's name and its family
    and model numbers (a VM's name is often only "Intel(R) Xeon(R) Processor", shared by
    CPU generations whose figures differ), and the kernel."""
    model, ids = "unknown CPU", {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key in ("cpu family", "model") and key not in ids:
                ids[key] = value.strip()
    except OSError:
        pass
    if "cpu family" in ids and "model" in ids:
        model += f" (family {ids['cpu family']}, model {ids['model']})"
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def versions():
    glibc = platform.libc_ver()[1] or "?"
    return {
        "rustc": version(["rustc", "--version"]),
        "tokio": "1.24.2 (Debian librust-tokio-dev)",
        "parking_lot": "0.12.1 (Debian librust-parking-lot-dev)",
        "go": version(["go", "version"]),
        "boost": "1.74 (Debian libboost-fiber-dev)",
        "glibc": glibc,
        "gcc": version(["gcc", "--version"]),
    }


def run_all(binary, name, quick, args=None, timeout=None):
    args = [binary] + (args or ["all"])
    start = time.time()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"bench: {name} {' '.join(args[1:])} timed out after {timeout} s\n")
        return [], time.time() - start
    took = time.time() - start
    if proc.returncode != 0:
        sys.stderr.write(f"bench: {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}\n")
        return [], took
    rows = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split(",")
        if len(parts) == 5:
            try:
                float(parts[4])
            except ValueError:
                continue
            rows.append(parts)
    return rows, took


def aggregate(rows):
    data = collections.defaultdict(lambda: collections.defaultdict(list))
    for _, system, workload, param, metric, value in rows:
        data[(workload, param, metric)][system].append(float(value))
    return data


def fmt(v):
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


LATENCY_NOTE = ("Latencies (p50, p99, p99.9) come from a log-linear histogram (exact below 256 ns, "
                "then 128 buckets per power of two: at most 0.4% off), the same in every program "
                "(bench/hist.h and its copies in the peers).")

METRIC_NOTES = {
    "sections_per_s": "logic sections completed per second (all section tasks together)",
    "utilisation": "sections_per_s × the mean time of one unlocked round trip measured first "
                   "by the same program (1 = one section per round trip, the limit of a lock held "
                   "across it; above 1 when that program's idle round trip is slower than its busy ones)",
    "bystander_ops_per_s": "loop iterations (work 100, yield) of all bystander tasks per second",
    "bystander_p50_us": "median of one bystander iteration, waiting for a worker included (µs)",
    "bystander_p99_us": "99th percentile of one bystander iteration, waiting for a worker included (µs)",
    "bystander_p999_us": "99.9th percentile of one bystander iteration, waiting for a worker included (µs)",
    "p50_us": "median latency (µs)",
    "p99_us": "99th percentile latency (µs)",
    "p999_us": "99.9th percentile latency (µs)",
    "ns_per_op": "time per lock+section+unlock of all tasks together (ns)",
    "max_wait_us": "longest wait for the lock that any task saw, sampled every 64th acquisition (µs)",
    "rtt_us": "mean unlocked round trip to the database, measured before the sections (µs)",
    "rps": "requests per second",
    "late_p50_us": "ticker: median of (when the ticker ran - its deadline), µs",
    "late_p99_us": "ticker: 99th percentile of (when the ticker ran - its deadline), µs",
    "late_max_us": "ticker: the latest tick, µs",
    "busy_ops_per_s": "ticker: iterations (compute, yield) of all the runnable tasks per second",
    "hold_p50_us": "blocking_section: median time the lock was held across the 20 ms blocking call (µs)",
    "hold_p99_us": "blocking_section: 99th percentile hold time (µs; the floor is the blocking call, 20000)",
    "hold_max_us": "blocking_section: longest hold (µs)",
    "client_ops_per_s": "blocking_section: iterations (compute, yield) of all the client tasks per second",
    "connections": "connections accepted",
}


def metric_legend(data):
    """One line per metric in the table: which way is better and how to read the ratio."""
    out = ["Metrics (the ratio after a peer's median is peer/plaza):\n"]
    for metric in sorted({k[2] for k in data}):
        note = METRIC_NOTES.get(metric, "")
        if metric in HIGHER_IS_BETTER:
            way = "higher is better; a ratio below 1 means plaza is ahead"
        else:
            way = "lower is better; a ratio above 1 means plaza is ahead"
        out.append(f"- `{metric}`: {way}" + (f"; {note}" if note else "") + ".")
    return out


def med(data, key, system):
    vals = data.get(key, {}).get(system)
    return statistics.median(vals) if vals else None


def logic_summary(data):
    """The figures docs/choosing-a-lock.md quotes, side by side: the cost of each wrong
    lock next to the right one, per system."""
    by = "tasks=64 bystanders=64 workers=2 delay_us=1000"
    rows = [
        ("logic section, async lock + async I/O", ("bystanders", "lock=async " + by, "sections_per_s"),
         ("bystanders", "lock=async " + by, "bystander_ops_per_s"),
         ("bystanders", "lock=async " + by, "bystander_p50_us"),
         ("bystanders", "lock=async " + by, "bystander_p99_us"),
         ("bystanders", "lock=async " + by, "bystander_p999_us")),
        ("logic section, sync lock + blocking I/O (wrong)", ("bystanders", "lock=sync " + by, "sections_per_s"),
         ("bystanders", "lock=sync " + by, "bystander_ops_per_s"),
         ("bystanders", "lock=sync " + by, "bystander_p50_us"),
         ("bystanders", "lock=sync " + by, "bystander_p99_us"),
         ("bystanders", "lock=sync " + by, "bystander_p999_us")),
    ]
    out = ["\n## Logic sections: the right lock and the wrong one\n",
           "64 tasks each hold one lock across a 1 ms database round trip while 64 bystander "
           "tasks compute and yield, on 2 workers (medians):\n",
           "| section | system | sections/s | bystander iterations/s | bystander p50 / p99 / p99.9 (µs) |",
           "|---|---|---:|---:|---:|"]
    for label, ks, ko, k50, k99, k999 in rows:
        for system in ["plaza", "tokio", "go"]:
            v = [med(data, k, system) for k in (ks, ko)]
            lat = [med(data, k, system) for k in (k50, k99, k999)]
            if all(x is None for x in v + lat):
                continue
            cells = ["–" if x is None else fmt(x) for x in v]
            cells.append(" / ".join("–" if x is None else fmt(x) for x in lat))
            out.append(f"| {label} | {system} | " + " | ".join(cells) + " |")
    out += ["", "A data section (counter++) behind each kind of lock, 64 tasks on 2 workers, ns per "
            "section (medians):\n",
            "| system | sync lock (`tasks_contended work=0`) | async lock (`wrong_lock kind=data_behind_async`) | cost of the wrong lock |",
            "|---|---:|---:|---:|"]
    for system, sync_sys in [("plaza", "plaza"), ("tokio", "parking_lot"), ("tokio", "std")]:
        sync_v = med(data, ("tasks_contended", "tasks=64 workers=2 work=0", "ns_per_op"), sync_sys)
        async_v = med(data, ("wrong_lock", "kind=data_behind_async tasks=64 workers=2", "ns_per_op"), system)
        if sync_v is None and async_v is None:
            continue
        cost = f"×{async_v / sync_v:.1f}" if sync_v and async_v else "–"
        name = system if system == sync_sys else f"{system} vs {sync_sys}"
        out.append(f"| {name} | " + ("–" if sync_v is None else fmt(sync_v)) + " | "
                   + ("–" if async_v is None else fmt(async_v)) + f" | {cost} |")
    return out


GRID_TASKS = [2, 64, 1024]
# (label, workload, system) of every lock in the data-critical grid.
GRID_LOCKS = [
    ("plaza pz_mutex (sync)", "tasks_contended", "plaza"),
    ("parking_lot::Mutex in tokio tasks", "tasks_contended", "parking_lot"),
    ("std::sync::Mutex in tokio tasks", "tasks_contended", "std"),
    ("Go sync.Mutex", "tasks_contended", "go"),
    ("Boost.Fiber fibers::mutex", "tasks_contended", "boost_fiber"),
    ("plaza pz_async_mutex (async)", "async_contended", "plaza"),
    ("tokio::sync::Mutex", "async_contended", "tokio"),
    ("Go sync.Mutex (as async)", "async_contended", "go"),
    ("Boost.Fiber fibers::mutex (as async)", "async_contended", "boost_fiber"),
]


def grid_key(workload, tasks, work, metric="ns_per_op"):
    return (workload, f"tasks={tasks} workers=2 work={work}", metric)


def data_summary(data):
    """The data-critical grid: a tiny section from 2, 64 and 1024 tasks on 2 workers."""
    out = ["\n## Data critical sections: 2, 64 and 1024 tasks on 2 workers\n",
           "counter++ under one lock, ns per section (medians); work=100 adds 100 xorshift steps "
           "outside the lock. Boost.Fiber's rows are its default (fibers suspend); its "
           "`suspend=0` rows (spinning) are in the full table.\n",
           "| lock | " + " | ".join(f"{t} tasks" for t in GRID_TASKS) + " | "
           + " | ".join(f"{t} tasks, work=100" for t in GRID_TASKS) + " |",
           "|---|" + "---:|" * (2 * len(GRID_TASKS))]
    for label, workload, system in GRID_LOCKS:
        cells = []
        for work in (0, 100):
            for t in GRID_TASKS:
                v = med(data, grid_key(workload, t, work), system)
                cells.append("–" if v is None else fmt(v))
        if all(c == "–" for c in cells):
            continue
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def latency_summary(data):
    out = ["\n## Latencies: p50 / p99 / p99.9\n", LATENCY_NOTE + "\n",
           "| workload | param | system | p50 | p99 | p99.9 |", "|---|---|---|---:|---:|---:|"]
    for (workload, param, metric) in sorted(data):
        if metric not in ("p50_us", "bystander_p50_us"):
            continue
        prefix = metric[:-len("p50_us")]
        for system in SYSTEMS:
            vals = [med(data, (workload, param, f"{prefix}{p}_us"), system) for p in ("p50", "p99", "p999")]
            if all(v is None for v in vals):
                continue
            out.append(f"| {workload} | {param} | {system} | "
                       + " | ".join("–" if v is None else fmt(v) for v in vals) + " |")
    out.append("\n(µs; sleep asks for 100 µs.)")
    return out


def overload_summary(data):
    """Scheduling under overload: the ticker's lateness and the blocking section's hold
    time, per number of runnable tasks, p50 / p99 / max per system."""
    out = ["\n## Scheduling under overload\n",
           "A 2 ms ticker beside N tasks that compute (1000 xorshift steps) and yield, on 2 "
           "workers: how late it runs (µs, p50 / p99 / max; goal p99 <= 1000 at 1000 tasks). "
           "A lock held across a 20 ms blocking call (pz_blocking, spawn_blocking, a blocking "
           "system call in Go) by 4 tasks in turn beside N such tasks: hold time (µs, p50 / p99 / "
           "max; the floor is 20000, goal p99 <= 30000) and sections per second (at most 50).\n",
           "| workload | N | system | p50 / p99 / max (µs) | sections/s | runnable tasks' iterations/s |",
           "|---|---:|---|---:|---:|---:|"]
    for workload, pre in (("ticker", "late"), ("blocking_section", "hold")):
        params = sorted({k[1] for k in data if k[0] == workload}, key=natural_key)
        for param in params:
            n = param.split()[0].split("=")[1]
            for system in ("plaza", "tokio", "go"):
                lat = [med(data, (workload, param, f"{pre}_{q}_us"), system) for q in ("p50", "p99", "max")]
                if all(v is None for v in lat):
                    continue
                sps = med(data, (workload, param, "sections_per_s"), system)
                ops = med(data, (workload, param, "busy_ops_per_s" if workload == "ticker"
                                 else "client_ops_per_s"), system)
                out.append(f"| {workload} | {n} | {system} | "
                           + " / ".join("–" if v is None else fmt(v) for v in lat) + " | "
                           + ("–" if sps is None else fmt(sps)) + " | " + ("–" if ops is None else fmt(ops)) + " |")
    return out


def machine_section(data, stamp, runs, mach, vers, plots_dir, db_notes=(), extra=()):
    """This run's figures as one section of RESULTS.md, headed by the machine."""
    lines = []
    lines.append(f"## {mach}\n")
    lines.append(f"Taken {stamp} on {mach}; {runs} run(s) of every system, interleaved. "
                 "Each cell: median (min-max); after the peers' medians, the ratio peer/plaza "
                 "(its direction per metric is listed below the table).\n")
    lines.append("Versions: " + "; ".join(f"{k} {v}" for k, v in vers.items()) + ".\n")
    lines.append("Command: `make bench` (or `bench/run.py --runs N`; `make bench QUICK=1` runs once). "
                 "Workloads and how each peer implements them: bench/peers/README.md.\n")
    lines.append("| workload | param | metric | " + " | ".join(SYSTEMS) + " |")
    lines.append("|---|---|---|" + "---:|" * len(SYSTEMS))
    for (workload, param, metric) in sorted(data):
        per = data[(workload, param, metric)]
        base = statistics.median(per["plaza"]) if per.get("plaza") else None
        cells = []
        for s in SYSTEMS:
            vals = per.get(s)
            if not vals:
                cells.append("–")
                continue
            med = statistics.median(vals)
            cell = fmt(med)
            if len(vals) > 1 and max(vals) > min(vals) * 1.1:
                cell += f" ({fmt(min(vals))}–{fmt(max(vals))})"
            if base and s != "plaza" and base > 0:
                cell += f" ×{med / base:.2f}"
            cells.append(cell)
        lines.append(f"| {workload} | {param} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += metric_legend(data)
    lines += data_summary(data)
    lines += latency_summary(data)
    lines += logic_summary(data)
    lines += overload_summary(data)
    if db_notes:
        lines.append("\nThe database (bench/peers/bin/dbserver) measured the delays it gave:\n")
        lines += [f"- `{n}`" for n in db_notes]
    lines += list(extra)
    if plots_dir:
        rel = os.path.relpath(plots_dir, HERE)
        lines.append("\nThe plots that carry the argument (every workload has one in `" + rel + "/`):\n")
        for name in STORY_PLOTS:
            if os.path.exists(os.path.join(plots_dir, name + ".png")):
                lines.append(f"![{name}]({rel}/{name}.png)\n")
    # Sub-sections of a machine's section sit one level below it.
    return lines[:1] + [re.sub(r"^(\n?)## ", r"\1### ", l) for l in lines[1:]]


MACHINE_BEGIN = "<!-- machine: {} -->"
MACHINE_END = "<!-- /machine -->"


def machine_key(mach):
    """Sections are kept per CPU model and core count, not per kernel or host."""
    return mach.split(", Linux")[0]


def write_results(section, path, mach):
    """Replaces this machine model's section of RESULTS.md and keeps every other
    machine's, so a reader finds the figures of a machine like theirs."""
    sections = collections.OrderedDict()
    try:
        text = open(path).read()
    except OSError:
        text = ""
    for m in re.finditer(r"<!-- machine: (.*?) -->\n(.*?)<!-- /machine -->", text, re.S):
        sections[m.group(1)] = m.group(2)
    sections[machine_key(mach)] = "\n".join(section) + "\n"
    out = ["# plaza beside tokio, parking_lot, Go, Boost.Fiber and pthreads\n",
           "One section per machine model `make bench` has run on; each holds that machine's "
           "latest run. Figures differ by CPU: compare within a section, as ratios.\n"]
    out += [f"- {key}" for key in sections]
    out.append("")
    for key, body in sections.items():
        out += [MACHINE_BEGIN.format(key), body.rstrip("\n"), MACHINE_END, ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


# Every system keeps one colour in every plot, so a reader learns it once.
COLOURS = {"plaza": "#d62728", "tokio": "#1f77b4", "parking_lot": "#17becf", "std": "#7f7f7f",
           "go": "#2ca02c", "boost_fiber": "#9467bd", "pthread": "#8c564b"}
# The unit of each metric, for its axis.
UNITS = {"ns_per_op": "ns per operation", "ns_per_item": "ns per item", "ns_per_task": "ns per task",
         "ns_per_yield": "ns per yield", "ns_per_roundtrip": "ns per round trip",
         "max_wait_us": "longest wait (µs)", "p50_us": "p50 (µs)", "p99_us": "p99 (µs)",
         "p999_us": "p99.9 (µs)", "mean_us": "mean (µs)", "rps": "requests per second",
         "sections_per_s": "sections per second", "bystander_ops_per_s": "bystander iterations/s",
         "bystander_p50_us": "bystander p50 (µs)", "bystander_p99_us": "bystander p99 (µs)",
         "bystander_p999_us": "bystander p99.9 (µs)", "utilisation": "round trips used (1 = limit)",
         "rtt_us": "idle round trip (µs)", "bytes_per_task": "bytes per idle task",
         "cpu_per_wall": "CPU seconds per wall second", "connections": "connections",
         "late_p50_us": "lateness p50 (µs)", "late_p99_us": "lateness p99 (µs)", "late_max_us": "lateness max (µs)",
         "busy_ops_per_s": "runnable tasks' iterations/s", "hold_p50_us": "hold p50 (µs)",
         "hold_p99_us": "hold p99 (µs)", "hold_max_us": "hold max (µs)",
         "client_ops_per_s": "clients' iterations/s"}
# The plots RESULTS.md shows inline: the ones that carry the argument.
STORY_PLOTS = ["data_critical_grid", "logic", "bystanders", "wrong_lock", "sleep", "ticker", "blocking_section"]


def natural_key(param):
    """Orders "tasks=2" before "tasks=64" before "tasks=1024"."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", param)]


def short_params(params):
    """Drops the key=value pairs every param of a workload shares, so the axis shows only
    what varies; the shared ones go to the title."""
    split = [p.split() for p in params]
    common = set(split[0]).intersection(*split[1:]) if split else set()
    shown = [" ".join(x for x in sp if x not in common) or "-" for sp in split]
    return shown, " ".join(x for x in split[0] if x in common) if split else ""


def plot(data, plots_dir, mach):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("bench: python3-matplotlib missing, no plots\n")
        return None
    os.makedirs(plots_dir, exist_ok=True)
    by_workload = collections.defaultdict(lambda: collections.defaultdict(list))
    for (workload, param, metric) in data:
        by_workload[workload][metric].append(param)
    for workload, metrics in sorted(by_workload.items()):
        # One panel per metric, each with its own unit and direction; parameters on the x
        # axis, one bar per system in its fixed colour, one legend for the figure.
        # cpu_per_wall only describes how a peer ran (Boost.Fiber's spinning), so it stays
        # in the table.  Metrics in natural order: p50, p99, p999.
        names = sorted((m for m in metrics if m != "cpu_per_wall"), key=natural_key)
        if not names:
            continue
        ncols = min(3, len(names))
        nrows = (len(names) + ncols - 1) // ncols
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(5.5, 4.6 * ncols), 3.4 * nrows + 0.5), squeeze=False)
        for ax in axes.flat[len(names):]:
            ax.set_visible(False)
        shown_systems = []
        for ax, metric in zip(axes.flat, names):
            # Boost.Fiber's spinning variant (suspend=0) stays in the table: a bar group
            # of its own for one system would only thin out the plot.
            params = sorted((p for p in metrics[metric] if "suspend=0" not in p), key=natural_key)
            if not params:
                ax.set_visible(False)
                continue
            shown, common = short_params(params)
            present = [s for s in SYSTEMS if any(data[(workload, p, metric)].get(s) for p in params)]
            width = 0.8 / max(1, len(present))
            values = []
            for i, s in enumerate(present):
                ys = []
                for p in params:
                    vals = data[(workload, p, metric)].get(s)
                    ys.append(statistics.median(vals) if vals else float("nan"))
                values += [y for y in ys if y == y and y > 0]
                xs = [j - 0.4 + width * (i + 0.5) for j in range(len(params))]
                ax.bar(xs, ys, width, label=s, color=COLOURS.get(s))
                if s not in shown_systems:
                    shown_systems.append(s)
            ax.set_xticks(range(len(params)))
            if len(params) == 1:
                # One parameter set: the title names it, the axis has nothing to tell.
                ax.set_xticklabels([""])
            else:
                tilt = len(params) > 3
                ax.set_xticklabels(shown, fontsize=7, rotation=30 if tilt else 0, ha="right" if tilt else "center")
            if values and max(values) / min(values) > 50:
                ax.set_yscale("log")
            way = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
            ax.set_ylabel(UNITS.get(metric, metric), fontsize=8)
            ax.set_title(f"{metric} ({way})" + (f"\n{common}" if common else ""), fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
        handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS.get(s)) for s in shown_systems]
        fig.legend(handles, shown_systems, loc="upper right", fontsize=7,
                   ncol=len(shown_systems) if ncols > 1 else min(3, len(shown_systems)))
        fig.suptitle(f"{workload}: medians\n{mach}", fontsize=8, x=0.02, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.92 if nrows == 1 else 0.95))
        fig.savefig(os.path.join(plots_dir, f"{workload}.png"), dpi=90)
        plt.close(fig)
    # The data-critical grid as lines: ns per section against the number of tasks.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, work in zip(axes, (0, 100)):
        for label, workload, system in GRID_LOCKS:
            ys = [med(data, grid_key(workload, t, work), system) for t in GRID_TASKS]
            if any(y is None for y in ys):
                continue
            style = "-" if workload == "tasks_contended" else "--"
            ax.plot(GRID_TASKS, ys, style, marker="o", label=label, color=COLOURS.get(system))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(GRID_TASKS)
        ax.set_xticklabels([str(t) for t in GRID_TASKS])
        ax.set_xlabel("tasks on 2 workers")
        ax.set_title(f"data critical section, work={work} (ns per section, lower is better;\n"
                     "solid: sync lock, dashed: async lock)", fontsize=8)
    axes[0].set_ylabel("ns per section (median)")
    axes[1].legend(fontsize=6)
    fig.suptitle(mach, fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(plots_dir, "data_critical_grid.png"), dpi=90)
    plt.close(fig)
    return plots_dir


def run_logic(binaries, runs, seconds, peers_bin):
    """The logic-section workloads against one dbserver per delay, `runs` times,
    interleaved like the `all` runs.  Returns (rows, the servers' own delay reports)."""
    server_bin = os.path.join(peers_bin, "dbserver")
    if not os.access(server_bin, os.X_OK):
        sys.stderr.write(f"bench: {server_bin} missing (make -C bench/peers); logic workloads skipped\n")
        return [], []
    paths = dict(binaries)
    plan = logic_runs(seconds)
    # Each server stops by itself long after the last run could end, should this
    # script die without stopping it.
    budget = runs * len(plan) * 3 * (seconds + 10) + 60
    servers, rows, notes = {}, [], []
    try:
        for d in DB_DELAYS:
            servers[d] = DbServer(server_bin, d, budget)
        for r in range(1, runs + 1):
            for delay, systems, workload, args in plan:
                for name in systems:
                    path = paths.get(name)
                    if not path:
                        continue
                    full = [workload, f"db_port={servers[delay].port}"] + args
                    sys.stderr.write(f"bench: run {r}/{runs}: {name} {' '.join(full)} ... ")
                    sys.stderr.flush()
                    got, took = run_all(path, name, False, full, timeout=seconds + 60)
                    sys.stderr.write(f"{len(got)} figures in {took:.1f} s\n")
                    rows.extend([str(r)] + g for g in got)
    finally:
        for d, srv in servers.items():
            note = srv.stop()
            if note:
                notes.append(note)
                sys.stderr.write(note + "\n")
    return rows, notes


PG_SYSTEMS = ["libpq_blocking", "plaza"]


def run_pg(build_dir, runs, seconds):
    """bench/pg/run.sh `runs` times (each starts and stops its own server): rows
    [run, system, workload, param, metric, value], and the CPU line it printed."""
    script = os.path.join(HERE, "pg", "run.sh")
    if not os.access(os.path.join(build_dir, "bench", "bench-pg"), os.X_OK):
        sys.stderr.write(f"bench: {build_dir}/bench/bench-pg missing (libpq-dev); PostgreSQL client skipped\n")
        return [], None
    rows, head = [], None
    for r in range(1, runs + 1):
        sys.stderr.write(f"bench: run {r}/{runs}: bench/pg/run.sh {build_dir} {seconds} ... ")
        sys.stderr.flush()
        t0 = time.time()
        p = subprocess.run([script, build_dir, str(seconds)], capture_output=True, text=True,
                           timeout=40 * (seconds + 10) + 120)
        got = 0
        for line in p.stdout.splitlines():
            if line.startswith("#"):
                head = line.lstrip("# ")
                continue
            f = line.split(",")
            if len(f) == 5:
                rows.append([str(r)] + f)
                got += 1
        sys.stderr.write(f"{got} figures in {time.time() - t0:.1f} s\n")
        if p.returncode != 0:
            sys.stderr.write(f"bench: bench/pg/run.sh failed ({p.returncode}): {p.stderr.strip()[-500:]}\n")
    return rows, head


def pg_section(rows, head, runs):
    """The PostgreSQL client's figures, median (min-max) of the runs: libpq's blocking
    loop (one connection per thread) and plaza's client (connections per worker,
    statements per round trip), and the lock's pairs against the bare SQL."""
    if not rows:
        return []
    per = collections.defaultdict(list)
    for r in rows:
        per[(r[2], r[1], r[3], r[4])].append(float(r[5]))
    out = ["\n## The PostgreSQL client (bench/pg)\n",
           f"`bench/pg/run.sh`, {runs} run(s): {head or 'the server on the same machine'}. "
           "qps and pairs_per_s: higher is better; cpu_us_per_query: the client's CPU time per query. "
           "How to read them: docs/pg.md and bench/pg/RESULTS.md.\n",
           "| workload | system | param | metric | median (min-max) |", "|---|---|---|---|---:|"]
    for key in sorted(per, key=lambda k: (k[0], PG_SYSTEMS.index(k[1]) if k[1] in PG_SYSTEMS else 9, k[2], k[3])):
        vals = per[key]
        cell = fmt(statistics.median(vals))
        if len(vals) > 1 and max(vals) > min(vals) * 1.1:
            cell += f" ({fmt(min(vals))}–{fmt(max(vals))})"
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cell} |")
    return out


def run_weather(build_dir, quick):
    """bench/weather.sh with the systems that are built; its Markdown tables."""
    plaza = os.path.join(build_dir, "apps", "weather", "plaza-weather")
    if not os.access(plaza, os.X_OK):
        sys.stderr.write(f"bench: {plaza} missing; the weather services skipped\n")
        return []
    env = dict(os.environ, PLAZA=plaza)
    systems = ["plaza"]
    for name in ["rust", "go"]:
        p = os.path.join(HERE, "peers", "bin", "weather-" + name)
        if os.access(p, os.X_OK):
            systems.append(name)
        else:
            sys.stderr.write(f"bench: {p} missing (make -C bench/peers weather); weather peer skipped\n")
    env["SYSTEMS"] = " ".join(systems)
    if quick:
        env.update(RATES="1000 4000", DURATION="2", SEARCH_MAX="0", REPEATS="1", WARMUP="1")
    sys.stderr.write(f"bench: bench/weather.sh ({' '.join(systems)}{', quick' if quick else ''}) ...\n")
    t0 = time.time()
    p = subprocess.run([os.path.join(HERE, "weather.sh"), os.path.relpath(plaza, ROOT)], stdout=subprocess.PIPE,
                       text=True, env=env,
                       cwd=ROOT, timeout=3600)
    sys.stderr.write(f"bench: bench/weather.sh took {time.time() - t0:.0f} s\n")
    if p.returncode != 0:
        sys.stderr.write(f"bench: bench/weather.sh failed ({p.returncode})\n")
        return []
    lines = p.stdout.splitlines()
    out = ["\n## The weather service (bench/weather.sh)\n",
           "plaza-weather beside the same service in Rust (tokio, hyper, parking_lot, rusqlite or "
           "tokio-postgres) and Go (net/http, go-sqlite3 or lib/pq), on SQLite and on PostgreSQL, 2 workers "
           "each, under `plaza-weather load` (open loop)"
           + (" (quick: two rates of 2 s, no search)" if quick else "") + ".\n"]
    for l in lines:
        if l.startswith("# "):
            out += [l[2:], ""]
        elif l.startswith("## "):
            out += ["", "##" + l]
        else:
            out.append(l)
    # One blank line between blocks.
    return [l for i, l in enumerate(out) if l.strip() or i == 0 or out[i - 1].strip()]


def run_echo(plaza, runs, quick):
    """bench/echo.sh (echo over loopback at 1, 64 and 1000 connections: plaza's
    server in the client's process and in its own, tokio's and Go's); its table."""
    script = os.path.join(HERE, "echo.sh")
    peers = [os.path.join(HERE, "peers", "bin", "peer-" + n) for n in ("tokio", "go")]
    missing = [p for p in [plaza] + peers if not os.access(p, os.X_OK)]
    if missing:
        sys.stderr.write(f"bench: {', '.join(missing)} missing; bench/echo.sh skipped\n")
        return []
    env = dict(os.environ, PLAZA_BENCH=plaza, RUNS=str(runs), RUNS_1000=str(min(runs, 3)))
    if quick:
        env.update(SECONDS_PER_RUN="1", CONNS_LIST="1 64")
    sys.stderr.write(f"bench: bench/echo.sh ({runs} run(s){', quick' if quick else ''}) ...\n")
    t0 = time.time()
    try:
        p = subprocess.run([script], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=1800)
    except subprocess.TimeoutExpired:
        sys.stderr.write("bench: bench/echo.sh did not finish in 30 minutes; skipped\n")
        return []
    sys.stderr.write(f"bench: bench/echo.sh took {time.time() - t0:.0f} s\n")
    table = [l for l in p.stdout.splitlines() if l.startswith("|")]
    if p.returncode != 0 or not table:
        sys.stderr.write(f"bench: bench/echo.sh failed ({p.returncode})\n")
        return []
    return ["", "## Echo over loopback (bench/echo.sh)", "",
            "64-byte round trips, 2 workers per side; `plaza` serves in the client's own process, "
            "`plaza_ext`, tokio and Go in a process of their own (the like-for-like rows). "
            f"Medians (min-max) of {runs} run(s)" + (" (quick: 1 s runs, no 1000-connection row)" if quick else "")
            + ".", ""] + table


def read_csv(path):
    """A results CSV's machine (its first line) and its rows."""
    with open(path) as f:
        mach = f.readline().lstrip("# ").strip()
        rows = [line.strip().split(",") for line in f if line[0].isdigit()]
    return mach, rows


def plots_from_csv(path):
    """Redraws the plots of a results CSV beside it, leaving RESULTS.md as it is."""
    mach, rows = read_csv(path)
    rows = [r for r in rows if not r[2].startswith("pg_")]
    plot(aggregate(rows), os.path.splitext(path)[0], mach)
    sys.stderr.write(f"bench: redrew the plots of {path}\n")


def report_from_csv(path):
    """Rebuilds the plots and this CSV's machine section of RESULTS.md from a CSV that
    bench/run.py wrote (its first line names the machine)."""
    with open(path) as f:
        mach = f.readline().lstrip("# ").strip()
        rows = [line.strip().split(",") for line in f if line[0].isdigit()]
    stamp = os.path.basename(path).split("-")
    stamp = "-".join(stamp[:2])
    runs = max(int(r[0]) for r in rows)
    # bench-pg's rows (workloads pg_*) have a table of their own.
    pg_rows = [r for r in rows if r[2].startswith("pg_")]
    rows = [r for r in rows if not r[2].startswith("pg_")]
    data = aggregate(rows)
    plots_dir = plot(data, os.path.splitext(path)[0], mach)
    section = machine_section(data, stamp, runs, mach, versions(), plots_dir, extra=pg_section(pg_rows, None, runs))
    write_results(section, os.path.join(HERE, "RESULTS.md"), mach)
    sys.stderr.write(f"bench: rewrote bench/RESULTS.md from {path}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--plaza", default=os.path.join(ROOT, "build", "bench", "bench-plaza"))
    ap.add_argument("--from-csv", metavar="CSV",
                    help="run nothing: rewrite RESULTS.md and the plots from a results CSV")
    ap.add_argument("--plots-from-csv", metavar="CSV",
                    help="run nothing: redraw only the plots of a results CSV (RESULTS.md stays)")
    a = ap.parse_args()
    if a.from_csv:
        return report_from_csv(a.from_csv)
    if a.plots_from_csv:
        return plots_from_csv(a.plots_from_csv)
    runs = 1 if a.quick else max(1, a.runs)
    peers_bin = os.path.join(HERE, "peers", "bin")
    binaries = [("plaza", a.plaza)]
    for name in ["peer-tokio", "peer-go", "peer-boost-fiber", "peer-pthread"]:
        p = os.path.join(peers_bin, name)
        if os.access(p, os.X_OK):
            binaries.append((name, p))
        else:
            sys.stderr.write(f"bench: {p} missing (make -C bench/peers); skipped\n")
    mach = machine()
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    rows = []
    sys.stderr.write(f"bench: {runs} run(s) of {len(binaries)} programs on {mach}\n")
    for r in range(1, runs + 1):
        for name, path in binaries:
            sys.stderr.write(f"bench: run {r}/{runs}: {name} all ... ")
            sys.stderr.flush()
            got, took = run_all(path, name, a.quick)
            sys.stderr.write(f"{len(got)} figures in {took:.1f} s\n")
            rows.extend([str(r)] + g for g in got)
    logic_rows, db_notes = run_logic(binaries, runs, 1 if a.quick else 2, peers_bin)
    rows += logic_rows
    rows += run_overload(binaries, runs, 1 if a.quick else 2)
    build_dir = os.path.dirname(os.path.dirname(os.path.abspath(a.plaza)))
    pg_rows, pg_head = run_pg(build_dir, runs, 1 if a.quick else 2)
    extra = pg_section(pg_rows, pg_head, runs) + run_weather(build_dir, a.quick) + run_echo(a.plaza, runs, a.quick)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    csv_path = os.path.join(HERE, "results", f"{stamp}-{host}.csv")
    with open(csv_path, "w") as f:
        f.write(f"# {mach}\nrun,system,workload,param,metric,value\n")
        for row in rows + pg_rows:
            f.write(",".join(row) + "\n")
    data = aggregate(rows)
    plots_dir = plot(data, os.path.join(HERE, "results", f"{stamp}-{host}"), mach)
    section = machine_section(data, stamp, runs, mach, versions(), plots_dir, db_notes, extra)
    write_results(section, os.path.join(HERE, "RESULTS.md"), mach)
    sys.stderr.write(f"bench: wrote {csv_path} and bench/RESULTS.md\n")


if __name__ == "__main__":
    main()
