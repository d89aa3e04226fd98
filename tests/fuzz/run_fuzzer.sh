#!/usr/bin/env bash
# run_fuzzer.sh FUZZER CORPUS_DIR SECONDS DATA_DIR [EXTRA_SEED_DIR]
# Seeds the corpus with small images of every kind (made by qemu-img) and QEMU's samples,
# replays the saved regressions, then fuzzes for SECONDS. Fails on any crash, leak, hang
# (-timeout) or memory use over -rss_limit_mb.
set -euo pipefail
fuzzer=$1 corpus=$2 seconds=$3 data=$4 extra=${5:-}
seeds="$corpus.seeds"
mkdir -p "$corpus" "$seeds"
if [ ! -f "$seeds/.done" ]; then
  t=$(mktemp -d)
  qemu-img create -q -f qcow2 "$t/v3.qcow2" 1M
  qemu-io -c "write -P 1 0 70k" -c "write -z 512k 64k" "$t/v3.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$t/v2.qcow2" 256k
  qemu-io -c "write -P 2 1k 3k" "$t/v2.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k "$t/ext.qcow2" 1M
  qemu-io -c "write -P 3 2k 5k" "$t/ext.qcow2" >/dev/null
  qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=4k "$t/rc1.qcow2" 1M
  qemu-img snapshot -c s1 "$t/v3.qcow2"
  head -c 128k /dev/urandom | base64 > "$t/text"
  qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4k "$t/text" "$t/z.qcow2"
  qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4k,compression_type=zstd "$t/text" "$t/zstd.qcow2"
  qemu-img create -q -f qcow "$t/v1.qcow" 256k
  qemu-io -c "write -P 4 0 9k" "$t/v1.qcow" >/dev/null
  # Plain LUKS (qemu-img's PBKDF2 calibration fails now and then: a missing seed is fine).
  for try in 1 2 3 4 5; do
    qemu-img create -q -f luks --object secret,id=s,data=a -o key-secret=s,iter-time=10 "$t/p.luks" 64k 2>/dev/null && break
  done
  for f in "$t"/*.qcow2 "$t"/*.qcow "$t"/*.luks; do [ -f "$f" ] && cp "$f" "$seeds/"; done
  cp "$data"/qemu-samples/valid-qcow2/*.qcow2 "$seeds/"
  bzip2 -dc "$data/qemu-samples/afl5.img.bz2" > "$seeds/afl5.img"
  rm -rf "$t"
  touch "$seeds/.done"
fi
if [ -d "$data/fuzz" ]; then
  for f in "$data"/fuzz/*; do [ -f "$f" ] && "$fuzzer" -rss_limit_mb=2048 -timeout=20 "$f"; done
fi
extra_dirs=()
if [ -n "$extra" ]; then
  for f in "$extra"/*; do [ -f "$f" ] && "$fuzzer" -rss_limit_mb=2048 -timeout=20 "$f"; done
  extra_dirs=("$extra")
fi
exec "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -max_len=1048576 \
  -print_final_stats=1 "$corpus" "$seeds" "${extra_dirs[@]}"
