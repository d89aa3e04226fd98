#include "backends/qcow/meta/overlap.h"

#include <algorithm>

namespace vd::qcow {

const char* meta_kind_name(MetaKind kind) {
  switch (kind) {
    case MetaKind::header: return "qcow2_header";
    case MetaKind::active_l1: return "active L1 table";
    case MetaKind::active_l2: return "active L2 table";
    case MetaKind::refcount_table: return "refcount table";
    case MetaKind::refcount_block: return "refcount block";
    case MetaKind::snapshot_table: return "snapshot table";
    case MetaKind::inactive_l1: return "inactive L1 table";
    case MetaKind::bitmap_directory: return "bitmap directory";
  }
  return "metadata";
}

void OverlapMap::clear() {
  ranges_.clear();
  max_end_.clear();
  tables_.clear();
  longest_table_ = 0;
}

namespace {
uint64_t end_of(uint64_t offset, uint64_t length) {
  return offset + length < offset ? UINT64_MAX : offset + length;
}
}  // namespace

void OverlapMap::add(uint64_t offset, uint64_t length, MetaKind kind) {
  if (length == 0) return;
  ranges_.push_back({offset, end_of(offset, length), kind});
}

void OverlapMap::seal() {
  std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  max_end_.resize(ranges_.size());
  uint64_t m = 0;
  for (size_t i = 0; i < ranges_.size(); ++i) max_end_[i] = m = std::max(m, ranges_[i].end);
}

void OverlapMap::add_table(uint64_t offset, uint64_t length, MetaKind kind) {
  if (length == 0) return;
  tables_.emplace(offset, Range{offset, end_of(offset, length), kind});
  longest_table_ = std::max(longest_table_, length);
}

void OverlapMap::remove_table(uint64_t offset, MetaKind kind) {
  auto [lo, hi] = tables_.equal_range(offset);
  for (auto it = lo; it != hi; ++it) {
    if (it->second.kind != kind) continue;
    tables_.erase(it);  // one: on a corrupt image two L1 entries may name the same table
    return;
  }
}

bool OverlapMap::hits(const Range& r, uint64_t offset, uint64_t end, std::optional<MetaKind> except) {
  if (r.end <= offset || r.begin >= end) return false;
  return !(except && r.kind == *except && r.begin <= offset && end <= r.end);
}

std::optional<MetaKind> OverlapMap::find(uint64_t offset, uint64_t length, std::optional<MetaKind> except) const {
  if (length == 0) return std::nullopt;
  const uint64_t end = end_of(offset, length);
  // Candidates start before `end`; walk back from the last of them while some range at or
  // before the position can still reach `offset` (only a few steps: ranges rarely overlap).
  auto it = std::lower_bound(ranges_.begin(), ranges_.end(), end,
                             [](const Range& r, uint64_t v) { return r.begin < v; });
  for (size_t i = static_cast<size_t>(it - ranges_.begin()); i-- > 0 && max_end_[i] > offset;)
    if (hits(ranges_[i], offset, end, except)) return ranges_[i].kind;
  // A table that reaches `offset` begins at most longest_table_ before it.
  const uint64_t from = offset > longest_table_ ? offset - longest_table_ : 0;
  for (auto t = tables_.lower_bound(from); t != tables_.end() && t->first < end; ++t)
    if (hits(t->second, offset, end, except)) return t->second.kind;
  return std::nullopt;
}

}  // namespace vd::qcow
