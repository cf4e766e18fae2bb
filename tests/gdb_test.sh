#!/bin/sh
# The gdb helper (tools/plaza-gdb.py) on a live program stopped in the
# middle: plaza-tasks lists the tasks with their waits, plaza-bt prints a
# suspended task's stack down to its function.  Usage: gdb_test.sh SRC BIN
set -u
src=$1 bin=$2
out=$(gdb -batch -nx -ex "source $src/tools/plaza-gdb.py" -ex "break plaza_gdb_stop_here" -ex run \
    -ex plaza-tasks -ex "plaza-bt 2" -ex "plaza-bt 3" -ex kill "$bin" 2>&1)
echo "$out"
fail=0
for want in "task 1 (main) running on worker" "task 2 (gdb-sleeper) waiting in sleep" \
    "task 3 (gdb-locker) waiting in async_mutex" "plaza: 3 task(s)" "sleeper (" "locker ("; do
    if ! printf '%s\n' "$out" | grep -qF "$want"; then
        echo "gdb_test: missing: $want" >&2
        fail=1
    fi
done
exit $fail
