#!/usr/bin/env bash
# Real NBD clients against the server under test, on a 2-deep qcow2 v3 chain built here:
# qemu-io, qemu-img (info, map, convert, compare), nbdinfo (--list, --map,
# --map=qemu:allocation-depth, --can multi-conn), nbdcopy out and in, nbdsh with three handles
# (write, flush, read on different connections) and fio's nbd engine with crc32c verification.
#
# Usage: clients.sh [SERVER]   (SERVER: vd-nbd's path; default $VD_NBD, else qemu-nbd)
# NBD_MULTI_EXPORT_ARGS: how the server serves two exports named "one" and "two" from the images
#   {A} and {B} (qemu-nbd serves one export, so the case is skipped unless it is set), e.g.
#   NBD_MULTI_EXPORT_ARGS='-f qcow2 -x one {A} -x two {B}'
. "$(dirname "$0")/lib.sh"
for tool in nbdinfo nbdcopy nbdsh fio; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done

top="$(chain2_v3 "$WORK")"
d="$(dirname "$top")"

log "qemu-io and qemu-img on $(basename "$SERVER"), writable, -e 3"
start_server rw "$SERVER" -e 3 -x vdexp -f qcow2 "$top"
u="$(uri rw vdexp)"
check "qemu-io reads base data through the chain" qio -f raw -c 'read -P 0x11 0 64k' -c 'read -P 0x11 128k 384k' "$u"
check "qemu-io reads top data and zero clusters" qio -f raw -c 'read -P 0x31 64k 64k' -c 'read -P 0 640k 64k' -c 'read -P 0 2M 64k' "$u"
check "qemu-io reads holes as zeroes" qio -f raw -c 'read -P 0 1M 1M' -c 'read -P 0 3M 256k' "$u"
check "qemu-io write, write -z, discard, flush, read back" qio -f raw \
  -c 'write -P 0x41 1M 192k' -c 'write -z 1088k 64k' -c 'write -P 0x42 -f 3136k 4k' -c 'discard 2560k 64k' \
  -c 'aio_write -P 0x43 1280k 4k' -c 'aio_flush' -c 'flush' \
  -c 'read -P 0x41 1M 64k' -c 'read -P 0 1088k 64k' -c 'read -P 0x41 1152k 64k' \
  -c 'read -P 0x42 3136k 4k' -c 'read -P 0x43 1280k 4k' "$u"

info="$(timeout 60 qemu-img info "$u" 2>&1)" || true
if grep -q 'virtual size: 4 MiB (4194304 bytes)' <<<"$info"; then pass "qemu-img info size"; else fail "qemu-img info: $info"; fi
map="$(timeout 60 qemu-img map -f raw --output=json "$u" 2>&1)" || true
total="$(/usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(e["length"] for e in m), any(e["zero"] for e in m), any(e["data"] for e in m))' <<<"$map" 2>&1)" || true
if [ "$total" = "4194304 True True" ]; then pass "qemu-img map covers the disk with data and zero extents"; else fail "qemu-img map: $total $map"; fi
check "qemu-img convert from NBD" timeout 60 qemu-img convert -f raw -O qcow2 "$u" "$WORK/copy.qcow2"
check "qemu-img compare NBD with its copy" timeout 60 qemu-img compare -f raw -F qcow2 "$u" "$WORK/copy.qcow2"
check "qemu-img compare NBD with the chain itself (-U)" timeout 60 qemu-img compare -U -f raw -F qcow2 "$u" "$top"
qio -f qcow2 -c 'write -P 0x77 0 4k' "$WORK/copy.qcow2" >/dev/null
check_fails "qemu-img compare sees a difference" timeout 60 qemu-img compare -f raw -F qcow2 "$u" "$WORK/copy.qcow2"

log "nbdinfo"
list="$(timeout 30 nbdinfo --list "$u" 2>&1)" || true
if grep -q 'export="vdexp"' <<<"$list" && grep -q 'export-size: 4194304' <<<"$list"; then
  pass "nbdinfo --list names the export"; else fail "nbdinfo --list: $list"; fi
check "nbdinfo --can multi-conn with -e 3" timeout 30 nbdinfo --can multi-conn "$u"
check "nbdinfo --can write" timeout 30 nbdinfo --can write "$u"
check "nbdinfo --can flush" timeout 30 nbdinfo --can flush "$u"
check "nbdinfo --can trim" timeout 30 nbdinfo --can trim "$u"
check "nbdinfo --can zero" timeout 30 nbdinfo --can zero "$u"
norm="/usr/bin/python3 $(dirname "$0")/normalize-map.py nbdinfo"
bmap="$(timeout 30 nbdinfo --map "$u" | $norm 2>&1)" || true
# Layout after the writes above: 0x11 data at 0, a top zero cluster at 640k, holes at 1728k.
if awk '{ len += $2 } END { exit len != 4194304 }' <<<"$bmap" \
   && grep -qE '^0 [0-9]+ 0 data$' <<<"$bmap" && grep -q 'hole,zero' <<<"$bmap"; then
  pass "nbdinfo --map (base:allocation)"; else fail "nbdinfo --map: $bmap"; fi

log "nbdcopy out"
check "nbdcopy NBD -> file" timeout 60 nbdcopy "$u" "$WORK/out.raw"
check "qemu-img compare nbdcopy's file with the chain (-U)" timeout 60 qemu-img compare -U -f raw -F qcow2 "$WORK/out.raw" "$top"

log "nbdsh: write on one handle, flush on a second, read on a third"
check "nbdsh three handles" timeout 60 nbdsh -c "
import os
u = '$u'
hs = [nbd.NBD() for _ in range(3)]
for h in hs:
    h.connect_uri(u)
assert hs[0].can_multi_conn(), 'multi-conn not advertised'
data = os.urandom(192 * 1024)
hs[0].pwrite(data, 2560 * 1024)
hs[1].flush()
got = hs[2].pread(len(data), 2560 * 1024)
assert got == data, 'third handle does not see the data written on the first'
# and the other way round, with FUA on the write
hs[2].pwrite(b'\x5a' * 4096, 3 * 1024 * 1024 + 8192, nbd.CMD_FLAG_FUA)
assert hs[0].pread(4096, 3 * 1024 * 1024 + 8192) == b'\x5a' * 4096
for h in hs:
    h.shutdown()
"
check "nbdsh: holes read as hole chunks; WRITE_ZEROES with NO_HOLE and FAST_ZERO; CACHE; TRIM" \
  timeout 60 nbdsh -u "$u" -c "
chunks = []
def chunk(subbuf, offset, status, error):
    chunks.append((offset, len(subbuf), status))
    return 0
# 1344k..2M is allocated nowhere in the chain: the server sends it as a hole (structured reply).
buf = h.pread_structured(65536, 1376256, chunk)
assert buf == bytes(65536), 'hole does not read as zeroes'
assert any(c[2] == nbd.READ_HOLE for c in chunks), 'hole sent as data: %r' % chunks
assert sum(c[1] for c in chunks) == 65536, chunks
# and data as data
chunks.clear()
assert h.pread_structured(65536, 65536, chunk) == b'\\x31' * 65536
assert all(c[2] == nbd.READ_DATA for c in chunks), chunks
# the same read with DF: one chunk
chunks.clear()
if h.can_df():
    h.pread_structured(65536, 0, chunk, nbd.CMD_FLAG_DF)
    assert len(chunks) == 1, chunks
h.pwrite(b'\\x66' * 131072, 3584 * 1024)
h.zero(65536, 3584 * 1024, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 3584 * 1024) == bytes(65536)
assert h.pread(65536, 3648 * 1024) == b'\\x66' * 65536
if h.can_fast_zero():
    try:
        h.zero(65536, 3648 * 1024, nbd.CMD_FLAG_FAST_ZERO)
        assert h.pread(65536, 3648 * 1024) == bytes(65536), 'fast zero left data'
    except nbd.Error as e:
        assert e.errno == 'ENOTSUP', e  # allowed: the zero would not be fast
# (qemu-nbd implements CACHE as copy-on-read prefetch into the top: use a local range)
h.cache(65536, 65536)
h.trim(65536, 3648 * 1024)
h.flush()
h.shutdown()
"
stop_server rw
check "qemu-img check clean after the writes" qemu-img check -q "$top"
check "writes reached the image" qio -f qcow2 -c 'read -P 0x41 1M 64k' -c 'read -P 0x5a 3080k 4k' "$top"

log "allocation depth (-A, read-only)"
start_server ro "$SERVER" -r -A -f qcow2 "$top"
u="$(uri ro)"
depth="$(timeout 30 nbdinfo --map=qemu:allocation-depth "$u" | $norm 2>&1)" || true
# base data at 0, top data at 64k, nothing in the chain from 1344k to 2M.
# (extents of one kind merged: how a server splits them is its own choice)
if grep -qx '0 65536 2 backing depth 2' <<<"$depth" \
   && grep -qx '65536 65536 1 local' <<<"$depth" \
   && grep -qx '1376256 720896 0 absent' <<<"$depth"; then
  pass "nbdinfo --map=qemu:allocation-depth"; else fail "allocation depth map: $depth"; fi
check_fails "read-only export refuses qemu-io writes" qio -f raw -c 'write 0 4k' "$u"
check "nbdinfo --can read-only" timeout 30 nbdinfo --is read-only "$u"
stop_server ro

if [ -n "${NBD_MULTI_EXPORT_ARGS:-}" ]; then
  log "several exports"
  qemu-img create -q -f qcow2 "$WORK/a.qcow2" 1M
  qemu-img create -q -f qcow2 "$WORK/b.qcow2" 2M
  args="${NBD_MULTI_EXPORT_ARGS//\{A\}/$WORK/a.qcow2}"
  args="${args//\{B\}/$WORK/b.qcow2}"
  # shellcheck disable=SC2086
  start_server multi "$SERVER" $args
  list="$(timeout 30 nbdinfo --list "$(uri multi one)" 2>&1)" || true
  if grep -q 'export="one"' <<<"$list" && grep -q 'export="two"' <<<"$list"; then
    pass "nbdinfo --list shows both exports"; else fail "nbdinfo --list: $list"; fi
  size="$(timeout 30 nbdinfo --size "$(uri multi two)" 2>&1)" || true
  [ "$size" = 2097152 ] && pass "second export's size" || fail "second export size: $size"
  stop_server multi
else
  echo "skip: several exports (qemu-nbd serves one; set NBD_MULTI_EXPORT_ARGS)"
fi

log "nbdcopy in, fio with crc32c verification (allocating writes on an empty overlay)"
qemu-img create -q -f qcow2 -b "$d/base.qcow2" -F qcow2 "$WORK/empty.qcow2"
head -c 4M /dev/urandom >"$WORK/in.raw"
start_server in "$SERVER" -e 4 -f qcow2 "$WORK/empty.qcow2"
u="$(uri in)"
check "nbdcopy file -> NBD" timeout 60 nbdcopy "$WORK/in.raw" "$u"
check "nbdcopy NBD -> file after writing" timeout 60 nbdcopy "$u" "$WORK/back.raw"
check "data read back equals data written" cmp "$WORK/in.raw" "$WORK/back.raw"
stop_server in
check "qemu-img check clean after nbdcopy" qemu-img check -q "$WORK/empty.qcow2"
check "qemu-img compare the image with nbdcopy's input" qemu-img compare -f raw -F qcow2 "$WORK/in.raw" "$WORK/empty.qcow2"

qemu-img create -q -f qcow2 "$WORK/fio.qcow2" 8M
start_server fio "$SERVER" -e 4 -f qcow2 "$WORK/fio.qcow2"
fio_out="$WORK/fio.out"
if timeout 120 fio --name=verify --ioengine=nbd --uri="$(uri fio)" --rw=randwrite --bs=4k \
     --iodepth=16 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 \
     --output="$fio_out" >/dev/null 2>&1 && grep -q 'err= 0' "$fio_out"; then
  pass "fio randwrite depth 16 with crc32c verify"; else fail "fio verify"; cat "$fio_out" >&2 || true; fi
if timeout 120 fio --name=mixed --ioengine=nbd --uri="$(uri fio)" --rw=randrw --bs=4k-64k \
     --iodepth=8 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 \
     --output="$fio_out" >/dev/null 2>&1 && grep -q 'err= 0' "$fio_out"; then
  pass "fio mixed sizes with crc32c verify"; else fail "fio mixed verify"; cat "$fio_out" >&2 || true; fi
server_alive fio && pass "server alive after fio" || fail "server died under fio"
stop_server fio
check "qemu-img check clean after fio" qemu-img check -q "$WORK/fio.qcow2"

finish
