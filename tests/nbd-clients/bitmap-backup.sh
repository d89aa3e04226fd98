#!/usr/bin/env bash
# Persistent dirty bitmaps over NBD (-B NAME, qemu:dirty-bitmap:NAME), and an incremental
# backup end to end:
#   1. the bitmaps of an image written by `vdimg io` read the same through the server under
#      test as through qemu-nbd (nbdinfo --map=qemu:dirty-bitmap:NAME), for two bitmaps of
#      different granularities and a disabled one;
#   2. full backup over NBD (nbdcopy), writes through vdimg io, an incremental copy of only the
#      ranges the bitmap marks dirty (libnbd from Python: block status, then pread), and the
#      restored copy equals the live image; then writes through the server itself (the bitmap
#      is kept live), a second incremental round over the same server, equal again.
# Usage: bitmap-backup.sh [SERVER]   (vd-nbd, or qemu-nbd by default; see lib.sh)
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

command -v nbdinfo >/dev/null || { echo "SKIP: nbdinfo missing"; exit 77; }
command -v nbdcopy >/dev/null || { echo "SKIP: nbdcopy missing"; exit 77; }
/usr/bin/python3 -c 'import nbd' 2>/dev/null || { echo "SKIP: python3-libnbd missing"; exit 77; }
VDIMG="${VDIMG:-$(dirname "$SERVER")/vdimg}"
[ -x "$VDIMG" ] || VDIMG="$(command -v vdimg || true)"
[ -n "$VDIMG" ] && [ -x "$VDIMG" ] || { echo "SKIP: no vdimg next to $SERVER (set VDIMG)"; exit 77; }

# dirty_map NAME BITMAP: "offset length" of each dirty run, adjacent runs merged.
dirty_map() {
  nbdinfo --map="qemu:dirty-bitmap:$2" "$(uri "$1")" |
    awk '$3 == 1 { if (have && $1 == end) { end += $2 } else { if (have) print start, end - start; start = $1; end = $1 + $2; have = 1 } }
         END { if (have) print start, end - start }'
}

# incremental NAME BITMAP BACKUP: copies the dirty ranges of the export into the raw BACKUP.
incremental() {
  /usr/bin/python3 - "$(uri "$1")" "qemu:dirty-bitmap:$2" "$3" <<'EOF'
import os, sys, nbd
uri, ctx, backup = sys.argv[1:4]
h = nbd.NBD()
h.add_meta_context(ctx)
h.connect_uri(uri)
assert h.can_meta_context(ctx), "server did not agree to " + ctx
size = h.get_size()
runs = []
def cb(name, off, entries, err):
    if name != ctx:
        return 0
    at = off
    for i in range(0, len(entries), 2):
        runs.append((at, entries[i], entries[i + 1] & 1))
        at += entries[i]
    return 0
off = 0
while off < size:
    before = len(runs)
    h.block_status(min(size - off, 1 << 30), off, cb)
    assert len(runs) > before, "block status made no progress"
    off = runs[-1][0] + runs[-1][1]
copied = 0
fd = os.open(backup, os.O_WRONLY)
for at, length, dirty in runs:
    length = min(length, size - at)
    while dirty and length > 0:
        n = min(length, 4 << 20)
        os.pwrite(fd, h.pread(n, at), at)
        at += n; length -= n; copied += n
os.close(fd)
h.shutdown()
print(copied)
EOF
}

# ---- 1. bitmaps written by vdimg read the same through both servers ----------------------
log "bitmaps through $SERVER and $REFERENCE"
img="$WORK/bm.qcow2"
qemu-img create -q -f qcow2 "$img" 8M
qemu-img bitmap --add "$img" coarse                  # 64 KiB granularity (the cluster)
qemu-img bitmap --add -g 4k "$img" fine
qemu-img bitmap --add -g 16k "$img" off
qemu-img bitmap --disable "$img" off
qio -c 'write -P 1 0 64k' -c 'write -P 2 3M 12k' "$img" >/dev/null   # qemu's writes, then vd's
"$VDIMG" io -c 'write -P 3 1M 4k' -c 'write -z 5M 128k' -c 'discard 7M 64k' \
  -c 'write -P 4 8380416 4096' "$img" >/dev/null
check "qemu-img check after vdimg io" qemu-img check -q "$img"
start_server ref "$REFERENCE" -r -f qcow2 -B coarse -B fine -B off "$img"
start_server tst "$SERVER" -r -f qcow2 -B coarse -B fine -B off "$img"
for b in coarse fine off; do
  ref_map="$(nbdinfo --map="qemu:dirty-bitmap:$b" "$(uri ref)")"
  tst_map="$(nbdinfo --map="qemu:dirty-bitmap:$b" "$(uri tst)")"
  if [ "$ref_map" = "$tst_map" ]; then pass "bitmap $b equal"; else
    fail "bitmap $b differs"; diff <(echo "$ref_map") <(echo "$tst_map") >&2 || true; fi
done
[ -z "$(dirty_map tst off)" ] && pass "disabled bitmap stays clean" || fail "disabled bitmap has dirty bits"
[ -n "$(dirty_map tst fine)" ] && pass "fine bitmap has the writes" || fail "fine bitmap is empty"
stop_servers ref tst
check_fails "an unknown bitmap is refused" timeout 30 "$SERVER" -r -f qcow2 -B nosuch -k "$SOCKDIR/x.sock" "$img"

# ---- 2. incremental backup ----------------------------------------------------------------
log "incremental backup over $SERVER"
live="$WORK/live.qcow2" backup="$WORK/backup.raw"
qemu-img create -q -f qcow2 -o cluster_size=64k "$live" 16M
qio -c 'write -P 0x11 0 4M' -c 'write -P 0x22 6M 1M' -c 'write -P 0x33 15M 1M' "$live" >/dev/null
qemu-img bitmap --add -g 64k "$live" inc          # the point of the full backup

start_server full "$SERVER" -r -f qcow2 "$live"
nbdcopy "$(uri full)" "$backup"
stop_server full
check "full backup equals the live image" qemu-img compare -q -f raw -F qcow2 "$backup" "$live"

# Changes after the full backup, through vdimg.
"$VDIMG" io -c 'write -P 0x44 100k 8k' -c 'write -P 0x55 6500k 300k' -c 'write -z 15M 64k' \
  -c 'discard 2M 128k' -c 'write -P 0x66 10M 4k' "$live" >/dev/null
check "qemu-img check after the changes" qemu-img check -q "$live"
if qemu-img compare -q -f raw -F qcow2 "$backup" "$live"; then fail "the changes did not change the disk"; fi

start_server inc "$SERVER" -f qcow2 -B inc -e 2 "$live"
copied="$(incremental inc inc "$backup")"
total=$((16 << 20))
if [ "$copied" -gt 0 ] && [ "$copied" -lt $((total / 4)) ]; then pass "incremental copied $copied bytes"; else
  fail "incremental copied $copied bytes of $total"; fi
# Writes through the server itself: its bitmap must record them too.
qio -f raw -c 'write -P 0x77 12M 64k' -c 'write -P 0x78 1M 512' -c 'flush' "$(uri inc)" >/dev/null
copied2="$(incremental inc inc "$backup")"
[ "$copied2" -ge $((64 << 10)) ] && pass "second round copied $copied2 bytes" || fail "second round copied $copied2"
stop_server inc
check "restored backup equals the live image" qemu-img compare -f raw -F qcow2 "$backup" "$live"
check "qemu-img check after serving" qemu-img check -q "$live"
if qemu-img info "$live" | grep -q in-use; then fail "bitmap left in use after a clean stop"; else
  pass "bitmap consistent after a clean stop"; fi

finish
