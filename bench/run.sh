#!/usr/bin/env bash
# vdimg against qemu-img, side by side on the same inputs in the same run.
#
#   bench/run.sh [-b BUILD_DIR] [-m SIZE_MIB] [-r RUNS] [-c COUNT] [-o ONLY] [-k]
#
#   -b BUILD_DIR  where vdimg was built (default: build-rel next to this script's repo);
#                 build it with -DCMAKE_BUILD_TYPE=Release, without sanitizers
#   -m SIZE_MIB   size of the large images (default 1024); the compressible input is a
#                 quarter of it (256 MiB by default)
#   -r RUNS       runs per tool and case, alternating vdimg and qemu-img (default 5)
#   -c COUNT      requests of the read benches (default 200000)
#   -o ONLY       run only the cases whose name contains ONLY (e.g. -o bench)
#   -k            keep the inputs in BENCH_DIR for the next run (they are reused when present)
#
# Inputs go to $BENCH_DIR (default: a fresh directory under /tmp, removed at exit unless -k).
# Prints a table: per case the median wall time of each tool, the spread (min-max), the
# median CPU time (user+sys) and the vdimg/qemu-img ratios; a ratio below 1 means vdimg is
# faster. Wall times on a shared machine move with the load: the load average is printed
# before and after, and CPU time is the steadier number to compare.
#
# All runs are warm-cache (the inputs fit in RAM and caches are not dropped), and neither
# tool is asked for O_DIRECT: both use their default cache modes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build-rel"
size_mib=1024
runs=5
count=200000
only=""
keep=0
while getopts "b:m:r:c:o:k" opt; do
  case $opt in
    b) build=$OPTARG ;;
    m) size_mib=$OPTARG ;;
    r) runs=$OPTARG ;;
    c) count=$OPTARG ;;
    o) only=$OPTARG ;;
    k) keep=1 ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
done
vdimg=$(cd "$build" && pwd)/vdimg
[[ -x $vdimg ]] || { echo "no vdimg in $build (build the vdimg target first)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img not found" >&2; exit 1; }

if [[ -n ${BENCH_DIR:-} ]]; then
  dir=$BENCH_DIR
  mkdir -p "$dir"
else
  dir=$(mktemp -d /tmp/vd-bench.XXXXXX)
  [[ $keep == 1 ]] || trap 'rm -rf "$dir"' EXIT
fi
size=$((size_mib << 20))
text_size=$((size / 4))

# ---- inputs --------------------------------------------------------------------------------

# Deterministic pseudo-random bytes, fast: AES-CTR over zeros with a fixed key.
random_bytes() {  # BYTES SEED
  { openssl enc -aes-128-ctr -nosalt -pass "pass:$2" -pbkdf2 -iter 1 </dev/zero 2>/dev/null |
    head -c "$1"; } || true
}

# Real source text (C/C++ headers), repeated to size: compresses about 4:1 per 64 KiB cluster.
text_bytes() {  # BYTES
  find /usr/include -name '*.h' -type f -size -512k 2>/dev/null | LC_ALL=C sort | awk 'NR <= 4000' >"$dir/.list"
  local have reps i
  have=$(xargs -a "$dir/.list" cat | wc -c)
  reps=$(($1 / have + 1))
  { for ((i = 0; i < reps; i++)); do xargs -a "$dir/.list" cat; done 2>/dev/null | head -c "$1"; } || true
}

make_inputs() {
  if [[ ! -f $dir/full.raw || $(stat -c %s "$dir/full.raw") != "$size" ]]; then
    echo "creating $dir/full.raw ($size_mib MiB random)" >&2
    random_bytes "$size" full >"$dir/full.raw"
    rm -f "$dir/full.qcow2" "$dir/mixed.raw"
  fi
  if [[ ! -f $dir/full.qcow2 ]]; then
    qemu-img convert -f raw -O qcow2 -o cluster_size=64k "$dir/full.raw" "$dir/full.qcow2"
  fi
  if [[ ! -f $dir/mixed.raw ]]; then
    # Random data with zero runs written as zeros (not holes), so both tools must detect them:
    # every 16 MiB, 4 MiB of zeros; every 1 MiB, one 64 KiB zero cluster; and scattered 4 KiB.
    echo "creating $dir/mixed.raw (random with zero ranges)" >&2
    cp "$dir/full.raw" "$dir/mixed.raw"
    local mib=$((size >> 20)) i
    for ((i = 0; i < mib; i += 16)); do
      dd if=/dev/zero of="$dir/mixed.raw" bs=1M seek=$((i + 4)) count=4 conv=notrunc status=none
    done
    for ((i = 0; i < mib; i++)); do
      dd if=/dev/zero of="$dir/mixed.raw" bs=64k seek=$((i * 16 + 7)) count=1 conv=notrunc status=none
      dd if=/dev/zero of="$dir/mixed.raw" bs=4k seek=$((i * 256 + 200)) count=1 conv=notrunc status=none
    done
  fi
  if [[ ! -f $dir/text.raw || $(stat -c %s "$dir/text.raw") != "$text_size" ]]; then
    echo "creating $dir/text.raw ($((text_size >> 20)) MiB of header text)" >&2
    text_bytes "$text_size" >"$dir/text.raw"
  fi
}

# ---- timing --------------------------------------------------------------------------------

# Runs one command, appends "wall cpu inner" to FILE. inner is the time the tool prints
# ("Run completed in X seconds") for bench, else the wall time.
time_one() {  # FILE CMD...
  local file=$1; shift
  local t0 t1 out tf
  tf=$(mktemp)
  t0=$(date +%s.%N)
  out=$(/usr/bin/time -f "%U %S" -o "$tf" "$@" 2>&1) || { echo "FAILED: $*" >&2; echo "$out" >&2; exit 1; }
  t1=$(date +%s.%N)
  local inner wall cpu
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  cpu=$(awk '{print $1 + $2}' "$tf")
  inner=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
  rm -f "$tf"
  echo "$wall $cpu ${inner:-$wall}" >>"$file"
}

# median of column COL of FILE; "min-max" with spread
col_median() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col_range() { awk -v c="$2" '{print $c}' "$1" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

results=()
# A case: NAME, then a setup function run before every single run (may be :), then the
# vdimg command and the qemu-img command with @IMG@/@OUT@ placeholders already expanded.
run_case() {  # NAME SETUP VDIMG_CMD -- QEMU_CMD
  local name=$1 setup=$2; shift 2
  [[ -z $only || $name == *"$only"* ]] || return 0
  local vcmd=() qcmd=() into=v
  for a in "$@"; do
    if [[ $a == -- && $into == v ]]; then into=q; continue; fi
    if [[ $into == v ]]; then vcmd+=("$a"); else qcmd+=("$a"); fi
  done
  local vf="$dir/.t.$name.vdimg" qf="$dir/.t.$name.qemu"
  rm -f "$vf" "$qf"
  echo "running $name ($runs x 2)" >&2
  local i
  for ((i = 0; i < runs; i++)); do
    # Alternate which tool goes first so neither always inherits the other's cache state.
    if ((i % 2 == 0)); then
      $setup; time_one "$vf" "${vcmd[@]}"
      $setup; time_one "$qf" "${qcmd[@]}"
    else
      $setup; time_one "$qf" "${qcmd[@]}"
      $setup; time_one "$vf" "${vcmd[@]}"
    fi
  done
  results+=("$name $vf $qf")
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }

# One row per case: whole-process wall time (median, spread) of each tool and their ratio,
# the tool's own timing for bench cases, and CPU time.
print_table() {
  printf '\n%-22s %8s %11s %8s %11s %6s | %7s %7s %6s | %6s %6s %6s\n' case vdimg spread \
    qemu-img spread ratio v_inner q_inner ratio v_cpu q_cpu ratio
  local r name vf qf vw qw vi qi vc qc
  for r in "${results[@]}"; do
    read -r name vf qf <<<"$r"
    vw=$(col_median "$vf" 1); qw=$(col_median "$qf" 1)
    vi=$(col_median "$vf" 3); qi=$(col_median "$qf" 3)
    vc=$(col_median "$vf" 2); qc=$(col_median "$qf" 2)
    printf '%-22s %8.3f %11s %8.3f %11s %6s | %7.3f %7.3f %6s | %6.2f %6.2f %6s\n' "$name" \
      "$vw" "$(col_range "$vf" 1)" "$qw" "$(col_range "$qf" 1)" "$(ratio "$vw" "$qw")" \
      "$vi" "$qi" "$(ratio "$vi" "$qi")" "$vc" "$qc" "$(ratio "$vc" "$qc")"
  done
  echo
  echo "seconds; medians of $runs runs per tool; spread = min-max; ratio = vdimg/qemu-img"
  echo "(below 1: vdimg faster). inner = the tool's own 'Run completed' time for bench"
  echo "(requests only, no open/close), else the same as wall. cpu = user+sys, whole process."
}

# ---- cases ---------------------------------------------------------------------------------

clean_out() { rm -f "$dir/out.v" "$dir/out.q"; }
fresh_empty() {
  rm -f "$dir/empty.v.qcow2" "$dir/empty.q.qcow2"
  qemu-img create -q -f qcow2 -o cluster_size=64k "$dir/empty.v.qcow2" "$size"
  cp "$dir/empty.v.qcow2" "$dir/empty.q.qcow2"
}

main() {
  make_inputs
  echo "machine: $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)," \
    "$(awk -F': ' '/^model name/ && !n++ {print $2}' /proc/cpuinfo)"
  echo "qemu-img: $(qemu-img --version | head -1); vdimg: $vdimg"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  local full=$dir/full.qcow2
  # Random 4 KiB reads: a step of an odd number of 4 KiB blocks visits distinct aligned
  # blocks in a scattered order (the image holds 2^k blocks), wrapping like qemu-img does.
  local rstep=$((4096 * 40503))
  local wcount=$((size / 65536))

  run_case convert-qcow2-to-raw clean_out \
    "$vdimg" convert -f qcow2 -O raw "$full" "$dir/out.v" -- \
    qemu-img convert -f qcow2 -O raw "$full" "$dir/out.q"
  run_case bench-read-random : \
    "$vdimg" bench -f qcow2 -c "$count" -d 64 -s 4k -S "$rstep" "$full" -- \
    qemu-img bench -f qcow2 -c "$count" -d 64 -s 4k -S "$rstep" "$full"
  run_case bench-read-seq : \
    "$vdimg" bench -f qcow2 -c "$count" -d 64 -s 4k -S 4k "$full" -- \
    qemu-img bench -f qcow2 -c "$count" -d 64 -s 4k -S 4k "$full"
  run_case convert-raw-to-qcow2 clean_out \
    "$vdimg" convert -f raw -O qcow2 "$dir/mixed.raw" "$dir/out.v" -- \
    qemu-img convert -f raw -O qcow2 "$dir/mixed.raw" "$dir/out.q"
  run_case convert-compress clean_out \
    "$vdimg" convert -c -f raw -O qcow2 "$dir/text.raw" "$dir/out.v" -- \
    qemu-img convert -c -f raw -O qcow2 "$dir/text.raw" "$dir/out.q"
  # Allocating writes: one request per 64 KiB cluster, so every request allocates.
  run_case bench-write-alloc-4k fresh_empty \
    "$vdimg" bench -w -f qcow2 -c "$wcount" -d 64 -s 4k -S 64k "$dir/empty.v.qcow2" -- \
    qemu-img bench -w -f qcow2 -c "$wcount" -d 64 -s 4k -S 64k "$dir/empty.q.qcow2"
  run_case bench-write-alloc-64k fresh_empty \
    "$vdimg" bench -w -f qcow2 -c "$wcount" -d 64 -s 64k -S 64k "$dir/empty.v.qcow2" -- \
    qemu-img bench -w -f qcow2 -c "$wcount" -d 64 -s 64k -S 64k "$dir/empty.q.qcow2"

  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  print_table
  check_outputs
}

# The outputs of the last run must be what qemu-img made, and clean: a fast wrong answer is
# no answer. (Only in full runs: -o skips these.)
check_outputs() {
  [[ -z $only ]] || return 0
  fresh_empty
  "$vdimg" bench -q -w -f qcow2 -c "$wcount" -d 64 -s 4k -S 64k --pattern=90 \
    "$dir/empty.v.qcow2" >/dev/null
  qemu-img check -q "$dir/empty.v.qcow2" || echo "WARNING: qemu-img check fails on vdimg bench -w output"
  clean_out
  "$vdimg" convert -f raw -O qcow2 "$dir/mixed.raw" "$dir/out.v"
  qemu-img check -q "$dir/out.v" || echo "WARNING: qemu-img check fails on vdimg convert -O qcow2 output"
  qemu-img compare -q "$dir/mixed.raw" "$dir/out.v" || echo "WARNING: convert -O qcow2 output differs"
  clean_out
  "$vdimg" convert -c -f raw -O qcow2 "$dir/text.raw" "$dir/out.v"
  qemu-img check -q "$dir/out.v" || echo "WARNING: qemu-img check fails on vdimg convert -c output"
  qemu-img compare -q "$dir/text.raw" "$dir/out.v" || echo "WARNING: convert -c output differs"
  echo "vdimg convert -c output: $(du -m "$dir/out.v" | cut -f1) MiB;" \
    "qemu-img's: $(qemu-img convert -c -f raw -O qcow2 "$dir/text.raw" "$dir/out.q" && du -m "$dir/out.q" | cut -f1) MiB"
  clean_out
}

main
