// Cache mode names and bits (vd/cache.h), and aio names (vd/runtime.h).
#include "vd/cache.h"

#include "vd/runtime.h"

namespace vd {

Result<CacheMode> parse_cache_mode(std::string_view name) {
  if (name == "writeback") return CacheMode::writeback;
  if (name == "none" || name == "off") return CacheMode::none;
  if (name == "writethrough") return CacheMode::writethrough;
  if (name == "directsync") return CacheMode::directsync;
  if (name == "unsafe") return CacheMode::unsafe;
  return Error(Errc::invalid_argument, "Invalid cache option: " + std::string(name));
}

const char* cache_mode_name(CacheMode mode) {
  switch (mode) {
    case CacheMode::writeback: return "writeback";
    case CacheMode::none: return "none";
    case CacheMode::writethrough: return "writethrough";
    case CacheMode::directsync: return "directsync";
    case CacheMode::unsafe: return "unsafe";
  }
  return "writeback";
}

unsigned cache_file_mode(CacheMode mode) {
  switch (mode) {
    case CacheMode::writeback: return 0;
    case CacheMode::none: return file_direct;
    case CacheMode::writethrough: return file_write_through;
    case CacheMode::directsync: return file_direct | file_write_through;
    case CacheMode::unsafe: return file_no_flush;
  }
  return 0;
}

Result<Aio> parse_aio(std::string_view name) {
  if (name == "threads") return Aio::threads;
  if (name == "io_uring") return Aio::io_uring;
  if (name == "native") {
    return Error(Errc::not_supported,
                 "aio=native (Linux AIO) is not implemented: use threads or io_uring");
  }
  return Error(Errc::invalid_argument, "Invalid aio option: " + std::string(name));
}

}  // namespace vd
