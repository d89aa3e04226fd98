// vdimg create: a new image of a format, optionally over a backing file, with qemu-img's
// -o options passed through to the backend.
#include <iostream>
#include <map>

#include "backends/common/sizes.h"
#include "host/vdimg/secrets.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg create -f FMT [-o OPTS] [-b BACKING [-F BACKING_FMT]] [-u] [-q]\n"
    "                    [--object secret,id=ID,data=KEY|file=PATH] [--passphrase-file FILE] IMAGE [SIZE]\n"
    "Creates IMAGE. SIZE takes k, M, G, T, P, E suffixes; it defaults to the backing file's.\n"
    "  -f FMT          format of the new image (default raw)\n"
    "  -o OPTS         comma-separated key=value options; may repeat; -o help lists them\n"
    "  -b BACKING      backing file (relative names are relative to IMAGE's folder)\n"
    "  -F BACKING_FMT  format of the backing file (required with -b)\n"
    "  -u              do not open the backing file (SIZE is then required)\n"
    "  -q              quiet\n"
    "  --object secret,id=ID,data=KEY   a key for -o encrypt.key-secret=ID (qcow2) or\n"
    "                  -o key-secret=ID (luks), as qemu-img; file=PATH reads it from a file\n"
    "  --passphrase-file FILE  the new image's key (with -o encrypt.format=luks|aes, or -f luks)\n";

// Moves -o's backing_file/backing_fmt into the fields the backend reads them from.
void take_backing_from_options(vd::CreateOptions& opts) {
  if (auto it = opts.options.find("backing_file"); it != opts.options.end()) {
    if (!opts.backing_file) opts.backing_file = it->second;
    opts.options.erase(it);
  }
  if (auto it = opts.options.find("backing_fmt"); it != opts.options.end()) {
    if (!opts.backing_format) opts.backing_format = it->second;
    opts.options.erase(it);
  }
}

// Opens the backing file as the new image will see it, for its size (and to prove it
// exists): the name is relative to the new image's folder.
vd::Result<uint64_t> backing_size(Context& ctx, const std::string& image,
                                  const vd::CreateOptions& opts) {
  OpenRequest req;
  req.path = resolve_relative(image, *opts.backing_file);
  req.format = opts.backing_format;
  req.flags = vd::open_read_only | vd::open_info_only;
  req.force_share = true;  // as qemu-img create: the backing file may be in use
  auto disk = open_disk(ctx, req);
  if (!disk) return disk.error().wrap("opening", "backing image").image(req.path);
  uint64_t size = (*disk)->size();
  (*disk)->close();
  return size;
}

// qemu-img 7.2 refuses -b without -F and names the format it would have guessed.
int missing_backing_format(Context& ctx, const std::string& image, const std::string& backing) {
  std::string msg = image + ": Backing file specified without backing format";
  auto probed = ctx.registry.probe(resolve_relative(image, backing), ctx.rt.files());
  if (probed) msg += "\nDetected format of " + std::string((*probed)->name()) + ".";
  return fail(msg);
}

void print_formatting(const std::string& image, const std::string& fmt,
                      const vd::CreateOptions& opts) {
  std::cout << "Formatting '" << image << "', fmt=" << fmt;
  for (const auto& [k, v] : opts.options) std::cout << " " << k << "=" << v;
  std::cout << " size=" << opts.size;
  if (opts.backing_file) std::cout << " backing_file=" << *opts.backing_file;
  if (opts.backing_format) std::cout << " backing_fmt=" << *opts.backing_format;
  std::cout << "\n";
}

// Reads -o lists (with size=, backing_file=, backing_fmt=), -b and -F into `opts`; returns
// the size as given (-o size= or the SIZE argument), if any.
vd::Result<std::optional<std::string>> collect_options(const Args& args, vd::CreateOptions& opts) {
  auto list = parse_option_list(args.all("options"));
  if (!list) return list.error();
  for (const auto& [k, v] : *list) opts.options[k] = v;
  std::optional<std::string> size_arg;
  if (auto it = opts.options.find("size"); it != opts.options.end()) {
    size_arg = it->second;
    opts.options.erase(it);
  }
  if (args.positional.size() == 2) size_arg = args.positional[1];
  if (auto b = args.last("backing")) opts.backing_file = *b;
  if (auto f = args.last("backing-format")) opts.backing_format = *f;
  take_backing_from_options(opts);
  return size_arg;
}

// The new image's size: as given, else the backing file's (which is opened to check it
// exists unless -u).
vd::Error settle_size(Context& ctx, const std::string& image, const std::optional<std::string>& arg,
                      bool unsafe, vd::CreateOptions& opts) {
  if (arg) {
    auto size = vd::parse_size(*arg);
    if (!size)
      return vd::Error(vd::Errc::invalid_argument,
                       "Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                       "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    opts.size = *size;
  } else if (!opts.backing_file) {
    return vd::Error(vd::Errc::invalid_argument, image + ": Image creation needs a size parameter");
  }
  if (!opts.backing_file || (arg && unsafe)) return {};
  auto size = backing_size(ctx, image, opts);
  if (!size) return name_image(size.error(), image);
  if (!arg) opts.size = *size;
  return {};
}

bool wants_option_help(const Args& args) {
  auto list = parse_option_list(args.all("options"));
  if (!list) return false;
  for (const auto& kv : *list)
    if (kv.first == "help" || kv.first == "?") return true;
  return false;
}

}  // namespace

int cmd_create(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'o', "options", true},
                                {'b', "backing", true}, {'F', "backing-format", true},
                                {'u', nullptr, false}, {'q', "quiet", false},
                                {0, "object", true}, {'U', "force-share", false},
                                {0, "passphrase-file", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  Context ctx;
  std::string fmt = args->last("format").value_or("raw");
  const vd::Backend* backend = ctx.registry.find(fmt);
  if (!backend) return fail("Unknown file format '" + fmt + "'");
  if (wants_option_help(*args)) return print_option_help(*backend, !args->positional.empty());
  if (auto err = expect_positional(*args, 1, 2, "an image name")) return fail(err);
  const std::string image = args->positional[0];

  vd::CreateOptions opts;
  auto size_arg = collect_options(*args, opts);
  if (!size_arg) return fail(size_arg.error());
  auto pass = creation_passphrase(*args, opts.options, args->last("passphrase-file"));
  if (!pass) return fail(name_image(pass.error(), image));
  opts.passphrase = *pass;
  if (opts.backing_file && !opts.backing_format)
    return missing_backing_format(ctx, image, *opts.backing_file);
  if (auto err = settle_size(ctx, image, *size_arg, args->has("u"), opts)) return fail(err);
  if (!args->has("quiet")) print_formatting(image, fmt, opts);
  auto created = backend->create(image, opts, ctx.rt.files());
  if (!created) return fail(name_image(created.error(), image));
  if (auto err = (*created)->close(false)) return fail(name_image(err, image));
  return kExitOk;
}

}  // namespace vdimg
