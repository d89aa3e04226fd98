// Guest-to-host translation: the table geometry of an image, and decoding of the L2 entries
// that cover a guest range into one homogeneous run (unallocated, data, zero, compressed).
#pragma once

#include <cstdint>
#include <string>

#include "backends/qcow/meta/format.h"
#include "backends/qcow/meta/l2_cache.h"
#include "vd/error.h"

namespace vd::qcow {

struct Layout {
  uint32_t version = 3;
  uint32_t cluster_bits = 16;
  uint32_t l2_bits = 13;
  bool extended_l2 = false;
  bool external_data = false;  // host offsets refer to the external data file

  static Layout from(const Header& h);
  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  uint64_t l2_entries() const { return 1ull << l2_bits; }
  unsigned words_per_entry() const { return extended_l2 ? 2 : 1; }
  uint64_t l2_table_bytes() const { return l2_entries() * 8 * words_per_entry(); }
  // Bytes of guest space one L2 table maps.
  uint64_t l2_coverage() const { return 1ull << (cluster_bits + l2_bits); }
  // The end of the guest range the L2 table holding `guest` maps.
  uint64_t l2_table_end(uint64_t guest) const { return (guest | (l2_coverage() - 1)) + 1; }
  uint64_t l1_index(uint64_t guest) const { return guest >> (cluster_bits + l2_bits); }
  uint64_t l2_index(uint64_t guest) const { return (guest >> cluster_bits) & (l2_entries() - 1); }
  // Allocation granularity inside a cluster: 32 subclusters with extended L2.
  uint32_t sub_bits() const { return extended_l2 ? cluster_bits - 5 : cluster_bits; }
  // Host offset of the L2 table from an L1 entry (0 = none).
  uint64_t l2_offset(uint64_t l1_entry) const {
    return version == 1 ? l1_entry : (l1_entry & kL1OffsetMask);
  }
};

struct Run {
  enum class Kind : uint8_t { unallocated, data, zero, compressed };
  Kind kind = Kind::unallocated;
  uint64_t length = 0;            // guest bytes from the requested offset
  uint64_t host_offset = 0;       // data: host offset of the first byte; compressed: run start
  uint64_t compressed_bytes = 0;  // compressed: bytes of the stored run
  uint64_t cluster_start = 0;     // compressed: guest offset of the cluster
  bool copied = false;            // data: every cluster has refcount 1 (writable in place)
  // zero/unallocated: the clusters keep their host space at host_offset (preallocated zero
  // clusters; zero or unallocated subclusters of an allocated cluster). qemu-img map shows it.
  bool host_reserved = false;
};

// Decodes the run starting at `guest` (inside the table `t`, stored at `l2_offset`), at most
// `max_len` bytes long and never crossing the table's end. Corrupt entries give Errc::corrupt
// naming the image, the L2 offset and index. Where a data cluster lies is not judged here:
// like QEMU, reads return what is there (zeros past the end of the file, even metadata), and
// writes are checked against the metadata before they are made (overlap.h).
Result<Run> decode_run(const Layout& layout, const L2Table& t, uint64_t l2_offset, uint64_t guest,
                       uint64_t max_len, const std::string& path);

}  // namespace vd::qcow
