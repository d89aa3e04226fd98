#!/usr/bin/env bash
# Issue 13's cases in one run: vdimg bench (-i threads and -i io_uring), qemu-img bench
# (-i threads and -i io_uring) and fio on the raw file holding the same data.
#
#   bench/cache.sh [-b BUILD_DIR] [-m SIZE_MIB] [-c COUNT] [-r RUNS]
#
#   -b BUILD_DIR  a Release build with vdimg (default: build-rel next to this script's repo)
#   -m SIZE_MIB   image size (default 1024)
#   -c COUNT      requests per read run (default 200000; the write case does SIZE/64k)
#   -r RUNS       rounds per case, every tool once per round, alternating (default 3)
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

# One case: every tool once per round, the tools alternating, RUNS rounds; the median
# requests/s of each. A tool is "label|kind|command": kind bench reads qemu-img bench's
# "Run completed in S seconds." (N requests), kind fio reads fio's terse read IOPS.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate_of() {  # KIND N CMD...
  local kind=$1 n=$2; shift 2
  if [[ $kind == fio ]]; then
    "$@" --output-format=terse --terse-version=3 | awk -F';' '{print $8}'
  else
    "$@" | awk -v n="$n" '/Run completed in/ {printf "%.0f\n", n / $4}'
  fi
}
rows=()
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
run_case() {  # CASE N TOOL... (the first tool is the ratios' base)
  local c=$1 n=$2; shift 2
  local tools=("$@") results=() i t
  echo "$c" >&2
  for ((r = 0; r < runs; r++)); do
    for i in "${!tools[@]}"; do
      IFS='|' read -r label kind cmd <<< "${tools[$i]}"
      results[$i]+="$(eval "rate_of $kind $n $cmd") "
    done
  done
  local base=""
  for i in "${!tools[@]}"; do
    IFS='|' read -r label kind cmd <<< "${tools[$i]}"
    local m
    m=$(tr ' ' '\n' <<< "${results[$i]}" | grep . | median)
    [[ -z $base ]] && base=$m
    rows+=("| $c | $label | $m | $(ratio "$m" "$base") |")
  done
}

q=qemu-img
sq="$shm/data.qcow2"
dq="$disk/data.qcow2"
common="-f qcow2 -c $count -s 4k -S $step"
run_case shm-read-4k-d16 "$count" \
  "fio psync randread (raw)|fio|fio --name=r --filename=$shm/data.raw --rw=randread --bs=4k --ioengine=psync --number_ios=$count --size=$size --randrepeat=1" \
  "vdimg bench -i threads|bench|$vdimg bench $common -d 16 -i threads $sq" \
  "qemu-img bench -i threads|bench|$q bench $common -d 16 -i threads $sq" \
  "vdimg bench -i io_uring|bench|$vdimg bench $common -d 16 -i io_uring $sq" \
  "qemu-img bench -i io_uring|bench|$q bench $common -d 16 -i io_uring $sq" \
  "vdimg bench -i threads, VD_NOWAIT=0 (no inline reads)|bench|env VD_NOWAIT=0 $vdimg bench $common -d 16 -i threads $sq"

dd if="$disk/data.raw" iflag=nocache count=0 2>/dev/null || true
dd if="$dq" iflag=nocache count=0 2>/dev/null || true
run_case direct-read-4k-d32 "$count" \
  "fio io_uring --direct=1 randread (raw)|fio|fio --name=r --filename=$disk/data.raw --rw=randread --bs=4k --ioengine=io_uring --direct=1 --iodepth=32 --number_ios=$count --size=$size --randrepeat=1" \
  "vdimg bench -t none -i threads|bench|$vdimg bench $common -d 32 -t none -i threads $dq" \
  "qemu-img bench -t none -i threads|bench|$q bench $common -d 32 -t none -i threads $dq" \
  "vdimg bench -t none -i io_uring|bench|$vdimg bench $common -d 32 -t none -i io_uring $dq" \
  "qemu-img bench -t none -i io_uring|bench|$q bench $common -d 32 -t none -i io_uring $dq"

wn=$((size / 65536))
wr() {  # TOOL AIO: a fresh empty QCOW2, then 64 KiB writes over all of it
  local out=$disk/w.qcow2
  rm -f "$out"
  qemu-img create -q -f qcow2 "$out" "$size"
  "$1" bench -w -f qcow2 -t none -c "$wn" -d 16 -s 64k -S 64k -i "$2" "$out"
}
run_case direct-write-64k "$wn" \
  "qemu-img bench -w -t none -i threads|bench|wr $q threads" \
  "vdimg bench -w -t none -i threads|bench|wr $vdimg threads" \
  "qemu-img bench -w -t none -i io_uring|bench|wr $q io_uring" \
  "vdimg bench -w -t none -i io_uring|bench|wr $vdimg io_uring"

echo
echo "commit $commit, $(nproc) CPUs, load average $load_before -> $(load), $runs rounds (tools alternating), median"
echo
echo "| case | tool | requests/s | ratio to the first row |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
