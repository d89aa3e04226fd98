#include "backends/qcow/io/keyed_locks.h"

namespace vd::qcow {

bool KeyedLocks::any_held(uint64_t first, uint64_t count, uint64_t* which) const {
  if (keys_.empty()) return false;
  for (uint64_t k = first; k < first + count; ++k) {
    if (!held(k)) continue;
    if (which) *which = k;
    return true;
  }
  return false;
}

void KeyedLocks::lock(uint64_t first, uint64_t count) {
  for (uint64_t k = first; k < first + count; ++k) keys_[k].locked = true;
}

void KeyedLocks::unlock(uint64_t first, uint64_t count) {
  for (uint64_t k = first; k < first + count; ++k) {
    auto it = keys_.find(k);
    if (it == keys_.end()) continue;
    it->second.locked = false;
    release(k, it->second);
  }
}

void KeyedLocks::share(uint64_t first, uint64_t count) {
  for (uint64_t k = first; k < first + count; ++k) ++keys_[k].shared;
}

void KeyedLocks::unshare(uint64_t first, uint64_t count) {
  for (uint64_t k = first; k < first + count; ++k) {
    auto it = keys_.find(k);
    if (it == keys_.end() || it->second.shared == 0) continue;
    if (--it->second.shared == 0) release(k, it->second);
  }
}

// Wakes every waiter of the key (each looks again) and forgets a key nobody holds.
void KeyedLocks::release(uint64_t key, Key& k) {
  auto waiters = std::move(k.waiters);
  k.waiters.clear();
  if (!k.locked && k.shared == 0) keys_.erase(key);
  for (auto& w : waiters) io_.post(std::move(w));
}

void KeyedLocks::wait(uint64_t key, std::function<void()> retry) {
  auto it = keys_.find(key);
  if (it == keys_.end()) return io_.post(std::move(retry));  // released meanwhile
  it->second.waiters.push_back(std::move(retry));
}

void KeyedLocks::when_unshared(uint64_t first, uint64_t count, std::function<void()> go) {
  for (uint64_t k = first; k < first + count && !keys_.empty(); ++k) {
    auto it = keys_.find(k);
    if (it == keys_.end() || it->second.shared == 0) continue;
    // Wait for this one, then look at the rest again (the caller's lock keeps new ones out).
    it->second.waiters.push_back([this, first, count, go = std::move(go)]() mutable {
      when_unshared(first, count, std::move(go));
    });
    return;
  }
  go();
}

}  // namespace vd::qcow
