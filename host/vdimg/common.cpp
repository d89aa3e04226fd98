#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "backends/common/sizes.h"
#include "host/tool_passphrase.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {

int fail(const std::string& message, int code) {
  std::cout.flush();
  std::cerr << "vdimg: " << message << std::endl;
  return code;
}

int fail(const vd::Error& error, int code) { return fail(error.message(), code); }

int print_usage(const char* usage) {
  std::cout << usage;
  return kExitOk;
}

vd::Result<std::string> read_passphrase_file(const std::string& path) {
  return vd::tools::read_passphrase_file(path);
}

vd::Error take_passphrase_file(const Args& args, OpenRequest& req) {
  if (auto file = args.last("passphrase-file")) {
    auto pass = read_passphrase_file(*file);
    if (!pass) return pass.error();
    req.passphrase = *pass;
  }
  return {};
}

vd::Result<std::unique_ptr<vd::Disk>> open_disk_at_snapshot(Context& ctx, const OpenRequest& req) {
  auto disk = open_disk(ctx, req);
  if (!disk && req.snapshot && disk.error().is(vd::Errc::not_found) && disk.error().path() == req.path)
    return vd::Error(vd::Errc::not_found, "Failed to load snapshot: Can't find snapshot");
  return disk;
}

vd::Result<std::unique_ptr<vd::Disk>> open_disk(Context& ctx, const OpenRequest& req) {
  vd::DiskOpenOptions o;
  o.format = req.format;
  o.flags = req.flags | (req.format ? vd::open_format_given : 0u);
  o.passphrase = req.passphrase;
  o.snapshot = req.snapshot;
  o.no_backing = req.no_backing;
  o.cache = req.cache;
  if (req.force_share) {
    if (!(req.flags & vd::open_read_only))
      return vd::Error(vd::Errc::invalid_argument, "force-share=on can only be used with read-only images")
          .image(req.path);
    o.flags |= vd::open_force_share;
  }
  if (req.format && !ctx.registry.find(*req.format))
    return vd::Error(vd::Errc::not_found, "Unknown file format '" + *req.format + "'");
  std::error_code ec;
  if (!std::filesystem::exists(req.path, ec) && !ec) {
    // qemu-img 7.2's words (the name twice: the image, then the file under it).
    return vd::Error(vd::Errc::not_found, "Could not open '" + req.path + "': Could not open '" + req.path +
                                              "': " + std::strerror(ENOENT))
        .sys_errno(ENOENT);
  }
  auto disk = vd::Disk::open(req.path, o, ctx.registry, ctx.rt.files());
  if (!disk) return qemu_open_error(req.path, disk.error());
  return disk;
}

vd::Result<CacheArgs> cache_args(const Args& args, unsigned which, vd::CacheMode cache_default,
                                 const char* bad_cache) {
  CacheArgs out;
  out.cache = cache_default;
  auto last = [&](const char* a, const char* b) {
    std::optional<std::string> v;
    for (const auto& [k, val] : args.options)
      if (k == a || (b && k == b)) v = val;
    return v;
  };
  if (which & opt_nocache) {
    for (const auto& [k, v] : args.options)
      if (k == "n" || k == "nocache") out.cache = vd::CacheMode::none;
  }
  if (which & opt_cache) {
    if (auto v = last("t", "cache")) {
      auto mode = vd::parse_cache_mode(*v);
      if (!mode) return vd::Error(vd::Errc::invalid_argument, bad_cache ? bad_cache : "Invalid cache option: " + *v);
      out.cache = *mode;
    }
  }
  if (which & opt_src_cache) {
    if (auto v = last("T", nullptr)) {
      auto mode = vd::parse_cache_mode(*v);
      if (!mode) return vd::Error(vd::Errc::invalid_argument, "Invalid source cache option: " + *v);
      out.src_cache = *mode;
    }
  }
  if (which & opt_aio) {
    if (auto v = last("i", "aio")) {
      auto aio = vd::parse_aio(*v);
      if (!aio) return aio.error();
      out.aio = *aio;
    }
  }
  return out;
}

// A data file or backing file that is not there, in qemu-img's words: "Could not open 'TOP':
// Could not open backing file: ... Could not open 'PATH': No such file or directory", the
// middle part once per image above the missing one, PATH resolved against the folder of its
// child. Other errors keep vd's words, naming the image.
vd::Error qemu_open_error(const std::string& top, const vd::Error& e) {
  const std::string lead = "Could not open backing file '", tail = std::string(": ") + std::strerror(ENOENT);
  const std::string& d = e.detail();
  // The top's external data file: "Could not open 'TOP': Could not open 'DATA': ...".
  if (e.structure_name() == "external data file" && e.cause() && e.cause()->system_errno() &&
      !e.cause()->path().empty())
    return vd::Error(e.code(), "Could not open '" + top + "': Could not open '" + e.cause()->path() +
                                   "': " + std::strerror(e.cause()->system_errno()))
        .sys_errno(e.cause()->system_errno());
  const size_t chain_at = d.find("' (chain: ");
  if (!e.is(vd::Errc::not_found) || d.rfind(lead, 0) != 0 || chain_at == std::string::npos ||
      d.size() < tail.size() || d.compare(d.size() - tail.size(), tail.size(), tail) != 0)
    return name_image(e, top);
  const std::string name = d.substr(lead.size(), chain_at - lead.size());
  size_t depth = 1;
  for (size_t at = chain_at; (at = d.find(" -> ", at)) != std::string::npos; at += 4) ++depth;
  std::string msg = "Could not open '" + top + "': ";
  for (size_t i = 0; i < depth; ++i) msg += "Could not open backing file: ";
  msg += "Could not open '" + resolve_relative(e.path(), name) + "'" + tail;
  return vd::Error(vd::Errc::not_found, msg).sys_errno(ENOENT);
}

// The image is named once, by the error's path field; an error that has one keeps it.
vd::Error name_image(const vd::Error& error, const std::string& path) {
  if (!error || !error.path().empty()) return error;
  return vd::Error(error).image(path);
}

std::string format_name(const vd::Image& image) { return std::string(image.backend().name()); }

vd::Error expect_positional(const Args& args, size_t min, size_t max, const char* what) {
  if (args.positional.size() < min)
    return vd::Error(vd::Errc::invalid_argument, std::string("Expecting ") + what + " (try --help)");
  if (args.positional.size() > max)
    return vd::Error(vd::Errc::invalid_argument,
                     "Unexpected argument '" + args.positional[max] + "' (try --help)");
  return {};
}

vd::Result<int64_t> cvtnum(const std::string& name, const std::string& text, int64_t min, int64_t max) {
  auto n = vd::parse_size(text);
  const bool overflow = !n && n.error().message().find("too large") != std::string::npos;
  if (!n && !overflow) {
    fail("Invalid " + name + " specified. You may use k, M, G, T, P or E suffixes for");
    return vd::Error(vd::Errc::invalid_argument,
                     "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  }
  if (!n || *n > static_cast<uint64_t>(max) || static_cast<int64_t>(*n) < min)
    return vd::Error(vd::Errc::invalid_argument, "Invalid " + name + " specified. Must be between " +
                                                     std::to_string(min) + " and " + std::to_string(max) + ".");
  return static_cast<int64_t>(*n);
}

std::string snapshot_ref(const std::string& arg) {
  for (const char* key : {"snapshot.name=", "snapshot.id="}) {
    size_t at = arg.find(key);
    if (at != std::string::npos) {
      std::string v = arg.substr(at + std::string(key).size());
      return v.substr(0, v.find(','));
    }
  }
  return arg;
}

std::string resolve_relative(const std::string& child_path, const std::string& name) {
  if (name.empty() || name[0] == '/') return name;
  size_t slash = child_path.rfind('/');
  if (slash == std::string::npos) return name;
  return child_path.substr(0, slash + 1) + name;
}

}  // namespace vdimg
