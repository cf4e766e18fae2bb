# plaza: top-level commands.  Each installs the Debian packages it needs.
#
#   make demo      build and run the weather service demo and the examples
#   make test      build and run the whole test suite: gcc, clang,
#                  ASan+UBSan (with a 40 s fault-injection soak), TSan,
#                  and aarch64 under qemu-user
#   make bench     build and run the benchmarks beside the peers
#   make install   install the library (PREFIX=/usr/local by default)
#   make test-under-load  the gcc build's tests with one core kept busy
#                  (LOAD_RUNS=1 times; scripts/test-under-load.sh for others)

PREFIX ?= /usr/local
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
CTEST = ctest --output-on-failure --no-tests=error -j1

.PHONY: all build demo test test-under-load soak test-gcc test-clang test-asan test-tsan test-aarch64 bench install clean deps

all: build

deps:
	@scripts/install-deps.sh build

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	cmake --build build -j$(JOBS)

demo: build
	./build/apps/weather/plaza-weather demo
	./build/examples/demo
	./build/examples/echo both 127.0.0.1:0 64

test:
	@scripts/install-deps.sh test
	$(MAKE) test-gcc test-clang test-asan test-tsan test-aarch64
	@echo "plaza: all test builds passed"

test-gcc:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j$(JOBS)
	cd build && $(CTEST)

test-clang:
	CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPLAZA_MODELS=OFF >/dev/null
	cmake --build build-clang -j$(JOBS)
	cd build-clang && $(CTEST)

test-asan:
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPLAZA_SANITIZE=address -DPLAZA_TEST_SCALE=2 -DPLAZA_BENCH=OFF -DPLAZA_MODELS=OFF -DPLAZA_FAULT_SOAK=ON >/dev/null
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $(CTEST)

test-tsan:
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPLAZA_SANITIZE=thread -DPLAZA_TEST_SCALE=4 -DPLAZA_BENCH=OFF -DPLAZA_MODELS=OFF >/dev/null
	cmake --build build-tsan -j$(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:abort_on_error=1 $(CTEST)

test-aarch64:
	cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPLAZA_TEST_SCALE=10 -DPLAZA_BENCH=OFF -DPLAZA_MODELS=OFF >/dev/null
	cmake --build build-aarch64 -j$(JOBS)
	cd build-aarch64 && $(CTEST)

LOAD_RUNS ?= 1
test-under-load:
	@scripts/install-deps.sh test
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j$(JOBS)
	scripts/test-under-load.sh build $(LOAD_RUNS)

# A long fault-injection soak (tests/test_faults_soak.c): SOAK_SECONDS, and
# PLAZA_FAULTS_SEED / PLAZA_FAULTS_RATE from the environment.
SOAK_SECONDS ?= 600
soak:
	cmake -S . -B build-faults -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPLAZA_FAULTS=ON -DPLAZA_SANITIZE=address -DPLAZA_BENCH=OFF >/dev/null
	cmake --build build-faults -j$(JOBS) --target test_faults_soak
	PLAZA_SOAK_SECONDS=$(SOAK_SECONDS) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 ./build-faults/tests/test_faults_soak

# The bench packages first: libpq-dev decides whether the build has bench-pg.
bench:
	@scripts/install-deps.sh bench
	$(MAKE) build
	$(MAKE) -C bench/peers
	/usr/bin/python3 bench/run.py $(if $(QUICK),--quick)

install: build
	cmake --install build --prefix $(PREFIX)

clean:
	rm -rf build build-clang build-asan build-tsan build-aarch64
