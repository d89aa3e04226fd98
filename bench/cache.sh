#!/usr/bin/env bash
# Issue 13's cases in one run: vdimg bench (-i threads and -i io_uring), qemu-img bench
# (-i threads and -i io_uring) and fio on the raw file holding the same data.
#
#   bench/cache.sh [-b BUILD_DIR] [-m SIZE_MIB] [-c COUNT] [-r RUNS]
#
#   -b BUILD_DIR  a Release build with vdimg (default: build-rel next to this script's repo)
#   -m SIZE_MIB   image size (default 1024)
#   -c COUNT      requests per read run (default 200000; the write case does SIZE/64k)
#   -r RUNS       runs per tool and case, the median is kept (default 3)
#
# Cases (the goals of issue 13):
#   shm-read-4k-d16     buffered, /dev/shm: 4 KiB reads at depth 16, scattered offsets, on a
#                       fully allocated QCOW2; fio --ioengine=psync randread on the raw file
#   direct-read-4k-d32  cache=none on the disk's file system ($DISK_DIR, default the build
#                       tree): 4 KiB reads at depth 32, scattered; fio io_uring --direct=1
#   direct-write-64k    cache=none: 64 KiB allocating writes at depth 16 on an empty QCOW2
# Requests/s = requests / wall time of the whole process (images opened and closed
# included, as qemu-img bench reports). Prints a Markdown table with ratios to fio (reads)
# or to qemu-img threads (writes), the load average before and after and the commit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build-rel"
size_mib=1024
count=200000
runs=3
while getopts "b:m:c:r:" opt; do
  case $opt in
    b) build=$OPTARG ;;
    m) size_mib=$OPTARG ;;
    c) count=$OPTARG ;;
    r) runs=$OPTARG ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
  esac
done
vdimg=$(cd "$build" && pwd)/vdimg
[[ -x $vdimg ]] || { echo "no vdimg in $build" >&2; exit 1; }
for t in qemu-img fio; do command -v $t >/dev/null || { echo "$t not found" >&2; exit 1; }; done

shm=$(mktemp -d /dev/shm/vd-cache-bench.XXXXXX)
disk=$(mktemp -d "${DISK_DIR:-$here/../build-rel}/vd-cache-bench.XXXXXX")
trap 'rm -rf "$shm" "$disk"' EXIT
size=$((size_mib << 20))
# Scattered offsets from qemu-img bench's step: a 4 KiB multiple prime to the image's
# block count, wrapping at the end of the image.
step=$((4096 * 7919))

load() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(load)
commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)

echo "inputs: ${size_mib} MiB raw + qcow2 in $shm and $disk" >&2
head -c "$size" /dev/urandom > "$shm/data.raw"
qemu-img convert -f raw -O qcow2 "$shm/data.raw" "$shm/data.qcow2"
cp "$shm/data.raw" "$disk/data.raw"
cp "$shm/data.qcow2" "$disk/data.qcow2"
sync

# Median requests/s of RUNS runs of a command printing qemu-img bench's
# "Run completed in S seconds." (or fio's JSON).
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bench_rate() {  # REQUESTS CMD...
  local n=$1; shift
  for ((i = 0; i < runs; i++)); do
    "$@" | awk -v n="$n" '/Run completed in/ {printf "%.0f\n", n / $4}'
  done | median
}
fio_rate() {  # fio args...
  for ((i = 0; i < runs; i++)); do
    fio --output-format=terse --terse-version=3 "$@" | awk -F';' '{print $8}'
  done | median
}
drop() { dd if="$1" iflag=nocache count=0 2>/dev/null || true; }

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }

# ---- shm-read-4k-d16 ------------------------------------------------------------------------
c="shm-read-4k-d16"
echo "$c" >&2
f=$(fio_rate --name=r --filename="$shm/data.raw" --rw=randread --bs=4k --ioengine=psync \
      --number_ios="$count" --size="$size" --randrepeat=1)
row "$c" "fio psync randread (raw)" "$f" "1.00"
for aio in threads io_uring; do
  r=$(bench_rate "$count" "$vdimg" bench -f qcow2 -c "$count" -d 16 -s 4k -S $step -i $aio "$shm/data.qcow2")
  row "$c" "vdimg bench -i $aio" "$r" "$(ratio "$r" "$f")"
  r=$(bench_rate "$count" qemu-img bench -f qcow2 -c "$count" -d 16 -s 4k -S $step -i $aio "$shm/data.qcow2")
  row "$c" "qemu-img bench -i $aio" "$r" "$(ratio "$r" "$f")"
done
r=$(bench_rate "$count" env VD_NOWAIT=0 "$vdimg" bench -f qcow2 -c "$count" -d 16 -s 4k -S $step -i threads "$shm/data.qcow2")
row "$c" "vdimg bench -i threads, VD_NOWAIT=0 (no inline reads)" "$r" "$(ratio "$r" "$f")"

# ---- direct-read-4k-d32 ---------------------------------------------------------------------
c="direct-read-4k-d32"
echo "$c" >&2
drop "$disk/data.raw"; drop "$disk/data.qcow2"
f=$(fio_rate --name=r --filename="$disk/data.raw" --rw=randread --bs=4k --ioengine=io_uring --direct=1 \
      --iodepth=32 --number_ios="$count" --size="$size" --randrepeat=1)
row "$c" "fio io_uring --direct=1 randread (raw)" "$f" "1.00"
for aio in threads io_uring; do
  r=$(bench_rate "$count" "$vdimg" bench -f qcow2 -t none -c "$count" -d 32 -s 4k -S $step -i $aio "$disk/data.qcow2")
  row "$c" "vdimg bench -t none -i $aio" "$r" "$(ratio "$r" "$f")"
  r=$(bench_rate "$count" qemu-img bench -f qcow2 -t none -c "$count" -d 32 -s 4k -S $step -i $aio "$disk/data.qcow2")
  row "$c" "qemu-img bench -t none -i $aio" "$r" "$(ratio "$r" "$f")"
done

# ---- direct-write-64k -----------------------------------------------------------------------
c="direct-write-64k"
echo "$c" >&2
wn=$((size / 65536))
wr() {  # TOOL AIO
  local out=$disk/w.qcow2
  rm -f "$out"
  qemu-img create -q -f qcow2 "$out" "$size"
  "$1" bench -w -f qcow2 -t none -c "$wn" -d 16 -s 64k -S 64k -i "$2" "$out"
}
base=""
for tool in qemu-img "$vdimg"; do
  for aio in threads io_uring; do
    r=$(bench_rate "$wn" wr "$tool" "$aio")
    name=$(basename "$tool")
    [[ -z $base ]] && base=$r
    row "$c" "$name bench -w -t none -i $aio" "$r" "$(ratio "$r" "$base")"
  done
done

echo
echo "commit $commit, $(nproc) CPUs, load average $load_before -> $(load), $runs runs, median"
echo
echo "| case | tool | requests/s | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
