#include "backends/qcow/meta/l2_cache.h"

namespace vd::qcow {
namespace {
uint64_t size_of(const L2Ptr& t) { return t ? t->size() * sizeof(uint64_t) : 0; }
}  // namespace

L2Ptr L2Cache::find(uint64_t offset) {
  auto it = map_.find(offset);
  if (it == map_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.table;
}

void L2Cache::insert(uint64_t offset, L2Ptr t) {
  erase(offset);
  lru_.push_front(offset);
  bytes_ += size_of(t);
  map_.emplace(offset, Entry{std::move(t), lru_.begin()});
  evict();
}

void L2Cache::erase(uint64_t offset) {
  auto it = map_.find(offset);
  if (it == map_.end()) return;
  bytes_ -= size_of(it->second.table);
  lru_.erase(it->second.lru);
  map_.erase(it);
}

void L2Cache::clear() {
  map_.clear();
  lru_.clear();
  bytes_ = 0;
}

// Always keeps the most recent table, even over budget: a cache of zero tables would make
// every lookup re-read its table.
void L2Cache::evict() {
  while (bytes_ > budget_ && lru_.size() > 1) erase(lru_.back());
}

}  // namespace vd::qcow
