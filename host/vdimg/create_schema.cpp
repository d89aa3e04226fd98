// qemu-img 7.2's creation option lists, as its QemuOpts see them (create_schema.h).
#include "host/vdimg/create_schema.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <span>

#include "backends/common/sizes.h"

namespace vdimg {
namespace {

enum class Kind { string, boolean, number, size };
struct Desc {
  const char* name;
  Kind kind;
  const char* def = nullptr;  // printed when not given
};

// The file's options, after every format's own (qemu appends the protocol's list).
#define VD_FILE_OPTIONS {"nocow", Kind::boolean}, {"extent_size_hint", Kind::size}

// Orders as qemu-img 7.2 prints them (qcow2's defaults included).
constexpr Desc kQcow2[] = {
    {"encryption", Kind::boolean},         {"encrypt.format", Kind::string},
    {"encrypt.key-secret", Kind::string},  {"encrypt.cipher-alg", Kind::string},
    {"encrypt.cipher-mode", Kind::string}, {"encrypt.ivgen-alg", Kind::string},
    {"encrypt.ivgen-hash-alg", Kind::string}, {"encrypt.hash-alg", Kind::string},
    {"encrypt.iter-time", Kind::number},   {"cluster_size", Kind::size, "65536"},
    {"extended_l2", Kind::boolean, "off"}, {"preallocation", Kind::string},
    {"compression_type", Kind::string, "zlib"}, {"size", Kind::size},
    {"compat", Kind::string},              {"backing_file", Kind::string},
    {"backing_fmt", Kind::string},         {"data_file", Kind::string},
    {"data_file_raw", Kind::boolean},      {"lazy_refcounts", Kind::boolean, "off"},
    {"refcount_bits", Kind::number, "16"}, VD_FILE_OPTIONS};
constexpr Desc kQcow[] = {{"size", Kind::size},
                          {"backing_file", Kind::string},
                          {"backing_fmt", Kind::string},
                          {"encryption", Kind::boolean},
                          {"encrypt.format", Kind::string},
                          {"encrypt.key-secret", Kind::string},
                          {"preallocation", Kind::string},
                          VD_FILE_OPTIONS};
constexpr Desc kRaw[] = {{"size", Kind::size}, {"preallocation", Kind::string}, VD_FILE_OPTIONS};
constexpr Desc kLuks[] = {{"size", Kind::size},           {"key-secret", Kind::string},
                          {"cipher-alg", Kind::string},   {"cipher-mode", Kind::string},
                          {"ivgen-alg", Kind::string},    {"ivgen-hash-alg", Kind::string},
                          {"hash-alg", Kind::string},     {"iter-time", Kind::number},
                          {"preallocation", Kind::string}, VD_FILE_OPTIONS};
#undef VD_FILE_OPTIONS

std::span<const Desc> schema(const std::string& format) {
  if (format == "qcow2") return kQcow2;
  if (format == "qcow") return kQcow;
  if (format == "raw") return kRaw;
  if (format == "luks") return kLuks;
  return {};
}

const Desc* find(std::span<const Desc> list, const std::string& name) {
  for (const Desc& d : list)
    if (name == d.name) return &d;
  return nullptr;
}

// qemu_strtou64 with base 0, as QemuOpts parses a number: decimal, 0x hex, 0 octal, and a
// leading minus that wraps.
std::optional<uint64_t> parse_number(const std::string& v) {
  if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v.c_str(), &end, 0);
  if (errno || end == v.c_str() || *end) return std::nullopt;
  return n;
}

// qapi_bool_parse's words.
bool parse_bool(const std::string& v) {
  for (const char* w : {"on", "yes", "true", "y", "off", "no", "false", "n"})
    if (v == w) return true;
  return false;
}
bool bool_value(const std::string& v) { return v == "on" || v == "yes" || v == "true" || v == "y"; }

const char kSizeHint[] =
    "' expects a non-negative number below 2^64\n"
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
    "and exabytes, respectively.";

vd::Error check_value(const Desc& d, const std::string& v) {
  const std::string name = d.name;
  switch (d.kind) {
    case Kind::string:
      return {};
    case Kind::boolean:
      if (parse_bool(v)) return {};
      return vd::Error(vd::Errc::invalid_argument, "Parameter '" + name + "' expects 'on' or 'off'");
    case Kind::number:
      if (parse_number(v)) return {};
      return vd::Error(vd::Errc::invalid_argument, "Parameter '" + name + "' expects a number");
    case Kind::size:
      if (vd::parse_size(v)) return {};
      return vd::Error(vd::Errc::invalid_argument, "Parameter '" + name + kSizeHint);
  }
  return {};
}

std::string escaped(const std::string& v) {
  std::string out;
  for (char c : v) {
    out += c;
    if (c == ',') out += ',';
  }
  return out;
}

}  // namespace

vd::Error check_option_types(const std::string& format,
                             const std::vector<std::pair<std::string, std::string>>& given) {
  auto list = schema(format);
  if (list.empty()) return {};
  for (const auto& [key, value] : given) {
    const Desc* d = find(list, key);
    if (!d) return vd::Error(vd::Errc::invalid_argument, "Invalid parameter '" + key + "'");
    if (auto e = check_value(*d, value)) return e;
  }
  return {};
}

std::string formatting_line(const std::string& image, const std::string& format, const vd::CreateOptions& opts) {
  std::string line = "Formatting '" + image + "', fmt=" + format;
  auto list = schema(format);
  if (list.empty()) {  // a plugin's format: what was given, then the size and backing file
    for (const auto& [k, v] : opts.options) line += " " + k + "=" + v;
    line += " size=" + std::to_string(opts.size);
    if (opts.backing_file) line += " backing_file=" + *opts.backing_file;
    if (opts.backing_format) line += " backing_fmt=" + *opts.backing_format;
    return line;
  }
  for (const Desc& d : list) {
    std::optional<std::string> value;
    const std::string name = d.name;
    if (name == "size") value = std::to_string(opts.size);
    else if (name == "backing_file") value = opts.backing_file;
    else if (name == "backing_fmt") value = opts.backing_format;
    else if (auto it = opts.options.find(name); it != opts.options.end()) {
      value = it->second;
      // Numbers and sizes print as their value (a number as qemu's signed 64 bits).
      if (d.kind == Kind::number) {
        if (auto n = parse_number(*value)) value = std::to_string(static_cast<int64_t>(*n));
      } else if (d.kind == Kind::size) {
        if (auto n = vd::parse_size(*value)) value = std::to_string(*n);
      } else if (d.kind == Kind::string) {
        value = escaped(*value);
      }
    } else if (d.def) {
      value = d.def;
    }
    if (!value) continue;
    if (d.kind == Kind::string && (name == "backing_file" || name == "backing_fmt")) value = escaped(*value);
    line += " " + name + "=" + *value;
  }
  return line;
}

vd::Result<FileCreateOptions> take_file_options(const std::string& format, vd::CreateOptions& opts) {
  FileCreateOptions out;
  if (auto it = opts.options.find("preallocation"); format == "qcow" && it != opts.options.end()) {
    // qcow has no preallocation: the option is the file's, which qemu creates empty (so
    // off, falloc and full change nothing).
    const std::string& v = it->second;
    if (v == "metadata") return vd::Error(vd::Errc::not_supported, "Unsupported preallocation mode: metadata");
    if (v != "off" && v != "falloc" && v != "full")
      return vd::Error(vd::Errc::invalid_argument, "invalid parameter value: " + v);
    opts.options.erase(it);
  }
  if (auto it = opts.options.find("nocow"); it != opts.options.end()) {
    const std::string& v = it->second;
    if (!parse_bool(v)) return vd::Error(vd::Errc::invalid_argument, "Parameter 'nocow' expects 'on' or 'off'");
    out.nocow = bool_value(v);
    opts.options.erase(it);
  }
  if (auto it = opts.options.find("extent_size_hint"); it != opts.options.end()) {
    auto n = vd::parse_size(it->second);
    if (!n) return vd::Error(vd::Errc::invalid_argument, std::string("Parameter 'extent_size_hint") + kSizeHint);
    if (*n > std::numeric_limits<uint32_t>::max())
      return vd::Error(vd::Errc::invalid_argument, "Extent size hint is too large");
    out.extent_size_hint = *n;
    opts.options.erase(it);
  }
  return out;
}

bool prepare_image_file(const std::string& path, const FileCreateOptions& file) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  const bool made = fd >= 0;
  if (!made) fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;  // the format's create reports why, in its words
  if (file.nocow) {
    // btrfs: no copy-on-write for the image's blocks (other file systems ignore it).
    int flags = 0;
    if (::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
      flags |= FS_NOCOW_FL;
      (void)::ioctl(fd, FS_IOC_SETFLAGS, &flags);
    }
  }
  // XFS: allocate in extents of the hint (qemu's default 1 MiB keeps a growing image's
  // extents few). A hint given explicitly that the file system refuses warns.
  const uint32_t hint = static_cast<uint32_t>(file.extent_size_hint.value_or(1u << 20));
  fsxattr attr{};
  int r = ::ioctl(fd, FS_IOC_FSGETXATTR, &attr);
  if (r == 0) {
    attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
    attr.fsx_extsize = hint;
    r = ::ioctl(fd, FS_IOC_FSSETXATTR, &attr);
  }
  if (r < 0 && file.extent_size_hint && *file.extent_size_hint)
    std::cerr << "vdimg: warning: Failed to set extent size hint: " << std::strerror(errno) << "\n";
  ::close(fd);
  return made;
}

void undo_image_file(const std::string& path, bool made) {
  struct stat st {};
  if (made && ::stat(path.c_str(), &st) == 0 && st.st_size == 0) ::unlink(path.c_str());
}

bool refusal_keeps_file(const std::string& format, const vd::CreateOptions& opts) {
  auto it = opts.options.find("preallocation");
  return (format == "raw" || format == "qcow") && it != opts.options.end() && it->second == "metadata";
}

std::string creation_failure(const std::string& image, const vd::Error& e) {
  for (const vd::Error* at = &e; at; at = at->cause()) {
    if (at->operation() == "open" && at->system_errno() && !at->path().empty() && !at->cause())
      return "Could not create '" + at->path() + "': " + std::strerror(at->system_errno());
  }
  std::string why = e.message();
  const std::string lead = "'" + image + "': ";
  if (why.rfind(lead, 0) == 0) why = why.substr(lead.size());
  return why;
}

}  // namespace vdimg
