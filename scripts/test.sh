#!/usr/bin/env bash
# Installs what is missing, builds with AddressSanitizer + UndefinedBehaviorSanitizer and
# warnings as errors, and runs every test (unit, chain, CLI, qemu interop, faults) through
# ctest; then checks vd as a dependency (installed: find_package and pkg-config, static and
# shared; and add_subdirectory); then builds the libFuzzer targets with clang and runs each
# for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build-test -DCMAKE_BUILD_TYPE=Debug -DVD_SANITIZE=ON -DVD_WERROR=ON
# Scratch images in memory when /dev/shm has room (deleting files on a disk mounted with
# `discard` can stall for minutes); otherwise in the build tree, which is on the disk we just
# built on. Containers often give /dev/shm only 64 MiB, and /tmp may be a small tmpfs too.
if [ -z "${TMPDIR:-}" ]; then
  shm_free_kib=0
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shm_free_kib=$(df -Pk /dev/shm | awk 'NR==2 {print $4}')
  fi
  if [ "${shm_free_kib:-0}" -ge $((4 * 1024 * 1024)) ]; then
    TMPDIR=$(mktemp -d /dev/shm/vd-test.XXXXXX)
  else
    mkdir -p build-test/scratch
    TMPDIR=$(mktemp -d "$PWD/build-test/scratch/vd-test.XXXXXX")
  fi
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
fi
echo "Scratch folder for test images: $TMPDIR"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-test -j"$(nproc)" --output-on-failure --timeout 900
# The qemu interop suites (and the provider and cache-mode tests) again on the io_uring
# provider: the default factory reads VD_AIO (the thread pool above is the default).
VD_AIO=io_uring ctest --test-dir build-test -j"$(nproc)" --output-on-failure --timeout 900 \
  -R 'Interop|VdimgQcow2|Cache|Uring|IoTest|capi'

# Many threads on one Disk under ThreadSanitizer: only that test binary and the library.
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DVD_TSAN=ON >/dev/null
cmake --build build-tsan -j"$(nproc)" --target vd_threads_tests
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 ctest --test-dir build-tsan -L threads --output-on-failure

# Packaging: a Release build of the library alone installed into build-install/prefix-*, the
# consumer program built against it with find_package(vd) and pkg-config, and a parent
# project that add_subdirectory()s vd; each program runs on a qcow2 (tests/consumer/run.sh).
tests/consumer/run.sh build-install

# Fuzzing: open/read and open/write over arbitrary image bytes (VD_FUZZ_SECONDS each).
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DVD_FUZZ=ON -DVD_TESTS=OFF -DVD_FUZZ_SECONDS="${VD_FUZZ_SECONDS:-60}" >/dev/null
cmake --build build-fuzz -j"$(nproc)"
ctest --test-dir build-fuzz -j"$(nproc)" --output-on-failure
