// vdimg rebase: points an image at a new backing file. Safe mode (default) first copies
// into the image every range it does not hold whose content differs between the old and the
// new backing chain, so the disk reads the same afterwards; -u only rewrites the name.
#include <algorithm>
#include <iostream>

#include "host/vdimg/progress.h"
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
    "  -U, --force-share  open the new backing file even while another process writes it\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

constexpr uint64_t kChunk = 2ull << 20;  // qemu-img's IO_BUF_SIZE
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

// Whether the top holds [pos, pos+len) itself, and for how long from `pos` (at most `len`):
// qemu's bdrv_is_allocated on the top alone.
vd::Result<std::pair<bool, uint64_t>> top_allocation(vd::Runtime& rt, vd::Disk& top, uint64_t pos, uint64_t len) {
  std::optional<bool> held;
  uint64_t run = 0;
  while (run < len) {
    auto status = block_status_of(rt, top, pos + run, len - run);
    if (!status) return status.error();
    const vd::DiskExtent& x = *status;
    // Anything the top does not hold itself reads from below: it may change with the base.
    const bool here = x.level == 0 && x.extent.kind != vd::Extent::Kind::unallocated;
    if (held && *held != here) break;
    held = here;
    run += x.extent.length;
  }
  return std::pair{*held, run};
}

// qemu-img 7.2's walk: steps of at most IO_BUF_SIZE, each as long as the top's allocation
// stays the same (and, where the top does not hold it, cut at the end of the old and of the
// new backing disk); every step the top does not hold is compared and fixed, and counts
// 100 / (size / IO_BUF_SIZE) points of progress, as qemu counts it.
vd::Error safe_rebase(vd::Runtime& rt, vd::Disk& top, vd::Disk* fresh, QemuProgress& progress) {
  const uint64_t size = top.size();
  const uint64_t old_size = top.depth() > 1 ? top.image(1).size() : 0;
  const uint64_t new_size = fresh ? fresh->size() : 0;
  float step_progress = 0;
  if (size) step_progress = 100.0f / static_cast<float>(size / std::min(size, kChunk));
  for (uint64_t pos = 0, n = 0; pos < size; pos += n) {
    auto a = top_allocation(rt, top, pos, std::min(kChunk, size - pos));
    if (!a) return a.error();
    n = a->second;
    if (a->first) continue;
    if (pos < old_size && pos + n > old_size) n = old_size - pos;
    if (fresh && pos < new_size && pos + n > new_size) n = new_size - pos;
    if (auto err = fix_range(rt, top, fresh, pos, n)) return err;
    progress.print(step_progress, 100);
  }
  return {};
}

// qemu-img records no backing file without its format (it refuses after copying in safe
// mode; refused before here, the image is left as it was and reads the same).
vd::Error no_backing_format(const std::string& name) {
  return vd::Error(vd::Errc::invalid_argument,
                   "Could not change the backing file to '" + name + "': backing format must be specified");
}

}  // namespace

int cmd_rebase(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'b', "backing", true},
                                {'F', "backing-format", true}, {'u', nullptr, false},
                                {'p', nullptr, false}, {'q', "quiet", false}, {'t', "cache", true},
                                {'T', nullptr, true}, {'U', "force-share", false},
                                {0, "object", true}, {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  auto backing = args->last("backing");
  if (!backing) return fail("Must specify backing file (-b) or use unsafe mode (-u)");
  std::optional<std::string> name, fmt = args->last("backing-format");
  if (!backing->empty()) name = *backing;
  if (!name) fmt.reset();

  // From here qemu-img prints 0% (with -p) and ends its output with the progress newline,
  // failures included.
  QemuProgress progress(args->has("p") && !args->has("quiet"), 2.0f);
  progress.print(0, 100);
  auto cache = cache_args(*args, opt_cache | opt_src_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = 0;
  req.no_backing = args->has("u");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto plain = resolve_request(ctx, req);  // json:/--image-opts: the file, format and key
  if (!plain) return fail(plain.error());
  auto top = open_disk(ctx, *plain);
  if (!top) return fail(top.error());
  if (args->has("u") && name && !fmt) {
    (*top)->close();
    return fail(no_backing_format(*name));
  }
  vd::Error err;
  if (!args->has("u")) {
    std::unique_ptr<vd::Disk> fresh;
    if (name) {
      OpenRequest nreq;
      nreq.path = resolve_relative(plain->path, *name);
      nreq.passphrase = plain->passphrase;  // one key for the chain, as Disk::open gives it
      nreq.format = fmt;
      nreq.cache = cache->src_cache;
      nreq.force_share = args->has("force-share");
      auto d = open_disk(ctx, nreq);
      if (!d) {
        // qemu-img's words: "Could not open new backing file 'NAME': " and the open's error,
        // which names the file opened (NAME resolved against IMAGE's folder).
        std::string why = d.error().message();
        const std::string lead = "Could not open '" + nreq.path + "': ";
        if (why.rfind(lead, 0) == 0) why = why.substr(lead.size());
        return fail("Could not open new backing file '" + *name + "': " + why);
      }
      fresh = std::move(*d);
    }
    if (name && !fmt) {
      fresh->close();
      (*top)->close();
      return fail(no_backing_format(*name));
    }
    err = safe_rebase(ctx.rt, **top, fresh.get(), progress);
    if (fresh) fresh->close();
  }
  if (!err) err = (*top)->image(0).set_parent(name, fmt);
  // A backend that cannot record it must not let rebase report success.
  if (!err && (*top)->image(0).parent_filename() != name)
    err = vd::Error(vd::Errc::not_supported, "the image format did not record the new backing file");
  vd::Error close_err = (*top)->close();
  if (err) return fail(err.wrap("rebase").image(req.path));
  if (close_err) return fail(name_image(close_err, req.path));
  progress.print(100, 0);
  return kExitOk;
}

}  // namespace vdimg
