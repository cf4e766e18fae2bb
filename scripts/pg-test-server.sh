#!/bin/bash
# A throw-away PostgreSQL 15 server for plaza's tests and benchmarks.
#
#   scripts/pg-test-server.sh start STATE   initdb into a new temporary folder, start
#                                           the server (Unix socket in that folder and
#                                           127.0.0.1 on a free port), write STATE
#   scripts/pg-test-server.sh restart STATE stop and start the same server (fast mode)
#   scripts/pg-test-server.sh stop STATE    stop it and remove the folder and STATE
#
# STATE is a file of shell assignments the tests read (PLAZA_PG_URL, the libpq
# conninfo over the Unix socket; PLAZA_PG_TCP_URL, the same over TCP; PLAZA_PG_DIR).
# The server comes from Debian's postgresql-15 (/usr/lib/postgresql/15/bin, or
# PLAZA_PG_BIN).  initdb refuses to run as root: as root the server runs as the
# postgres user (created with the package), or as a system user plaza-pg made here.
# Exit status 3 means the PostgreSQL binaries are absent (0, and no STATE, when
# PLAZA_PG_ALLOW_SKIP=1: the tests then report that they skipped).
set -eu
cmd=${1:-}
state=${2:-}
[ -n "$cmd" ] && [ -n "$state" ] || { echo "usage: $0 start|restart|stop STATE" >&2; exit 2; }
bin=${PLAZA_PG_BIN:-/usr/lib/postgresql/15/bin}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$owner" -- "$@"
    else
        "$@"
    fi
}

pick_owner() {
    owner=$(id -un)
    if [ "$(id -u)" = 0 ]; then
        if id postgres >/dev/null 2>&1; then
            owner=postgres
        else
            id plaza-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin plaza-pg
            owner=plaza-pg
        fi
    fi
}

# A TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom) % 30000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

start_server() {
    # A port taken between the check and the start makes pg_ctl fail: try another.
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null; then
            return 0
        fi
        tail -n 5 "$dir/log" >&2 || true
    done
    echo "plaza: cannot start the PostgreSQL test server (log: $dir/log)" >&2
    return 1
}

write_state() {
    tmp="$state.tmp"
    {
        echo "PLAZA_PG_DIR='$dir'"
        echo "PLAZA_PG_PORT='$port'"
        echo "PLAZA_PG_URL='host=$dir port=$port dbname=postgres user=postgres'"
        echo "PLAZA_PG_TCP_URL='host=127.0.0.1 port=$port dbname=postgres user=postgres'"
    } >"$tmp"
    mv "$tmp" "$state"
}

case "$cmd" in
start)
    if [ ! -x "$bin/initdb" ]; then
        echo "plaza: PostgreSQL binaries absent ($bin/initdb): install postgresql-15 (scripts/install-deps.sh test)" >&2
        if [ "${PLAZA_PG_ALLOW_SKIP:-0}" = 1 ]; then
            rm -f "$state"
            exit 0 # the tests find no server and report the skip
        fi
        exit 3
    fi
    [ -f "$state" ] && "$0" stop "$state" >/dev/null 2>&1 || true
    pick_owner
    dir=$(mktemp -d /tmp/plaza-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown "$owner" "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
        as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    start_server
    echo "PLAZA_PG_OWNER='$owner'" >"$dir/owner"
    write_state
    echo "plaza: PostgreSQL test server on $dir and 127.0.0.1:$port" >&2
    ;;
restart)
    . "$state"
    dir=$PLAZA_PG_DIR
    port=$PLAZA_PG_PORT
    . "$dir/owner"
    owner=$PLAZA_PG_OWNER
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -m fast \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        restart >/dev/null
    ;;
stop)
    [ -f "$state" ] || exit 0
    . "$state"
    dir=$PLAZA_PG_DIR
    if [ -f "$dir/owner" ]; then
        . "$dir/owner"
        owner=$PLAZA_PG_OWNER
        as_owner "$bin/pg_ctl" -D "$dir/data" -w -t 60 -m immediate stop >/dev/null 2>&1 || true
    fi
    case "$dir" in /tmp/plaza-pg.*) rm -rf "$dir" ;; esac
    rm -f "$state"
    ;;
*)
    echo "usage: $0 start|restart|stop STATE" >&2
    exit 2
    ;;
esac
