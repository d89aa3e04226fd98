// Where the image's metadata lives, for refusing a write that would land on it (QEMU's
// overlap check). On a valid image no data or table write ever overlaps another structure;
// on a corrupt or hostile one (an L2 entry pointing at the refcount table, an L1 entry at
// the header, a refcount block inside an L2 table) the write would destroy the image, so it
// is refused and the image marked corrupt.
//
// The map follows the in-memory tables. Large structures (header, L1 tables, refcount table,
// snapshot table) are few and the map is rebuilt when one moves; L2 tables and refcount
// blocks are many and come and go one at a time as clusters are allocated, so they are added
// and removed singly (a rebuild per new L2 table cost O(L1) each: quadratic for a large image
// with small clusters).
#pragma once

#include <cstdint>
#include <map>
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
  bitmap_directory,
};

// QEMU's names for the structures, as its "overlaps with ..." messages give them.
const char* meta_kind_name(MetaKind kind);

class OverlapMap {
 public:
  void clear();
  // A large structure; call `seal` after adding them, before `find`.
  void add(uint64_t offset, uint64_t length, MetaKind kind);
  void seal();
  // A table of at most a few clusters (L2 table, refcount block): usable at once.
  void add_table(uint64_t offset, uint64_t length, MetaKind kind);
  void remove_table(uint64_t offset, MetaKind kind);
  // The first structure [offset, offset + length) overlaps, skipping one of kind `except`
  // that holds the whole range (a table, or part of one, written over itself).
  std::optional<MetaKind> find(uint64_t offset, uint64_t length,
                               std::optional<MetaKind> except = std::nullopt) const;

 private:
  struct Range {
    uint64_t begin, end;
    MetaKind kind;
  };
  static bool hits(const Range& r, uint64_t offset, uint64_t end, std::optional<MetaKind> except);

  std::vector<Range> ranges_;     // large structures by begin; they may overlap on a corrupt image
  std::vector<uint64_t> max_end_;  // max_end_[i]: the largest end among ranges_[0..i]
  std::multimap<uint64_t, Range> tables_;  // small tables by begin
  uint64_t longest_table_ = 0;             // bounds how far before `offset` a table may begin
};

}  // namespace vd::qcow
