// vdimg measure: how large a new image of format -O would be, for a virtual size (--size)
// or to hold the content of an existing image (through its chain), as qemu-img measure
// prints it: "required size" (the metadata of a fully allocated image plus the clusters that
// hold data), "fully allocated size", and, when both sides can keep persistent bitmaps
// (a QCOW2 v3 source and target), "bitmaps size".
//
// The checks run in qemu-img's order with its words: the command line (-o lists, --size,
// --output, -l), the source image, the target format, the -o values against their types,
// then the format's own rules (measure_qcow2 below follows QEMU's qcow2_measure).
#include <bit>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "backends/common/sizes.h"
#include "backends/luks/luks.h"
#include "host/vdimg/measure.h"
#include "host/vdimg/secrets.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg measure [--output=human|json] [-O FMT] [-o OPTS]\n"
    "                     [--size N | [--object secret,...] [-f FMT] [-l SNAPSHOT] IMAGE]\n"
    "Prints the size of a new image of format FMT (default raw) with a virtual size of N,\n"
    "or holding IMAGE's content (through its backing chain).\n"
    "  --size N                virtual size of the new image\n"
    "  -O FMT                  format of the new image (raw, qcow2, luks)\n"
    "  -o OPTS                 its create options (cluster_size, refcount_bits, compat,\n"
    "                          preallocation, extended_l2, backing_file, encrypt.*, ...)\n"
    "  -f FMT                  format of IMAGE (probed when absent)\n"
    "  -l SNAPSHOT             measure an internal snapshot of IMAGE (name, or\n"
    "                          snapshot.name=X, snapshot.id=X)\n"
    "  --output FMT            human (default) or json\n"
    "  --object secret,id=ID,data=KEY  the key named by encrypt.key-secret / key-secret\n"
    "  --passphrase-file FILE  passphrase of an encrypted IMAGE\n"
    "  -U, --force-share       open IMAGE even while another process writes it\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

struct Measure {
  uint64_t required = 0;
  uint64_t fully_allocated = 0;
  std::optional<uint64_t> bitmaps;
};

// The measured source: the disk and its virtual size.
struct Source {
  vd::Disk* disk = nullptr;
  Context* ctx = nullptr;
};

uint64_t round_up(uint64_t a, uint64_t b) { return (a + b - 1) / b * b; }

// Bytes of the disk in `cluster`-sized clusters that hold any data, through the chain (QEMU
// walks bdrv_block_status_above the same way: a data extent counts from the start of its
// first cluster to the end of its last, and the walk resumes after it; zeros are skipped).
vd::Result<uint64_t> data_clusters_bytes(Context& ctx, vd::Disk& disk, uint64_t cluster) {
  const uint64_t size = disk.size();
  uint64_t bytes = 0;
  for (uint64_t pos = 0; pos < size;) {
    auto status = block_status_of(ctx.rt, disk, pos, size - pos);
    if (!status) return status.error().wrap("Unable to get block status");
    const vd::DiskExtent& x = *status;
    const bool data = x.level >= 0 && x.extent.kind == vd::Extent::Kind::data && !x.extent.zero_data;
    if (!data) {
      pos += x.extent.length;
      continue;
    }
    const uint64_t end = round_up(pos + x.extent.length, cluster);
    bytes += end - pos / cluster * cluster;
    pos = end;
  }
  return bytes;
}

// The LUKS header an image created with these options would get (its payload offset).
// `prefix` is "encrypt." inside QCOW2; the keys come without it.
vd::Result<uint64_t> luks_payload(const Args& args, const OptionList& list, const std::string& prefix) {
  vd::CreateOptions opts;
  opts.passphrase = "";  // checked below, after the cipher options as qemu does
  for (const auto& [k, v] : list) {
    if (k.rfind(prefix, 0) != 0) continue;
    std::string key = k.substr(prefix.size());
    if (key == "format" || key == "size" || key == "preallocation" || key == "nocow" ||
        key == "extent_size_hint")
      continue;
    opts.options[key] = v;
  }
  auto spec = vd::luks::parse_create_options(opts, "");
  if (!spec) return spec.error();
  const std::string* secret = last_option(list, prefix + "key-secret");
  if (!secret)
    return vd::Error(vd::Errc::invalid_argument, "Parameter '" + prefix + "key-secret' is required for cipher");
  auto secrets = secret_objects(args);
  if (!secrets) return secrets.error();
  if (!secrets->count(*secret))
    return vd::Error(vd::Errc::not_found, "No secret with id '" + *secret + "'");
  // qemu-img's LUKS layout: the header's 4 KiB, then 8 key slots of the key split into 4000
  // stripes, each slot 4 KiB aligned (the cipher need not be one this build can run).
  const uint64_t slot = round_up(uint64_t{spec->luks.cipher.key_bytes} * 4000, 4096);
  return 4096 + 8 * slot;
}

vd::Result<uint64_t> size_option(const OptionList& list) {
  const std::string* v = last_option(list, "size");
  if (!v) return uint64_t{0};
  return vd::parse_size(*v);  // checked by check_option_types
}

vd::Result<Measure> measure_raw(const OptionList& list, const Source& src) {
  uint64_t size = src.disk ? src.disk->size() : 0;
  if (!src.disk) {
    auto s = size_option(list);
    if (!s) return s.error();
    size = round_up(*s, 512);
  }
  return Measure{size, size, std::nullopt};
}

// Unallocated sectors are encrypted too: the whole payload counts either way.
vd::Result<Measure> measure_luks(const Args& args, const OptionList& list, const Source& src) {
  auto payload = luks_payload(args, list, "");
  if (!payload) return payload.error();
  uint64_t size = src.disk ? src.disk->size() : 0;
  if (!src.disk) {
    auto s = size_option(list);
    if (!s) return s.error();
    size = *s;
  }
  return Measure{*payload + size, *payload + size, std::nullopt};
}

struct Qcow2Geometry {
  bool extended_l2 = false;
  uint64_t cluster_size = 64 << 10;
  int version = 3;
  uint64_t refcount_bits = 16;
  std::string prealloc = "off";
};

bool on(const std::string* v) { return v && (*v == "on" || *v == "yes" || *v == "true" || *v == "y"); }

vd::Error bad(const std::string& what) { return vd::Error(vd::Errc::invalid_argument, what); }

// qcow2_measure's option rules, in its order.
vd::Result<Qcow2Geometry> qcow2_geometry(const OptionList& list) {
  Qcow2Geometry g;
  g.extended_l2 = on(last_option(list, "extended_l2"));
  if (const std::string* v = last_option(list, "cluster_size")) g.cluster_size = *vd::parse_size(*v);
  const uint64_t cs = g.cluster_size;
  if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
    return bad("Cluster size must be a power of two between 512 and 2048k");
  if (g.extended_l2 && cs < 16384)
    return bad("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  if (const std::string* v = last_option(list, "compat")) {
    if (*v == "0.10") g.version = 2;
    else if (*v != "1.1") return bad("Invalid compatibility level: '" + *v + "'");
  }
  if (const std::string* v = last_option(list, "refcount_bits"))
    g.refcount_bits = std::strtoull(v->c_str(), nullptr, 0);
  const uint64_t rb = g.refcount_bits;
  if (rb > 64 || rb == 0 || (rb & (rb - 1)))
    return bad("Refcount width must be a power of two and may not exceed 64 bits");
  if (g.version < 3 && rb != 16)
    return bad("Different refcount widths than 16 bits require compatibility level 1.1 or above "
               "(use compat=1.1 or greater)");
  if (const std::string* v = last_option(list, "preallocation")) {
    if (*v != "off" && *v != "metadata" && *v != "falloc" && *v != "full")
      return bad("invalid parameter value: " + *v);
    g.prealloc = *v;
  }
  return g;
}

vd::Result<Measure> measure_qcow2(const Args& args, const OptionList& list, const Source& src) {
  auto g = qcow2_geometry(list);
  if (!g) return g.error();
  const uint64_t cs = g->cluster_size;
  const std::string* enc = last_option(list, "encrypt.format");
  uint64_t luks = 0;
  if (enc && *enc == "luks") {
    auto payload = luks_payload(args, list, "encrypt.");
    if (!payload) return payload.error();
    luks = round_up(*payload, cs);
  }
  auto opt_size = size_option(list);
  if (!opt_size) return opt_size.error();
  uint64_t virtual_size = round_up(*opt_size, cs);
  const uint64_t l2e = g->extended_l2 ? 16 : 8;
  const uint64_t l2_tables = (virtual_size / cs + cs / l2e - 1) / (cs / l2e);
  if (l2_tables * 8 > (32u << 20)) return bad("The image size is too large (try using a larger cluster size)");

  uint64_t required = 0;
  if (src.disk) {
    virtual_size = round_up(src.disk->size(), cs);
    if (last_option(list, "backing_file")) {
      // Nothing is known about what the new backing file shares with the source.
      required = virtual_size;
    } else {
      auto bytes = data_clusters_bytes(*src.ctx, *src.disk, cs);
      if (!bytes) return bytes.error();
      required = *bytes;
    }
  }
  if (g->prealloc == "full" || g->prealloc == "falloc") required = virtual_size;

  Measure m;
  m.fully_allocated = luks + qcow2_full_size(virtual_size, cs, static_cast<unsigned>(std::countr_zero(g->refcount_bits)),
                                             g->extended_l2);
  // Metadata counts as for a fully allocated image: an overestimate, as qemu's.
  m.required = m.fully_allocated - virtual_size + required;
  if (g->version >= 3 && src.disk) {
    const vd::Image& top = src.disk->image(0);
    if (format_name(top) == "qcow2" && top.version() >= 3) {
      auto b = qcow2_bitmaps_size(top.path(), top.size(), cs);
      if (!b) return b.error();
      m.bitmaps = *b;
    }
  }
  return m;
}

void print(const Measure& m, bool json) {
  if (!json) {
    std::cout << "required size: " << m.required << "\nfully allocated size: " << m.fully_allocated << "\n";
    if (m.bitmaps) std::cout << "bitmaps size: " << *m.bitmaps << "\n";
    return;
  }
  std::cout << "{\n";
  if (m.bitmaps) std::cout << "    \"bitmaps\": " << *m.bitmaps << ",\n";
  std::cout << "    \"required\": " << m.required << ",\n    \"fully-allocated\": " << m.fully_allocated
            << "\n}\n";
}

// The options as qemu-img reads them while parsing the command line; returns the exit code
// of a failure, or nothing.
std::optional<int> check_command_line(const Args& args, std::optional<uint64_t>& size, bool& json) {
  for (const auto& [key, value] : args.options) {
    if (key == "options")
      if (auto e = check_option_list(value)) return fail(e);
    if (key == "size") {
      auto n = cvtnum("image size", value);
      if (!n) return fail(n.error());
      size = static_cast<uint64_t>(*n);
    }
    if (key == "output") {
      if (value != "human" && value != "json")
        return fail("--output must be used with human or json as argument.");
      json = value == "json";
    }
    if (key == "l" && value.rfind("snapshot.", 0) == 0) {
      auto list = parse_option_list({value});
      for (const auto& [k, v] : list ? *list : OptionList{}) {
        if (k == "snapshot.id" || k == "snapshot.name") continue;
        fail("Invalid parameter '" + k + "'");
        return fail("Failed in parsing snapshot param '" + value + "'");
      }
    }
  }
  if (args.positional.size() > 1) return fail("At most one filename argument is allowed.");
  const bool image = args.positional.size() == 1;
  if (!image && (args.has("format") || args.has("l") || args.has("image-opts")))
    return fail("--image-opts, -f, and -l require a filename argument.");
  if (image && size) return fail("--size N cannot be used together with a filename.");
  if (!image && !size) return fail("Either --size N or one filename must be specified.");
  return std::nullopt;
}

vd::Result<std::unique_ptr<vd::Disk>> open_source(Context& ctx, const Args& args) {
  OpenRequest req;
  req.path = args.positional[0];
  req.format = args.last("format");
  req.force_share = args.has("force-share");
  if (auto snap = args.last("l")) req.snapshot = snapshot_ref(*snap);
  if (vd::Error e = take_image_options(args, req)) return e;
  return open_disk_at_snapshot(ctx, req);
}

}  // namespace

int cmd_measure(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'O', nullptr, true}, {'o', "options", true},
                                {'l', nullptr, true}, {'U', "force-share", false}, {0, "object", true},
                                {0, "output", true}, {0, "size", true}, {0, "passphrase-file", true},
                                {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  std::optional<uint64_t> size;
  bool json = false;
  if (auto code = check_command_line(*args, size, json)) return *code;

  Context ctx;
  std::unique_ptr<vd::Disk> disk;
  if (!args->positional.empty()) {
    auto opened = open_source(ctx, *args);
    if (!opened) return fail(opened.error());
    disk = std::move(*opened);
  }
  const std::string out_fmt = args->last("O").value_or("raw");
  if (!ctx.registry.find(out_fmt)) return fail("Unknown file format '" + out_fmt + "'");
  auto list = parse_option_list(args->all("options"));
  if (!list) return fail(list.error());
  if (vd::Error e = check_option_types(out_fmt, *list)) {
    fail(e);
    return fail("Invalid options for file format '" + out_fmt + "'");
  }
  if (size) list->emplace_back("size", std::to_string(*size));

  Source src{disk.get(), &ctx};
  vd::Result<Measure> m = vd::Error(vd::Errc::not_supported,
                                    "Block driver '" + out_fmt + "' does not support size measurement");
  if (out_fmt == "raw") m = measure_raw(*list, src);
  else if (out_fmt == "qcow2") m = measure_qcow2(*args, *list, src);
  else if (out_fmt == "luks") m = measure_luks(*args, *list, src);
  if (disk) disk->close();
  if (!m) return fail(m.error());
  print(*m, json);
  return kExitOk;
}

}  // namespace vdimg
