#!/bin/sh
# Runs every peer's `all` RUNS times (default 3), one peer after another, checks every
# stdout line is `system,workload,param,metric,value`, keeps the raw lines in
# figures-<time>.csv (or $OUT) and prints a markdown table of the medians with the
# min-max spread. Exits non-zero if a run fails its own checks or prints a bad line.
#
#   usage: [QUIET=1] [OUT=file.csv] ./run-all.sh [RUNS]     (from bench/peers, after `make`)
#
# QUIET=1 is for a shared machine: before each run it waits (up to QUIET_WAIT seconds,
# default 600) until the machine is idle, and it repeats a run (up to 5 times) when other
# processes used more than 10% of one CPU during it (machine CPU time from /proc/stat
# minus the run's own). If the wait times out the run is kept as it is. Every run prints
# on stderr how much CPU other processes used during it.
set -eu
cd "$(dirname "$0")"
RUNS=${1:-3}
OUT=${OUT:-figures-$(date +%Y%m%d-%H%M%S).csv}
QUIET=${QUIET:-0}
QUIET_WAIT=${QUIET_WAIT:-600}
HZ=$(getconf CLK_TCK)
: > "$OUT"
status=0

busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# user+sys centiseconds of this shell's finished children. `times` must run in this shell
# itself (inside a pipe or $(...) it would report a subshell's children): call
# `times > "$OUT.times"` directly, then read the file with child_cs.
child_cs() { awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d\n", (u[1]*60 + u[2] + s[1]*60 + s[2]) * 100 }' "$OUT.times"; }
now_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }

# Sets idle=1 once less than 10% of one CPU was busy over a second, idle=0 on timeout.
wait_idle() {
    tries=0
    while [ "$tries" -lt "$QUIET_WAIT" ]; do
        b0=$(busy_ticks); sleep 1; b1=$(busy_ticks)
        if [ $(( (b1 - b0) * 100 / HZ )) -lt 10 ]; then idle=1; return 0; fi
        tries=$((tries + 1))
    done
    echo "machine still busy after ${QUIET_WAIT}s; running anyway" >&2
    idle=0
}

i=1
while [ "$i" -le "$RUNS" ]; do
    for peer in tokio go boost-fiber pthread; do
        attempt=1
        while :; do
            idle=0
            [ "$QUIET" = 1 ] && wait_idle
            echo "run $i/$RUNS: bin/peer-$peer all (attempt $attempt)" >&2
            times > "$OUT.times"
            b0=$(busy_ticks); c0=$(child_cs); t0=$(now_cs)
            ok=1
            bin/peer-$peer all > "$OUT.run" 2> "$OUT.stderr" || ok=0
            times > "$OUT.times"
            b1=$(busy_ticks); c1=$(child_cs); t1=$(now_cs)
            if [ "$ok" = 0 ]; then
                echo "bin/peer-$peer all FAILED:" >&2
                cat "$OUT.stderr" >&2
                status=1
                break
            fi
            # CPU used by everything else during the run, in % of one CPU
            foreign=$(( ((b1 - b0) * 100 / HZ - (c1 - c0)) * 100 / ( (t1 - t0) > 0 ? (t1 - t0) : 1 ) ))
            echo "  other processes used ~${foreign}% of a CPU during it" >&2
            if [ "$QUIET" = 1 ] && [ "$idle" = 1 ] && [ "$foreign" -gt 10 ] && [ "$attempt" -lt 5 ]; then
                attempt=$((attempt + 1))
                continue
            fi
            cat "$OUT.run" >> "$OUT"
            break
        done
    done
    i=$((i + 1))
done
rm -f "$OUT.stderr" "$OUT.run" "$OUT.times"
bad=$(awk -F, 'NF != 5 || $5 !~ /^-?[0-9]+(\.[0-9]+)?$/' "$OUT")
if [ -n "$bad" ]; then
    echo "malformed lines:" >&2
    echo "$bad" >&2
    status=1
fi
echo "raw lines: $OUT ($(wc -l < "$OUT") lines, $RUNS runs)" >&2
echo "| system | workload | param | metric | median | min | max |"
echo "|---|---|---|---|---:|---:|---:|"
# Group identical system,workload,param,metric keys (keeping first-seen order) and print
# the median of each group's values.
awk -F, '
{
    key = $1 "," $2 "," $3 "," $4
    if (!(key in n)) { order[++keys] = key; n[key] = 0 }
    v[key, ++n[key]] = $5 + 0
}
END {
    for (k = 1; k <= keys; k++) {
        key = order[k]; m = n[key]
        for (i = 1; i <= m; i++) a[i] = v[key, i]
        for (i = 2; i <= m; i++) { x = a[i]; j = i - 1; while (j >= 1 && a[j] > x) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
        med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
        split(key, f, ",")
        printf "| %s | %s | %s | %s | %.2f | %.2f | %.2f |\n", f[1], f[2], f[3], f[4], med, a[1], a[m]
    }
}' "$OUT"
exit $status
