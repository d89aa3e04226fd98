// Power-loss simulation: a File decorator whose writes stay volatile until a flush makes them
// durable, as in a disk's write cache.
//
// Every change that reaches the inner file (write, set_size, discard, allocate) is also
// logged. A flush makes durable what was logged before it was issued (an asynchronous flush
// covers the writes completed when it was submitted, not those completing meanwhile). At a
// power loss every file stops (later I/O fails) and what survives is the durable content plus
// either none of the volatile changes or a random subset of them applied in random order: the
// cache may have written back any of them, in any order.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "vd/io.h"
#include "vd/runtime.h"

namespace vdtest::faults {

class CrashIoProvider : public vd::IoProvider {
 public:
  explicit CrashIoProvider(boost::asio::any_io_executor ex);
  ~CrashIoProvider() override;

  vd::Result<std::unique_ptr<vd::File>> open(const std::string& path, unsigned mode) override;
  vd::Error remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  void post(std::function<void()> fn) override;

  // Content that is durable from the start.
  void load(const std::string& path, const std::vector<std::byte>& bytes);
  // The power goes off after `n` more changes: the (n+1)th change and everything later fails
  // and never reaches the storage.
  void lose_power_after(uint64_t n) { budget_ = n; }
  bool powered() const { return !dead_; }
  uint64_t changes() const { return changes_; }
  // The power goes off now (if it has not already); returns what survives of every file:
  // the durable bytes, plus with `rng` a random subset of the volatile changes in random order.
  std::map<std::string, std::vector<std::byte>> survivors(std::mt19937* rng);

  struct Change {
    uint64_t seq;
    bool resize;  // set_size(offset) instead of a write
    uint64_t offset;
    std::vector<std::byte> bytes;
  };
  struct State {
    std::vector<std::byte> durable;
    std::vector<Change> log;  // volatile changes, in the order they happened
  };
  // For CrashFile.
  bool take_budget();
  uint64_t next_seq() { return seq_++; }
  uint64_t seq() const { return seq_; }
  bool dead() const { return dead_; }

 private:
  vd::MemIoProvider mem_;
  boost::asio::any_io_executor ex_;
  std::map<std::string, std::shared_ptr<State>> states_;
  std::optional<uint64_t> budget_;
  uint64_t changes_ = 0, seq_ = 0;
  bool dead_ = false;
};

}  // namespace vdtest::faults
