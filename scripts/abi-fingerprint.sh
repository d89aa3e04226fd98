#!/bin/sh
# Prints the plugin ABI fingerprint of include/vd: the value VD_PLUGIN_ABI_FINGERPRINT in
# include/vd/plugin.h must hold (the ctest test abi.fingerprint checks it).
#
#   scripts/abi-fingerprint.sh           print it
#   scripts/abi-fingerprint.sh --write   print it and record it in include/vd/plugin.h
#
# It builds and runs tests/abi/abi_fingerprint.cpp (the same code as the test) in the build
# folder: $VD_BUILD_DIR, else build/ (configured with cmake beforehand). Recording a new
# fingerprint goes with a bump of VD_PLUGIN_ABI_VERSION unless that version is unreleased
# (docs/backend-guide.md, "Plugin ABI version").
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${VD_BUILD_DIR:-$root/build}
cmake --build "$build" --target vd_abi_fingerprint >/dev/null
fp=$("$build/tests/vd_abi_fingerprint" "$root/include")
if [ "${1:-}" = "--write" ]; then
  sed -i "s/^#define VD_PLUGIN_ABI_FINGERPRINT .*/#define VD_PLUGIN_ABI_FINGERPRINT \"$fp\"/" \
    "$root/include/vd/plugin.h"
  grep -q "VD_PLUGIN_ABI_FINGERPRINT \"$fp\"" "$root/include/vd/plugin.h"
  echo "recorded in include/vd/plugin.h (plugin ABI $(sed -n 's/^#define VD_PLUGIN_ABI_VERSION //p' "$root/include/vd/plugin.h")):" >&2
fi
echo "$fp"
