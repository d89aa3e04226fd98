#!/bin/sh
# /init of the guest of guest-boot.sh (busybox sh). Its disk /dev/vda is an NBD export of a
# 2-deep qcow2 chain that the host prepared (keep in step with guest-boot.sh):
#   base: 0x11 at 0..1M and at 4M..5M        top: 0x22 at 1M..1.5M        hole: 6M..7M
# The guest checks that, writes 0x33 at 2M..3M (allocating), 0x44 over the base's 512k..576k
# (a whole cluster) and 0x55 over 4 KiB at 700k (copy-on-write of a partly written cluster),
# with O_DIRECT and fsync, flushes, discards 4M..5M, drops its caches, reads everything back
# and prints one line for the host: "VD-GUEST-RESULT: ok discard=zero|kept discard_max_bytes=N" or
# "VD-GUEST-RESULT: FAIL <step>". Then it powers off.
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs dev /dev
exec >/dev/console 2>&1 </dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp

result() {
  echo "VD-GUEST-RESULT: $*"
  sync
  poweroff -f
  sleep 10
}
fail() { result "FAIL $*"; }

for m in $(cat /modules/order); do
  insmod "/modules/$m" || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -gt 100 ] && fail "no /dev/vda after 10 s"
  sleep 0.1
done
[ "$(blockdev --getsize64 /dev/vda)" = 8388608 ] || fail "size $(blockdev --getsize64 /dev/vda)"

# want FILE OCTAL_BYTE LEN_4K: LEN_4K blocks of 4 KiB filled with the byte.
want() { dd if=/dev/zero bs=4096 count="$3" 2>/dev/null | tr '\000' "\\$2" >"$1"; }
# expect OFF_4K LEN_4K OCTAL_BYTE STEP: the disk holds the byte there (read with O_DIRECT).
expect() {
  want /tmp/want "$3" "$2"
  dd if=/dev/vda of=/tmp/got bs=4096 skip="$1" count="$2" iflag=direct 2>/dev/null || fail "$4: read"
  cmp -s /tmp/got /tmp/want || fail "$4: wrong data at $(($1 * 4096))"
}
# put OFF_4K LEN_4K OCTAL_BYTE STEP
put() {
  want /tmp/put "$3" "$2"
  dd if=/tmp/put of=/dev/vda bs=4096 seek="$1" count="$2" oflag=direct conv=fsync,notrunc 2>/dev/null \
    || fail "$4: write"
}

expect 0 256 021 "base data"
expect 256 128 042 "top data"
expect 1024 256 021 "base data at 4M"
expect 1536 256 000 "hole"
put 512 256 063 "allocating write"
put 128 16 104 "cluster overwrite"
put 175 1 125 "partial-cluster write"
sync
blockdev --flushbufs /dev/vda || fail "flush"
blkdiscard -o 4194304 -l 1048576 /dev/vda || fail "discard"
sync
echo 3 >/proc/sys/vm/drop_caches
expect 512 256 063 "allocating write read back"
expect 128 16 104 "cluster overwrite read back"
expect 175 1 125 "partial-cluster write read back"
expect 144 31 021 "base data before the partial write"
expect 176 16 021 "base data after the partial write"
expect 256 128 042 "top data kept"
# After a discard NBD promises nothing about the contents: zeroes or the old data.
dd if=/dev/vda of=/tmp/got bs=4096 skip=1024 count=256 iflag=direct 2>/dev/null || fail "read discarded range"
want /tmp/want 000 256
dmax="discard_max_bytes=$(cat /sys/block/vda/queue/discard_max_bytes)"
if cmp -s /tmp/got /tmp/want; then result "ok discard=zero $dmax"; fi
want /tmp/want 021 256
if cmp -s /tmp/got /tmp/want; then result "ok discard=kept $dmax"; fi
fail "discarded range holds neither zeroes nor the old data"
