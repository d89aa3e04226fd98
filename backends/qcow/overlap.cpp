#include "backends/qcow/overlap.h"

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
  }
  return "metadata";
}

void OverlapMap::clear() {
  ranges_.clear();
  max_end_.clear();
}

void OverlapMap::add(uint64_t offset, uint64_t length, MetaKind kind) {
  if (length == 0) return;
  const uint64_t end = offset + length < offset ? UINT64_MAX : offset + length;
  ranges_.push_back({offset, end, kind});
}

void OverlapMap::seal() {
  std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  max_end_.resize(ranges_.size());
  uint64_t m = 0;
  for (size_t i = 0; i < ranges_.size(); ++i) max_end_[i] = m = std::max(m, ranges_[i].end);
}

std::optional<MetaKind> OverlapMap::find(uint64_t offset, uint64_t length, std::optional<MetaKind> except) const {
  if (length == 0) return std::nullopt;
  const uint64_t end = offset + length < offset ? UINT64_MAX : offset + length;
  // Candidates start before `end`; walk back from the last of them while some range at or
  // before the position can still reach `offset` (only a few steps: ranges rarely overlap).
  auto it = std::lower_bound(ranges_.begin(), ranges_.end(), end,
                             [](const Range& r, uint64_t v) { return r.begin < v; });
  for (size_t i = static_cast<size_t>(it - ranges_.begin()); i-- > 0 && max_end_[i] > offset;) {
    const Range& r = ranges_[i];
    if (r.end <= offset) continue;
    if (except && r.kind == *except && r.begin <= offset && end <= r.end) continue;
    return r.kind;
  }
  return std::nullopt;
}

}  // namespace vd::qcow
