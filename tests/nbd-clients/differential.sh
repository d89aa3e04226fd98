#!/usr/bin/env bash
# Differential test against qemu-nbd: the server under test and qemu-nbd serve the same chains
# (2-deep qcow2 v3, 3-deep qcow2 v2, raw base under qcow2 v3 with 64 KiB and 4 KiB clusters,
# and a size that ends in a partial cluster with 16 KiB clusters on top; holes, zero
# clusters, compressed clusters, data in different layers), one after the other, with the same options.
# Equal: `qemu-img map --output=json` over NBD (with and without -A: qemu's NBD client asks
# for qemu:allocation-depth when the server offers it), the qemu:allocation-depth map,
# the base:allocation map (adjacent extents of the same kind merged: how a server splits its
# answer is its own business) and nbdcopy's output byte for byte.
#
# Usage: differential.sh [SERVER]   (default $VD_NBD, else qemu-nbd; reference: $NBD_REFERENCE
# or qemu-nbd)
. "$(dirname "$0")/lib.sh"
for tool in nbdinfo nbdcopy; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool missing"; exit 77; }
done
norm="/usr/bin/python3 $(dirname "$0")/normalize-map.py"

# collect SIDE TOP OUTDIR: everything the two servers must agree on. SIDE.A serves with -A,
# SIDE without; all read-only, so every server can hold the image at once.
collect() {
  local side="$1" top="$2" out="$3" u
  mkdir -p "$out"
  u="$(uri "$side.A")"
  timeout 60 qemu-img map -f raw --output=json "$u" | $norm qemu-img >"$out/qemu-img-map-A"
  timeout 60 nbdinfo --map=qemu:allocation-depth "$u" | $norm nbdinfo >"$out/allocation-depth"
  timeout 60 nbdinfo --map "$u" | $norm nbdinfo >"$out/base-allocation"
  timeout 60 nbdinfo --size "$u" >"$out/size"
  timeout 60 nbdcopy "$u" "$out/data.raw"
  timeout 60 qemu-img map -f raw --output=json "$(uri "$side")" | $norm qemu-img >"$out/qemu-img-map"
}

for chain in chain2_v3 chain3_v2 chain3_raw chain2_odd; do
  log "$chain"
  top="$("$chain" "$WORK")"
  start_server ref.A "$REFERENCE" -r -A -f qcow2 "$top"
  start_server ref "$REFERENCE" -r -f qcow2 "$top"
  start_server test.A "$SERVER" -r -A -f qcow2 "$top"
  start_server test "$SERVER" -r -f qcow2 "$top"
  collect ref "$top" "$WORK/$chain/ref" || die "clients failed on $REFERENCE serving $chain"
  collect test "$top" "$WORK/$chain/test" || die "clients failed on $SERVER serving $chain"
  stop_servers ref.A ref test.A test
  for f in size qemu-img-map qemu-img-map-A allocation-depth base-allocation; do
    if diff -u "$WORK/$chain/ref/$f" "$WORK/$chain/test/$f" >"$WORK/diff" 2>&1; then
      pass "$chain: $f equal"
    else
      fail "$chain: $f differs (--- $REFERENCE, +++ $SERVER)"; cat "$WORK/diff" >&2
    fi
  done
  check "$chain: nbdcopy output byte-identical" cmp "$WORK/$chain/ref/data.raw" "$WORK/$chain/test/data.raw"
  qemu-img convert -f qcow2 -O raw "$top" "$WORK/$chain/local.raw"
  check "$chain: and equal to qemu-img convert of the chain" cmp "$WORK/$chain/local.raw" "$WORK/$chain/test/data.raw"
  # The maps must say something: a depth-2 (or 3) extent, a local one and an absent one.
  # (a raw base holds every block: no absent extent there).
  absent=absent; [ "$chain" = chain3_raw ] && absent='backing depth 3'
  if grep -q 'local' "$WORK/$chain/test/allocation-depth" && grep -q "$absent" "$WORK/$chain/test/allocation-depth" \
     && grep -q 'backing depth' "$WORK/$chain/test/allocation-depth"; then
    pass "$chain: the depth map shows local, backing and absent extents"
  else
    fail "$chain: depth map too plain"; cat "$WORK/$chain/test/allocation-depth" >&2
  fi
done

finish
