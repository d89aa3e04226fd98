// KeyedLocks: the one waiting mechanism of the QCOW data path. Keys are guest cluster
// indexes (clusters being allocated, in-place writes in flight) or L1 indexes (L2 tables
// being prepared); each image has one instance per key space.
//
// - lock/unlock: exclusive, e.g. a cluster being allocated. Whoever finds a key locked
//   waits (`wait`) and looks again after the release: the state it acted on may have
//   changed (the cluster is allocated now).
// - share/unshare: counted holds, e.g. in-place writes in flight to a cluster. An
//   allocation that rewrites the cluster locks it first (no new in-place write starts),
//   then waits for the holds in flight to drain (`when_unshared`).
// Waiters are woken by posting to the executor, never inline from the releasing call.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>
#include <vector>

#include "backends/common/recycle.h"
#include "vd/io.h"

namespace vd::qcow {

class KeyedLocks {
 public:
  explicit KeyedLocks(IoProvider& io) : io_(io) {}

  bool held(uint64_t key) const {
    auto it = keys_.find(key);
    return it != keys_.end() && it->second.locked;
  }
  // First key of [first, first + count) that is locked, or none.
  bool any_held(uint64_t first, uint64_t count, uint64_t* which = nullptr) const;
  void lock(uint64_t key) { lock(key, 1); }
  void lock(uint64_t first, uint64_t count);
  void unlock(uint64_t key) { unlock(key, 1); }
  void unlock(uint64_t first, uint64_t count);

  void share(uint64_t first, uint64_t count);
  void unshare(uint64_t first, uint64_t count);

  // Runs `retry` (posted) after the key's next release.
  void wait(uint64_t key, std::function<void()> retry);
  // Runs `go` once no key of the range has shared holds (inline when none has now).
  void when_unshared(uint64_t first, uint64_t count, std::function<void()> go);

 private:
  struct Key {
    bool locked = false;
    unsigned shared = 0;
    std::vector<std::function<void()>> waiters;
  };
  void release(uint64_t key, Key& k);

  IoProvider& io_;
  // Keys come and go with every in-place write: their nodes are recycled.
  std::unordered_map<uint64_t, Key, std::hash<uint64_t>, std::equal_to<uint64_t>,
                     detail::RecyclingAllocator<std::pair<const uint64_t, Key>>>
      keys_;
};

}  // namespace vd::qcow
