// vdimg convert: copies a disk (through its chain, or one of its snapshots) into a new image
// of any format, sparse, with several requests in flight (copier.h).
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "host/vdimg/copier.h"
#include "host/vdimg/secrets.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg convert [-f FMT] -O FMT [-o OPTS] [-c] [-p] [-n] [-W] [-B BACKING [-F FMT]]\n"
    "                     [-l SNAPSHOT] [-U] [--passphrase-file FILE] SRC DST\n"
    "Copies SRC (through its backing chain) into a new image DST.\n"
    "  -f FMT                  format of SRC (probed when absent)\n"
    "  -O FMT                  format of DST (default raw)\n"
    "  -o OPTS                 create options of DST (see vdimg create -o help)\n"
    "  -c                      compress DST's clusters (formats that can)\n"
    "  -p                      show progress\n"
    "  -n                      DST exists: do not create it\n"
    "  -W                      allow out-of-order writes to DST (default: guest order)\n"
    "  --bitmaps               copy SRC's persistent bitmaps too (--skip-broken-bitmaps:\n"
    "                          leave out inconsistent ones instead of failing)\n"
    "  -B BACKING, -F FMT      give DST a backing file (its format)\n"
    "  -l SNAPSHOT             copy an internal snapshot of SRC (name, or snapshot.name=X,\n"
    "                          snapshot.id=X)\n"
    "  --passphrase-file FILE  passphrase of an encrypted SRC\n"
    "  --object secret,id=ID,data=KEY  DST's key, named by -o encrypt.key-secret=ID or key-secret=ID\n"
    "  -q                      quiet\n"
    "  -U, --force-share       open SRC even while another process writes it\n";

// -l accepts "NAME", "snapshot.name=NAME" and "snapshot.id=ID" (comma-separated).
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

// Prints qemu-img's progress line when it moved by at least 1%.
struct Progress {
  double last = -1;
  void operator()(uint64_t done, uint64_t total) {
    double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
    if (pct < 100.0 && pct - last < 1.0) return;
    last = pct;
    std::printf("    (%3.2f/100%%)\r", pct);
    std::fflush(stdout);
  }
};

vd::Result<vd::CreateOptions> target_options(const Args& args, uint64_t size) {
  auto list = parse_option_list(args.all("options"));
  if (!list) return list.error();
  vd::CreateOptions opts;
  opts.size = size;
  for (const auto& [k, v] : *list) opts.options[k] = v;
  if (auto b = args.last("B")) opts.backing_file = *b;
  if (auto f = args.last("F")) opts.backing_format = *f;
  for (auto [key, field] : {std::pair{"backing_file", &opts.backing_file},
                            std::pair{"backing_fmt", &opts.backing_format}}) {
    auto it = opts.options.find(key);
    if (it == opts.options.end()) continue;
    if (!*field) *field = it->second;
    opts.options.erase(it);
  }
  auto pass = creation_passphrase(args, opts.options, std::nullopt);  // DST's key, as qemu-img
  if (!pass) return pass.error();
  opts.passphrase = *pass;
  return opts;
}

// Creates DST (unless -n) and opens it read-write through its chain.
vd::Result<std::unique_ptr<vd::Disk>> open_target(Context& ctx, const Args& args,
                                                  const std::string& fmt,
                                                  const vd::CreateOptions& opts) {
  const std::string& path = args.positional[1];
  const vd::Backend* backend = ctx.registry.find(fmt);
  if (!backend) return vd::Error(vd::Errc::not_found, "Unknown file format '" + fmt + "'");
  if (args.has("c") && !(backend->capabilities() & vd::cap_compression))
    return vd::Error(vd::Errc::not_supported, "Compression not supported for this file format");
  if (!args.has("n")) {
    auto created = backend->create(path, opts, ctx.rt.files());
    if (!created) return name_image(created.error(), path);
    if (auto err = (*created)->close(false)) return name_image(err, path);
  }
  OpenRequest req;
  req.path = path;
  req.format = fmt;
  req.flags = 0;
  req.passphrase = opts.passphrase;
  return open_disk(ctx, req);
}

// SRC through its chain, or one of its internal snapshots, with its passphrase.
vd::Result<std::unique_ptr<vd::Disk>> open_source(Context& ctx, const Args& args) {
  OpenRequest req;
  req.path = args.positional[0];
  req.format = args.last("format");
  req.force_share = args.has("force-share");
  if (auto snap = args.last("l")) req.snapshot = snapshot_ref(*snap);
  else if (auto s = args.last("s")) req.snapshot = *s;
  if (auto file = args.last("passphrase-file")) {
    auto pass = read_passphrase_file(*file);
    if (!pass) return pass.error();
    req.passphrase = *pass;
  }
  return open_disk(ctx, req);
}

}  // namespace

int cmd_convert(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'O', nullptr, true},
                                {'o', "options", true}, {'c', nullptr, false},
                                {'p', nullptr, false}, {'n', nullptr, false},
                                {'B', nullptr, true}, {'F', nullptr, true},
                                {'l', nullptr, true}, {'s', nullptr, true},
                                {'q', "quiet", false}, {'U', "force-share", false},
                                {'W', nullptr, false}, {'m', nullptr, true},
                                {'t', nullptr, true}, {'T', nullptr, true},
                                {'S', nullptr, true}, {0, "passphrase-file", true},
                                {0, "object", true}, {0, "bitmaps", false},
                                {0, "skip-broken-bitmaps", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 2, 2, "a source and a target image")) return fail(err);
  Context ctx;
  auto src = open_source(ctx, *args);
  if (!src) return fail(src.error());
  const bool bitmaps = args->has("bitmaps");  // persistent bitmaps too (cmd_bitmap.cpp)
  if (bitmaps)
    if (vd::Error e = check_source_bitmaps((*src)->image(0), args->has("skip-broken-bitmaps"))) return fail(e);

  std::string out_fmt = args->last("O").value_or("raw");
  auto opts = target_options(*args, (*src)->size());
  if (!opts) return fail(name_image(opts.error(), args->positional[1]));
  auto dst = open_target(ctx, *args, out_fmt, *opts);
  if (!dst) return fail(dst.error());
  if (bitmaps)
    if (vd::Error e = target_supports_bitmaps((*dst)->image(0))) {
      (void)(*dst)->close();
      return fail(e);
    }

  CopyOptions copy;
  copy.granule = std::max<uint64_t>(4096, (*dst)->image(0).cluster_size());
  copy.write_flags = args->has("c") ? vd::write_compressed : 0u;
  copy.target_is_zero = !args->has("n") && (*dst)->depth() == 1;
  copy.in_order = !args->has("W");
  bool progress = args->has("p") && !args->has("quiet");
  if (progress) copy.progress = Progress{};
  if (progress) Progress{}(0, (*src)->size());
  vd::Error err = copy_disk(ctx.rt, **src, **dst, copy);
  if (!err && bitmaps) err = copy_bitmaps((*src)->image(0), (*dst)->image(0), args->has("skip-broken-bitmaps"));
  if (!err) err = ctx.rt.wait([&](vd::Completion done) { (*dst)->flush(std::move(done)); });
  if (progress) std::printf("    (100.00/100%%)\r\n");
  vd::Error close_err = (*dst)->close();
  (*src)->close();
  if (err) return fail(err.wrap("converting to " + args->positional[1]).image(args->positional[0]));
  if (close_err) return fail(name_image(close_err, args->positional[1]));
  return kExitOk;
}

}  // namespace vdimg
