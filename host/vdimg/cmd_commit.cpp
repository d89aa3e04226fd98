// vdimg commit: writes what the top image and the images between it and the base hold into
// the base, so that the base alone reads as the chain above it did (qemu-img commit). Without
// -d or -b the top is then emptied, reading through to the base again; with -b BASE (any
// image of the chain; implies -d) the top and the images between are left as they are.
//
// The chain is first opened read-only to learn its images; then each image is reopened on
// its own (the base and, when it is emptied, the top read-write; the others read-only) and
// assembled into one Disk, so the copy reads through the chain and the base's own partial
// cluster writes still see what lies below it.
//
// Crash invariant: the base holds the data and is flushed before anything is removed from the
// top. A crash during the copy leaves the top unchanged above a base that is partly updated
// with the same data the top shows; a crash while emptying leaves a top some of whose
// clusters read through to the base, which holds the same data.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "backends/common/sizes.h"
#include "vd/cache.h"
#include "host/vdimg/progress.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg commit [-f FMT] [-t CACHE] [-b BASE] [-d] [-p] [-q] [-r RATE] IMAGE\n"
    "Copies the data of IMAGE (and of the images between it and BASE) into BASE, by default\n"
    "its backing file, then empties IMAGE.\n"
    "  -f FMT   format of IMAGE\n"
    "  -b BASE  the image of the backing chain to commit into (implies -d)\n"
    "  -d       keep IMAGE's data (do not empty it)\n"
    "  -p       show progress\n"
    "  -r RATE  copy at most RATE bytes per second (k, M, G... suffixes)\n"
    "  -t CACHE cache mode of the chain: writeback (default), none, writethrough, directsync,\n"
    "           unsafe\n"
    "  -q       quiet\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

constexpr uint64_t kChunk = 2ull << 20;

std::string canonical(const std::string& path) {
  std::error_code ec;
  auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(path, ec), ec);
  return ec ? path : p.string();
}

struct ChainEntry {
  std::string path;
  std::string format;
};

// The images of IMAGE's chain, top first, from a read-only open.
vd::Result<std::vector<ChainEntry>> learn_chain(Context& ctx, const OpenRequest& top) {
  auto disk = open_disk(ctx, top);
  if (!disk) return disk.error();
  std::vector<ChainEntry> chain;
  for (size_t i = 0; i < (*disk)->depth(); ++i)
    chain.push_back({(*disk)->image(i).path(), format_name((*disk)->image(i))});
  (*disk)->close();
  return chain;
}

// The level of BASE in the chain, matched as qemu-img does: BASE relative to the folder of
// each image in turn, compared with that image's backing file, both canonical.
std::optional<size_t> find_base(const std::vector<ChainEntry>& chain, const std::string& base) {
  for (size_t i = 0; i + 1 < chain.size(); ++i) {
    if (canonical(resolve_relative(chain[i].path, base)) == canonical(chain[i + 1].path)) return i + 1;
  }
  return std::nullopt;
}

// Reopens the chain image by image: `writable` levels read-write.
vd::Result<std::unique_ptr<vd::Disk>> reopen(Context& ctx, const std::vector<ChainEntry>& chain,
                                             size_t base, bool top_writable, vd::CacheIoProvider& files,
                                             const std::optional<std::string>& passphrase) {
  std::vector<std::unique_ptr<vd::Image>> images;
  for (size_t i = 0; i < chain.size(); ++i) {
    const vd::Backend* backend = ctx.registry.find(chain[i].format);
    if (!backend) return vd::Error(vd::Errc::not_found, "Unknown file format '" + chain[i].format + "'");
    vd::OpenOptions o;
    const bool writable = i == base || (i == 0 && top_writable);
    o.flags = vd::open_format_given | (writable ? 0u : unsigned{vd::open_read_only});
    o.passphrase = passphrase;  // one key for the chain, as Disk::open gives it
    auto img = backend->open(chain[i].path, o, files);
    if (!img) {
      for (auto& open : images) open->close(false);
      return name_image(img.error(), chain[i].path);
    }
    images.push_back(std::move(*img));
  }
  return vd::Disk::assemble(std::move(images), &ctx.rt.files());
}

// Holds the copy to `rate` bytes per second (0: unlimited).
class Throttle {
 public:
  explicit Throttle(uint64_t rate) : rate_(rate), start_(std::chrono::steady_clock::now()) {}
  void account(uint64_t bytes) {
    if (!rate_) return;
    done_ += bytes;
    auto due = start_ + std::chrono::duration<double>(static_cast<double>(done_) / static_cast<double>(rate_));
    std::this_thread::sleep_until(due);
  }

 private:
  uint64_t rate_;
  uint64_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
};

struct CommitJob {
  vd::Runtime& rt;
  vd::Disk& disk;   // the chain from the top down to (and below) the base
  size_t base;      // level of the base
  ProgressLine& progress;
  Throttle throttle;

  vd::Image& base_image() { return disk.image(base); }

  // Copies one extent held above the base into it, in chunks read through the chain.
  vd::Error copy_extent(uint64_t off, const vd::DiskExtent& x, std::vector<std::byte>& buf) {
    if (x.extent.kind == vd::Extent::Kind::zero)
      return rt.wait([&](vd::Completion done) {
        // May unmap, as qemu-img commit writes zeros: the base drops the cluster it had.
        base_image().write_zeroes(off, x.extent.length, vd::zero_may_unmap, std::move(done));
      });
    for (uint64_t pos = 0; pos < x.extent.length; pos += kChunk) {
      uint64_t n = std::min(kChunk, x.extent.length - pos);
      buf.resize(n);
      if (auto e = rt.wait([&](vd::Completion done) { disk.read(off + pos, buf, std::move(done)); }))
        return e;
      if (auto e = rt.wait([&](vd::Completion done) { base_image().write(off + pos, buf, 0, std::move(done)); }))
        return e;
      throttle.account(n);
    }
    return {};
  }

  // Every range some image above the base holds goes into the base; then the base is
  // flushed: the data is durable there before the caller may empty the top.
  vd::Error run() {
    const uint64_t end = disk.size();
    if (base_image().size() < end) {
      if (auto e = base_image().resize(end)) return e;
    }
    std::vector<std::byte> buf;
    for (uint64_t pos = 0; pos < end;) {
      auto x = block_status_of(rt, disk, pos, end - pos);
      if (!x) return x.error();
      if (x->level >= 0 && static_cast<size_t>(x->level) < base &&
          x->extent.kind != vd::Extent::Kind::unallocated) {
        if (auto e = copy_extent(pos, *x, buf)) return e;
      }
      pos += x->extent.length;
      progress(pos, end);
    }
    return rt.wait([&](vd::Completion done) { base_image().flush(std::move(done)); });
  }
};

}  // namespace

int cmd_commit(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'b', "base", true}, {'d', nullptr, false},
                                {'p', nullptr, false}, {'q', "quiet", false}, {'t', "cache", true},
                                {'r', "rate-limit", true}, {0, "object", true},
                                {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  uint64_t rate = 0;
  if (auto r = args->last("rate-limit")) {
    auto parsed = vd::parse_size(*r);
    if (!parsed) {
      std::cerr << "vdimg: Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for\n";
      return fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    }
    rate = *parsed;
  }
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  const bool quiet = args->has("quiet");
  const auto base_name = args->last("base");
  const bool keep = args->has("d") || base_name.has_value();
  auto cache = cache_args(*args, opt_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto plain = resolve_request(ctx, req);  // json:/--image-opts: the file, format and key
  if (!plain) return fail(plain.error());
  auto chain = learn_chain(ctx, *plain);
  if (!chain) return fail(chain.error());
  size_t base = 1;
  if (base_name) {
    auto found = find_base(*chain, *base_name);
    if (!found) return fail("Did not find '" + *base_name + "' in the backing chain of '" + req.path + "'");
    base = *found;
  } else if (chain->size() < 2) {
    return fail("Image does not have a backing file");
  }
  // -t applies to every image of the chain, as qemu-img's cache mode does; the provider
  // outlives the disk (its images keep it to open and post).
  vd::CacheIoProvider files(ctx.rt.files(), vd::cache_file_mode(cache->cache));
  auto disk = reopen(ctx, *chain, base, !keep, files, plain->passphrase);
  if (!disk) return fail(disk.error());
  ProgressLine progress(args->has("p") && !quiet);
  CommitJob job{ctx.rt, **disk, base, progress, Throttle(rate)};
  vd::Error err = job.run();
  // The base is durable (job.run flushed it): only now may the top lose its clusters.
  if (!err && !keep) {
    err = (*disk)->image(0).make_empty();
    if (err && err.kind() == vd::Errc::not_supported) {
      std::cerr << "vdimg: " << err.message() << "\n";  // qemu-img reports it and goes on
      err = {};
    } else if (err) {
      err = name_image(err, req.path);
    }
  }
  progress.finish();
  vd::Error close_err = (*disk)->close();
  if (err) return fail(err.wrap("commit").image(req.path));
  if (close_err) return fail(close_err);
  if (!quiet) std::cout << "Image committed.\n";
  return kExitOk;
}

}  // namespace vdimg
