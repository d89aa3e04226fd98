#!/usr/bin/env bash
# Shutdown: SIGTERM and SIGINT in the middle of fio's writes stop the server within 10 s with
# exit status 0 and leave a clean image (`qemu-img check` 0); writes acknowledged before the
# signal, never flushed by the client, are in the image afterwards. kill -9 in the middle of
# allocating writes leaves at most leaks (`qemu-img check` 0 or 3), three times at different
# moments. Here the server runs in the foreground as the test's child (no --fork), so that its
# exit status can be read; everything else is as in the other tests.
#
# Usage: shutdown.sh [SERVER]   (default $VD_NBD, else qemu-nbd)
. "$(dirname "$0")/lib.sh"
for tool in fio nbdsh; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done

# run_foreground NAME IMAGE: the server as a child of this shell; sets $child.
run_foreground() {
  local s="$SOCKDIR/$1.sock"
  rm -f "$s"
  "$SERVER" -k "$s" -t -e 4 -f qcow2 "$2" >"$WORK/$1.log" 2>&1 &
  child=$!
  SERVER_PIDS+=("$child")
  for _ in $(seq 100); do [ -S "$s" ] && return 0; sleep 0.1; done
  die "server did not create $s"
}
# wait_exit PID: waits up to 10 s for the child (not in a subshell: only this shell can
# reap it); sets $rc to its exit status, or "hung".
wait_exit() {
  rc=hung
  for _ in $(seq 100); do
    if ! kill -0 "$1" 2>/dev/null || [ "$(cut -d" " -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]; then
      rc=0
      wait "$1" 2>/dev/null || rc=$?
      return
    fi
    sleep 0.1
  done
}
fio_writes() {  # fio_writes SOCKET_NAME: random writes until the server goes away (<= 30 s)
  timeout 30 fio --name=w --ioengine=nbd --uri="$(uri "$1")" --rw=randwrite --bs=4k-64k \
    --iodepth=16 --size=16M --time_based --runtime=20 --output="$WORK/fio-$1.out" >/dev/null 2>&1 || true
}

for sig in TERM INT; do
  log "SIG$sig during writes"
  img="$WORK/sig$sig.qcow2"
  qemu-img create -q -f qcow2 "$img" 16M
  run_foreground "sig$sig" "$img"
  fio_writes "sig$sig" &
  fio_pid=$!
  sleep 1.5
  kill "-$sig" "$child"
  wait_exit "$child"
  [ "$rc" = 0 ] && pass "SIG$sig: server exits 0 within 10 s" || fail "SIG$sig: server exit status $rc"
  kill_pid "$child"
  wait "$fio_pid" 2>/dev/null || true
  check "SIG$sig: qemu-img check clean" qemu-img check -q "$img"
done

log "acknowledged writes survive SIGTERM without a flush"
img="$WORK/ack.qcow2"
qemu-img create -q -f qcow2 "$img" 16M
run_foreground ack "$img"
check "writes acknowledged" timeout 30 nbdsh -u "$(uri ack)" -c "
h.pwrite(b'\x6b' * 65536, 8 * 1024 * 1024)
h.pwrite(b'\x6c' * 4096, 12 * 1024 * 1024 + 4096)
"
kill -TERM "$child"
wait_exit "$child"
[ "$rc" = 0 ] && pass "server exits 0" || fail "server exit status $rc"
check "qemu-img check clean" qemu-img check -q "$img"
check "acknowledged data is in the image" qio -f qcow2 -c 'read -P 0x6b 8M 64k' -c 'read -P 0x6c 12292k 4k' -c 'read -P 0 12M 4k' "$img"

for delay in 0.5 1.2 2.5; do
  log "kill -9 after $delay s of allocating writes"
  img="$WORK/kill.qcow2"
  rm -f "$img"
  qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" 16M
  run_foreground "kill" "$img"
  fio_writes kill &
  fio_pid=$!
  sleep "$delay"
  kill -KILL "$child"
  wait "$child" 2>/dev/null || true
  wait "$fio_pid" 2>/dev/null || true
  rc=0
  qemu-img check "$img" >"$WORK/check.out" 2>&1 || rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 3 ]; then
    pass "kill -9 after $delay s: qemu-img check $rc ($([ "$rc" = 0 ] && echo clean || echo leaks only))"
  else
    fail "kill -9 after $delay s: qemu-img check exit $rc"; cat "$WORK/check.out" >&2
  fi
done

finish
