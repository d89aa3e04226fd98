// vdimg amend: changes format options of an existing image in place (qemu-img amend -o).
// The format does the work (Image::amend); this parses the command line as qemu-img does
// and prints its messages.
//
// Key slots of LUKS encryption (qcow2's encrypt.*, luks' state/keyslot/...) need the image
// opened with its key and name further secrets: as qemu-img, --object secret,id=ID,data=...
// defines them and --image-opts 'driver=FMT,file.filename=IMAGE,key-secret=ID' (qcow2:
// encrypt.key-secret) gives the key; vdimg's --passphrase-file FILE works too. The secrets
// reach the format as options named kLuksAmendSecretPrefix + ID (backends/crypto/luks.h).
#include <iostream>

#include "backends/crypto/luks.h"
#include "host/vdimg/progress.h"
#include "host/vdimg/secrets.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg amend [--object OBJ]... [--image-opts] [-f FMT] [-t CACHE] [-p] [-q] [--force]\n"
    "                   [--passphrase-file FILE] -o OPTIONS IMAGE\n"
    "Changes format options of IMAGE (see -o help).\n"
    "  -f FMT      format of IMAGE\n"
    "  -o OPTIONS  comma-separated key=value options to change\n"
    "  --object secret,id=ID,data=KEY  a secret the options or --image-opts name (file=PATH\n"
    "              reads it from a file)\n"
    "  --image-opts  IMAGE is driver=FMT,file.filename=PATH[,key-secret=ID]\n"
    "              (qcow2: encrypt.key-secret=ID): the key that opens an encrypted image\n"
    "  --passphrase-file FILE  the key that opens an encrypted image\n"
    "  -p          show progress\n"
    "  --force     allow changes that qemu-img asks to be forced\n"
    "  -t CACHE    cache mode of IMAGE: writeback (default), none, writethrough, directsync,\n"
    "              unsafe\n"
    "  -q          quiet\n";

// qemu-img amend -o help, for QCOW2.
const char kQcow2Help[] =
    "Amend options for 'qcow2':\n"
    "  backing_file=<str>     - File name of a base image\n"
    "  backing_fmt=<str>      - Image format of the base image\n"
    "  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
    "  data_file=<str>        - File name of an external data file\n"
    "  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n"
    "  encrypt.iter-time=<num> - Time to spend in PBKDF in milliseconds\n"
    "  encrypt.keyslot=<num>  - Select a single keyslot to modify explicitly\n"
    "  encrypt.new-secret=<str> - New secret to set in the matching keyslots. Empty string to erase\n"
    "  encrypt.old-secret=<str> - Select all keyslots that match this password\n"
    "  encrypt.state=<str>    - Select new state of affected keyslots (active/inactive)\n"
    "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
    "  refcount_bits=<num>    - Width of a reference count entry in bits\n"
    "  size=<size>            - Virtual disk size\n";

// qemu-img amend -o help, for luks.
const char kLuksHelp[] =
    "Amend options for 'luks':\n"
    "  iter-time=<num>        - Time to spend in PBKDF in milliseconds\n"
    "  keyslot=<num>          - Select a single keyslot to modify explicitly\n"
    "  new-secret=<str>       - New secret to set in the matching keyslots. Empty string to erase\n"
    "  old-secret=<str>       - Select all keyslots that match this password\n"
    "  state=<str>            - Select new state of affected keyslots (active/inactive)\n";

}  // namespace

int cmd_amend(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'o', "options", true}, {'p', nullptr, false},
                                {'q', "quiet", false}, {0, "force", false}, {'t', "cache", true},
                                {0, "object", true}, {0, "image-opts", false},
                                {0, "passphrase-file", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto e = check_option_lists(*args)) return fail(e);
  if (!args->has("options"))
    return fail("Must specify options (-o)\nTry 'vdimg --help' for more information");
  auto list = parse_option_list(args->all("options"));
  if (!list) return fail(list.error());
  bool help = false;
  vd::AmendOptions opts;
  std::optional<std::string> reserved;  // a -o key that looks like the secrets vdimg adds
  for (const auto& [key, value] : *list) {
    if (key == "help" || key == "?") help = true;
    else opts.options[key] = value;
    if (key.starts_with(vd::qcow::kLuksAmendSecretPrefix) && !reserved) reserved = key;
  }
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  auto cache = cache_args(*args, opt_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  if (vd::Error e = take_image_options(*args, req)) return fail(e);
  // The repair of a dirty image (lazy refcounts after a crash) is done here rather than by
  // the open, so that its findings reach stderr as qemu-img's open prints them.
  req.flags = help ? unsigned{vd::open_read_only} : unsigned{vd::open_no_repair};
  req.no_backing = true;
  auto disk = open_disk(ctx, req);  // a missing or wrong key in qemu-img's words
  if (!disk) return fail(disk.error().message());
  vd::Image& image = (*disk)->image(0);
  if (!help && image.dirty()) {
    auto report = image.check(vd::RepairMode::all);
    if (report)
      for (const auto& m : report->messages) std::cerr << m << "\n";
    if (!report || report->corruptions > report->corruptions_fixed || report->check_errors) {
      vd::Error err = report ? vd::Error(vd::Errc::corrupt, "Could not repair dirty image")
                             : report.error().wrap("Could not repair dirty image");
      (*disk)->close();
      return fail(name_image(err, req.path));
    }
  }
  const std::string format = format_name(image);
  if (help) {
    (*disk)->close();
    if (format == "luks") {
      std::cout << kLuksHelp;
      return kExitOk;
    }
    if (format != "qcow2") return fail("Format driver '" + format + "' does not support option amendment");
    std::cout << kQcow2Help;
    return kExitOk;
  }
  if (reserved) {
    (*disk)->close();
    return fail("Invalid parameter '" + *reserved + "'");
  }
  for (const auto& [id, data] : req.secrets) opts.options[std::string(vd::qcow::kLuksAmendSecretPrefix) + id] = data;
  const bool quiet = args->has("quiet");
  ProgressLine progress(args->has("p") && !quiet);
  opts.force = args->has("force");
  opts.progress = [&progress](uint64_t done, uint64_t total) { progress(done, total); };
  vd::Error err = image.amend(opts);
  progress.finish();
  vd::Error close_err = (*disk)->close();
  // qemu-img's messages stand alone (they name an option, not the image).
  if (err) return fail(err.message());
  if (close_err) return fail(name_image(close_err, req.path));
  return kExitOk;
}

}  // namespace vdimg
