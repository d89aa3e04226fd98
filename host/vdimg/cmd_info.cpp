// vdimg info: qemu-img info's human and JSON layouts for one image or its backing chain.
#include <sys/stat.h>

#include <ctime>
#include <iostream>
#include <sstream>

#include "backends/common/sizes.h"
#include "host/vdimg/json.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg info [-f FMT] [--output=human|json] [--backing-chain] [-U] IMAGE\n"
    "Prints what IMAGE is: format, virtual and disk size, backing file, snapshots and the\n"
    "format's own fields, in qemu-img info's layout.\n"
    "  -f, --format FMT   format of IMAGE (probed when absent)\n"
    "  --output FMT       human (default) or json\n"
    "  --backing-chain    describe every image of the chain\n"
    "  -U, --force-share  open even while another process writes IMAGE (read-only opens)\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

// What `info` says about one image of a chain.
struct ImageInfo {
  std::string filename;
  std::string format;
  uint64_t virtual_size = 0;
  uint64_t actual_size = 0;
  std::optional<uint32_t> cluster_size;
  std::optional<std::string> backing, backing_full, backing_format;
  bool encrypted = false;
  bool dirty = false;
  std::vector<vd::SnapshotInfo> snapshots;
  std::vector<vd::InfoField> specific;
};

// Disk size as qemu-img reports it: the blocks the file really occupies.
uint64_t actual_size(vd::Image& image) {
  struct stat st {};
  if (::stat(image.path().c_str(), &st) == 0) return static_cast<uint64_t>(st.st_blocks) * 512;
  auto size = image.file_size();
  return size ? *size : 0;
}

ImageInfo describe(vd::Image& image) {
  ImageInfo info;
  info.filename = image.path();
  info.format = format_name(image);
  info.virtual_size = image.size();
  info.actual_size = actual_size(image);
  // Formats that allocate in clusters have a parent; raw has neither, and qemu prints none.
  if (image.backend().capabilities() & vd::cap_diff) info.cluster_size = image.cluster_size();
  info.backing = image.parent_filename();
  if (info.backing) info.backing_full = resolve_relative(image.path(), *info.backing);
  info.backing_format = image.parent_format();
  info.encrypted = image.encrypted();
  info.dirty = image.dirty();
  info.snapshots = image.snapshots();
  info.specific = image.format_info();
  return info;
}

Json info_value(const vd::InfoValue& v) {
  if (auto* b = std::get_if<bool>(&v)) return Json(*b);
  if (auto* i = std::get_if<int64_t>(&v)) return Json(*i);
  if (auto* u = std::get_if<uint64_t>(&v)) return Json(*u);
  return Json(std::get<std::string>(v));
}

bool is_index(const std::string& segment) {
  return !segment.empty() && segment.size() < 6 &&
         segment.find_first_not_of("0123456789") == std::string::npos;
}

// Format-specific fields as qemu-img nests them: a dotted key ("encrypt.format") is a path
// of object members, and an all-digit segment ("encrypt.slots.0.active") an array index;
// a last segment "[]" makes an empty array ("bitmaps.0.flags.[]").
Json specific_tree(const std::vector<vd::InfoField>& fields) {
  Json root = Json::object();
  for (const auto& f : fields) {
    Json* node = &root;
    size_t start = 0;
    for (;;) {
      size_t dot = f.key.find('.', start);
      std::string seg = f.key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (seg == "[]") break;  // "x.[]": x is an empty array (a bitmap without flags)
      node = is_index(seg) ? &node->element(std::stoul(seg)) : &node->member(seg);
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    *node = f.key.ends_with(".[]") ? Json::array() : info_value(f.value);
  }
  return root;
}

// qemu-img's human dump of a nested value: "key: value", or "key:" and the members
// indented by four more; array elements are named "[i]"; '-' in keys reads as ' '.
void dump_human(std::ostream& out, const Json& node, int indent) {
  auto line = [&](std::string key, const Json& value) {
    for (char& c : key)
      if (c == '-') c = ' ';
    out << std::string(static_cast<size_t>(indent), ' ') << key << ":";
    if (value.as_object() || value.as_array()) {
      out << "\n";
      dump_human(out, value, indent + 4);
    } else {
      out << " " << value.text() << "\n";
    }
  };
  if (auto* o = node.as_object())
    for (const auto& [k, v] : *o) line(k, v);
  if (auto* a = node.as_array())
    for (size_t i = 0; i < a->size(); ++i) line("[" + std::to_string(i) + "]", (*a)[i]);
}

Json snapshot_json(const vd::SnapshotInfo& s) {
  Json j = Json::object();
  if (s.icount) j.set("icount", *s.icount);
  j.set("vm-clock-nsec", s.vm_clock_nsec % 1000000000ull);
  j.set("name", s.name);
  j.set("date-sec", static_cast<uint64_t>(s.date_sec));
  j.set("date-nsec", static_cast<uint64_t>(s.date_nsec));
  j.set("vm-clock-sec", s.vm_clock_nsec / 1000000000ull);
  j.set("id", s.id);
  j.set("vm-state-size", s.vm_state_size);
  return j;
}

// Keys in the order qemu-img 7.2 prints them.
Json info_json(const ImageInfo& info) {
  Json j = Json::object();
  if (info.backing_format) j.set("backing-filename-format", *info.backing_format);
  if (!info.snapshots.empty()) {
    Json snaps = Json::array();
    for (const auto& s : info.snapshots) snaps.push(snapshot_json(s));
    j.set("snapshots", std::move(snaps));
  }
  j.set("virtual-size", info.virtual_size);
  j.set("filename", info.filename);
  if (info.cluster_size) j.set("cluster-size", static_cast<uint64_t>(*info.cluster_size));
  j.set("format", info.format);
  j.set("actual-size", info.actual_size);
  if (!info.specific.empty())
    j.set("format-specific",
          Json(Json::Object{{"type", info.format}, {"data", specific_tree(info.specific)}}));
  if (info.backing) {
    j.set("full-backing-filename", *info.backing_full);
    j.set("backing-filename", *info.backing);
  }
  if (info.encrypted) j.set("encrypted", true);
  j.set("dirty-flag", info.dirty);
  return j;
}

void print_human(std::ostream& out, const ImageInfo& info) {
  out << "image: " << info.filename << "\n"
      << "file format: " << info.format << "\n"
      << "virtual size: " << vd::format_size(info.virtual_size) << " (" << info.virtual_size
      << " bytes)\n"
      << "disk size: " << vd::format_size(info.actual_size) << "\n";
  if (info.encrypted) out << "encrypted: yes\n";
  if (info.cluster_size) out << "cluster_size: " << *info.cluster_size << "\n";
  // qemu-img prints the dirty flag (lazy refcounts after a crash) right after the cluster size.
  if (info.dirty) out << "cleanly shut down: no\n";
  if (info.backing) {
    out << "backing file: " << *info.backing;
    if (*info.backing_full != *info.backing) out << " (actual path: " << *info.backing_full << ")";
    out << "\n";
    if (info.backing_format) out << "backing file format: " << *info.backing_format << "\n";
  }
  if (!info.snapshots.empty()) print_snapshot_table(out, info.snapshots);
  if (!info.specific.empty()) {
    out << "Format specific information:\n";
    dump_human(out, specific_tree(info.specific), 4);
  }
}

}  // namespace

static std::string clock_text(uint64_t nsec) {
  uint64_t ms = nsec / 1000000ull;
  char buf[48];
  std::snprintf(buf, sizeof buf, "%02llu:%02llu:%02llu.%03llu",
                static_cast<unsigned long long>(ms / 3600000),
                static_cast<unsigned long long>(ms / 60000 % 60),
                static_cast<unsigned long long>(ms / 1000 % 60),
                static_cast<unsigned long long>(ms % 1000));
  return buf;
}

void print_snapshot_table(std::ostream& out, const std::vector<vd::SnapshotInfo>& snaps) {
  char line[256];
  out << "Snapshot list:\n";
  std::snprintf(line, sizeof line, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
                "VM CLOCK", "ICOUNT");
  out << line << "\n";
  for (const auto& s : snaps) {
    time_t t = static_cast<time_t>(s.date_sec);
    struct tm tm {};
    localtime_r(&t, &tm);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    std::string icount = s.icount ? std::to_string(*s.icount) : "";
    std::snprintf(line, sizeof line, "%-9s %-16s %8s%20s%13s%11s", s.id.c_str(), s.name.c_str(),
                  vd::format_size(s.vm_state_size).c_str(), date, clock_text(s.vm_clock_nsec).c_str(),
                  icount.c_str());
    out << line << "\n";
  }
}

int cmd_info(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {0, "output", true},
                                {0, "backing-chain", false}, {'U', "force-share", false},
                                {0, "image-opts", false}, {0, "object", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  std::string output = args->last("output").value_or("human");
  if (output != "human" && output != "json") return fail("--output must be human or json");
  bool chain = args->has("backing-chain");

  Context ctx;
  OpenRequest req;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = vd::open_read_only | vd::open_info_only;
  req.no_backing = !chain;
  req.force_share = args->has("force-share");
  req.key_unused = true;
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) {
    // qemu-img info --backing-chain opens the images one by one: a missing backing file
    // fails as a missing image ("Could not open 'base': Could not open 'base': ...").
    std::string msg = disk.error().message();
    const std::string step = "Could not open backing file: ";
    const size_t last = msg.rfind(step);
    if (chain && last != std::string::npos) {
      const std::string missing = msg.substr(last + step.size());  // "Could not open 'X': why"
      const size_t quote = missing.find("': ");
      if (quote != std::string::npos) msg = missing.substr(0, quote + 3) + missing;
    }
    return fail(msg);
  }

  std::vector<ImageInfo> infos;
  for (size_t level = 0; level < (*disk)->depth(); ++level)
    infos.push_back(describe((*disk)->image(level)));
  infos[0].filename = display_name(req, **disk);
  std::ostringstream out;
  if (output == "json") {
    if (chain) {
      Json arr = Json::array();
      for (const auto& i : infos) arr.push(info_json(i));
      out << arr.pretty() << "\n";
    } else {
      out << info_json(infos[0]).pretty() << "\n";
    }
  } else {
    for (size_t i = 0; i < infos.size(); ++i) {
      if (i) out << "\n";
      print_human(out, infos[i]);
    }
  }
  (*disk)->close();
  std::cout << out.str();
  return kExitOk;
}

}  // namespace vdimg
