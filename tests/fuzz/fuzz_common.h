// Shared driver for the libFuzzer targets: an in-memory image opened through the real
// backends and Disk, with every call bounded so a hostile image cannot make a run slow.
#pragma once

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace vdfuzz {

class Harness {
 public:
  Harness();
  // Puts `bytes` in the in-memory file `path`.
  void put(const std::string& path, std::span<const uint8_t> bytes);
  // Opens `path` as a Disk (format given or probed); nullptr when it is refused.
  std::unique_ptr<vd::Disk> open(const std::string& path, const char* format, bool writable);
  // Runs one async call to completion on the io_context (bounded number of handlers).
  vd::Error wait(const std::function<void(vd::Completion)>& start);
  // Reads a bounded sample of the disk: the start, the end and a spread of offsets.
  void read_sample(vd::Disk& disk, uint32_t seed);
  vd::MemIoProvider& io() { return io_; }

 private:
  boost::asio::io_context ctx_;
  vd::MemIoProvider io_;
  vd::Registry registry_;
};

}  // namespace vdfuzz
