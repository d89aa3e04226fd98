#!/usr/bin/env bash
# Checks vd as a dependency of another project (scripts/test.sh runs it after ctest):
#  1. a Release build of the library alone, `cmake --install`ed into OUT/prefix-static, then
#     re-linked as libvd.so (same objects, nothing recompiled) into OUT/prefix-shared;
#  2. tests/consumer built against each prefix with find_package(vd) and with pkg-config;
#  3. tests/consumer/subproject: a parent project that add_subdirectory()s vd, configured
#     with find_package(GTest) disabled, which must build only the library.
# Every program built is run on a small qcow2 made by qemu-img.
# Usage: tests/consumer/run.sh [OUT]   (default: build-install in the source tree)
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build-install}
out=$(mkdir -p "$out" && cd "$out" && pwd)
jobs=$(nproc)
start=$SECONDS
log="$out/log.txt"
: >"$log"
step() { echo "consumer [$((SECONDS - start)) s]: $*"; }
run() { "$@" >>"$log" 2>&1 || { echo "FAILED: $*  (log: $log)" >&2; tail -40 "$log" >&2; exit 1; }; }

image="$out/test.qcow2"
run qemu-img create -f qcow2 "$image" 64M
run qemu-io -f qcow2 -c 'write -P 0xab 0 4k' "$image"
expect="size 67108864, first 4 KiB read (4096 non-zero bytes)"
check() {  # check NAME PROGRAM
  local got
  got=$("$2" "$image" 2>&1) || { echo "FAILED: $1: $got" >&2; exit 1; }
  [ "$got" = "$expect" ] || { echo "FAILED: $1 printed '$got', expected '$expect'" >&2; exit 1; }
  step "$1: ok"
}

build="$out/vd"
for kind in static shared; do
  prefix="$out/prefix-$kind"
  shared=OFF; [ "$kind" = shared ] && shared=ON
  step "library ($kind) -> $prefix"
  run cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVD_TESTS=OFF \
    -DVD_TOOLS=OFF -DVD_SANITIZE=OFF -DVD_FUZZ=OFF -DVD_BENCH=OFF -DVD_SHARED=$shared \
    -DCMAKE_INSTALL_PREFIX="$prefix"
  run cmake --build "$build" -j"$jobs"
  rm -rf "$prefix"
  run cmake --install "$build"
  libdir=$(dirname "$(find "$prefix" -name vd.pc -path '*/pkgconfig/*')")/..
  if [ "$kind" = shared ]; then
    soname=$(readelf -d "$libdir/libvd.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    [ "$soname" = libvd.so.0 ] || { echo "FAILED: libvd.so has SONAME '$soname'" >&2; exit 1; }
    # Only the public API is exported: no function, vtable or type information of the
    # backends' or the host's internals (std templates instantiated on them may show up).
    leaked=$(nm -DC --defined-only "$libdir/libvd.so" |
      grep -E '^[0-9a-f]+ [A-Za-z] ((typeinfo|typeinfo name|vtable|VTT|guard variable) for )?vd::(qcow|luks|raw|backends|detail)::' || true)
    [ -z "$leaked" ] || { echo "FAILED: libvd.so exports internals:" >&2; echo "$leaked" | head >&2; exit 1; }
    step "libvd.so: SONAME $soname, $(nm -D --defined-only "$libdir/libvd.so" | wc -l) symbols exported"
  fi

  # The consumers build without optimisation: quicker, and it is the linking that is tested.
  run cmake -S "$src/tests/consumer" -B "$out/consumer-cmake-$kind" -G Ninja \
    -DCMAKE_PREFIX_PATH="$prefix"
  run cmake --build "$out/consumer-cmake-$kind"
  check "find_package(vd), $kind" "$out/consumer-cmake-$kind/vd_consumer"

  pc_static=--static; [ "$kind" = shared ] && pc_static=
  mkdir -p "$out/consumer-pc-$kind"
  PKG_CONFIG_PATH="$libdir/pkgconfig" run make -C "$src/tests/consumer" \
    OUT="$out/consumer-pc-$kind/vd_consumer" PC_STATIC="$pc_static" CXXFLAGS= \
    LDFLAGS="-Wl,-rpath,$(cd "$libdir" && pwd)"
  check "pkg-config --cflags --libs $pc_static vd, $kind" "$out/consumer-pc-$kind/vd_consumer"

  # The examples (examples/), built both ways against the static install and run.
  [ "$kind" = static ] || continue
  for ex in cpp-monitor c-monitor; do
    prog=vd_${ex//-/_}
    run cmake -S "$src/examples/$ex" -B "$out/example-$ex" -G Ninja -DCMAKE_PREFIX_PATH="$prefix"
    run cmake --build "$out/example-$ex"
    mkdir -p "$out/example-$ex-pc"
    PKG_CONFIG_PATH="$libdir/pkgconfig" run make -C "$src/examples/$ex" OUT="$out/example-$ex-pc/$prog"
    for built in "$out/example-$ex/$prog" "$out/example-$ex-pc/$prog"; do
      rm -rf "$out/run-$ex" && mkdir -p "$out/run-$ex"
      if [ "$ex" = c-monitor ]; then
        run qemu-img create -f qcow2 "$out/run-$ex/disk.qcow2" 64M
        run "$built" "$out/run-$ex/disk.qcow2"
        run qemu-img check "$out/run-$ex/disk.qcow2"
      else
        run "$built" "$out/run-$ex"
        run qemu-img check "$out/run-$ex/top.qcow2"
        run qemu-img check "$out/run-$ex/second.qcow2"
      fi
    done
    step "example $ex: built with find_package(vd) and pkg-config, ran, images check clean"
  done
done

step "add_subdirectory(vd) without GTest"
# No build type (no -O2, no -g): the quickest compile of the library, and the check that vd
# does not force one into the parent's cache.
run cmake -S "$src/tests/consumer/subproject" -B "$out/subproject" -G Ninja \
  -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON -DVD_SOURCE_DIR="$src"
run cmake --build "$out/subproject" -j"$jobs"
check "add_subdirectory(vd)" "$out/subproject/vd_consumer"
step "all ok in $((SECONDS - start)) s"
