#!/bin/sh
# Runs every peer's `all` RUNS times (default 3), one peer after another, checks every
# stdout line is `system,workload,param,metric,value`, keeps the raw lines in
# figures-<time>.csv (or $OUT) and prints a markdown table of the medians with the
# min-max spread. Exits non-zero if a run fails its own checks or prints a bad line.
#   usage: ./run-all.sh [RUNS]          (from bench/peers, after `make`)
set -eu
cd "$(dirname "$0")"
RUNS=${1:-3}
OUT=${OUT:-figures-$(date +%Y%m%d-%H%M%S).csv}
: > "$OUT"
status=0
i=1
while [ "$i" -le "$RUNS" ]; do
    for peer in tokio go boost-fiber pthread; do
        echo "run $i/$RUNS: bin/peer-$peer all" >&2
        if ! bin/peer-$peer all >> "$OUT" 2> "$OUT.stderr"; then
            echo "bin/peer-$peer all FAILED:" >&2
            cat "$OUT.stderr" >&2
            status=1
        fi
    done
    i=$((i + 1))
done
rm -f "$OUT.stderr"
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
