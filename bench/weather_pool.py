#!/usr/bin/env python3
"""Pools the fixed-rate runs of several bench/weather.sh CSVs into one table.

    usage: python3 bench/weather_pool.py CSV [CSV ...]

On a small shared machine one 5 s run's p99 moves by 2-10x for every system, and
a run of the script (5 runs per cell) can put either of two close systems ahead
in a cell. Pooling runs of the script taken on the same machine gives each cell
more runs: the table shows, per (back end, rate, endpoint), each system's median
p99 over every run (and their number), its median server CPU per request, and in
how many paired runs plaza's p99 was at or below each peer's. Runs are paired
within one CSV: the k-th run of plaza with the k-th run of the peer, which the
script took in the same round, minutes apart at most. Warm-up and search lines
are left out.
"""
import collections
import csv
import statistics
import sys


def main(paths):
    if not paths:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    p99 = collections.defaultdict(list)
    cpu = collections.defaultdict(list)
    paired = collections.defaultdict(lambda: [0, 0])  # (cell, peer) -> [plaza at or below, pairs]
    systems = []
    for path in paths:
        per_file = collections.defaultdict(list)
        with open(path) as f:
            for r in csv.DictReader(f):
                if r["phase"] != "fixed":
                    continue
                cell = (r["backend"], int(float(r["offered_rps"])), r["endpoint"])
                s = r["system"]
                if s not in systems:
                    systems.append(s)
                p99[cell + (s,)].append(float(r["p99_us"]) / 1e3)
                cpu[cell + (s,)].append(float(r["server_cpu_us_per_req"]))
                per_file[cell + (s,)].append(float(r["p99_us"]))
        for key, mine in per_file.items():
            if key[3] != "plaza":
                continue
            for peer in {k[3] for k in per_file if k[:3] == key[:3] and k[3] != "plaza"}:
                for a, b in zip(mine, per_file[key[:3] + (peer,)]):
                    pr = paired[(key[:3], peer)]
                    pr[0] += a <= b
                    pr[1] += 1
    peers = [s for s in systems if s != "plaza"]
    print(f"Pooled from {len(paths)} file(s): " + ", ".join(paths) + "\n")
    print("| back end | rate/s | endpoint | " + " | ".join(f"{s} p99 ms (runs)" for s in systems) + " | "
          + " | ".join(f"{s} CPU µs/req" for s in systems) + " | "
          + " | ".join(f"plaza <= {s}" for s in peers) + " |")
    print("|---|---:|---|" + "---:|" * (2 * len(systems) + len(peers)))
    for cell in sorted({k[:3] for k in p99}):
        cols = [f"{statistics.median(p99[cell + (s,)]):.2f} ({len(p99[cell + (s,)])})" if p99[cell + (s,)] else "–"
                for s in systems]
        cols += [f"{statistics.median(cpu[cell + (s,)]):.0f}" if cpu[cell + (s,)] else "–" for s in systems]
        cols += [f"{paired[(cell, s)][0]}/{paired[(cell, s)][1]}" for s in peers]
        print(f"| {cell[0]} | {cell[1]} | {cell[2]} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
