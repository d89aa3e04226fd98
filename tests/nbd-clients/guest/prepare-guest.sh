#!/usr/bin/env bash
# Prepares the guest of guest-boot.sh in CACHE_DIR (fetched once, then reused):
#   CACHE_DIR/vmlinuz          Debian 12's kernel (the package linux-image-amd64 depends on)
#   CACHE_DIR/initramfs.cpio   busybox-static, guest-init.sh as /init, and the virtio modules
#                              the kernel needs for virtio-blk over PCI, in load order
# The kernel package is fetched with `apt-get download` (no root needed for that; `apt-get
# update` first if the package lists are empty, with sudo when not root) and only the kernel
# and its virtio/block modules are extracted. Module dependencies come from modules.dep, which
# the package does not ship (its postinst runs depmod): busybox depmod writes it for the
# extracted modules. The initramfs is packed with busybox cpio (newc).
#
# Usage: prepare-guest.sh CACHE_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:?usage: prepare-guest.sh CACHE_DIR}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "busybox-static is not installed (/bin/busybox)" >&2; exit 1; }

stamp="$(sha256sum "$here/guest-init.sh" "$0" | sha256sum | cut -c1-16)"
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# 1. The kernel package (kept in the cache: fetched once per build tree).
deb="$(ls "$cache"/linux-image-*.deb 2>/dev/null | head -1 || true)"
if [ -z "$deb" ]; then
  pkg="$(kernel_package)"
  if [ -z "$pkg" ]; then
    $SUDO apt-get update -qq
    pkg="$(kernel_package)"
  fi
  [ -n "$pkg" ] || { echo "cannot tell which kernel linux-image-amd64 depends on" >&2; exit 1; }
  dl="$(mktemp -d "$cache/dl.XXXXXX")"
  chmod 777 "$dl"  # apt drops privileges to _apt for the download when it can
  (cd "$dl" && timeout 600 apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  deb="$(ls "$dl"/linux-image-*.deb 2>/dev/null | head -1 || true)"
  [ -n "$deb" ] || { echo "apt-get download $pkg failed" >&2; exit 1; }
  mv "$deb" "$cache/"
  rmdir "$dl" 2>/dev/null || rm -rf "$dl"
  deb="$(ls "$cache"/linux-image-*.deb | head -1)"
fi

# 2. Only the kernel and the virtio/block driver folders.
tree="$cache/tree"
rm -rf "$tree"
mkdir -p "$tree"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tree" --wildcards \
  './boot/vmlinuz-*' './lib/modules/*/modules.builtin' './lib/modules/*/modules.order' \
  './lib/modules/*/kernel/drivers/virtio/*' './lib/modules/*/kernel/drivers/block/*'
kver="$(ls "$tree/lib/modules")"
moddir="$tree/lib/modules/$kver"
# Compressed modules (not Debian 12's, but later kernels' .ko.xz/.ko.zst): busybox insmod
# takes plain .ko files, so unpack them here and rename them in modules.order.
find "$moddir/kernel" -name "*.ko.xz" -o -name "*.ko.zst" -o -name "*.ko.gz" | while read -r f; do
  case "$f" in
    *.xz) "$busybox" unxz -c "$f" >"${f%.xz}" ;;
    *.gz) "$busybox" gunzip -c "$f" >"${f%.gz}" ;;
    *.zst) zstd -q -d -c "$f" >"${f%.zst}" ;;
  esac
  rm -f "$f"
done
sed -i -e 's/\.ko\.\(xz\|zst\|gz\)$/.ko/' "$moddir/modules.order"
"$busybox" depmod -b "$tree" "$kver"

# 3. The closure of virtio_blk and virtio_pci in modules.dep, dependencies first. A module
# built into the kernel (modules.builtin) needs no file.
declare -A seen=()
order=()
add_module() {  # add_module RELATIVE_PATH
  local m="$1" dep
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  local line
  line="$(grep -E "^$m:" "$moddir/modules.dep" || true)"
  [ -n "$line" ] || { echo "$m missing from modules.dep" >&2; exit 1; }
  for dep in ${line#*:}; do add_module "$dep"; done
  order+=("$m")
}
for want in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk; do
  if grep -qE "/$want\.ko" "$moddir/modules.builtin" 2>/dev/null; then continue; fi
  path="$(grep -oE "^kernel/[^:]*/$want\.ko" "$moddir/modules.dep" || true)"
  [ -n "$path" ] || continue  # not every kernel splits virtio_pci into the *_dev helpers
  add_module "$path"
done
[ ${#order[@]} -gt 0 ] || echo "note: every virtio driver is built in" >&2

# 4. The initramfs: busybox, /init, the modules and their load order.
root="$cache/root"
rm -rf "$root"
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/modules"
cp "$busybox" "$root/bin/busybox"
cp "$here/guest-init.sh" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
: >"$root/modules/order"
for m in "${order[@]}"; do
  cp "$moddir/$m" "$root/modules/"
  basename "$m" >>"$root/modules/order"
done
(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 >"$cache/initramfs.cpio.tmp" 2>/dev/null)
mv "$cache/initramfs.cpio.tmp" "$cache/initramfs.cpio"
cp "$tree/boot/vmlinuz-$kver" "$cache/vmlinuz"
echo "$kver" >"$cache/kernel-version"
rm -rf "$tree" "$root"
echo "$stamp" >"$cache/stamp"
echo "guest ready in $cache: kernel $kver, modules: ${order[*]##*/}"
