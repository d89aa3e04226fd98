// api_reads: 4 KiB reads at depth 32 through the C++ API, the way `qemu-img bench` does them.
//
//   api_reads [-c COUNT] [-d DEPTH] [-s SIZE] [-t IO_THREADS] [--asio] IMAGE
//
// Opens IMAGE (read-only, format probed) with vd::Runtime + vd::Disk::open and keeps DEPTH
// reads of SIZE bytes in flight until COUNT requests have completed. The offsets are those of
// qemu-img bench's default: the first request reads at 0, each next one SIZE bytes further,
// wrapping to 0 at the end of the image (qemu-img bench -s SIZE without -S). A request is
// re-issued from the completion of the previous one in its slot.
//
//   default    the callback API: disk.read(offset, span, Completion)
//   --asio     the Asio form: disk.async_read(offset, span, handler)
//
// Everything runs on this thread (Runtime::wait runs the io_context); the Runtime's pool
// does the preadv calls. Prints one line:
//   api_reads: MODE: COUNT requests in SECONDS s, RATE requests/s
// Defaults: COUNT 1000000, DEPTH 32, SIZE 4096, IO_THREADS 0 (the Runtime's default).
// Exit status 1 on a failed request or a read that does not return the image's pattern
// (byte 0x5a as made by bench/api_reads.sh; -P 0 disables the check).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "vd/disk.h"
#include "vd/error.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  uint64_t count = 1000000;
  unsigned depth = 32;
  size_t size = 4096;
  unsigned io_threads = 0;
  bool asio = false;
  int pattern = 0x5a;  // -1: do not check
  std::string image;
};

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: api_reads [-c COUNT] [-d DEPTH] [-s SIZE] [-t IO_THREADS] [-P BYTE|none] [--asio] IMAGE\n");
  std::exit(2);
}

// Everything below runs on the Runtime's executor (this thread): no locking.
struct Bench {
  vd::Disk& disk;
  const Config& cfg;
  uint64_t disk_size;
  uint64_t next_offset = 0;
  uint64_t issued = 0, completed = 0, bad_data = 0;
  unsigned in_flight = 0;
  vd::Error error;
  vd::Completion done;
  std::vector<std::vector<std::byte>> bufs;  // one per slot

  Bench(vd::Disk& d, const Config& c)
      : disk(d), cfg(c), disk_size(d.size()), bufs(c.depth, std::vector<std::byte>(c.size)) {}

  // qemu-img bench: offset += step; wraps to 0 when the next request would run past the end.
  uint64_t take_offset() {
    uint64_t off = next_offset;
    next_offset += cfg.size;
    if (next_offset + cfg.size > disk_size) next_offset = 0;
    return off;
  }

  void start(vd::Completion d) {
    done = std::move(d);
    for (size_t slot = 0; slot < bufs.size() && issued < cfg.count; ++slot) issue(slot);
    if (in_flight == 0) finish();
  }

  void issue(size_t slot) {
    if (issued >= cfg.count || error) return;
    ++issued;
    ++in_flight;
    uint64_t off = take_offset();
    if (cfg.asio) {
      disk.async_read(off, bufs[slot], [this, slot](boost::system::error_code ec) {
        completed_one(slot, ec ? vd::Error(vd::Errc::io, "async_read: " + ec.message()) : vd::Error());
      });
    } else {
      disk.read(off, bufs[slot], [this, slot](vd::Error e) { completed_one(slot, std::move(e)); });
    }
  }

  void completed_one(size_t slot, vd::Error e) {
    --in_flight;
    ++completed;
    if (e) {
      if (!error) error = e.wrap("read");
    } else if (cfg.pattern >= 0) {
      auto& b = bufs[slot];
      if (b.front() != std::byte(cfg.pattern) || b.back() != std::byte(cfg.pattern)) ++bad_data;
    }
    issue(slot);
    if (in_flight == 0) finish();
  }

  void finish() {
    if (!done) return;
    auto d = std::move(done);
    done = nullptr;
    d(error);
  }
};

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (a == "-c") cfg.count = std::strtoull(value().c_str(), nullptr, 0);
    else if (a == "-d") cfg.depth = static_cast<unsigned>(std::strtoul(value().c_str(), nullptr, 0));
    else if (a == "-s") cfg.size = std::strtoull(value().c_str(), nullptr, 0);
    else if (a == "-t") cfg.io_threads = static_cast<unsigned>(std::strtoul(value().c_str(), nullptr, 0));
    else if (a == "-P") {
      std::string v = value();
      cfg.pattern = v == "none" ? -1 : static_cast<int>(std::strtol(v.c_str(), nullptr, 0) & 0xff);
    } else if (a == "--asio") cfg.asio = true;
    else if (a == "-h" || a == "--help") usage();
    else if (!a.empty() && a[0] == '-') usage();
    else if (cfg.image.empty()) cfg.image = a;
    else usage();
  }
  if (cfg.image.empty() || cfg.depth == 0 || cfg.size == 0) usage();

  vd::Runtime rt(cfg.io_threads);
  auto registry = vd::Registry::builtin();
  vd::DiskOpenOptions opts;
  opts.flags = vd::open_read_only;
  auto disk = vd::Disk::open(cfg.image, opts, registry, rt.files());
  if (!disk) {
    std::fprintf(stderr, "api_reads: %s\n", disk.error().message().c_str());
    return 1;
  }
  if ((*disk)->size() < cfg.size) {
    std::fprintf(stderr, "api_reads: image smaller than one request\n");
    return 1;
  }

  Bench bench(**disk, cfg);
  auto t0 = Clock::now();
  vd::Error e = rt.wait([&](vd::Completion done) { bench.start(std::move(done)); });
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();

  const char* mode = cfg.asio ? "async_read" : "read";
  if (e) {
    std::fprintf(stderr, "api_reads: %s: %s\n", mode, e.message().c_str());
    return 1;
  }
  if (auto ce = (*disk)->close()) std::fprintf(stderr, "api_reads: close: %s\n", ce.message().c_str());
  std::printf("api_reads: %s: %llu requests in %.3f s, %.0f requests/s\n", mode,
              static_cast<unsigned long long>(bench.completed), secs,
              static_cast<double>(bench.completed) / secs);
  if (bench.bad_data) {
    std::fprintf(stderr, "api_reads: %llu reads did not return the pattern 0x%02x\n",
                 static_cast<unsigned long long>(bench.bad_data), cfg.pattern);
    return 1;
  }
  return 0;
}
