#include "backends/qcow/bitmap/dirty_bitmap.h"

#include <algorithm>
#include <bit>

namespace vd::qcow {

DirtyBitmap::DirtyBitmap(uint64_t disk_size, uint32_t granularity_bits)
    : disk_size_(disk_size),
      gran_bits_(granularity_bits),
      granules_((disk_size + (uint64_t{1} << granularity_bits) - 1) >> granularity_bits),
      words_((granules_ + 63) / 64, 0) {}

bool DirtyBitmap::set(uint64_t offset, uint64_t length) {
  if (length == 0 || offset >= disk_size_) return false;
  bool changed = false;
  const uint64_t end = std::min(disk_size_, offset + length);
  uint64_t first = offset >> gran_bits_;
  const uint64_t last = (end - 1) >> gran_bits_;  // inclusive
  // Whole words at once: a large write-zeroes or discard covers many granules.
  while (first <= last) {
    const uint64_t w = first / 64, b = first % 64;
    const uint64_t n = std::min<uint64_t>(64 - b, last - first + 1);
    const uint64_t bits = (n == 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1)) << b;
    changed = changed || (words_[w] & bits) != bits;
    words_[w] |= bits;
    first += n;
  }
  return changed;
}

void DirtyBitmap::clear_all() { std::fill(words_.begin(), words_.end(), 0); }

uint64_t DirtyBitmap::count() const {
  uint64_t n = 0;
  for (uint64_t w : words_) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

std::pair<bool, uint64_t> DirtyBitmap::extent(uint64_t offset, uint64_t max_len) const {
  if (offset >= disk_size_ || max_len == 0) return {false, 0};
  const uint64_t end = std::min(disk_size_, offset + std::min(max_len, disk_size_ - offset));
  uint64_t g = offset >> gran_bits_;
  const bool dirty = test(g);
  const uint64_t last = (end - 1) >> gran_bits_;
  ++g;
  while (g <= last) {
    const uint64_t w = g / 64, b = g % 64;
    // Bits of this word from b on that differ from `dirty`.
    uint64_t differ = (dirty ? ~words_[w] : words_[w]) >> b;
    if (differ) {
      g += static_cast<uint64_t>(std::countr_zero(differ));
      break;
    }
    g += 64 - b;
  }
  const uint64_t stop = std::min(end, g << gran_bits_);
  return {dirty, stop - offset};
}

void DirtyBitmap::store_cluster(uint64_t index, std::span<std::byte> out) const {
  const uint64_t bytes = out.size();
  const uint64_t first_byte = index * bytes;
  const uint64_t total_bytes = (granules_ + 7) / 8;
  std::fill(out.begin(), out.end(), std::byte{0});
  for (uint64_t i = 0; i < bytes && first_byte + i < total_bytes; ++i) {
    const uint64_t byte = first_byte + i;
    out[i] = std::byte(static_cast<uint8_t>(words_[byte / 8] >> (8 * (byte % 8))));
  }
  // Bits past the last granule stay zero (the last word never has them set: set() stops at
  // the disk's end, and load_cluster masks them).
}

bool DirtyBitmap::cluster_empty(uint64_t index, uint64_t cluster_size) const {
  const uint64_t words_per = cluster_size / 8;
  const uint64_t first = index * words_per;
  for (uint64_t w = first; w < std::min<uint64_t>(words_.size(), first + words_per); ++w)
    if (words_[w]) return false;
  return true;
}

void DirtyBitmap::load_cluster(uint64_t index, std::span<const std::byte> in) {
  const uint64_t first_byte = index * in.size();
  const uint64_t total_bytes = (granules_ + 7) / 8;
  for (uint64_t i = 0; i < in.size() && first_byte + i < total_bytes; ++i) {
    const uint64_t byte = first_byte + i;
    words_[byte / 8] |= uint64_t{std::to_integer<uint8_t>(in[i])} << (8 * (byte % 8));
  }
  if (granules_ % 64) words_.back() &= (uint64_t{1} << (granules_ % 64)) - 1;
}

void DirtyBitmap::fill_cluster(uint64_t index, uint64_t cluster_size) {
  const uint64_t first = index * cluster_size * 8;  // granules
  if (first >= granules_) return;
  set(first << gran_bits_, (std::min(granules_, first + cluster_size * 8) - first) << gran_bits_);
}

}  // namespace vd::qcow
