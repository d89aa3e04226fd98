// Cache modes as QEMU names them (cache=writeback|none|writethrough|directsync|unsafe) and
// the provider wrapper that applies one to every file an image opens.
//
// A mode is the three FileMode bits of vd/io.h: direct (O_DIRECT: the host page cache is
// bypassed), write-through (each write durable before it completes) and no-flush (flushes
// succeed at once). It is per file, as in QEMU, so it travels through IoProvider::open; a
// Disk applies its DiskOpenOptions::cache to every image of the chain (data files and LUKS
// payloads included) by opening them through a CacheIoProvider.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "vd/error.h"
#include "vd/io.h"

namespace vd {

enum class CacheMode : uint8_t { writeback, none, writethrough, directsync, unsafe };

// QEMU's names ("off" is QEMU's other name for none); nullopt-like error for others.
VD_API Result<CacheMode> parse_cache_mode(std::string_view name);
VD_API const char* cache_mode_name(CacheMode mode);
// The FileMode bits of a mode: none -> direct; writethrough -> write_through; directsync ->
// both; unsafe -> no_flush; writeback -> none of them.
VD_API unsigned cache_file_mode(CacheMode mode);

// Forwards to `inner` (held by reference: it must outlive this wrapper), adding `bits` to
// every open. The files come from `inner`; the wrapper is only needed while opening and by
// the images that post through it.
class VD_API CacheIoProvider : public IoProvider {
 public:
  CacheIoProvider(IoProvider& inner, unsigned bits) : inner_(inner), bits_(bits) {}
  Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) override {
    return inner_.open(path, mode | bits_);
  }
  Error remove(const std::string& path) override { return inner_.remove(path); }
  bool exists(const std::string& path) override { return inner_.exists(path); }
  void post(std::function<void()> fn) override { inner_.post(std::move(fn)); }
  void offload(std::function<void()> work, std::function<void()> then) override {
    inner_.offload(std::move(work), std::move(then));
  }
  IoProvider& inner() { return inner_; }

 private:
  IoProvider& inner_;
  unsigned bits_;
};

}  // namespace vd
