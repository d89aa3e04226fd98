// vdimg convert: copies a disk (through its chain, or one of its snapshots) into a new image
// of any format, sparse, with several requests in flight (copier.h).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>
#include <iostream>

#include "host/vdimg/convert_progress.h"
#include "host/vdimg/copier.h"
#include "host/vdimg/measure.h"
#include "host/vdimg/secrets.h"
#include "host/vdimg/create_schema.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg convert [-f FMT] -O FMT [-o OPTS] [-c] [-p] [-n] [--target-is-zero] [-W]\n"
    "                     [-B BACKING [-F FMT]] [-l SNAPSHOT] [-S SPARSE_SIZE] [-m N] [-r RATE]\n"
    "                     [--salvage] [-C] [-U] [-t CACHE] [-T SRC_CACHE] [--passphrase-file FILE]\n"
    "                     SRC [SRC2...] DST\n"
    "Copies SRC (through its backing chain) into a new image DST; several sources are copied\n"
    "one after the other into one DST.\n"
    "  -f FMT                  format of SRC (probed when absent)\n"
    "  -O FMT                  format of DST (default raw)\n"
    "  -o OPTS                 create options of DST (see vdimg create -o help)\n"
    "  -c                      compress DST's clusters (formats that can)\n"
    "  -p                      show progress\n"
    "  -n                      DST exists: do not create it\n"
    "  --target-is-zero        with -n: DST reads as zeros already (zeros are not written)\n"
    "  -W                      allow out-of-order writes to DST (default: guest order)\n"
    "  -S SPARSE_SIZE          zeros left unwritten only in runs of at least this many bytes\n"
    "                          (default 4k, a multiple of 512 up to 16M); 0 writes every byte\n"
    "                          (a fully allocated DST)\n"
    "  -m N                    requests in flight (1 to 16; default 4)\n"
    "  -r RATE                 write at most RATE bytes per second to DST\n"
    "  --salvage               copy unreadable sectors of SRC as zeros (with a warning)\n"
    "  -C                      copy what SRC holds as data as it is, zeros included (qemu-img's\n"
    "                          copy offloading: no zero detection inside data)\n"
    "  --bitmaps               copy SRC's persistent bitmaps too (--skip-broken-bitmaps:\n"
    "                          leave out inconsistent ones instead of failing)\n"
    "  -B BACKING, -F FMT      give DST a backing file (its format)\n"
    "  -l SNAPSHOT             copy an internal snapshot of SRC (name, or snapshot.name=X,\n"
    "                          snapshot.id=X)\n"
    "  --passphrase-file FILE  passphrase of an encrypted SRC\n"
    "  --object secret,id=ID,data=KEY  DST's key, named by -o encrypt.key-secret=ID or key-secret=ID\n"
    "  -t CACHE                cache mode of DST: unsafe (default: flushes ignored), writeback,\n"
    "                          none, writethrough, directsync\n"
    "  -T SRC_CACHE            cache mode of SRC: writeback (default), none, writethrough,\n"
    "                          directsync, unsafe\n"
    "  -q                      quiet\n"
    "  -U, --force-share       open SRC even while another process writes it\n"
    "  --object secret,id=ID,data=KEY|file=PATH  also the key of an encrypted SRC, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n"
    "  --target-image-opts     DST is such an option list (with -n)\n";

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
                                                  const vd::CreateOptions& opts, vd::CacheMode cache) {
  const std::string& path = args.positional.back();
  if (args.has("target-image-opts") && args.has("O"))  // found when qemu-img opens DST
    return vd::Error(vd::Errc::invalid_argument, "--image-opts and --format are mutually exclusive");
  const vd::Backend* backend = ctx.registry.find(fmt);
  if (!backend) return vd::Error(vd::Errc::not_found, "Unknown file format '" + fmt + "'");
  if (args.has("c") && !(backend->capabilities() & vd::cap_compression))
    return vd::Error(vd::Errc::not_supported, "Compression not supported for this file format");
  if (!args.has("n")) {
    // qemu-img's words: "DST: error while converting FMT: <why>".
    auto failed = [&](const vd::Error& e) {
      return vd::Error(e.code(), path + ": error while converting " + fmt + ": " + creation_failure(path, e));
    };
    vd::CreateOptions format_opts = opts;
    const bool keep = refusal_keeps_file(fmt, opts);
    auto file_opts = take_file_options(fmt, format_opts);
    if (!file_opts) {
      if (keep) prepare_image_file(path, {});
      return failed(file_opts.error());
    }
    const bool made = prepare_image_file(path, *file_opts);
    auto created = backend->create(path, format_opts, ctx.rt.files());
    if (!created) {
      undo_image_file(path, made && !keep);
      return failed(created.error());
    }
    if (auto err = (*created)->close(false)) return name_image(err, path);
  }
  OpenRequest req;
  req.path = path;
  // --target-image-opts (with -n): DST is an option list; json: names work with -n too.
  req.image_opts = args.has("target-image-opts");
  if (!req.image_opts) req.format = fmt;
  if (args.has("n")) {
    auto secrets = secret_objects(args);
    if (!secrets) return secrets.error();
    req.secrets = std::move(*secrets);
  }
  req.flags = 0;
  req.passphrase = opts.passphrase;
  req.cache = cache;
  return open_disk(ctx, req);
}

// SRC through its chain, or one of its internal snapshots, with its passphrase.
vd::Result<std::unique_ptr<vd::Disk>> open_source(Context& ctx, const Args& args, const std::string& path,
                                                  bool snapshot, vd::CacheMode cache) {
  OpenRequest req;
  req.cache = cache;
  req.path = path;
  req.format = args.last("format");
  req.force_share = args.has("force-share");
  if (!snapshot) {
  } else if (auto snap = args.last("l")) {
    req.snapshot = snapshot_ref(*snap);
  } else if (auto s = args.last("s")) {
    req.snapshot = *s;
  }
  if (vd::Error e = take_image_options(args, req)) return e;
  return open_disk_at_snapshot(ctx, req);
}

// The options qemu-img checks while it reads the command line, in their order, and the
// rules between them; returns the exit code of a refusal.
std::optional<int> check_options(const Args& args, CopyOptions& copy) {
  for (const auto& [key, value] : args.options) {
    if (key == "S") {
      auto n = cvtnum("buffer size for sparse output", value);
      if (!n) return fail(n.error());
      if (*n % 512 || *n / 512 > 32768)
        return fail("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 "
                    "up to 16777216. Select 0 to disable sparse detection (fully allocates output).");
      copy.min_sparse = static_cast<uint64_t>(*n);
    } else if (key == "m") {
      char* end = nullptr;
      errno = 0;
      long m = std::strtol(value.c_str(), &end, 0);
      if (value.empty() || *end || errno || m < 1 || m > 16)
        return fail("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
      copy.workers = static_cast<unsigned>(m);
    } else if (key == "r") {
      auto n = cvtnum("rate limit", value);
      if (!n) return fail(n.error());
      copy.rate_limit = static_cast<uint64_t>(*n);
    }
  }
  const bool offload = args.has("C");
  if (offload && args.has("c")) return fail("Cannot enable copy offloading when -c is used");
  if (offload && args.has("S")) return fail("Cannot enable copy offloading when -S is used");
  if (offload && args.has("salvage")) return fail("Cannot use copy offloading in salvaging mode");
  copy.copy_data_whole = offload;
  if (args.has("target-image-opts") && !args.has("n")) return fail("--target-image-opts requires use of -n flag");
  if (args.has("n") && args.has("options")) return fail("-o has no effect when skipping image creation");
  if (args.has("target-is-zero") && !args.has("n")) return fail("--target-is-zero requires use of -n flag");
  auto list = parse_option_list(args.all("options"));
  const bool help = list && std::any_of(list->begin(), list->end(),
                                         [](const auto& kv) { return kv.first == "help" || kv.first == "?"; });
  if (help) {
    Context ctx;
    const std::string fmt = args.last("O").value_or("raw");
    const vd::Backend* backend = ctx.registry.find(fmt);
    if (!backend) return fail("Unknown file format '" + fmt + "'");
    return print_option_help(*backend, args.positional.size() >= 2);  // SRC... DST names a file
  }
  if (args.positional.size() < 2) return fail("Must specify image file name");  // SRC... DST
  return std::nullopt;
}

// qemu-img's checks of the new target, after the sources opened, in its order: -o values
// against their types, a backing file needs its format, compression excludes encryption
// and preallocation. Returns the exit code of a refusal.
std::optional<int> check_target(const Args& args, const std::string& fmt, Context& ctx) {
  if (args.has("n")) return std::nullopt;
  if (!ctx.registry.find(fmt)) return fail("Unknown file format '" + fmt + "'");
  auto list = parse_option_list(args.all("options"));
  if (!list) return fail(list.error());
  if (vd::Error e = check_option_types(fmt, *list)) return fail(e);
  if ((args.has("B") || last_option(*list, "backing_file")) && !args.has("F") && !last_option(*list, "backing_fmt"))
    return fail("Use of backing file requires explicit backing format");
  if (args.has("c")) {
    const vd::Backend* backend = ctx.registry.find(fmt);
    if (!(backend->capabilities() & vd::cap_compression))
      return fail("Compression not supported for this file format");
    const std::string* enc = last_option(*list, "encryption");
    if ((enc && *enc != "off" && *enc != "no" && *enc != "false" && *enc != "n") ||
        last_option(*list, "encrypt.format"))
      return fail("Compression and encryption not supported at the same time");
    const std::string* pre = last_option(*list, "preallocation");
    if (pre && *pre != "off") return fail("Compression and preallocation not supported at the same time");
  }
  return std::nullopt;
}

// The alignment of the zero runs qemu-img finds: -S rounded down to a power of two.
uint64_t sparse_granule(uint64_t min_sparse) {
  uint64_t g = 512;
  while (g * 2 <= min_sparse) g *= 2;
  return g;
}

}  // namespace

int cmd_convert(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'O', nullptr, true},
                                {'o', "options", true}, {'c', nullptr, false},
                                {'p', nullptr, false}, {'n', nullptr, false},
                                {'B', nullptr, true}, {'F', nullptr, true},
                                {'l', nullptr, true}, {'s', nullptr, true},
                                {'q', "quiet", false}, {'U', "force-share", false},
                                {'W', nullptr, false}, {'m', nullptr, true}, {'C', nullptr, false},
                                {'t', nullptr, true}, {'T', nullptr, true},
                                {'S', nullptr, true}, {'r', nullptr, true},
                                {0, "salvage", false}, {0, "target-is-zero", false},
                                {0, "passphrase-file", true}, {0, "object", true}, {0, "image-opts", false},
                                {0, "target-image-opts", false},
                                {0, "bitmaps", false}, {0, "skip-broken-bitmaps", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto e = check_option_lists(*args)) return fail(e);
  CopyOptions copy;
  if (auto code = check_options(*args, copy)) return *code;
  // qemu-img writes the target with cache=unsafe unless -t says otherwise.
  auto cache = cache_args(*args, opt_cache | opt_src_cache, vd::CacheMode::unsafe);
  if (!cache) return fail(cache.error());
  // From here qemu-img prints 0% (with -p) and ends its output with the progress newline,
  // failures included.
  ConvertProgress progress(args->has("p") && !args->has("quiet"));
  Context ctx;
  // Several sources are copied one after the other into one target (qemu-img's
  // concatenation); all are opened first, as qemu-img does.
  std::vector<std::unique_ptr<vd::Disk>> sources;
  uint64_t total = 0;
  const std::vector<std::string> names(args->positional.begin(), args->positional.end() - 1);
  const std::string& target = args->positional.back();
  for (const auto& name : names) {
    auto src = open_source(ctx, *args, name, names.size() == 1, cache->src_cache);
    if (!src) return fail(src.error());
    total += (*src)->size();
    sources.push_back(std::move(*src));
  }
  if (sources.size() > 1 && (args->has("l") || args->has("s")))
    return fail("No support for concatenating multiple snapshot");
  const bool bitmaps = args->has("bitmaps");  // persistent bitmaps too (cmd_bitmap.cpp)
  if (bitmaps && sources.size() > 1) return fail("Copying bitmaps only possible with single source");
  if (bitmaps)
    if (vd::Error e = check_source_bitmaps(sources.front()->image(0), args->has("skip-broken-bitmaps"))) return fail(e);

  std::string out_fmt = args->last("O").value_or("raw");
  auto opts = target_options(*args, total);
  if (!opts) return fail(name_image(opts.error(), target));
  // qemu-img refuses this, after the source opened, and still exits 0.
  if (args->has("target-is-zero") && opts->backing_file) {
    fail("Cannot use --target-is-zero when the destination image has a backing file");
    return kExitOk;
  }
  if (sources.size() > 1 && opts->backing_file)
    return fail("Having a backing file for the target makes no sense when concatenating multiple input images");
  if (auto code = check_target(*args, out_fmt, ctx)) return *code;
  auto dst = open_target(ctx, *args, out_fmt, *opts, cache->cache);
  if (!dst) return fail(dst.error());
  if (args->has("n") && (*dst)->size() < total) return fail("output file is smaller than input file");
  if (bitmaps)
    if (vd::Error e = target_supports_bitmaps((*dst)->image(0))) {
      (void)(*dst)->close();
      return fail(e);
    }

  copy.write_flags = args->has("c") ? vd::write_compressed : 0u;
  copy.target_is_zero = (!args->has("n") && (*dst)->depth() == 1) || args->has("target-is-zero");
  copy.overlay = opts->backing_file.has_value();
  if (copy.overlay && (*dst)->depth() > 1) copy.backing_size = (*dst)->image(1).size();
  // Zeros may deallocate (as qemu-img's BDRV_REQ_MAY_UNMAP) only where nothing shows through.
  copy.zero_flags = (*dst)->depth() == 1 ? vd::zero_may_unmap : 0u;
  const uint64_t cluster = (*dst)->image(0).cluster_size();
  copy.granule = copy.write_flags ? std::max<uint64_t>(4096, cluster)
                                  : sparse_granule(copy.min_sparse);
  copy.in_order = !args->has("W");
  copy.salvage = args->has("salvage");
  if (!args->has("quiet")) copy.warn = [](const std::string& w) { fail("warning: " + w); };
  ConvertWalk walk;
  walk.min_sparse = copy.min_sparse;
  walk.compress_cluster = copy.write_flags ? cluster : 0;
  walk.overlay = copy.overlay;
  walk.backing_size = copy.backing_size;
  std::vector<vd::Disk*> walked;
  for (auto& src : sources) walked.push_back(src.get());
  if (vd::Error e = progress.plan(ctx.rt, walked, walk)) {
    (void)(*dst)->close();
    return fail(e);
  }
  vd::Error copy_err;
  for (auto& src : sources) {
    const uint64_t base = copy.dst_offset;
    copy.progress = [&progress, base](uint64_t done, uint64_t) { progress.advance(base + done); };
    copy_err = copy_disk(ctx.rt, *src, **dst, copy);
    if (copy_err) break;
    copy.dst_offset += src->size();
  }
  if (!copy_err && bitmaps)
    copy_err = copy_bitmaps(sources.front()->image(0), (*dst)->image(0), args->has("skip-broken-bitmaps"));
  vd::Error err;
  if (!copy_err) err = ctx.rt.wait([&](vd::Completion done) { (*dst)->flush(std::move(done)); });
  if (!copy_err && !err) progress.finish();
  vd::Error close_err = (*dst)->close();
  for (auto& src : sources) src->close();
  if (copy_err) return fail(copy_err);
  if (err) return fail(err.wrap("converting to " + target).image(names.front()));
  if (close_err) return fail(name_image(close_err, target));
  return kExitOk;
}

}  // namespace vdimg
