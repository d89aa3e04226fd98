// vdimg bench: qemu-img bench's workload (COUNT requests of SIZE bytes, DEPTH in flight,
// offsets advancing by STEP and wrapping at the end of the image), timed.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <span>
#include <cstdio>
#include <iostream>
#include <memory>
#include <tuple>
#include <algorithm>

#include "host/vdimg/bench_schedule.h"
#include "host/vdimg/io_script.h"
#include "backends/common/sizes.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg bench [-c N] [-d DEPTH] [-f FMT] [-n] [-o OFFSET] [--pattern=BYTE] [-q]\n"
    "                   [-s SIZE] [-S STEP] [-t CACHE] [-i AIO] [-w] [--flush-interval=N]\n"
    "                   [--no-drain] [-U] IMAGE\n"
    "Sends N requests (default 75000) of SIZE bytes (default 4 KiB), DEPTH in parallel\n"
    "(default 64), from OFFSET (default 0) advancing by STEP (default SIZE), wrapping at the end\n"
    "of the image. Reads unless -w; writes fill with --pattern (default 0).\n"
    "  -t CACHE  host cache mode: writeback (default), none, writethrough, directsync, unsafe\n"
    "  -i AIO    threads (default) or io_uring; -n (qemu's native AIO) is refused\n"
    "  -U, --force-share  open even while another process writes IMAGE (not with -w)\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

struct BenchConfig {
  uint64_t count = 75000, depth = 64, size = 4096, step = 0, offset = 0, flush_interval = 0;
  bool write = false, drain_on_flush = true;
  uint8_t pattern = 0;
};

// Sends the requests and flushes BenchSchedule asks for until it is finished (or a request
// failed and the ones in flight have completed).
struct Bench : std::enable_shared_from_this<Bench> {
  vd::Disk& disk;
  BenchConfig cfg;
  BenchSchedule schedule;
  uint64_t next_offset = 0;
  unsigned outstanding = 0;  // requests and flushes sent, not completed
  // One block aligned for O_DIRECT (as qemu-img bench's blk_blockalign): with -t none the
  // requests then reach the kernel without a bounce buffer.
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> memory;
  std::vector<std::span<std::byte>> buffers;
  std::vector<size_t> free_buffers;
  vd::Error error;
  vd::Completion finished;

  Bench(vd::Disk& d, BenchConfig c)
      : disk(d), cfg(c), schedule(c.count, c.depth, c.write ? c.flush_interval : 0, c.drain_on_flush),
        next_offset(c.offset) {}

  void start(vd::Completion done) {
    finished = std::move(done);
    size_t n = static_cast<size_t>(std::min(cfg.depth, cfg.count));
    const size_t stride = (static_cast<size_t>(cfg.size) + 4095) / 4096 * 4096;
    memory.reset(static_cast<std::byte*>(std::aligned_alloc(4096, stride * n)));
    if (!memory) {
      auto fail_now = std::move(finished);
      return fail_now(vd::Error(vd::Errc::no_space, "out of memory for the request buffers"));
    }
    std::memset(memory.get(), cfg.pattern, stride * n);
    for (size_t i = 0; i < n; ++i) buffers.emplace_back(memory.get() + i * stride, static_cast<size_t>(cfg.size));
    for (size_t i = 0; i < n; ++i) free_buffers.push_back(i);
    run(schedule.start());
  }

  uint64_t take_offset() {
    // qemu-img 7.2 wraps modulo the image size; a request that would then cross the end
    // (qemu fails it with EIO) starts over at 0 instead.
    uint64_t off = next_offset;
    next_offset = (next_offset + cfg.step) % disk.size();
    if (next_offset + cfg.size > disk.size()) next_offset = 0;
    return off;
  }

  void run(BenchSchedule::Step step) {
    if (!error && step.flush) {
      ++outstanding;
      const bool drained = schedule.in_drained_flush();
      auto self = shared_from_this();
      disk.flush([self, drained](vd::Error fe) {
        --self->outstanding;
        if (fe && !self->error) self->error = std::move(fe);
        self->run(self->schedule.flush_done(drained));
      });
    }
    for (uint64_t i = 0; !error && i < step.issue; ++i) {
      size_t b = free_buffers.back();
      free_buffers.pop_back();
      ++outstanding;
      uint64_t off = take_offset();
      // The Bench outlives its requests (cmd_bench holds it until the run has drained), so a
      // plain pointer does: the handler then fits std::function's inline buffer.
      auto cb = [this, b](vd::Error e) { on_done(b, std::move(e)); };
      if (cfg.write) disk.write(off, buffers[b], 0, cb);
      else disk.read(off, buffers[b], cb);
    }
    if (outstanding == 0 && finished && (error || schedule.finished())) {
      auto done = std::move(finished);
      done(error);
    }
  }

  void on_done(size_t b, vd::Error e) {
    --outstanding;
    free_buffers.push_back(b);
    if (e && !error) error = std::move(e);
    run(schedule.request_done());
  }
};

vd::Error parse_config(const Args& args, BenchConfig& cfg) {
  auto number = [&](const char* key, uint64_t& out, bool sized) -> vd::Error {
    auto v = args.last(key);
    if (!v) return {};
    auto n = vd::parse_size(*v);
    if (!n || (!sized && v->find_first_not_of("0123456789") != std::string::npos))
      return vd::Error(vd::Errc::invalid_argument, std::string("Invalid value for --") + key + ": " + *v);
    out = *n;
    return {};
  };
  for (auto [key, field, sized] : {std::tuple{"count", &cfg.count, false}, {"depth", &cfg.depth, false},
                                   {"size", &cfg.size, true}, {"step-size", &cfg.step, true},
                                   {"offset", &cfg.offset, true},
                                   {"flush-interval", &cfg.flush_interval, false}})
    if (auto err = number(key, *field, sized)) return err;
  if (auto p = args.last("pattern")) {
    auto byte = vd::parse_pattern_byte(*p);
    if (!byte) return byte.error();
    cfg.pattern = *byte;
  }
  cfg.write = args.has("write");
  cfg.drain_on_flush = !args.has("no-drain");
  if (cfg.step == 0) cfg.step = cfg.size;
  if (cfg.depth == 0 || cfg.size == 0) return vd::Error(vd::Errc::invalid_argument, "Invalid depth or size");
  // qemu-img's checks, in its order, before the image is opened.
  if (!cfg.write && cfg.flush_interval)
    return vd::Error(vd::Errc::invalid_argument, "--flush-interval is only available in write tests");
  if (cfg.flush_interval && cfg.flush_interval < cfg.depth)
    return vd::Error(vd::Errc::invalid_argument, "Flush interval can't be smaller than depth");
  // Buffers are allocated up front: keep them sane.
  if (cfg.size > vd::kIoMaxTransfer || std::min(cfg.depth, cfg.count) * cfg.size > vd::kIoMaxTransfer)
    return vd::Error(vd::Errc::too_large, "depth x size above " + vd::format_size(vd::kIoMaxTransfer));
  return {};
}

}  // namespace

int cmd_bench(const Argv& argv) {
  auto args = parse_args(argv, {{'c', "count", true}, {'d', "depth", true}, {'f', "format", true},
                                {0, "flush-interval", true}, {'i', "aio", true},
                                {'n', "native", false}, {0, "no-drain", false},
                                {'o', "offset", true}, {0, "pattern", true}, {'q', "quiet", false},
                                {'s', "size", true}, {'S', "step-size", true}, {'t', "cache", true},
                                {'w', "write", false}, {'U', "force-share", false},
                                {0, "object", true}, {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  BenchConfig cfg;
  if (auto err = parse_config(*args, cfg)) return fail(err);
  auto cache = cache_args(*args, opt_cache | opt_aio, vd::CacheMode::writeback, "Invalid cache mode");
  if (!cache) return fail(cache.error());
  // qemu-img bench's -n is aio=native (Linux AIO), which vd does not have.
  if (args->has("native")) return fail(vd::parse_aio("native").error());
  Context ctx(cache->aio);
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = cfg.write ? 0u : vd::open_read_only;
  req.force_share = args->has("force-share");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  req.path = display_name(req, **disk);  // for the messages below
  if (cfg.size > (*disk)->size() || cfg.offset > (*disk)->size() - cfg.size)
    return fail(req.path + ": request size or offset beyond the end of the image");

  // qemu-img bench prints its two lines even with -q; so does vdimg.
  std::printf("Sending %llu %s requests, %llu bytes each, %llu in parallel (starting at offset "
                "%llu, step size %llu)\n",
                static_cast<unsigned long long>(cfg.count), cfg.write ? "write" : "read",
                static_cast<unsigned long long>(cfg.size), static_cast<unsigned long long>(cfg.depth),
                static_cast<unsigned long long>(cfg.offset), static_cast<unsigned long long>(cfg.step));
  if (cfg.flush_interval)
    std::printf("Sending flush every %llu requests\n", static_cast<unsigned long long>(cfg.flush_interval));
  std::fflush(stdout);
  auto t0 = std::chrono::steady_clock::now();
  vd::Error err;
  if (cfg.count) {
    auto bench = std::make_shared<Bench>(**disk, cfg);
    err = ctx.rt.wait([bench](vd::Completion done) { bench->start(std::move(done)); });
  }
  std::chrono::duration<double> secs = std::chrono::steady_clock::now() - t0;
  vd::Error close_err = (*disk)->close();
  if (err) return fail(name_image(err, req.path));
  if (close_err) return fail(name_image(close_err, req.path));
  std::printf("Run completed in %3.3f seconds.\n", secs.count());
  return kExitOk;
}

}  // namespace vdimg
