#!/usr/bin/env bash
# 4 KiB reads at depth 32 on a 1 GiB allocated QCOW2 in /dev/shm: vd's C++ API (callbacks and
# async_read), vd's C API and `qemu-img bench`, on the same image in the same run.
#
#   bench/api_reads.sh -b BUILD_DIR [-c COUNT] [-r ROUNDS] [-d DEPTH] [-t IO_THREADS] [-k]
#
#   -b BUILD_DIR  a build with api_reads and api_reads_c built (Release, -DVD_BENCH=ON, no
#                 sanitizers); this script builds nothing
#   -c COUNT      requests per run (default 1000000)
#   -r ROUNDS     rounds, each running every tool once in turn (default 3)
#   -d DEPTH      requests in flight (default 32)
#   -t N          I/O threads of vd's Runtime / C context (default 0: vd's default)
#   -k            keep the image (its path is printed) instead of removing it at the end
#
# The image: `qemu-img create -f qcow2 IMG 1G`, then `qemu-io -c 'write -P 0x5a 0 1G'`, so
# every cluster is allocated (and the vd benches check the pattern). Every tool reads the
# same offsets: 0, 4 KiB, 8 KiB, ... wrapping at the end (qemu-img bench without -S steps by
# the request size), read-only, default cache modes, warm (the image is in RAM).
# qemu-img bench is timed by its own "Run completed in X seconds" line, the vd benches by
# their own clock; both leave the open and close out.
# Prints each run, then per tool the median requests/s, the spread (min-max) and the ratio
# to qemu-img's median (above 1: faster than qemu-img), the load average before and after,
# and the commit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=""
count=1000000
rounds=3
depth=32
io_threads=0
keep=0
while getopts "b:c:r:d:t:k" opt; do
  case $opt in
    b) build=$OPTARG ;;
    c) count=$OPTARG ;;
    r) rounds=$OPTARG ;;
    d) depth=$OPTARG ;;
    t) io_threads=$OPTARG ;;
    k) keep=1 ;;
    *) sed -n '2,23p' "$0"; exit 2 ;;
  esac
done
if [[ -z $build ]]; then
  sed -n '2,23p' "$0"
  exit 2
fi
cxx_bench="$build/bench/api_reads"
c_bench="$build/bench/api_reads_c"
for f in "$cxx_bench" "$c_bench"; do
  [[ -x $f ]] || { echo "api_reads.sh: $f not built (cmake --build $build --target api_reads api_reads_c)" >&2; exit 1; }
done
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null ||
  { echo "api_reads.sh: needs qemu-img and qemu-io" >&2; exit 1; }

img=$(mktemp /dev/shm/vd-api-reads.XXXXXX.qcow2)
logs=$(mktemp -d /tmp/vd-api-reads.XXXXXX)
cleanup() {
  if ((keep)); then echo "image kept: $img"; else rm -f "$img"; fi
  rm -rf "$logs"
}
trap cleanup EXIT

commit=$(git -C "$here" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $commit != unknown ]] && ! git -C "$here" diff --quiet HEAD -- 2>/dev/null; then
  commit="$commit (+ uncommitted changes)"
fi

echo "making $img: 1 GiB qcow2, every cluster written (pattern 0x5a)"
qemu-img create -q -f qcow2 "$img" 1G
qemu-io -f qcow2 -c 'write -P 0x5a 0 1G' "$img" >/dev/null
qemu-img info "$img" | grep -E '^(virtual size|disk size|cluster_size)'

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load before: $load_before   commit: $commit   $(qemu-img --version | head -1)"
echo "COUNT=$count DEPTH=$depth ROUNDS=$rounds"

tools=(qemu-img cxx-read cxx-async c-read)
run_tool() {  # prints requests/s
  local tool=$1 out secs
  case $tool in
    qemu-img)
      out=$(qemu-img bench -f qcow2 -c "$count" -d "$depth" -s 4k "$img")
      secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
      [[ -n $secs ]] || { echo "api_reads.sh: unexpected qemu-img bench output: $out" >&2; return 1; }
      awk -v n="$count" -v s="$secs" 'BEGIN { printf "%.0f\n", n / s }' ;;
    cxx-read) out=$("$cxx_bench" -c "$count" -d "$depth" -s 4096 -t "$io_threads" "$img") ;;
    cxx-async) out=$("$cxx_bench" --asio -c "$count" -d "$depth" -s 4096 -t "$io_threads" "$img") ;;
    c-read) out=$("$c_bench" -c "$count" -d "$depth" -s 4096 -t "$io_threads" "$img") ;;
  esac
  if [[ $tool != qemu-img ]]; then
    sed -n 's/.*, \([0-9]*\) requests\/s$/\1/p' <<<"$out"
  fi
}

for ((r = 1; r <= rounds; r++)); do
  for tool in "${tools[@]}"; do
    rate=$(run_tool "$tool")
    [[ -n $rate ]] || { echo "api_reads.sh: $tool gave no rate" >&2; exit 1; }
    echo "$rate" >>"$logs/$tool"
    printf 'round %d  %-10s %10s requests/s   (load %s)\n' "$r" "$tool" "$rate" "$(cut -d' ' -f1 /proc/loadavg)"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { sort -n "$1" | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
declare -A label=([qemu-img]="qemu-img bench" [cxx-read]="C++ Disk::read (callbacks)"
                  [cxx-async]="C++ Disk::async_read (Asio)" [c-read]="C vd_disk_read")
q=$(median "$logs/qemu-img")
echo
printf '%-30s %14s %22s %10s\n' tool "median req/s" "min-max" "vs qemu-img"
for tool in "${tools[@]}"; do
  m=$(median "$logs/$tool")
  printf '%-30s %14s %22s %10s\n' "${label[$tool]}" "$m" "$(spread "$logs/$tool")" \
    "$(awk -v a="$m" -v b="$q" 'BEGIN { printf "%.2f", a / b }')"
done
echo "load before: $load_before   after: $load_after   commit: $commit"
below=""
for tool in cxx-read cxx-async c-read; do
  m=$(median "$logs/$tool")
  if ((m < q)); then below+=" ${label[$tool]};"; fi
done
if [[ -n $below ]]; then
  echo "BELOW qemu-img:$below"
else
  echo "every API at or above qemu-img's rate"
fi
