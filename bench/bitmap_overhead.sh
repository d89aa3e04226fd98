#!/usr/bin/env bash
# The cost of keeping one enabled persistent bitmap on vdimg bench -w (issue 12's budget:
# under 5%). Same image, same command, with and without a bitmap, runs alternating.
#
#   bench/bitmap_overhead.sh [-b BUILD_DIR] [-r RUNS] [-m SIZE_MIB]
#
# Cases (4 KiB writes, depth 64):
#   alloc     every request allocates a cluster: bench -w -s 4k -S 64k over a fresh image
#   in-place  every request overwrites allocated data: bench -w -s 4k -S 4k over an image
#             with preallocation=metadata
#   flush64   in-place, a flush every 64 writes (--flush-interval=64): the worst case, each
#             flush dirties new granules, so each one stores the bitmap and the next write
#             waits for it to be marked in use again
# Prints per case the median "Run completed" time of each variant and the overhead in %.
# Each run ends with the close, which stores the bitmap (included in the wall time only;
# the "Run completed" time covers the writes and the final flush's drain).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build-rel"
runs=7
size_mib=1024
while getopts "b:r:m:" opt; do
  case $opt in
    b) build=$OPTARG ;;
    r) runs=$OPTARG ;;
    m) size_mib=$OPTARG ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
vdimg="$build/vdimg"
dir=${BENCH_DIR:-$(mktemp -d /dev/shm/vd-bitmap-bench.XXXXXX)}
mkdir -p "$dir"
trap '[ -z "${BENCH_DIR:-}" ] && rm -rf "$dir"' EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

one() {  # one run: $1 case, $2 with|without; prints the "Run completed" seconds
  local img="$dir/img.qcow2" opts=""
  [ "$1" != alloc ] && opts="-o preallocation=metadata"
  rm -f "$img"
  qemu-img create -q -f qcow2 $opts "$img" "${size_mib}M"
  [ "$2" = with ] && qemu-img bitmap --add "$img" b0
  local args=(-w -s 4k -S 64k -c $((size_mib * 16)))
  [ "$1" = in-place ] && args=(-w -s 4k -S 4k -c 75000)
  [ "$1" = flush64 ] && args=(-w -s 4k -S 4k -c 20000 --flush-interval=64)
  "$vdimg" bench "${args[@]}" "$img" | sed -n 's/^Run completed in \([0-9.]*\) seconds./\1/p'
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-9s %10s %10s %9s\n' case without with overhead
for c in ${CASES:-alloc in-place flush64}; do
  : >"$dir/without" ; : >"$dir/with"
  for ((i = 0; i < runs; i++)); do
    one "$c" without >>"$dir/without"
    one "$c" with >>"$dir/with"
  done
  a=$(median <"$dir/without"); b=$(median <"$dir/with")
  printf '%-9s %9.3fs %9.3fs %8.1f%%\n' "$c" "$a" "$b" "$(echo "($b - $a) * 100 / $a" | bc -l)"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
