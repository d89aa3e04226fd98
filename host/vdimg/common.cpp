#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "backends/common/sizes.h"
#include "host/tool_passphrase.h"
#include "host/vdimg/image_spec.h"
#include "host/vdimg/secrets.h"
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

vd::Error take_image_options(const Args& args, OpenRequest& req) {
  req.image_opts = args.has("image-opts");
  if (req.image_opts && args.has("format"))
    return vd::Error(vd::Errc::invalid_argument, "--image-opts and --format are mutually exclusive");
  auto secrets = secret_objects(args);
  if (!secrets) return secrets.error();
  req.secrets = std::move(*secrets);
  return take_passphrase_file(args, req);
}

std::string display_name(const OpenRequest& req, const vd::Disk& disk) {
  if (!req.image_opts && !is_json_name(req.path)) return req.path;
  auto spec = parse_image_spec(req.path, req.image_opts);
  if (!spec) return req.path;
  return spec_display_name(*spec, format_name(disk.image(0)));
}

namespace {

vd::Error could_not_open(const std::string& shown, const vd::Error& e) {
  return vd::Error(e.code(), "Could not open '" + shown + "': " + e.message());
}

// Opens req.path; `shown` is the name the user gave (json:/--image-opts text) for messages.
vd::Result<std::unique_ptr<vd::Disk>> open_file(Context& ctx, const OpenRequest& req, const std::string& shown) {
  vd::DiskOpenOptions o;
  o.format = req.format;
  o.flags = req.flags | (req.format ? vd::open_format_given : 0u);
  o.passphrase = req.passphrase;
  o.snapshot = req.snapshot;
  o.no_backing = req.no_backing;
  o.cache = req.cache;
  if (req.force_share) {
    if (!(req.flags & vd::open_read_only))
      return vd::Error(vd::Errc::invalid_argument,
                       "Could not open '" + shown + "': force-share=on can only be used with read-only images");
    o.flags |= vd::open_force_share;
  }
  if (req.format && !ctx.registry.find(*req.format))
    return vd::Error(vd::Errc::not_found, "Unknown file format '" + *req.format + "'");
  std::error_code ec;
  if (!std::filesystem::exists(req.path, ec) && !ec) {
    // qemu-img 7.2's words (the name twice: the image, then the file under it).
    return vd::Error(vd::Errc::not_found, "Could not open '" + shown + "': Could not open '" + req.path +
                                              "': " + std::strerror(ENOENT))
        .sys_errno(ENOENT);
  }
  auto disk = vd::Disk::open(req.path, o, ctx.registry, ctx.rt.files());
  if (!disk) {
    const vd::Error& e = disk.error();
    // A key missing or wrong, of the top or of a backing file (each level above it adds
    // qemu's "Could not open backing file: "); a missing key in qemu's words, naming the
    // option that would have given it.
    const vd::Error* inner = &e;
    size_t depth = 0;
    while (inner->cause() && inner->operation().rfind("Could not open backing file '", 0) == 0) {
      inner = inner->cause();
      ++depth;
    }
    if (e.is(vd::Errc::wrong_passphrase) && !inner->cause() && inner->is(vd::Errc::wrong_passphrase)) {
      std::string why = inner->detail();
      if (why.find("a passphrase is needed") != std::string::npos) {
        auto probed = ctx.registry.probe(inner->path(), ctx.rt.files());
        const bool luks = depth == 0 && req.format ? *req.format == "luks" : probed && (*probed)->name() == "luks";
        why = std::string("Parameter '") + (luks ? "key-secret" : "encrypt.key-secret") + "' is required for cipher";
      }
      std::string msg = "Could not open '" + shown + "': ";
      for (size_t i = 0; i < depth; ++i) msg += "Could not open backing file: ";
      return vd::Error(e.code(), msg + why);
    }
    return qemu_open_error(shown, e);
  }
  if (req.refusal) {
    (*disk)->close();
    return could_not_open(shown, req.refusal);
  }
  // qemu's warning for a raw image it guessed and will write (vd guards sector 0 the same).
  if (!(req.flags & vd::open_read_only) && !req.format && format_name((*disk)->image(0)) == "raw")
    std::cerr << "WARNING: Image format was not specified for '" << shown
              << "' and probing guessed raw.\n"
                 "         Automatically detecting the format is dangerous for raw images, write operations on "
                 "block 0 will be restricted.\n"
                 "         Specify the 'raw' format explicitly to remove the restrictions.\n";
  return disk;
}

// The bytes of the secret `id` names ("No secret with id 'ID'" as qemu when none does).
vd::Result<std::string> secret_bytes(const OpenRequest& req, const std::string& id) {
  auto it = req.secrets.find(id);
  if (it == req.secrets.end()) return vd::Error(vd::Errc::not_found, "No secret with id '" + id + "'");
  return it->second;
}

}  // namespace

vd::Result<OpenRequest> resolve_request(Context& ctx, const OpenRequest& given) {
  if (!given.image_opts && !is_json_name(given.path)) return given;
  const std::string& shown = given.path;
  auto spec = parse_image_spec(given.path, given.image_opts);
  if (!spec) return could_not_open(shown, spec.error());
  OpenRequest req = given;
  req.path = spec->filename;
  if (spec->format && !given.format) req.format = spec->format;  // -f wins, as in qemu-img
  req.force_share = req.force_share || spec->force_share;
  req.no_backing = req.no_backing || spec->no_backing;
  for (const auto& w : spec->warnings) fail("warning: " + w);
  if (spec->no_lock) req.flags |= vd::open_no_lock;
  if (spec->cache_direct || spec->cache_no_flush) {
    // qemu's cache.direct and cache.no-flush over the command's -t/-T mode (writethrough is
    // the command's: qemu keeps it on the BlockBackend).
    using M = vd::CacheMode;
    bool direct = req.cache == M::none || req.cache == M::directsync;
    const bool through = req.cache == M::writethrough || req.cache == M::directsync;
    bool no_flush = req.cache == M::unsafe;
    direct = spec->cache_direct.value_or(direct);
    no_flush = spec->cache_no_flush.value_or(no_flush);
    if (direct && no_flush)
      return could_not_open(shown, vd::Error(vd::Errc::not_supported,
                                             "vdimg has no cache mode with both cache.direct and cache.no-flush"));
    req.cache = no_flush ? M::unsafe : direct ? (through ? M::directsync : M::none)
                                              : (through ? M::writethrough : M::writeback);
  }

  // The format, for qemu's "Block format 'F' does not support the option 'K'": the driver
  // given, else what the file is.
  std::string format = req.format.value_or("");
  std::error_code ec;
  if (format.empty() && std::filesystem::exists(req.path, ec)) {
    if (auto probed = ctx.registry.probe(req.path, ctx.rt.files())) format = std::string((*probed)->name());
  }
  // Keys qemu's format does not take are refused after the open, as qemu-img checks what is
  // left unused once the image is open (a missing or wrong key is reported first).
  auto unsupported = [&](const std::string& key) {
    req.refusal = vd::Error(vd::Errc::invalid_argument, "Block format '" + format +
                                                           "' does not support the option '" + key + "'");
  };
  const bool takes_key = spec->key_option == "key-secret" ? format == "luks" : (format == "qcow2" || format == "qcow");
  if (spec->key_secret && !format.empty() && !takes_key) {
    unsupported(spec->key_option);  // qcow and qcow2 take encrypt.key-secret, luks key-secret
    spec->key_secret.reset();
  }
  if (spec->unknown_key) unsupported(*spec->unknown_key);
  // info opens the images one by one (even with --backing-chain): the backing options stay
  // unused.
  if (spec->backing_option && given.key_unused) unsupported(*spec->backing_option);

  // The key of the image and that of its backing image. vd gives one key to every image of
  // the chain (the unencrypted ones ignore it): different keys are refused.
  const bool need_key = !req.key_unused;
  std::optional<std::string> key, backing_key;
  if (spec->key_secret) {
    auto bytes = secret_bytes(req, *spec->key_secret);
    if (!bytes && need_key) return could_not_open(shown, bytes.error());
    if (bytes) key = *bytes;
  }
  if (spec->backing_key_secret) {
    auto bytes = secret_bytes(req, *spec->backing_key_secret);
    if (!bytes && need_key) return could_not_open(shown, bytes.error());
    if (bytes) backing_key = *bytes;
  }
  if (key && backing_key && *key != *backing_key)
    return could_not_open(shown, vd::Error(vd::Errc::not_supported,
                                           "vdimg opens a chain with one key: the image's and its backing image's "
                                           "key-secret must hold the same key"));
  if (key || backing_key) {
    req.passphrase = key ? key : backing_key;
    // A key given is a key checked, as qemu-img checks it (map, snapshot, bitmap would
    // otherwise open the metadata alone).
    if (!given.key_unused) req.flags &= ~unsigned{vd::open_info_only};
  }
  req.image_opts = false;
  req.shown_as = shown;
  return req;
}

vd::Result<std::unique_ptr<vd::Disk>> open_disk(Context& ctx, const OpenRequest& given) {
  auto req = resolve_request(ctx, given);
  if (!req) return req.error();
  return open_file(ctx, *req, req->shown_as.empty() ? req->path : req->shown_as);
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
  // A wrong key: "Could not open 'TOP': Invalid password, cannot unlock any keyslot".
  if (e.is(vd::Errc::wrong_passphrase) && e.structure_name().empty() && !e.cause() &&
      d.find("a passphrase is needed") == std::string::npos)
    return vd::Error(e.code(), "Could not open '" + top + "': " + d);
  // A lock another process holds: "Could not open 'TOP': Failed to get ... lock\nIs another ...".
  if (e.is(vd::Errc::busy) && e.structure_name().empty() && !e.cause() && d.rfind("Failed to get ", 0) == 0)
    return vd::Error(e.code(), "Could not open '" + top + "': " + d);
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

vd::Result<vd::DiskExtent> block_status_of(vd::Runtime& rt, vd::Disk& disk, uint64_t off, uint64_t len) {
  vd::DiskExtent x;
  vd::Error e = rt.wait([&](vd::Completion done) {
    disk.block_status(off, len, [&x, done](vd::Error err, vd::DiskExtent ext) {
      x = ext;
      done(err);
    });
  });
  if (e) return e;
  if (x.extent.length == 0 || x.extent.length > len)
    return vd::Error(vd::Errc::internal, "block status at " + vd::hex(off) + " returned a bad length");
  return x;
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
