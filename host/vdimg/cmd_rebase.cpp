// vdimg rebase: points an image at a new backing file. Safe mode (default) first copies
// into the image every range it does not hold whose content differs between the old and the
// new backing chain, so the disk reads the same afterwards; -u only rewrites the name.
#include <algorithm>
#include <iostream>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg rebase [-f FMT] [-t CACHE] [-T SRC_CACHE] [-p] [-u] [-q] [-U] -b BACKING\n"
    "                    [-F BACKING_FMT] IMAGE\n"
    "Changes the backing file of IMAGE. BACKING \"\" removes it.\n"
    "  -f FMT          format of IMAGE\n"
    "  -b BACKING      new backing file (relative to IMAGE's folder)\n"
    "  -F BACKING_FMT  format of the new backing file\n"
    "  -u              unsafe: only change the recorded name, copy nothing\n"
    "  -t CACHE        cache mode of IMAGE: writeback (default), none, writethrough,\n"
    "                  directsync, unsafe\n"
    "  -T SRC_CACHE    cache mode of the old and new backing chains (same modes)\n"
    "  -p              show progress\n"
    "  -q              quiet\n"
    "  -U, --force-share  open the new backing file even while another process writes it\n";

constexpr uint64_t kChunk = 1ull << 20;
constexpr uint64_t kGranule = 4096;

vd::Error read(vd::Runtime& rt, vd::Disk* d, uint64_t off, std::vector<std::byte>& buf) {
  if (!d || off >= d->size()) {
    std::fill(buf.begin(), buf.end(), std::byte{0});
    return {};
  }
  uint64_t n = std::min<uint64_t>(buf.size(), d->size() - off);
  std::fill(buf.begin() + static_cast<long>(n), buf.end(), std::byte{0});
  return rt.wait([&](vd::Completion done) { d->read(off, std::span(buf.data(), n), std::move(done)); });
}

// Writes into the top the granules of [off, off+len) where old and new content differ.
vd::Error fix_range(vd::Runtime& rt, vd::Disk& top, vd::Disk* fresh, uint64_t off, uint64_t len) {
  std::vector<std::byte> a(len), b(len);
  if (auto e = read(rt, &top, off, a)) return e;
  if (auto e = read(rt, fresh, off, b)) return e;
  for (uint64_t at = 0; at < len;) {
    uint64_t n = std::min(kGranule, len - at);
    if (std::equal(a.begin() + static_cast<long>(at), a.begin() + static_cast<long>(at + n),
                   b.begin() + static_cast<long>(at))) {
      at += n;
      continue;
    }
    uint64_t end = at + n;  // extend over the following differing granules
    while (end < len) {
      uint64_t m = std::min(kGranule, len - end);
      if (std::equal(a.begin() + static_cast<long>(end), a.begin() + static_cast<long>(end + m),
                     b.begin() + static_cast<long>(end)))
        break;
      end += m;
    }
    std::span<const std::byte> data(a.data() + at, end - at);
    if (auto e = rt.wait([&](vd::Completion done) { top.write(off + at, data, 0, std::move(done)); }))
      return e;
    at = end;
  }
  return {};
}

vd::Error safe_rebase(vd::Runtime& rt, vd::Disk& top, vd::Disk* fresh) {
  for (uint64_t pos = 0; pos < top.size();) {
    uint64_t len = std::min(kChunk, top.size() - pos);
    vd::DiskExtent x;
    vd::Error e = rt.wait([&](vd::Completion done) {
      top.block_status(pos, len, [&x, done](vd::Error err, vd::DiskExtent ext) {
        x = ext;
        done(err);
      });
    });
    if (e) return e;
    if (x.extent.length == 0 || x.extent.length > len)
      return vd::Error(vd::Errc::internal, "block status at " + vd::hex(pos) + " returned a bad length");
    // Anything the top does not hold itself reads from below: it may change with the base.
    if (x.level != 0 || x.extent.kind == vd::Extent::Kind::unallocated)
      if (auto err = fix_range(rt, top, fresh, pos, x.extent.length)) return err;
    pos += x.extent.length;
  }
  return {};
}

}  // namespace

int cmd_rebase(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'b', "backing", true},
                                {'F', "backing-format", true}, {'u', nullptr, false},
                                {'p', nullptr, false}, {'q', "quiet", false}, {'t', "cache", true},
                                {'T', nullptr, true}, {'U', "force-share", false},
                                {0, "object", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  auto backing = args->last("backing");
  if (!backing) return fail("Must specify backing file (-b) or use unsafe mode (-u)");
  std::optional<std::string> name, fmt = args->last("backing-format");
  if (!backing->empty()) name = *backing;
  if (!name) fmt.reset();

  auto cache = cache_args(*args, opt_cache | opt_src_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = 0;
  req.no_backing = args->has("u");
  auto top = open_disk(ctx, req);
  if (!top) return fail(top.error());
  vd::Error err;
  if (!args->has("u")) {
    std::unique_ptr<vd::Disk> fresh;
    if (name) {
      OpenRequest nreq;
      nreq.path = resolve_relative(req.path, *name);
      nreq.format = fmt;
      nreq.cache = cache->src_cache;
      nreq.force_share = args->has("force-share");
      auto d = open_disk(ctx, nreq);
      if (!d) return fail(d.error().wrap("opening", "new backing file"));
      fresh = std::move(*d);
    }
    err = safe_rebase(ctx.rt, **top, fresh.get());
    if (fresh) fresh->close();
  }
  if (!err) err = (*top)->image(0).set_parent(name, fmt);
  // A backend that cannot record it must not let rebase report success.
  if (!err && (*top)->image(0).parent_filename() != name)
    err = vd::Error(vd::Errc::not_supported, "the image format did not record the new backing file");
  vd::Error close_err = (*top)->close();
  if (err) return fail(err.wrap("rebase").image(req.path));
  if (close_err) return fail(name_image(close_err, req.path));
  return kExitOk;
}

}  // namespace vdimg
