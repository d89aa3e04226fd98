// One dirty bitmap in memory: a bit per granule of the disk. Setting bits is what the data
// path does on every write (cheap, synchronous, no allocation); the serialised form is QCOW2's
// (bit k = byte k / 8, bit k % 8), one image cluster of it per bitmap table entry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace vd::qcow {

class DirtyBitmap {
 public:
  DirtyBitmap(uint64_t disk_size, uint32_t granularity_bits);

  uint64_t disk_size() const { return disk_size_; }
  uint32_t granularity_bits() const { return gran_bits_; }
  uint64_t granules() const { return granules_; }

  // Marks the granules [offset, offset + length) touches; true if one was clean.
  bool set(uint64_t offset, uint64_t length);
  void clear_all();
  bool test(uint64_t granule) const { return (words_[granule / 64] >> (granule % 64)) & 1; }
  uint64_t count() const;
  // From byte `offset`: whether it is dirty, and how many bytes from there (at most
  // `max_len`, never past the disk's end) share that state.
  std::pair<bool, uint64_t> extent(uint64_t offset, uint64_t max_len) const;

  // The serialised bitmap, one cluster of it (`index` as the bitmap table's), zero-padded.
  void store_cluster(uint64_t index, std::span<std::byte> out) const;
  bool cluster_empty(uint64_t index, uint64_t cluster_size) const;
  void load_cluster(uint64_t index, std::span<const std::byte> in);
  void fill_cluster(uint64_t index, uint64_t cluster_size);  // an all-ones table entry

 private:
  uint64_t disk_size_;
  uint32_t gran_bits_;
  uint64_t granules_;
  std::vector<uint64_t> words_;
};

}  // namespace vd::qcow
