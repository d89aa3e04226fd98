#!/usr/bin/env bash
# vd-nbd against qemu-nbd on the same images in the same run (issue 11's measure):
#   randread   fio --ioengine=nbd, 4 KiB random reads at depth 16, allocated image, read-only
#   randwrite  the same, random writes over the allocated image (no allocation)
#   alloc      4 KiB random writes at depth 16 on an empty image (most allocate a cluster);
#              a fixed amount (-a), a fresh image each time
#   seqread    nbdcopy --request-size=1M EXPORT null: (1 MiB sequential reads; nbdcopy uses
#              up to 4 connections when the server advertises multi-conn)
#
#   bench/nbd.sh [-s SERVER] [-q REFERENCE] [-z SIZE] [-t SECONDS] [-r ROUNDS] [-a ALLOC_IO]
#                [-d DIR]
#
#   -s SERVER     the server measured (default $VD_NBD, else qemu-nbd): build/vd-nbd
#   -q REFERENCE  the server it is compared with (default qemu-nbd)
#   -z SIZE       image size (default 1G); images are qcow2, 64 KiB clusters, in DIR
#   -t SECONDS    fio runtime per randread/randwrite run (default 5)
#   -r ROUNDS     rounds; each runs every case on both servers, alternating which goes first
#                 (default 3)
#   -a ALLOC_IO   bytes the alloc case writes (default 128M)
#   -d DIR        where the images live (default /dev/shm: the page cache is not measured)
# Both servers get the same options: --fork --pid-file F -k SOCKET -t -e 4 -f qcow2 [-r].
# Prints each run, then per case the median (and min-max) of each server and the ratio
# SERVER/REFERENCE of the medians (above 1: SERVER is faster; equal to REFERENCE's time /
# SERVER's time), the load average before and after, and the commit. Validate the script with
# qemu-nbd on both sides (ratios near 1 on a quiet machine): bench/nbd.sh -s qemu-nbd.
set -euo pipefail
export LC_ALL=C PATH="/usr/bin:$PATH"

server="${VD_NBD:-qemu-nbd}"
reference=qemu-nbd
size=1G
runtime=5
rounds=3
alloc_io=128M
dir=/dev/shm
while getopts "s:q:z:t:r:a:d:h" opt; do
  case $opt in
    s) server=$OPTARG ;;
    q) reference=$OPTARG ;;
    z) size=$OPTARG ;;
    t) runtime=$OPTARG ;;
    r) rounds=$OPTARG ;;
    a) alloc_io=$OPTARG ;;
    d) dir=$OPTARG ;;
    *) sed -n '2,25p' "$0"; exit 2 ;;
  esac
done
for tool in qemu-img qemu-io fio nbdcopy /usr/bin/python3; do
  command -v "$tool" >/dev/null || { echo "nbd.sh: needs $tool" >&2; exit 1; }
done
command -v "$server" >/dev/null || { echo "nbd.sh: no server $server" >&2; exit 1; }

work="$(mktemp -d "$dir/vd-nbd-bench.XXXXXX")"
sockdir="$(mktemp -d /tmp/vdnb.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work" "$sockdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

start() {  # start BINARY ARGS... : serves on $sockdir/s.sock
  rm -f "$sockdir/s.sock" "$sockdir/s.pid"
  timeout 60 "$@" --fork --pid-file "$sockdir/s.pid" -k "$sockdir/s.sock" -t -e 4 >/dev/null
  pids+=("$(cat "$sockdir/s.pid")")
}
stop() {
  local pid
  pid="$(cat "$sockdir/s.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
uri="nbd+unix:///?socket=$sockdir/s.sock"

# fio_iops RW [fio options...]: prints the job's IOPS.
fio_iops() {
  local rw="$1"; shift
  timeout $((runtime + 120)) fio --name=bench --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k \
    --iodepth=16 --output-format=json --output="$work/fio.json" "$@" >/dev/null
  /usr/bin/python3 -c '
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
if job["error"]:
    sys.exit("fio error %d" % job["error"])
print("%.0f" % (job["read"]["iops"] + job["write"]["iops"]))' "$work/fio.json"
}

echo "preparing a $size allocated image in $dir"
qemu-img create -q -f qcow2 "$work/full.qcow2" "$size"
timeout 900 qemu-io -f qcow2 -c "write -P 0x5a 0 $size" "$work/full.qcow2" >/dev/null
bytes="$(qemu-img info --output=json "$work/full.qcow2" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')"

# run CASE BINARY: prints the case's rate (IOPS, or MiB/s for seqread); stops at a failure.
run() {
  local rate
  if ! rate="$(run_case "$@")"; then
    stop
    echo "nbd.sh: $1 failed on $2" >&2
    exit 1
  fi
  stop
  echo "$rate"
}
run_case() {
  local case="$1" bin="$2" t0 t1
  case "$case" in
    randread)
      start "$bin" -r -f qcow2 "$work/full.qcow2"
      fio_iops randread --readonly --runtime="$runtime" --time_based
      ;;
    randwrite)
      start "$bin" -f qcow2 "$work/full.qcow2"
      fio_iops randwrite --runtime="$runtime" --time_based
      ;;
    alloc)
      rm -f "$work/empty.qcow2"
      qemu-img create -q -f qcow2 "$work/empty.qcow2" "$size"
      start "$bin" -f qcow2 "$work/empty.qcow2"
      fio_iops randwrite --io_size="$alloc_io" --randrepeat=0
      ;;
    seqread)
      start "$bin" -r -f qcow2 "$work/full.qcow2"
      t0="$(date +%s.%N)"
      timeout 600 nbdcopy --request-size=1048576 "$uri" null:
      t1="$(date +%s.%N)"
      /usr/bin/python3 -c "print('%.0f' % ($bytes / 1048576 / ($t1 - $t0)))"
      ;;
  esac
}

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
cases=(randread randwrite alloc seqread)
declare -A results=()
declare -A bin_of=([ref]="$reference" [test]="$server")
for round in $(seq "$rounds"); do
  if ((round % 2)); then sides=(ref test); else sides=(test ref); fi
  for case in "${cases[@]}"; do
    for side in "${sides[@]}"; do
      bin="${bin_of[$side]}"
      rate="$(run "$case" "$bin")" || exit 1
      printf 'round %d  %-9s %-4s %-30s %s\n' "$round" "$case" "$side" "$(basename "$bin")" "$rate"
      results[$case.$side]+="$rate "
    done
  done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
spread() { tr ' ' '\n' | grep . | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
printf '%-10s %-6s %10s %-15s %10s %-15s %7s\n' case unit "$(basename "$reference")" "(min-max)" "$(basename "$server")" "(min-max)" ratio
for case in "${cases[@]}"; do
  unit=IOPS; [ "$case" = seqread ] && unit=MiB/s
  r="$(median <<<"${results[$case.ref]}")"
  t="$(median <<<"${results[$case.test]}")"
  printf '%-10s %-6s %10s %-15s %10s %-15s %7s\n' "$case" "$unit" "$r" "($(spread <<<"${results[$case.ref]}"))" \
    "$t" "($(spread <<<"${results[$case.test]}"))" "$(awk -v t="$t" -v r="$r" 'BEGIN { printf "%.2fx", t / r }')"
done
echo
echo "image: $size qcow2 in $dir; fio 4 KiB depth 16, ${runtime} s per run; alloc: $alloc_io per run; $rounds rounds (medians)"
echo "ratio: $(basename "$server") rate / $(basename "$reference") rate (= $(basename "$reference") time / $(basename "$server") time)"
echo "load average before: $load_before  after: $load_after  ($(nproc) cores)"
echo "commit: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$(dirname "$0")" diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
