#include "fuzz_common.h"

#include <algorithm>
#include <cstring>

namespace vdfuzz {

Harness::Harness() : io_(ctx_.get_executor()), registry_(vd::Registry::builtin()) {}

void Harness::put(const std::string& path, std::span<const uint8_t> bytes) {
  auto c = io_.contents(path);
  c->resize(bytes.size());
  if (!bytes.empty()) std::memcpy(c->data(), bytes.data(), bytes.size());
}

std::unique_ptr<vd::Disk> Harness::open(const std::string& path, const char* format, bool writable) {
  vd::DiskOpenOptions o;
  if (format) o.format = format;
  o.flags = writable ? 0 : vd::open_read_only;
  o.passphrase = "fuzz";
  o.max_depth = 4;
  o.cache_bytes = 1 << 20;
  auto d = vd::Disk::open(path, o, registry_, io_);
  if (!d) return nullptr;
  return std::move(*d);
}

vd::Error Harness::wait(const std::function<void(vd::Completion)>& start) {
  bool done = false;
  vd::Error result;
  start([&](vd::Error e) {
    result = e;
    done = true;
  });
  ctx_.restart();
  // A request that needs more handlers than this is a hang in the making: stop it.
  for (int i = 0; i < 1000000 && !done; ++i)
    if (ctx_.run_one() == 0) break;
  if (!done) __builtin_trap();  // a lost completion is a bug the fuzzer must report
  return result;
}

void Harness::read_sample(vd::Disk& disk, uint32_t seed) {
  const uint64_t size = disk.size();
  if (size == 0) return;
  std::vector<std::byte> buf(64 * 1024);
  uint64_t x = seed | 1;
  for (int i = 0; i < 24; ++i) {
    uint64_t off;
    if (i == 0) off = 0;
    else if (i == 1) off = size > buf.size() ? size - buf.size() : 0;
    else {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      off = x % size;
    }
    const uint64_t len = std::min<uint64_t>(buf.size(), size - off);
    wait([&](vd::Completion c) { disk.read(off, std::span(buf.data(), len), c); });
    wait([&](vd::Completion c) {
      disk.block_status(off, len, [c](vd::Error e, vd::DiskExtent) { c(e); });
    });
  }
}

}  // namespace vdfuzz
