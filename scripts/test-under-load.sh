#!/bin/sh
# Runs a build's test suite while a CPU hog keeps one core busy, as a
# shared machine does: the tests must not need a quiet machine or both
# cores at once.
#
#   scripts/test-under-load.sh [BUILD_DIR [RUNS]] [-- CTEST_ARGS...]
#
# BUILD_DIR is a configured and built tree (default: build, the gcc
# build; build-clang, build-asan, build-tsan and build-aarch64 are the
# Makefile's others), RUNS how many times its ctest runs (default 1).  The
# sanitizer options are the Makefile's unless already set.  Exits non-zero
# if any run failed; every run is made even after a failure, so the count
# of failed runs is known.
set -u

build=build
runs=1
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    build=$1
    shift
fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    runs=$1
    shift
fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then
    shift
fi

case $runs in
'' | *[!0-9]*)
    echo "test-under-load: RUNS must be a number, not '$runs'" >&2
    exit 2
    ;;
esac
if [ ! -f "$build/CTestTestfile.cmake" ]; then
    echo "test-under-load: $build is not a configured build directory (run make test-gcc or cmake first)" >&2
    exit 2
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:abort_on_error=1}"

# The hog: a shell busy loop pinned to the first core (or unpinned where
# taskset is missing), ended on any exit.
hog=
stop_hog() {
    if [ -n "$hog" ]; then
        kill "$hog" 2>/dev/null
        wait "$hog" 2>/dev/null
        hog=
    fi
}
trap stop_hog EXIT
trap 'stop_hog; exit 130' INT
trap 'stop_hog; exit 143' TERM
if command -v taskset >/dev/null 2>&1; then
    taskset -c 0 sh -c 'while :; do :; done' &
else
    sh -c 'while :; do :; done' &
fi
hog=$!

failed=0
i=1
while [ "$i" -le "$runs" ]; do
    echo "test-under-load: $build, run $i of $runs, one core busy (hog pid $hog)"
    if (cd "$build" && ctest --output-on-failure --no-tests=error -j1 "$@"); then
        echo "test-under-load: $build, run $i of $runs: passed"
    else
        echo "test-under-load: $build, run $i of $runs: FAILED"
        failed=$((failed + 1))
    fi
    i=$((i + 1))
done
stop_hog
echo "test-under-load: $build: $((runs - failed)) of $runs runs passed under load"
[ "$failed" -eq 0 ]
