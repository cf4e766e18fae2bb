#!/bin/sh
# Installs the Debian packages plaza's build, tests and benchmarks need, and
# only those that are missing.  Usage: scripts/install-deps.sh [build|test|bench]
set -e
what=${1:-build}

# libdw-dev: the advisor and pz_dump name call sites by file:line (the demo prints them);
# libunwind-dev: pz_dump walks suspended tasks' stacks.
pkgs="cmake make gcc pkg-config libdw-dev libunwind-dev libcmocka-dev libsqlite3-dev libjansson-dev libyajl-dev libhttp-parser-dev"
case "$what" in
test)
    # libpq-dev builds the PostgreSQL component; postgresql-15 is its test server.
    # spin checks the Promela models (models/).
    # gdb runs the gdb helper's test (tools/plaza-gdb.py).
    pkgs="$pkgs clang qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross libpq-dev postgresql-15 libclang-rt-14-dev python3 spin gdb chromium"
    ;;
bench)
    pkgs="$pkgs golang-go librust-tokio-dev librust-parking-lot-dev libboost-fiber-dev g++ cargo python3-matplotlib"
    # the weather services (bench/peers/weather-*), their check and their load
    pkgs="$pkgs librust-hyper-dev librust-rusqlite-dev librust-serde-dev librust-serde-derive-dev librust-serde-json-dev golang-github-mattn-go-sqlite3-dev libsqlite3-dev sqlite3 curl wrk"
    # the weather peers' PostgreSQL back ends
    pkgs="$pkgs librust-tokio-postgres-dev golang-github-lib-pq-dev"
    # bench/pg: the PostgreSQL component (libpq-dev) and the server it measures against
    pkgs="$pkgs libpq-dev postgresql-15"
    ;;
esac

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "plaza: missing Debian packages:$missing" >&2
    echo "plaza: run as root, or: sudo apt-get install -y$missing" >&2
    exit 1
fi
# cargo may come with the machine's own (rustup) toolchain instead.
if [ "$what" = bench ] && { command -v cargo || [ -x "$HOME/.cargo/bin/cargo" ]; } >/dev/null 2>&1; then
    missing=$(echo "$missing" | sed 's/ cargo//')
    [ -z "$missing" ] && exit 0
fi
echo "plaza: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
