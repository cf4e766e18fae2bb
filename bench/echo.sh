#!/usr/bin/env bash
# Echo throughput and latency over loopback: plaza's echo server, tokio's and Go's,
# all driven by the same client (bench-plaza's `echo` workload).
#
#   bench/echo.sh                 # 5 runs of each case (3 for conns=1000), ~3.5 minutes
#   RUNS=3 SECONDS_PER_RUN=2 PLAZA_BENCH=build/bench/bench-plaza bench/echo.sh
#
# Builds nothing: it needs $PLAZA_BENCH (default build/bench/bench-plaza) and
# bench/peers/bin/peer-tokio, bench/peers/bin/peer-go (make -C bench/peers).
# Prints every CSV line as it comes (stdout), then a table of medians (min–max).
#
# Servers: plaza (bench-plaza echo port=0: the server runs inside the client's own
# runtime and process), tokio and go (peer echo_server in its own process), and
# plaza_ext (bench-plaza echo_server in its own process, like the peers). plaza_ext is
# the like-for-like row: in-process, a round trip can be served without ever waking
# another process or thread, which no external server can match.
# A run that fails is reported with its command and stderr, and left out of the table.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BENCH=${PLAZA_BENCH:-$ROOT/build/bench/bench-plaza}
PEERS=$HERE/peers/bin
RUNS=${RUNS:-5}
# conns=1000 runs take longest (dialling, and the server's margin); fewer keep the
# whole script under ~4 minutes.
RUNS_1000=${RUNS_1000:-3}
SECS=${SECONDS_PER_RUN:-2}
CONNS_LIST=${CONNS_LIST:-"1 64 1000"}
SERVERS=${SERVERS:-"plaza plaza_ext tokio go"}
WORKERS=2
SIZE=64
# An external server must outlive the client: dialling (up to 1000 connections)
# plus the measured seconds plus the last round trips. It then exits by itself.
SERVER_SECS=$((SECS + 2))

for f in "$BENCH" "$PEERS/peer-tokio" "$PEERS/peer-go"; do
    [ -x "$f" ] || { echo "echo.sh: $f is missing (build it first)" >&2; exit 1; }
done
command -v ss >/dev/null || { echo "echo.sh: needs ss (iproute2)" >&2; exit 1; }

# 1000 connections are 1000 descriptors in the client and as many in the server,
# both in one process when plaza serves itself.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
CSV=$TMP/all.csv
: >"$CSV"
FAILS=$TMP/failures
: >"$FAILS"

listening() { # port
    [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
}

free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! listening "$p" && [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

fail() { # message, stderr file
    {
        echo "FAILED: $1"
        sed 's/^/    /' "$2" | tail -n 20
    } | tee -a "$FAILS" >&2
}

# One client run against one server; appends its CSV lines to $CSV.
run_case() { # conns server
    local conns=$1 server=$2 out=$TMP/out err=$TMP/err serr=$TMP/serr cmd
    if [ "$server" = plaza ]; then
        cmd="$BENCH echo conns=$conns workers=$WORKERS size=$SIZE seconds=$SECS port=0"
        local rc=0
        timeout $((SECS + 60)) $cmd >"$out" 2>"$err" || rc=$?
        if [ $rc -ne 0 ]; then
            fail "$cmd (exit $rc)" "$err"
            return
        fi
    else
        local port spid waited=0
        port=$(free_port) || { echo "echo.sh: no free port" >&2; return; }
        local sbin=$PEERS/peer-$server
        [ "$server" = plaza_ext ] && sbin=$BENCH
        local scmd="$sbin echo_server port=$port workers=$WORKERS seconds=$SERVER_SECS"
        timeout $((SERVER_SECS + 30)) $scmd >"$TMP/sout" 2>"$serr" &
        spid=$!
        # Wait (at most 5 s) until the server listens; the kernel then accepts.
        until listening "$port"; do
            if ! kill -0 "$spid" 2>/dev/null || [ $waited -ge 500 ]; then
                fail "$scmd did not start listening" "$serr"
                kill "$spid" 2>/dev/null
                wait "$spid" 2>/dev/null
                return
            fi
            sleep 0.01
            waited=$((waited + 1))
        done
        cmd="ECHO_SERVER=$server $BENCH echo conns=$conns workers=$WORKERS size=$SIZE seconds=$SECS port=$port"
        local rc=0
        ECHO_SERVER=$server timeout $((SECS + 60)) \
            "$BENCH" echo conns="$conns" workers=$WORKERS size=$SIZE seconds="$SECS" port="$port" \
            >"$out" 2>"$err" || rc=$?
        local src=0
        wait "$spid" || src=$?
        if [ $rc -ne 0 ]; then
            fail "$cmd (exit $rc; server: $scmd, exit $src)" "$err"
            return
        fi
        if [ $src -ne 0 ]; then
            fail "$scmd (exit $src)" "$serr"
        fi
    fi
    grep -E '^plaza,echo,' "$out" | tee -a "$CSV"
}

cat <<EOF
# echo over loopback: plaza client (bench-plaza echo) against plaza / tokio / Go echo servers
# machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -sr)
# NOTE: client and server share these $(nproc) cores: each runtime has $WORKERS workers, so
#       client and server compete for the same CPUs (plaza's own server runs in the client's
#       runtime and process: 2 workers for both ends, while tokio/Go get 2 more threads).
# each case: size=$SIZE bytes, closed loop per connection, ${SECS}s measured, interleaved;
#   $RUNS runs each, except conns=1000: $RUNS_1000 runs (to keep the script under ~4 minutes)
# servers: plaza = in the client's process and runtime (port=0); plaza_ext = bench-plaza
#   echo_server in its own process, like tokio and go (the like-for-like plaza row)
# bench: $BENCH
EOF

start=$(date +%s)
for r in $(seq 1 "$RUNS"); do
    for conns in $CONNS_LIST; do
        [ "$conns" -ge 1000 ] && [ "$r" -gt "$RUNS_1000" ] && continue
        for server in $SERVERS; do
            echo "# run $r/$RUNS conns=$conns server=$server" >&2
            run_case "$conns" "$server"
        done
    done
done
took=$(($(date +%s) - start))

echo
echo "# median (min–max) n=runs; $took s in all"
awk -F, -v servers="$SERVERS" -v conns_list="$CONNS_LIST" '
function median_range(list,    n, v, i, j, t, med) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) {       # insertion sort: a handful of values
        t = v[i] + 0
        for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]
        v[j + 1] = t
    }
    if (n == 0) return "–"
    med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    return sprintf("%s (%s–%s) n=%d", fmt(med), fmt(v[1]), fmt(v[n]), n)
}
function fmt(x) { return (x >= 1000) ? sprintf("%.0f", x) : (x >= 10) ? sprintf("%.1f", x) : sprintf("%.2f", x) }
{
    split($3, kv, " ")
    c = kv[1]; sub("conns=", "", c)
    s = kv[3]; sub("server=", "", s)
    vals[c, s, $4] = vals[c, s, $4] " " $5
}
END {
    printf "| conns | server | rps | p50_us | p99_us |\n|---:|---|---:|---:|---:|\n"
    nc = split(conns_list, C, " "); ns = split(servers, S, " ")
    for (i = 1; i <= nc; i++)
        for (k = 1; k <= ns; k++)
            printf "| %s | %s | %s | %s | %s |\n", C[i], S[k],
                median_range(vals[C[i], S[k], "rps"]),
                median_range(vals[C[i], S[k], "p50_us"]),
                median_range(vals[C[i], S[k], "p99_us"])
}' "$CSV"

if [ -s "$FAILS" ]; then
    echo
    echo "# failures"
    cat "$FAILS"
    exit 1
fi
