#!/usr/bin/env bash
# A guest boots on the server: qemu-system-x86_64 -accel tcg with Debian 12's kernel and a
# busybox initramfs (guest/prepare-guest.sh), its virtio-blk disk a -blockdev driver=nbd on the
# server under test, which serves a 2-deep qcow2 chain. The guest (guest/guest-init.sh) checks
# the host's patterns through both layers, writes (allocating, whole-cluster and partial-cluster
# with O_DIRECT and fsync), flushes, discards, reads back and reports on the serial console.
# Afterwards: the server stops, `qemu-img check` is clean, the data is there through the chain
# (qemu-io read -P), and the base is untouched.
#
# Usage: guest-boot.sh [SERVER]   (default $VD_NBD, else qemu-nbd)
# NBD_GUEST_CACHE: where the kernel and initramfs are kept (ctest: the build tree), default
#   ${XDG_CACHE_HOME:-~/.cache}/vd-nbd-guest. The first run fetches the kernel package with apt.
. "$(dirname "$0")/lib.sh"
command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 missing"; exit 77; }
cache="${NBD_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vd-nbd-guest}"
# Several tests may prepare the guest at once (ctest -j): one at a time.
mkdir -p "$cache"
(
  flock -w 900 9 || die "waited 15 minutes for $cache/lock"
  "$(dirname "$0")/guest/prepare-guest.sh" "$cache"
) 9>"$cache/lock" || die "could not prepare the guest"

# The chain: keep in step with guest/guest-init.sh.
qemu-img create -q -f qcow2 "$WORK/base.qcow2" 8M
qio -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x11 4M 1M' "$WORK/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/top.qcow2"
qio -f qcow2 -c 'write -P 0x22 1M 512k' "$WORK/top.qcow2" >/dev/null
cp "$WORK/base.qcow2" "$WORK/base.orig.qcow2"

# NBD_GUEST_SERVER_ARGS: more server options, e.g. --discard=unmap for qemu-nbd (which ignores
# trims by default; the test then sees the discarded range read as zeroes).
# shellcheck disable=SC2086
start_server guest "$SERVER" ${NBD_GUEST_SERVER_ARGS:-} -x vd -f qcow2 "$WORK/top.qcow2"
console="$WORK/console.log"
start=$(date +%s)
# -no-reboot with panic=-1: a panic ends qemu at once instead of hanging until the timeout.
timeout 150 qemu-system-x86_64 -accel tcg -m 256 -nodefaults -no-user-config -display none \
  -no-reboot -serial "file:$console" \
  -kernel "$cache/vmlinuz" -initrd "$cache/initramfs.cpio" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
  -blockdev "driver=nbd,node-name=disk0,server.type=unix,server.path=$(sock guest),export=vd,discard=unmap" \
  -device virtio-blk-pci,drive=disk0 </dev/null >"$WORK/qemu.log" 2>&1 || echo "qemu exited with $?"
echo "guest ran $(( $(date +%s) - start )) s"
result="$(grep -a 'VD-GUEST-RESULT:' "$console" | head -1 | tr -d '\r')" || true
if [[ "$result" == "VD-GUEST-RESULT: ok"* ]]; then
  pass "guest: ${result#VD-GUEST-RESULT: }"
else
  fail "guest reported: '${result:-nothing}'"
  echo "--- serial console:" >&2; tail -40 "$console" >&2 || true
  echo "--- qemu:" >&2; cat "$WORK/qemu.log" >&2 || true
fi
server_alive guest && pass "server alive after the guest" || fail "server died"
stop_server guest

check "qemu-img check clean" qemu-img check -q "$WORK/top.qcow2"
check "the guest's writes are in the chain" qio -f qcow2 \
  -c 'read -P 0x33 2M 1M' -c 'read -P 0x44 512k 64k' -c 'read -P 0x55 700k 4k' \
  -c 'read -P 0x11 576k 124k' -c 'read -P 0x11 704k 320k' -c 'read -P 0x22 1M 512k' \
  -c 'read -P 0 6M 1M' "$WORK/top.qcow2"
case "$result" in
  *discard=zero*) check "the discarded range reads as zeroes on the host too" qio -f qcow2 -c 'read -P 0 4M 1M' "$WORK/top.qcow2" ;;
  *discard=kept*) check "the discarded range kept its data on the host too" qio -f qcow2 -c 'read -P 0x11 4M 1M' "$WORK/top.qcow2" ;;
esac
check "the base is untouched" qemu-img compare -q "$WORK/base.orig.qcow2" "$WORK/base.qcow2"
check "qemu-img check clean (base)" qemu-img check -q "$WORK/base.qcow2"

finish
