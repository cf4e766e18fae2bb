#!/bin/sh
# Runs bench-plaza's lock workloads briefly with the advisor on and checks
# every lock's verdict: the right lock of each workload gets data or logic
# (the async data rows, which measure an async mutex around a data section
# on purpose, get data_behind_async), and each wrong_lock workload is
# flagged.  Usage: scripts/advisor-bench-check.sh BENCH_PLAZA [CC]
# Exits 1 naming every lock whose verdict is not the expected one.
set -eu
bench=$1
cc=${2:-cc}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# The loopback "database" of the logic workloads (bench/dbserver.c).
"$cc" -O2 -pthread -o "$tmp/dbserver" "$root/bench/dbserver.c"
"$tmp/dbserver" port=0 delay_us=1000 seconds=300 >"$tmp/db.out" 2>/dev/null &
server_pid=$!
i=0
while ! grep -q '^port=' "$tmp/db.out" 2>/dev/null; do
    i=$((i + 1))
    [ $i -gt 100 ] && { echo "advisor-bench-check: dbserver did not start" >&2; exit 1; }
    sleep 0.1
done
port=$(sed -n 's/^port=//p' "$tmp/db.out")

fail=0
# run EXPECTED-VERDICTS WORKLOAD ARGS...: every lock of the report must have
# one of the expected verdicts (comma-separated), and there must be a lock.
run() {
    expect=$1
    shift
    out="$tmp/report.json"
    rm -f "$out"
    PLAZA_ADVISOR="json:$out" "$bench" "$@" >"$tmp/bench.out" 2>"$tmp/bench.err" || {
        echo "advisor-bench-check: bench-plaza $* failed:" >&2
        cat "$tmp/bench.err" >&2
        fail=1
        return
    }
    python3 - "$out" "$expect" "$*" <<'PY' || fail=1
import json, sys
path, expect, what = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]
locks = json.load(open(path))["locks"]
bad = [l for l in locks if l["verdict"] not in expect]
for l in locks:
    print(f"{what}: {l['name']} ({l['kind']}, {l['acquisitions']} acquisitions): {l['verdict']}")
if not locks:
    print(f"advisor-bench-check: {what}: no lock in the report", file=sys.stderr)
    sys.exit(1)
for l in bad:
    print(f"advisor-bench-check: {what}: {l['name']} is {l['verdict']}, expected {sorted(expect)}: {l['advice']}",
          file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

run data uncontended iters=200000
run data contended threads=2 iters=200000
run data contended threads=64 iters=2000
run data tasks_contended tasks=64 iters=20000
run data rwlock_read_mostly threads=2 iters=200000
run data rwlock_read_mostly threads=64 iters=2000
run data_behind_async async_uncontended iters=200000
run data_behind_async async_contended tasks=64 iters=20000
run data_behind_async async_rwlock tasks=64 iters=5000
run data_behind_async semaphore tasks=64 iters=5000
run logic blocking_section seconds=1
run logic logic db_port="$port" tasks=8 seconds=1
run logic bystanders db_port="$port" lock=async tasks=8 bystanders=8 seconds=1
run logic_behind_sync bystanders db_port="$port" lock=sync tasks=8 bystanders=8 seconds=1
run data_behind_async wrong_lock kind=data_behind_async tasks=64 iters=5000
run logic_behind_sync wrong_lock kind=logic_behind_sync db_port="$port" tasks=8 bystanders=8 seconds=1
[ $fail = 0 ] && echo "advisor-bench-check: every verdict as expected"
exit $fail
