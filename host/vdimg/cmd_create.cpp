// vdimg create: a new image of a format, optionally over a backing file, with qemu-img's
// -o options passed through to the backend.
#include <iostream>
#include <map>

#include "backends/common/sizes.h"
#include "host/vdimg/create_schema.h"
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
  if (!disk) {
    // qemu-img's words: "Could not open 'BACKING': <why>\nCould not open backing image."
    std::string why = disk.error().message();
    const std::string twice = "Could not open '" + req.path + "': Could not open '" + req.path + "': ";
    if (why.rfind(twice, 0) == 0) why = why.substr(twice.size() / 2);
    return vd::Error(disk.error().code(), why + "\nCould not open backing image.");
  }
  uint64_t size = (*disk)->size();
  (*disk)->close();
  return size;
}

// qemu-img 7.2 refuses -b without -F; having opened the backing file, it names the format it
// would have guessed.
int missing_backing_format(Context& ctx, const std::string& image, const std::string& backing, bool opened) {
  std::string msg = image + ": Backing file specified without backing format";
  auto probed = ctx.registry.probe(resolve_relative(image, backing), ctx.rt.files());
  if (probed && opened) msg += "\nDetected format of " + std::string((*probed)->name()) + ".";
  return fail(msg);
}

int create_failed(const std::string& image, const vd::Error& e) {
  return fail(image + ": " + creation_failure(image, e));
}

vd::Error refused(const std::string& why) { return vd::Error(vd::Errc::invalid_argument, why); }

// The SIZE argument, checked as qemu-img's cvtnum("image size") does before anything else.
vd::Result<std::optional<uint64_t>> size_argument(const Args& args) {
  if (args.positional.size() < 2) return std::optional<uint64_t>();
  auto size = vd::parse_size(args.positional[1]);
  if (!size)
    return refused("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
                   "vdimg: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  if (*size > uint64_t{INT64_MAX})
    return refused("Invalid image size specified. Must be between 0 and 9223372036854775807.");
  return std::optional<uint64_t>(*size);
}

// Reads -o lists (with size=, backing_file=, backing_fmt=), -b and -F into `opts`, in
// qemu's bdrv_img_create order: the -o values against their types, the size given once,
// a backing file only for formats that have one. Returns whether a size was given.
vd::Result<bool> collect_options(const Args& args, const std::string& fmt, const vd::Backend& backend,
                                 std::optional<uint64_t> size_arg, vd::CreateOptions& opts) {
  auto list = parse_option_list(args.all("options"));
  if (!list) return list.error();
  if (auto e = check_option_types(fmt, *list)) return e;
  for (const auto& [k, v] : *list) opts.options[k] = v;
  if (auto it = opts.options.find("size"); it != opts.options.end()) {
    if (size_arg) return refused("The image size must be specified only once");
    size_arg = *vd::parse_size(it->second);  // its type was checked
    opts.options.erase(it);
  }
  if (size_arg) opts.size = *size_arg;
  if (auto b = args.last("backing")) opts.backing_file = *b;
  if (auto f = args.last("backing-format")) opts.backing_format = *f;
  take_backing_from_options(opts);
  if (!(backend.capabilities() & vd::cap_diff)) {
    if (opts.backing_file) return refused("Backing file not supported for file format '" + fmt + "'");
    if (opts.backing_format) return refused("Backing file format not supported for file format '" + fmt + "'");
  }
  if (opts.backing_file && *opts.backing_file == args.positional[0])
    return refused("Error: Trying to create an image with the same filename as the backing file");
  if (opts.backing_file && opts.backing_file->empty()) return refused("Expected backing file name, got empty string");
  return size_arg.has_value();
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
  if (auto e = check_option_lists(*args)) return fail(e);
  Context ctx;
  std::string fmt = args->last("format").value_or("raw");
  const vd::Backend* backend = ctx.registry.find(fmt);
  if (wants_option_help(*args)) {
    if (!backend) return fail("Unknown file format '" + fmt + "'");
    return print_option_help(*backend, !args->positional.empty());
  }
  if (auto err = expect_positional(*args, 1, 2, "an image name")) return fail(err);
  const std::string image = args->positional[0];
  auto size_arg = size_argument(*args);
  if (!size_arg) return fail(size_arg.error());
  if (!backend) return fail(image + ": Unknown file format '" + fmt + "'");

  vd::CreateOptions opts;
  auto size_given = collect_options(*args, fmt, *backend, *size_arg, opts);
  if (!size_given) return create_failed(image, size_given.error());
  // The backing file is opened (for its size, and to prove it is there) unless -u.
  if (opts.backing_file && !args->has("u")) {
    auto size = backing_size(ctx, image, opts);
    if (!size) return fail(image + ": " + size.error().message());
    if (!opts.backing_format) return missing_backing_format(ctx, image, *opts.backing_file, true);
    if (!*size_given) opts.size = *size;
  } else if (opts.backing_file && !opts.backing_format) {
    return missing_backing_format(ctx, image, *opts.backing_file, false);
  } else if (!*size_given) {
    return fail(image + ": Image creation needs a size parameter");
  }
  if (!args->has("quiet")) std::cout << formatting_line(image, fmt, opts) << "\n";
  // What qemu's format driver checks after the line: the key, the file options.
  auto pass = creation_passphrase(*args, opts.options, args->last("passphrase-file"));
  if (!pass) return create_failed(image, pass.error());
  opts.passphrase = *pass;
  const bool keep = refusal_keeps_file(fmt, opts);
  auto file_opts = take_file_options(fmt, opts);
  if (!file_opts) {
    if (keep) prepare_image_file(image, {});
    return create_failed(image, file_opts.error());
  }
  const bool made = prepare_image_file(image, *file_opts);
  auto created = backend->create(image, opts, ctx.rt.files());
  if (!created) {
    undo_image_file(image, made && !keep);
    return create_failed(image, created.error());
  }
  if (auto err = (*created)->close(false)) return fail(name_image(err, image));
  return kExitOk;
}

}  // namespace vdimg
