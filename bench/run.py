#!/usr/bin/python3
"""Runs plaza's benchmarks beside the peers and writes the results.

    bench/run.py [--quick] [--runs N]

Runs `bench-plaza all` and each peer's `all` (bench/peers/bin/) N times
(default 5; --quick: once), interleaved so that a noisy moment hits every
system alike, and writes

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
HIGHER_IS_BETTER = {"rps"}


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def run_all(binary, name, quick):
    args = [binary, "all"]
    start = time.time()
    proc = subprocess.run(args, capture_output=True, text=True)
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


def write_results(data, path, stamp, runs, mach, vers, plots_dir):
    lines = []
    lines.append("# plaza beside tokio, parking_lot, Go, Boost.Fiber and pthreads\n")
    lines.append(f"Taken {stamp} on {mach}; {runs} run(s) of every system, interleaved. "
                 "Each cell: median (min-max); after the peers' medians, the ratio peer/plaza "
                 "(above 1: plaza is faster, for every metric here but `rps`, where it is the other way).\n")
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
    if plots_dir:
        lines.append("\nPlots: `" + os.path.relpath(plots_dir, HERE) + "/`.\n")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(data, plots_dir, mach):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("bench: python3-matplotlib missing, no plots\n")
        return None
    os.makedirs(plots_dir, exist_ok=True)
    by_workload = collections.defaultdict(list)
    for key in data:
        by_workload[key[0]].append(key)
    for workload, keys in sorted(by_workload.items()):
        keys.sort()
        labels, series = [], collections.defaultdict(list)
        for (w, param, metric) in keys:
            labels.append(f"{param}\n{metric}")
            for s in SYSTEMS:
                vals = data[(w, param, metric)].get(s)
                series[s].append(statistics.median(vals) if vals else 0)
        present = [s for s in SYSTEMS if any(series[s])]
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) * max(1, len(present)) / 3), 4.5))
        width = 0.8 / max(1, len(present))
        for i, s in enumerate(present):
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, series[s], width, label=s)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{workload} (medians; lower is better unless rps)\n{mach}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(plots_dir, f"{workload}.png"), dpi=90)
        plt.close(fig)
    return plots_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--plaza", default=os.path.join(ROOT, "build", "bench", "bench-plaza"))
    a = ap.parse_args()
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
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    csv_path = os.path.join(HERE, "results", f"{stamp}-{host}.csv")
    with open(csv_path, "w") as f:
        f.write(f"# {mach}\nrun,system,workload,param,metric,value\n")
        for row in rows:
            f.write(",".join(row) + "\n")
    data = aggregate(rows)
    plots_dir = plot(data, os.path.join(HERE, "results", f"{stamp}-{host}"), mach)
    write_results(data, os.path.join(HERE, "RESULTS.md"), stamp, runs, mach, versions(), plots_dir)
    sys.stderr.write(f"bench: wrote {csv_path} and bench/RESULTS.md\n")


if __name__ == "__main__":
    main()
