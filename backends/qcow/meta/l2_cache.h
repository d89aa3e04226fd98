// An LRU cache of decoded L2 tables, bounded in bytes, keyed by the table's host offset.
// Tables are immutable once cached (shared_ptr<const>); the write side replaces an entry
// with an updated copy, so a reader holding the old table keeps a consistent snapshot.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

namespace vd::qcow {

using L2Table = std::vector<uint64_t>;  // host-endian words (2 per entry with extended L2)
using L2Ptr = std::shared_ptr<const L2Table>;

class L2Cache {
 public:
  explicit L2Cache(uint64_t budget_bytes) : budget_(budget_bytes) {}

  L2Ptr find(uint64_t offset);            // refreshes recency
  void insert(uint64_t offset, L2Ptr t);  // replaces, then evicts past the budget
  void erase(uint64_t offset);
  void clear();
  uint64_t bytes() const { return bytes_; }
  size_t entries() const { return map_.size(); }

 private:
  struct Entry {
    L2Ptr table;
    std::list<uint64_t>::iterator lru;
  };
  void evict();

  uint64_t budget_;
  uint64_t bytes_ = 0;
  std::list<uint64_t> lru_;  // front = most recent
  std::unordered_map<uint64_t, Entry> map_;
};

}  // namespace vd::qcow
