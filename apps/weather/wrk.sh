#!/bin/sh
# Drives plaza-weather with wrk (Debian's wrk): starts the service on a
# fresh SQLite file in a temporary directory (or uses TARGET=host:port),
# runs `wrk --latency` with wrk.lua (POST 10 readings : GET = 1 : 4), stops
# the service with SIGTERM.
#
#   apps/weather/wrk.sh [seconds] [connections] [threads]
#   TARGET=127.0.0.1:8080 apps/weather/wrk.sh 10 32 2
set -eu
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-10}
conns=${2:-32}
threads=${3:-2}
bin=${PLAZA_WEATHER:-$here/../../build/apps/weather/plaza-weather}
command -v wrk >/dev/null || { echo "wrk.sh: needs wrk (apt-get install wrk)" >&2; exit 1; }

pid=
if [ -z "${TARGET:-}" ]; then
    dir=$(mktemp -d /tmp/plaza-weather-wrk.XXXXXX)
    trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
    "$bin" serve --listen 127.0.0.1:0 --db "$dir/weather.db" --workers "${WORKERS:-2}" >"$dir/out" 2>"$dir/log" &
    pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$dir/out" 2>/dev/null && break
        sleep 0.1
    done
    TARGET=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$dir/out")
    [ -n "$TARGET" ] || { echo "wrk.sh: the service did not start:" >&2; cat "$dir/log" >&2; exit 1; }
fi
echo "wrk.sh: wrk --latency -t$threads -c$conns -d${secs}s http://$TARGET (POST 10 readings : GET = 1 : 4)"
wrk --latency -t"$threads" -c"$conns" -d"${secs}s" -s "$here/wrk.lua" "http://$TARGET"
if [ -n "$pid" ]; then
    kill -TERM "$pid"
    wait "$pid"
    echo "wrk.sh: service stopped, status $?"
    tail -1 "$dir/log"
fi
