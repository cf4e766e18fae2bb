#!/bin/sh
# Runs bench-pg's set against a throw-away PostgreSQL 15 server.
#   bench/pg/run.sh [BUILD_DIR] [SECS]     (default build, 3 s per measurement)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
secs=${2:-3}
bin="$build/bench/bench-pg"
[ -x "$bin" ] || { echo "bench/pg/run.sh: $bin not built (libpq missing?)" >&2; exit 1; }
state=$(mktemp /tmp/plaza-pg-bench.XXXXXX)
trap '"$here/../../scripts/pg-test-server.sh" stop "$state"' EXIT
"$here/../../scripts/pg-test-server.sh" start "$state"
. "$state"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs; server on the same machine, Unix socket"
u=$PLAZA_PG_URL
for sql in select1 insert; do
    "$bin" "$u" blocking sql=$sql threads=1 secs=$secs
    "$bin" "$u" blocking sql=$sql threads=8 secs=$secs
    "$bin" "$u" plaza sql=$sql workers=1 conns=1 secs=$secs
    "$bin" "$u" plaza sql=$sql workers=1 conns=8 secs=$secs
    "$bin" "$u" plaza sql=$sql workers=1 conns=1 pipeline=32 secs=$secs
    "$bin" "$u" plaza sql=$sql workers=1 conns=8 pipeline=32 secs=$secs
done
"$bin" "$u" lock_sql secs=$secs
"$bin" "$u" lock_sql_plaza secs=$secs
"$bin" "$u" lock tasks=1 secs=$secs
"$bin" "$u" lock tasks=8 secs=$secs
