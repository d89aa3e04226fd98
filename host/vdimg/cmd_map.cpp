// vdimg map: where each range of the disk comes from, in qemu-img map's layouts (human:
// data extents with their host offsets; JSON: every extent with depth and flags).
//
// The walk mirrors qemu-img's: one block-status answer at a time, merged into the current
// entry while it says the same thing, and the current entry printed when the next one
// differs. The human layout also relabels non-data entries as plain zeros so they merge,
// and refuses entries that have data but no host offset (compressed or encrypted clusters).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "backends/common/sizes.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg map [-f FMT] [--output=human|json] [-U] IMAGE\n"
    "Prints the allocation map of IMAGE through its backing chain.\n"
    "  -f FMT        format of IMAGE\n"
    "  --output FMT  human (default) or json\n"
    "  --start-offset OFF, --max-length LEN   map only that range\n"
    "  -U, --force-share  open even while another process writes IMAGE (read-only opens)\n"
    "The human layout lists only ranges with data and fails (exit 1) on compressed or\n"
    "encrypted data, which has no host offset to show, as qemu-img map does.\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

struct MapEntry {
  uint64_t start = 0, length = 0;
  int depth = 0;
  bool present = false, zero = false, data = false;
  std::optional<uint64_t> offset;
  std::optional<std::string> file;  // set only with an offset, as qemu-img's
};

// Neighbours merge when they say the same thing and their host ranges continue each other.
bool mergeable(const MapEntry& a, const MapEntry& b) {
  if (a.length == 0) return false;
  if (a.depth != b.depth || a.present != b.present || a.zero != b.zero || a.data != b.data)
    return false;
  if (a.file != b.file) return false;
  if (a.offset.has_value() != b.offset.has_value()) return false;
  return !a.offset || *a.offset + a.length == *b.offset;
}

// The file the host offsets of `image` refer to: its external data file when it has one
// (named as recorded in the image, which is how qemu-img opens and shows it).
std::string host_file_of(const vd::Image& image) {
  for (const auto& f : image.format_info()) {
    if (f.key != "data-file") continue;
    if (auto* s = std::get_if<std::string>(&f.value); s && !s->empty()) return *s;
  }
  return image.path();
}

MapEntry entry_of(const vd::Disk& disk, const std::vector<std::string>& files, uint64_t start,
                  const vd::DiskExtent& x) {
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
  e.present = x.extent.kind != vd::Extent::Kind::unallocated;
  e.zero = x.extent.kind != vd::Extent::Kind::data || x.extent.zero_data;
  e.data = x.extent.kind == vd::Extent::Kind::data;
  // Compressed and encrypted data has no plain host offset; qemu-img omits it (and its file).
  if (!x.extent.compressed && !x.extent.encrypted && x.extent.host_offset) {
    e.offset = x.extent.host_offset;
    e.file = files[static_cast<size_t>(x.level)];
  }
  return e;
}

// Prints entries as qemu-img does; fails (human layout) on data without a host offset.
class MapPrinter {
 public:
  explicit MapPrinter(bool json) : json_(json) {
    if (json_) {
      out_ << "[";
    } else {
      char line[80];
      std::snprintf(line, sizeof line, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
      out_ << line;
    }
  }

  // Prints `e`; `next` is the entry that follows it, if any (the human layout may relabel it).
  bool dump(const MapEntry& e, MapEntry* next) {
    if (json_) {
      dump_json(e, next != nullptr);
      return true;
    }
    if (e.data && !e.offset) return false;
    if (e.data && !e.zero) {
      char line[600];
      std::snprintf(line, sizeof line, "%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start,
                    e.length, e.offset.value_or(0), e.file.value_or("").c_str());
      out_ << line;
    }
    // This layout does not tell zeros from unallocated ranges: relabel so they merge.
    if (next && (!next->data || next->zero)) next->data = false, next->zero = true;
    return true;
  }

  void finish() {
    if (json_) out_ << "]\n";
  }
  std::string text() const { return out_.str(); }

 private:
  void dump_json(const MapEntry& e, bool more) {
    out_ << "{ \"start\": " << e.start << ", \"length\": " << e.length << ", \"depth\": " << e.depth
         << ", \"present\": " << (e.present ? "true" : "false")
         << ", \"zero\": " << (e.zero ? "true" : "false")
         << ", \"data\": " << (e.data ? "true" : "false");
    if (e.offset) out_ << ", \"offset\": " << *e.offset;
    out_ << "}";
    if (more) out_ << ",\n";
  }

  bool json_;
  std::ostringstream out_;
};

// qemu-img map's loop over [start, end). Returns false when the printer refused an entry.
vd::Result<bool> walk_map(vd::Runtime& rt, vd::Disk& disk, uint64_t start, uint64_t end,
                          MapPrinter& printer) {
  std::vector<std::string> files;
  for (size_t level = 0; level < disk.depth(); ++level) files.push_back(host_file_of(disk.image(level)));
  MapEntry curr;
  curr.start = start;
  while (curr.start + curr.length < end) {
    const uint64_t pos = curr.start + curr.length;
    auto x = block_status_of(rt, disk, pos, end - pos);
    if (!x) return x.error();
    MapEntry next = entry_of(disk, files, pos, *x);
    if (mergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr.length > 0 && !printer.dump(curr, &next)) return false;
    curr = next;
  }
  return printer.dump(curr, nullptr);
}

// --start-offset and --max-length as qemu-img takes them: the end is clipped to the disk,
// the start is not (a start past the end maps nothing).
vd::Result<std::pair<uint64_t, uint64_t>> map_range(const Args& args, uint64_t size) {
  uint64_t start = 0, end = size;
  if (auto v = args.last("start-offset")) {
    auto n = vd::parse_size(*v);
    if (!n) return n.error();
    start = *n;
  }
  if (auto v = args.last("max-length")) {
    auto n = vd::parse_size(*v);
    if (!n) return n.error();
    if (start < size) end = start + std::min(*n, size - start);
  }
  return std::pair{start, end};
}

}  // namespace

int cmd_map(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {0, "output", true},
                                {'U', "force-share", false}, {0, "start-offset", true},
                                {0, "max-length", true}, {0, "object", true},
                                {0, "image-opts", false}});
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
  req.force_share = args->has("force-share");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  auto range = map_range(*args, (*disk)->size());
  if (!range) return fail(range.error());
  MapPrinter printer(output == "json");
  auto walked = walk_map(ctx.rt, **disk, range->first, range->second, printer);
  (*disk)->close();
  if (walked && *walked) printer.finish();
  std::cout << printer.text();
  if (!walked) return fail(name_image(walked.error(), display_name(req, **disk)));
  if (!*walked) return fail("File contains external, encrypted or compressed clusters.");
  return kExitOk;
}

}  // namespace vdimg
