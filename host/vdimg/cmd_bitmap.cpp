// vdimg bitmap: qemu-img 7.2's bitmap command. The operations (--add, --remove, --clear,
// --enable, --disable, --merge SOURCE) apply in command-line order to the persistent bitmap
// BITMAP of IMAGE; the first that fails stops the command (what ran before it stays, as in
// qemu-img: the image is closed, which stores the bitmaps).
#include <iostream>
#include <algorithm>
#include <optional>

#include "backends/common/sizes.h"
#include "host/vdimg/vdimg.h"
#include "vd/disk.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...\n"
    "                    [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] IMAGE BITMAP\n"
    "  --add            create BITMAP (enabled; -g sets its granularity)\n"
    "  --remove         delete BITMAP\n"
    "  --clear          clear every bit of BITMAP\n"
    "  --enable/--disable  BITMAP records writes, or stops recording them\n"
    "  --merge SOURCE   set in BITMAP every bit set in SOURCE (of IMAGE, or of -b SOURCE_FILE)\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

// qemu-img's default: the cluster size, within [4 KiB, 64 KiB].
uint64_t default_granularity(const vd::Image& img) {
  return std::min<uint64_t>(65536, std::max<uint64_t>(4096, img.cluster_size()));
}

vd::Error merge(vd::DirtyBitmaps& target, const std::string& name, const vd::DirtyBitmaps& source,
                const std::string& source_name, uint64_t disk_size) {
  for (uint64_t off = 0; off < disk_size;) {
    auto run = source.extent(source_name, off, disk_size - off);
    if (!run) return run.error();
    if (run->second == 0) break;
    if (run->first)
      if (vd::Error e = target.set_dirty(name, off, run->second)) return e;
    off += run->second;
  }
  // An empty source still checks the target (a missing one fails as in qemu-img).
  return target.set_dirty(name, 0, 0);
}

}  // namespace

vd::Error check_source_bitmaps(vd::Image& src, bool skip_broken) {
  vd::DirtyBitmaps* b = src.bitmaps();
  if (!b) return vd::Error(vd::Errc::not_supported, "Source lacks bitmap support");
  for (const auto& i : b->list())
    if (i.inconsistent && !skip_broken)
      return vd::Error(vd::Errc::corrupt, "Cannot copy inconsistent bitmap '" + i.name +
                                              "'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it");
  return {};
}

vd::Error target_supports_bitmaps(vd::Image& dst) {
  if (!dst.bitmaps() || dst.version() < 3)
    return vd::Error(vd::Errc::not_supported, "Format driver '" + format_name(dst) + "' does not support bitmaps");
  return {};
}

vd::Error copy_bitmaps(vd::Image& src, vd::Image& dst, bool skip_broken) {
  vd::DirtyBitmaps* from = src.bitmaps();
  vd::DirtyBitmaps* to = dst.bitmaps();
  if (!from || !to) return {};
  for (const auto& i : from->list()) {
    if (i.inconsistent && skip_broken) continue;
    vd::Error e = to->add(i.name, i.granularity, i.enabled);
    if (!e) e = merge(*to, i.name, *from, i.name, std::min(src.size(), dst.size()));
    if (e) return vd::Error(e.kind(), "Failed to populate bitmap " + i.name + ": " + e.message());
  }
  return {};
}

int cmd_bitmap(const Argv& argv) {
  auto args = parse_args(argv, {{0, "add", false}, {0, "remove", false}, {0, "clear", false},
                                {0, "enable", false}, {0, "disable", false}, {0, "merge", true},
                                {'g', "granularity", true}, {'b', nullptr, true}, {'F', nullptr, true},
                                {'f', "format", true}, {0, "object", true}, {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  std::vector<std::pair<std::string, std::string>> ops;
  for (const auto& [k, v] : args->options)
    if (k == "add" || k == "remove" || k == "clear" || k == "enable" || k == "disable" || k == "merge")
      ops.emplace_back(k, v);
  if (ops.empty()) return fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
  std::optional<uint64_t> granularity;
  if (auto g = args->last("granularity")) {
    if (!args->has("add")) return fail("granularity only supported with --add");
    auto n = vd::parse_size(*g);
    if (!n)
      return fail("Invalid granularity specified. You may use k, M, G, T, P or E suffixes for\n"
                  "vdimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    // qemu passes it on as a 32-bit value; 0 means the default.
    if (uint32_t g32 = static_cast<uint32_t>(*n)) granularity = g32;
    else if (*n) granularity = 0;
  }
  if (args->has("b") && !args->has("merge")) return fail("Merge bitmap source file only supported with --merge");
  if (args->has("F") && !args->has("b")) return fail("-F only supported with -b");
  if (args->positional.size() != 2) return fail("Expecting filename and bitmap name");
  const std::string& path = args->positional[0];
  const std::string& name = args->positional[1];

  Context ctx;
  OpenRequest req;
  req.path = path;
  req.format = args->last("format");
  req.flags = vd::open_info_only;
  req.no_backing = true;
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  vd::Image& img = (*disk)->image(0);
  vd::DirtyBitmaps* bitmaps = img.bitmaps();

  std::unique_ptr<vd::Disk> source_disk;
  if (auto b = args->last("b")) {
    Context sctx;
    OpenRequest sreq;
    sreq.path = *b;
    sreq.format = args->last("F");
    sreq.flags = vd::open_read_only | vd::open_info_only;
    sreq.no_backing = true;
    sreq.secrets = req.secrets;  // -b is a plain file name in qemu-img even with --image-opts
    auto sd = open_disk(ctx, sreq);
    if (!sd) {
      (void)(*disk)->close();
      return fail(sd.error());
    }
    source_disk = std::move(*sd);
  }

  vd::Error failed;
  std::string failed_op;
  for (const auto& [op, value] : ops) {
    if (!bitmaps) {
      // qemu-img's words (it names its node where we name the file).
      failed = op == "add" ? vd::Error(vd::Errc::not_supported,
                                       "Can't store persistent bitmaps to " + path + ": Operation not supported")
                           : vd::Error(vd::Errc::not_found, "Dirty bitmap '" + (op == "merge" ? value : name) +
                                                                "' not found");
    } else if (op == "add") {
      failed = bitmaps->add(name, granularity ? *granularity : default_granularity(img), true);
    } else if (op == "remove") {
      failed = bitmaps->remove(name);
    } else if (op == "clear") {
      failed = bitmaps->clear(name);
    } else if (op == "enable" || op == "disable") {
      failed = bitmaps->set_enabled(name, op == "enable");
    } else {
      vd::DirtyBitmaps* src = source_disk ? source_disk->image(0).bitmaps() : bitmaps;
      failed = src ? merge(*bitmaps, name, *src, value, img.size())
                   : vd::Error(vd::Errc::not_found, "Dirty bitmap '" + value + "' not found");
    }
    if (failed) {
      failed_op = op;
      break;
    }
  }
  if (source_disk) (void)source_disk->close();
  vd::Error closed = (*disk)->close();
  if (failed) return fail("Operation " + failed_op + " on bitmap " + name + " failed: " + failed.message());
  if (closed) return fail(closed);
  return kExitOk;
}

}  // namespace vdimg
