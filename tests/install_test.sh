#!/bin/sh
# Installs plaza to a private prefix with a multiarch libdir and builds the
# README's first program against it three ways: pkg-config (shared, with
# an rpath), pkg-config plaza-static, and CMake's find_package (plaza::plaza
# and plaza::plaza_shared).  Each program must run and print 9900.  Where
# the PostgreSQL component was built, a program on <plaza/pg.h> the same
# three ways (plaza_pg, plaza_pg-static, plaza::plaza_pg and
# plaza::plaza_pg_shared): it must run and be refused by a port nobody
# listens on, with -ECONNREFUSED.
#
#   tests/install_test.sh SOURCE_DIR [C_COMPILER]
set -eu
src=$(cd "$1" && pwd)
cc=${2:-cc}
multiarch=$($cc -print-multiarch 2>/dev/null || true)
[ -n "$multiarch" ] || multiarch=$(uname -m)-linux-gnu
libdir=lib/$multiarch
work=$(mktemp -d /tmp/plaza-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake -S "$src" -B "$work/build" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_INSTALL_LIBDIR="$libdir" \
  -DPLAZA_TESTS=OFF -DPLAZA_BENCH=OFF -DPLAZA_EXAMPLES=OFF >/dev/null
cmake --build "$work/build" -j2 >/dev/null
# Configured for /usr, installed elsewhere: the .pc files must follow.
cmake --install "$work/build" --prefix "$prefix" >/dev/null
test -f "$prefix/$libdir/libplaza.a"
test -f "$prefix/$libdir/pkgconfig/plaza.pc"
test -f "$prefix/$libdir/pkgconfig/plaza-static.pc"
test -f "$prefix/include/plaza.h"

# The README's first C block, as it is.
awk '/^```c$/ {on = 1; next} on && /^```$/ {exit} on {print}' "$src/README.md" > "$work/app.c"
grep -q pz_run "$work/app.c"

export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
check() {
  out=$("$@")
  if [ "$out" != 9900 ]; then
    echo "install_test: $* printed '$out', not 9900" >&2
    exit 1
  fi
}

cflags=$(pkg-config --cflags plaza)
libs=$(pkg-config --libs plaza)
# The paths must lead to the installed files (for /usr they were
# /usr/lib/include and /usr/lib/lib/<multiarch> before).
inc=$(pkg-config --variable=includedir plaza)
lib=$(pkg-config --variable=libdir plaza)
[ "$(cd "$inc" && pwd -P)" = "$(cd "$prefix/include" && pwd -P)" ] || { echo "install_test: includedir $inc" >&2; exit 1; }
[ "$(cd "$lib" && pwd -P)" = "$(cd "$prefix/$libdir" && pwd -P)" ] || { echo "install_test: libdir $lib" >&2; exit 1; }

# Shared, with the rpath a private prefix needs (docs/service.md).
$cc "$work/app.c" -o "$work/app-shared" $cflags $libs -Wl,-rpath,"$(pkg-config --variable=libdir plaza)"
check "$work/app-shared"
ldd "$work/app-shared" | grep "libplaza.so" | grep -q "$work/prefix"
# Without the rpath, LD_LIBRARY_PATH does it.
$cc "$work/app.c" -o "$work/app-shared2" $cflags $libs
LD_LIBRARY_PATH="$prefix/$libdir" check "$work/app-shared2"

# Static.
$cc "$work/app.c" -o "$work/app-static" $(pkg-config --cflags --libs --static plaza-static)
check "$work/app-static"
if ldd "$work/app-static" | grep -q libplaza; then
  echo "install_test: the static build links libplaza.so" >&2
  exit 1
fi

# CMake.
for target in plaza::plaza plaza::plaza_static plaza::plaza_shared; do
  d=$work/cm-$(echo "$target" | tr ':' '_')
  mkdir -p "$d"
  cp "$work/app.c" "$d/app.c"
  cat > "$d/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.16)
project(app C)
find_package(plaza REQUIRED)
add_executable(app app.c)
target_link_libraries(app PRIVATE $target)
CM
  cmake -S "$d" -B "$d/b" -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$d/b" >/dev/null
  check "$d/b/app"
  if [ "$target" = plaza::plaza_shared ]; then
    ldd "$d/b/app" | grep -q "libplaza.so"
  elif ldd "$d/b/app" | grep -q "libplaza.so"; then
    # (a bare "! cmd" never stops a set -e script)
    echo "install_test: $target linked libplaza.so dynamically" >&2
    exit 1
  fi
done
echo "install_test: shared, static and find_package builds of the README program run"

# The PostgreSQL component, where it was built.
if [ ! -f "$prefix/$libdir/pkgconfig/plaza_pg.pc" ]; then
  if pkg-config --exists libpq; then
    echo "install_test: libpq is here but plaza_pg.pc was not installed" >&2
    exit 1
  fi
  echo "install_test: no PostgreSQL component (no libpq): its part skipped"
  exit 0
fi
test -f "$prefix/$libdir/pkgconfig/plaza_pg-static.pc"
test -f "$prefix/include/plaza/pg.h"
cat > "$work/pgapp.c" <<'C'
#include <errno.h>
#include <plaza.h>
#include <plaza/pg.h>
#include <stdio.h>

static void *app(void *arg)
{
    (void)arg;
    pz_pg_conn_t *c = NULL;
    /* Port 1 on the loopback: nobody listens there. */
    int r = pz_pg_connect("host=127.0.0.1 port=1 dbname=x connect_timeout=5", pz_now() + 10000000000LL, &c);
    printf("%s\n", r == -ECONNREFUSED && c == NULL ? "refused" : pz_strerror(r));
    return NULL;
}

int main(void)
{
    return pz_run(NULL, app, NULL, NULL) == 0 ? 0 : 1;
}
C
check_pg() {
  out=$("$@")
  if [ "$out" != refused ]; then
    echo "install_test: $* printed '$out', not refused" >&2
    exit 1
  fi
}
$cc "$work/pgapp.c" -o "$work/pg-shared" $(pkg-config --cflags --libs plaza_pg) \
  -Wl,-rpath,"$(pkg-config --variable=libdir plaza_pg)"
check_pg "$work/pg-shared"
ldd "$work/pg-shared" | grep "libplaza_pg.so" | grep -q "$work/prefix"
$cc "$work/pgapp.c" -o "$work/pg-static" $(pkg-config --cflags --libs --static plaza_pg-static)
check_pg "$work/pg-static"
if ldd "$work/pg-static" | grep -q libplaza; then
  echo "install_test: the static pg build links a shared libplaza" >&2
  exit 1
fi
for target in plaza::plaza_pg plaza::plaza_pg_shared; do
  d=$work/cm-$(echo "$target" | tr ':' '_')
  mkdir -p "$d"
  cp "$work/pgapp.c" "$d/app.c"
  cat > "$d/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.16)
project(app C)
find_package(plaza REQUIRED)
add_executable(app app.c)
target_link_libraries(app PRIVATE $target)
CM
  cmake -S "$d" -B "$d/b" -DCMAKE_C_COMPILER="$cc" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$d/b" >/dev/null
  check_pg "$d/b/app"
  # (A `! pipeline` never stops a `set -e` script: hence the if.)
  if [ "$target" = plaza::plaza_pg_shared ]; then
    ldd "$d/b/app" | grep -q "libplaza_pg.so"
  elif ldd "$d/b/app" | grep -q "libplaza"; then
    echo "install_test: $target links a shared libplaza" >&2
    exit 1
  fi
done
echo "install_test: shared, static and find_package builds of a PostgreSQL program run"
