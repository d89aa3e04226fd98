// Where the image's metadata lives, for refusing a write that would land on it (QEMU's
// overlap check). On a valid image no data or table write ever overlaps another structure;
// on a corrupt or hostile one (an L2 entry pointing at the refcount table, an L1 entry at
// the header, a refcount block inside an L2 table) the write would destroy the image, so it
// is refused and the image marked corrupt.
//
// The map is a snapshot of the in-memory tables: QcowImage rebuilds it when they change
// (an L2 table linked, the L1 table moved, a refcount block or table allocated).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace vd::qcow {

enum class MetaKind : uint8_t {
  header,
  active_l1,
  active_l2,
  refcount_table,
  refcount_block,
  snapshot_table,
  inactive_l1,
};

// QEMU's names for the structures, as its "overlaps with ..." messages give them.
const char* meta_kind_name(MetaKind kind);

class OverlapMap {
 public:
  void clear();
  void add(uint64_t offset, uint64_t length, MetaKind kind);
  // Sorts what was added; call before `find`.
  void seal();
  // The first structure [offset, offset + length) overlaps, skipping one of kind `except`
  // that holds the whole range (a table, or part of one, written over itself).
  std::optional<MetaKind> find(uint64_t offset, uint64_t length,
                               std::optional<MetaKind> except = std::nullopt) const;

 private:
  struct Range {
    uint64_t begin, end;
    MetaKind kind;
  };
  std::vector<Range> ranges_;     // by begin; they may overlap each other on a corrupt image
  std::vector<uint64_t> max_end_;  // max_end_[i]: the largest end among ranges_[0..i]
};

}  // namespace vd::qcow
