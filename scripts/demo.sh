#!/usr/bin/env bash
# Installs what is missing, builds vdimg, and shows its main job on a small demonstration:
# images created, written, read back, inspected, converted, compared and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build -DCMAKE_BUILD_TYPE=Release
V=build/vdimg
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
run() { echo "\$ vdimg ${*#$V }" | sed "s|$D/||g"; "$@" 2>&1 | sed "s|$D/||g"; echo; }

run $V create -f raw "$D/base.img" 64M
run $V io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 4M 64k" -c flush "$D/base.img"
run $V io -f raw -c "read -P 0x11 0 1M" -c "read -P 0x22 4M 64k" -c "read -P 0 8M 1M" "$D/base.img"
run $V info "$D/base.img"
run $V map --output=json "$D/base.img"
run $V convert -f raw -O raw "$D/base.img" "$D/copy.img"
run $V compare "$D/base.img" "$D/copy.img"
run $V info --output=json "$D/copy.img"
