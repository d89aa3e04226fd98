// SectorLocks: overlapping writes one after the other, in arrival order.
//
// A request waits while its range overlaps a held range or the range of a request that asked
// before it and still waits: the second rule keeps a stream of small writes from starving a
// large one, and keeps two overlapping writes in the order they were issued.
#include <algorithm>

#include "backends/luks/luks.h"

namespace vd::luks {

bool SectorLocks::conflicts(const Range& r, size_t waiters_before) const {
  for (const auto& h : held_)
    if (h.overlaps(r.first, r.end)) return true;
  for (size_t i = 0; i < waiters_before && i < waiting_.size(); ++i)
    if (waiting_[i].range.overlaps(r.first, r.end)) return true;
  return false;
}

void SectorLocks::lock(uint64_t first, uint64_t end, std::function<void()> granted) {
  Range r{first, end};
  if (!conflicts(r, waiting_.size())) {
    held_.push_back(r);
    granted();
    return;
  }
  waiting_.push_back({r, std::move(granted)});
}

void SectorLocks::unlock(uint64_t first, uint64_t end) {
  auto it = std::find_if(held_.begin(), held_.end(),
                         [&](const Range& h) { return h.first == first && h.end == end; });
  if (it != held_.end()) held_.erase(it);
  // Collect what fits now, then run it: a granted request may lock or unlock in turn.
  std::vector<std::function<void()>> ready;
  for (size_t i = 0; i < waiting_.size();) {
    if (conflicts(waiting_[i].range, i)) {
      ++i;
      continue;
    }
    held_.push_back(waiting_[i].range);
    ready.push_back(std::move(waiting_[i].granted));
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
  }
  for (auto& go : ready) go();
}

}  // namespace vd::luks
