#!/usr/bin/env bash
# Installs what is missing, builds vdimg, and shows its main job on a small demonstration:
# a base image and a differencing image on top of it, written, read back through the
# chain, inspected, checked (and qemu-img's opinion of the result), converted and compared.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build -DCMAKE_BUILD_TYPE=Release -DVD_TESTS=OFF
V=build/vdimg
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
run() {
  echo "\$ ${*}" | sed -e "s|$D/||g" -e "s|^\$ build/vdimg|\$ vdimg|"
  "$@" 2>&1 | sed "s|$D/||g"
  echo
}

run $V create -f qcow2 "$D/base.qcow2" 64M
run $V io -c "write -P 0x11 0 1M" -c "write -P 0x22 4M 64k" "$D/base.qcow2"
run $V create -f qcow2 -b base.qcow2 -F qcow2 "$D/diff.qcow2"
run $V io -c "write -P 0x33 512k 1M" -c "write -z 4M 4k" -c flush "$D/diff.qcow2"
run $V io -c "read -P 0x11 0 512k" -c "read -P 0x33 512k 1M" -c "read -P 0 4M 4k" \
  -c "read -P 0x22 4100k 60k" "$D/diff.qcow2"
run $V info --backing-chain "$D/diff.qcow2"
run $V map "$D/diff.qcow2"
run $V check "$D/diff.qcow2"
run qemu-img check "$D/diff.qcow2"
run $V convert -O qcow2 -c "$D/diff.qcow2" "$D/flat.qcow2"
run $V compare "$D/diff.qcow2" "$D/flat.qcow2"
run $V info "$D/flat.qcow2"
