// vdimg map: where each range of the disk comes from, in qemu-img map's layouts (human:
// data extents with their host offsets; JSON: every extent with depth and flags).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "host/sizes.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg map [-f FMT] [--output=human|json] [-U] IMAGE\n"
    "Prints the allocation map of IMAGE through its backing chain.\n"
    "  -f FMT        format of IMAGE\n"
    "  --output FMT  human (default) or json\n"
    "  --start-offset OFF, --max-length LEN   map only that range\n";

struct MapEntry {
  uint64_t start = 0, length = 0;
  int depth = 0;
  bool present = false, zero = false, data = false;
  std::optional<uint64_t> offset;
  std::string file;
};

// Neighbours merge when they say the same thing and their host ranges continue each other.
bool mergeable(const MapEntry& a, const MapEntry& b) {
  if (a.depth != b.depth || a.present != b.present || a.zero != b.zero || a.data != b.data)
    return false;
  if (a.offset.has_value() != b.offset.has_value()) return false;
  return !a.offset || *a.offset + a.length == *b.offset;
}

MapEntry entry_of(vd::Disk& disk, uint64_t start, const vd::DiskExtent& x) {
  MapEntry e;
  e.start = start;
  e.length = x.extent.length;
  if (x.level < 0) {
    // Past the chain: qemu-img counts the depth it searched down to.
    e.depth = static_cast<int>(disk.depth()) - 1;
    e.zero = true;
    return e;
  }
  e.depth = x.level;
  e.present = true;
  e.zero = x.extent.kind == vd::Extent::Kind::zero || x.extent.zero_data;
  e.data = x.extent.kind == vd::Extent::Kind::data;
  if (x.extent.kind == vd::Extent::Kind::unallocated) e.present = false, e.zero = true;
  if (!x.extent.compressed) e.offset = x.extent.host_offset;
  e.file = disk.image(static_cast<size_t>(x.level)).path();
  return e;
}

vd::Result<std::vector<MapEntry>> build_map(vd::Runtime& rt, vd::Disk& disk, uint64_t start,
                                            uint64_t end) {
  std::vector<MapEntry> map;
  for (uint64_t pos = start; pos < end;) {
    vd::DiskExtent x;
    vd::Error err = rt.wait([&](vd::Completion done) {
      disk.block_status(pos, end - pos, [&x, done](vd::Error e, vd::DiskExtent ext) {
        x = ext;
        done(e);
      });
    });
    if (err) return err;
    if (x.extent.length == 0 || x.extent.length > end - pos)
      return vd::Error(vd::Errc::internal, "block status at " + vd::hex(pos) + " returned a bad length");
    MapEntry e = entry_of(disk, pos, x);
    if (!map.empty() && mergeable(map.back(), e)) map.back().length += e.length;
    else map.push_back(e);
    pos += x.extent.length;
  }
  return map;
}

void print_human(const std::vector<MapEntry>& map) {
  char line[512];
  std::snprintf(line, sizeof line, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  std::cout << line;
  for (const auto& e : map) {
    if (!e.data || !e.offset) continue;
    std::snprintf(line, sizeof line, "%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start,
                  e.length, *e.offset, e.file.c_str());
    std::cout << line;
  }
}

void print_json(const std::vector<MapEntry>& map) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < map.size(); ++i) {
    const auto& e = map[i];
    if (i) out << ",\n";
    out << "{ \"start\": " << e.start << ", \"length\": " << e.length << ", \"depth\": " << e.depth
        << ", \"present\": " << (e.present ? "true" : "false")
        << ", \"zero\": " << (e.zero ? "true" : "false")
        << ", \"data\": " << (e.data ? "true" : "false");
    if (e.offset) out << ", \"offset\": " << *e.offset;
    out << "}";
  }
  out << "]\n";
  std::cout << out.str();
}

// --start-offset and --max-length, clamped to the disk as qemu-img does.
vd::Result<std::pair<uint64_t, uint64_t>> map_range(const Args& args, uint64_t size) {
  uint64_t start = 0, end = size;
  if (auto v = args.last("start-offset")) {
    auto n = vd::parse_size(*v);
    if (!n) return n.error();
    start = std::min(*n, size);
  }
  if (auto v = args.last("max-length")) {
    auto n = vd::parse_size(*v);
    if (!n) return n.error();
    end = start + std::min(*n, size - start);
  }
  return std::pair{start, end};
}

}  // namespace

int cmd_map(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {0, "output", true},
                                {'U', "force-share", false}, {0, "start-offset", true},
                                {0, "max-length", true}, {0, "object", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  std::string output = args->last("output").value_or("human");
  if (output != "human" && output != "json") return fail("--output must be human or json");
  Context ctx;
  OpenRequest req;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = vd::open_read_only | vd::open_info_only;
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  auto range = map_range(*args, (*disk)->size());
  if (!range) return fail(range.error());
  auto map = build_map(ctx.rt, **disk, range->first, range->second);
  (*disk)->close();
  if (!map) return fail(name_image(map.error(), req.path));
  if (output == "json") print_json(*map);
  else print_human(*map);
  return kExitOk;
}

}  // namespace vdimg
