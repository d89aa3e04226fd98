#!/usr/bin/env bash
# Hostile clients (hostile.py, raw sockets): bad magic, truncated handshakes, oversized option
# lengths and names, requests past the end, over 32 MiB, overflowing, unknown commands and
# flags, a write on a read-only export, more connections than -e allows. Each gets an error
# reply or a disconnect; after each, the server is alive and serves a well-behaved client.
# Finally real clients (qemu-io, nbdinfo) still work and the image is clean.
#
# Usage: hostile.sh [SERVER]   (default $VD_NBD, else qemu-nbd)
. "$(dirname "$0")/lib.sh"
command -v nbdinfo >/dev/null || { echo "SKIP: nbdinfo missing"; exit 77; }

qemu-img create -q -f qcow2 "$WORK/base.qcow2" 4M
qio -f qcow2 -c 'write -P 0x11 0 4M' "$WORK/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/top.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/ro.qcow2"

start_server rw "$SERVER" -e 2 -x hostile -f qcow2 "$WORK/top.qcow2"
start_server ro "$SERVER" -r -x hostile -f qcow2 "$WORK/ro.qcow2"
if timeout 240 /usr/bin/python3 "$(dirname "$0")/hostile.py" "$(sock rw)" "$(sock ro)" hostile \
     "$(server_pid rw)" "$(server_pid ro)"; then
  pass "hostile clients"
else
  fail "hostile clients"
fi
server_alive rw && server_alive ro && pass "both servers alive" || fail "a server died"
check "qemu-io still reads and writes" qio -f raw -c 'read -P 0x11 0 64k' -c 'write -P 0x22 64k 64k' -c 'read -P 0x22 64k 64k' "$(uri rw hostile)"
check "nbdinfo still answers" timeout 30 nbdinfo --size "$(uri ro hostile)"
stop_servers rw ro
check "qemu-img check clean" qemu-img check -q "$WORK/top.qcow2"
check "read-only image untouched" qio -f qcow2 -c 'read -P 0x11 0 4M' "$WORK/ro.qcow2"
check "data written by the good client, the rest unchanged" qio -f qcow2 -c 'read -P 0x11 0 64k' -c 'read -P 0x22 64k 64k' -c 'read -P 0x11 128k 3968k' "$WORK/top.qcow2"

finish
