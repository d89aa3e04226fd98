// SyncFile: a vd::File whose asynchronous calls complete inline through its synchronous ones,
// for tests of code that uses only the synchronous calls (header parsing, LUKS key slots).
// Never hand one to a data path: completing inline is exactly what the data path must not do.
#pragma once

#include "vd/io.h"

namespace vdtest {

class SyncFile : public vd::File {
 public:
  void async_read(vd::IoKind k, uint64_t o, std::span<std::byte> b, vd::Completion done) override {
    done(read(k, o, b));
  }
  void async_write(vd::IoKind k, uint64_t o, std::span<const std::byte> b, vd::Completion done) override {
    done(write(k, o, b));
  }
  void async_flush(vd::Completion done) override { done(flush()); }
  void async_discard(uint64_t o, uint64_t n, vd::Completion done) override { done(discard(o, n)); }
  void async_set_size(uint64_t n, vd::Completion done) override { done(set_size(n)); }
  void async_allocate(uint64_t o, uint64_t n, vd::Completion done) override { done(allocate(o, n)); }
  void async_extent_at(uint64_t o, vd::ExtentCompletion done) override {
    auto r = extent_at(o);
    done(r.error(), r ? *r : vd::FileExtent{});
  }
};

}  // namespace vdtest
