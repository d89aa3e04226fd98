# shellcheck shell=bash disable=SC2034
# Shared helpers for the NBD client tests (sourced, not run).
#
# Every test takes the server under test as its first argument, or from $VD_NBD, and falls back
# to qemu-nbd: the same scripts run against vd-nbd (ctest passes $<TARGET_FILE:vd-nbd>) and
# against qemu-nbd by hand, which is how each was validated:
#     tests/nbd-clients/clients.sh                 # qemu-nbd
#     tests/nbd-clients/clients.sh build/vd-nbd    # vd-nbd
# The server only ever sees qemu-nbd's command line: --fork --pid-file F -k SOCKET -t [-e N]
# [-r] [-A] [-x NAME] [-f FMT] IMAGE; it is stopped by pid (SIGTERM, then SIGKILL).

set -euo pipefail

SERVER="${1:-${VD_NBD:-qemu-nbd}}"
REFERENCE="${NBD_REFERENCE:-qemu-nbd}"
# nbdsh runs the first python3 on PATH, which must have libnbd's module (Debian's does).
export PATH="/usr/bin:$PATH"
export LC_ALL=C

for tool in qemu-img qemu-io timeout; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done
command -v "$SERVER" >/dev/null || [ -x "$SERVER" ] || { echo "FAIL: no server '$SERVER'"; exit 1; }

# Scratch files under $TMPDIR; sockets need a path under 108 bytes, so they go to a short
# directory under /tmp when $TMPDIR is long.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vd-nbd-test.XXXXXX")"
if [ ${#WORK} -le 60 ]; then SOCKDIR="$WORK"; else SOCKDIR="$(mktemp -d /tmp/vdn.XXXXXX)"; fi
SERVER_PIDS=()
FAILURES=0

nbd_cleanup() {
  local rc=$?
  for pid in "${SERVER_PIDS[@]}"; do kill_pid "$pid"; done
  rm -rf "$WORK"
  [ "$SOCKDIR" = "$WORK" ] || rm -rf "$SOCKDIR"
  exit $rc
}
trap nbd_cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

log() { echo "--- $*"; }
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
die() { echo "FAIL: $*" >&2; exit 1; }
finish() {
  if [ "$FAILURES" -ne 0 ]; then echo "$FAILURES check(s) failed against $SERVER"; exit 1; fi
  echo "all checks passed against $SERVER"
}

# check DESCRIPTION COMMAND...: runs the command, records a failure with its output.
check() {
  local what="$1"; shift
  local out
  if out="$("$@" 2>&1)"; then pass "$what"; else fail "$what"; echo "$out" | tail -20 >&2; fi
}
# check_fails DESCRIPTION COMMAND...: the command must fail.
check_fails() {
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then fail "$what (succeeded)"; else pass "$what"; fi
}

kill_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "warning: server $pid ignored SIGTERM for 5 s, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# start_server NAME BINARY ARGS... : serves on $SOCKDIR/NAME.sock, records $SOCKDIR/NAME.pid.
# The caller gives the image and any of -r -A -e -x -f --object --tls-creds.
start_server() {
  local name="$1" bin="$2"; shift 2
  local sock="$SOCKDIR/$name.sock" pidf="$SOCKDIR/$name.pid" i
  rm -f "$sock" "$pidf"
  if ! timeout 30 "$bin" --fork --pid-file "$pidf" -k "$sock" -t "$@" >"$WORK/$name.log" 2>&1; then
    cat "$WORK/$name.log" >&2
    die "server $bin did not start: $bin $*"
  fi
  for i in $(seq 100); do [ -s "$pidf" ] && [ -S "$sock" ] && break; sleep 0.1; done
  [ -s "$pidf" ] && [ -S "$sock" ] || die "server $bin wrote no pid file or socket"
  SERVER_PIDS+=("$(cat "$pidf")")
}
server_pid() { cat "$SOCKDIR/$1.pid"; }
stop_server() {
  local pidf="$SOCKDIR/$1.pid"
  [ -s "$pidf" ] || return 0
  kill_pid "$(cat "$pidf")"
  rm -f "$pidf" "$SOCKDIR/$1.sock"
}
# stop_servers NAME...: SIGTERM to all at once, then wait for each (servers can take a second).
stop_servers() {
  local n
  for n in "$@"; do [ -s "$SOCKDIR/$n.pid" ] && kill -TERM "$(cat "$SOCKDIR/$n.pid")" 2>/dev/null; done
  for n in "$@"; do stop_server "$n"; done
}
server_alive() { kill -0 "$(server_pid "$1")" 2>/dev/null; }
sock() { echo "$SOCKDIR/$1.sock"; }
# uri NAME [EXPORT]
uri() { echo "nbd+unix:///${2:-}?socket=$SOCKDIR/$1.sock"; }

qio() { timeout 60 qemu-io "$@"; }

# Image chains: holes, zero clusters, data in different layers. All 4 MiB, 64 KiB clusters
# unless said otherwise. Each builder prints the top image's path.
#   chain2_v3:  base.qcow2 v3 <- top.qcow2 v3
#   chain3_v2:  base (compat=0.10) <- mid <- top, all v2 (zero writes become explicit zeroes)
#   chain3_raw: raw base <- qcow2 v3 mid <- qcow2 v3 top with 4 KiB clusters
#   chain2_odd: 3 MiB + 512 bytes (the last cluster partial): qcow2 v3 base with a compressed
#               cluster and data in the last sector <- qcow2 v3 top with 16 KiB clusters
fill_base() {
  qio -f "$2" -c 'write -P 0x11 0 1M' -c 'write -P 0x12 2M 512k' -c 'write -z 3M 256k' \
      -c 'write -P 0x13 3840k 64k' "$1" >/dev/null
}
fill_mid() {
  qio -f qcow2 -c 'write -P 0x21 512k 256k' -c 'write -z 128k 64k' -c 'write -P 0x22 1536k 128k' \
      -c 'write -P 0x23 3M 64k' "$1" >/dev/null
}
fill_top() {
  qio -f qcow2 -c 'write -P 0x31 64k 64k' -c 'write -z 640k 64k' -c 'write -P 0x32 2304k 64k' \
      -c 'write -P 0x33 4032k 64k' -c 'write -z 2M 64k' "$1" >/dev/null
}
chain2_v3() {
  local d="$1/chain2_v3"; mkdir -p "$d"
  qemu-img create -q -f qcow2 -o compat=1.1 "$d/base.qcow2" 4M
  fill_base "$d/base.qcow2" qcow2
  qio -f qcow2 -c 'write -c -P 0x14 2816k 64k' "$d/base.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o compat=1.1 -b base.qcow2 -F qcow2 "$d/top.qcow2"
  fill_top "$d/top.qcow2"
  echo "$d/top.qcow2"
}
chain2_odd() {
  local d="$1/chain2_odd"; mkdir -p "$d"
  qemu-img create -q -f qcow2 -o compat=1.1 "$d/base.qcow2" 3146240
  qio -f qcow2 -c 'write -c -P 0x16 0 64k' -c 'write -P 0x17 1M 128k' -c 'write -P 0x18 3144704 1536' \
      -c 'write -z 2M 128k' "$d/base.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=16384 -b base.qcow2 -F qcow2 "$d/top.qcow2"
  qio -f qcow2 -c 'write -P 0x36 16k 16k' -c 'write -z 1M 16k' -c 'write -P 0x37 3129344 16384' \
      -c 'write -P 0x38 2064k 8k' "$d/top.qcow2" >/dev/null
  echo "$d/top.qcow2"
}
chain3_v2() {
  local d="$1/chain3_v2"; mkdir -p "$d"
  qemu-img create -q -f qcow2 -o compat=0.10 "$d/base.qcow2" 4M
  fill_base "$d/base.qcow2" qcow2
  qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 "$d/mid.qcow2"
  fill_mid "$d/mid.qcow2"
  qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 "$d/top.qcow2"
  fill_top "$d/top.qcow2"
  echo "$d/top.qcow2"
}
chain3_raw() {
  local d="$1/chain3_raw"; mkdir -p "$d"
  qemu-img create -q -f raw "$d/base.raw" 4M
  fill_base "$d/base.raw" raw
  qemu-img create -q -f qcow2 -o compat=1.1 -b base.raw -F raw "$d/mid.qcow2"
  fill_mid "$d/mid.qcow2"
  qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=4096 -b mid.qcow2 -F qcow2 "$d/top.qcow2"
  fill_top "$d/top.qcow2"
  echo "$d/top.qcow2"
}
