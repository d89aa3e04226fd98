// vdimg commit: writes what the top image holds into its backing file, so that the backing
// file alone reads as the whole chain did. The top is left as it is (see commit()).
//
// The top is opened alone; its own extents are found with block_status (level 0) and copied
// through a second Disk opened read-write on the backing file; only the immediate backing
// file is supported.
#include <iostream>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg commit [-f FMT] [-b BASE] [-d] [-p] [-q] IMAGE\n"
    "Copies the data of IMAGE into its backing file.\n"
    "  -f FMT   format of IMAGE\n"
    "  -b BASE  the backing file to commit into (only the immediate one is supported)\n"
    "  -d       keep IMAGE's data (always the case: IMAGE is never emptied)\n"
    "  -q       quiet\n";

constexpr uint64_t kChunk = 2ull << 20;

vd::Result<vd::DiskExtent> status(vd::Runtime& rt, vd::Disk& d, uint64_t off, uint64_t len) {
  vd::DiskExtent x;
  vd::Error e = rt.wait([&](vd::Completion done) {
    d.block_status(off, len, [&x, done](vd::Error err, vd::DiskExtent ext) {
      x = ext;
      done(err);
    });
  });
  if (e) return e;
  if (x.extent.length == 0 || x.extent.length > len)
    return vd::Error(vd::Errc::internal, "block status at " + vd::hex(off) + " returned a bad length");
  return x;
}

// Copies one extent the top holds into the base disk, in chunks.
vd::Error copy_extent(vd::Runtime& rt, vd::Disk& top, vd::Disk& base, uint64_t off,
                      const vd::DiskExtent& x, std::vector<std::byte>& buf) {
  if (x.extent.kind == vd::Extent::Kind::zero)
    return rt.wait([&](vd::Completion done) {
      base.write_zeroes(off, x.extent.length, 0, std::move(done));
    });
  for (uint64_t pos = 0; pos < x.extent.length; pos += kChunk) {
    uint64_t n = std::min(kChunk, x.extent.length - pos);
    buf.resize(n);
    if (auto e = rt.wait([&](vd::Completion done) { top.read(off + pos, buf, std::move(done)); }))
      return e;
    if (auto e = rt.wait([&](vd::Completion done) { base.write(off + pos, buf, 0, std::move(done)); }))
      return e;
  }
  return {};
}

// The top keeps its data afterwards (as qemu-img commit -d): emptying it needs a way to
// make clusters unallocated again, and Image::discard follows qemu's discard rules, which
// on an image with a backing file may leave zero clusters that would hide the base.
vd::Error commit(vd::Runtime& rt, vd::Disk& top, vd::Disk& base) {
  std::vector<std::byte> buf;
  uint64_t end = std::min(top.size(), base.size());
  for (uint64_t pos = 0; pos < end;) {
    auto x = status(rt, top, pos, end - pos);
    if (!x) return x.error();
    if (x->level == 0 && x->extent.kind != vd::Extent::Kind::unallocated) {
      if (auto e = copy_extent(rt, top, base, pos, *x, buf)) return e;
    }
    pos += x->extent.length;
  }
  return rt.wait([&](vd::Completion done) { base.flush(std::move(done)); });
}

}  // namespace

int cmd_commit(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'b', "base", true}, {'d', nullptr, false},
                                {'p', nullptr, false}, {'q', "quiet", false}, {'t', "cache", true},
                                {'r', "rate-limit", true}, {0, "object", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  auto cache = cache_args(*args, opt_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = 0;
  // The top alone: its chain would hold the backing file read-only, and that lock would
  // keep out the read-write open of the backing file below (the top's own extents are all
  // the copy reads).
  req.no_backing = true;
  auto top = open_disk(ctx, req);
  if (!top) return fail(top.error());
  const vd::Image& top_image = (*top)->image(0);
  auto parent_name = top_image.parent_filename();
  if (!parent_name || parent_name->empty()) return fail(req.path + ": Image does not have a backing file");
  const std::string parent_path = resolve_relative(req.path, *parent_name);
  if (auto b = args->last("base"); b && *b != parent_path && resolve_relative(req.path, *b) != parent_path)
    return fail(req.path + ": only committing into the immediate backing file is supported");
  OpenRequest base_req;
  base_req.path = parent_path;
  base_req.format = top_image.parent_format();
  if (!base_req.format || base_req.format->empty()) {
    auto probed = ctx.registry.probe(parent_path, ctx.rt.files());
    if (!probed) return fail(probed.error());
    base_req.format = std::string((*probed)->name());
  }
  base_req.flags = 0;
  base_req.cache = cache->cache;
  auto base = open_disk(ctx, base_req);
  if (!base) return fail(base.error());
  vd::Error err = commit(ctx.rt, **top, **base);
  vd::Error close_base = (*base)->close();
  vd::Error close_top = (*top)->close();
  if (err) return fail(err.wrap("commit").image(req.path));
  if (close_base) return fail(name_image(close_base, base_req.path));
  if (close_top) return fail(name_image(close_top, req.path));
  if (!args->has("quiet")) std::cout << "Image committed.\n";
  return kExitOk;
}

}  // namespace vdimg
