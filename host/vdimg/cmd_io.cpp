// vdimg io: qemu-io's -c commands, run in order on one open disk (host/io_script.h).
#include <iostream>

#include "host/vdimg/io_script.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg io [-f FMT] [-r] [-U] [-q] [-t CACHE] [-n] [-i AIO] [--passphrase-file FILE]\n"
    "                [--object secret,id=ID,data=KEY] [--image-opts]\n"
    "                -c CMD [-c CMD]... IMAGE\n"
    "Runs qemu-io style commands in order on IMAGE (through its backing chain) and stops at\n"
    "the first that fails. Commands:\n"
    "  read [-P BYTE] [-q] [-v] OFF LEN   with -P, fail unless every byte equals BYTE\n"
    "  write [-P BYTE] [-c] [-f] [-q] OFF LEN   default pattern 0xcd\n"
    "  write -z [-u] [-q] OFF LEN         zeroes (-u: may deallocate)\n"
    "  discard [-q] OFF LEN\n"
    "  flush\n"
    "OFF and LEN take k, M, G, T suffixes; BYTE is decimal or 0x hex.\n"
    "  -f FMT                  format of IMAGE (also lifts the raw probe guard)\n"
    "  -r, --read-only         open read-only\n"
    "  -q                      no report lines\n"
    "  -t CACHE                cache mode of IMAGE: writeback (default), none, writethrough,\n"
    "                          directsync, unsafe\n"
    "  -n, --nocache           the same as -t none\n"
    "  -i AIO                  threads (default) or io_uring; native (Linux AIO) is refused\n"
    "  --passphrase-file FILE  passphrase of an encrypted image\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key, named by a json:{...} IMAGE or by\n"
    "                          --image-opts (driver=qcow2,file.filename=F,encrypt.key-secret=ID)\n"
    "  --image-opts            IMAGE is an option list, not a file name\n"
    "  -U, --force-share       open even while another process writes IMAGE (with -r)\n";

}  // namespace

int cmd_io(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'c', "cmd", true},
                                {'r', "read-only", false}, {'q', "quiet", false},
                                {0, "passphrase-file", true}, {'U', "force-share", false},
                                {'t', "cache", true}, {'n', "nocache", false},
                                {'i', "aio", true}, {'k', "native-aio", false},
                                {0, "object", true}, {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  std::vector<vd::IoCommand> commands;
  for (const auto& text : args->all("cmd")) {
    auto cmd = vd::parse_io_command(text);
    if (!cmd) return fail(cmd.error());
    commands.push_back(std::move(*cmd));
  }

  auto cache = cache_args(*args, opt_cache | opt_nocache | opt_aio);
  if (!cache) return fail(cache.error());
  if (args->has("native-aio")) return fail(vd::parse_aio("native").error());
  Context ctx(cache->aio);
  OpenRequest req;
  req.cache = cache->cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  bool read_only = args->has("read-only");
  if (read_only && vd::io_commands_write(commands))
    return fail(req.path + ": cannot write with -r (read-only)");
  req.flags = read_only ? vd::open_read_only : 0u;
  req.force_share = args->has("force-share");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) {
    // qemu-io's words: "can't open device X: " and the cause under the image's own name.
    std::string msg = disk.error().message();
    const std::string own = "Could not open '" + req.path + "': ";
    if (msg.rfind(own, 0) == 0) return fail("can't open device " + req.path + ": " + msg.substr(own.size()));
    return fail(msg);
  }

  vd::Error err = vd::run_io_commands(ctx.rt, **disk, commands, std::cout, args->has("quiet"));
  vd::Error close_err = (*disk)->close();
  std::cout.flush();
  if (err && err.operation() == vd::kIoReported) return kExitError;  // qemu-io's line is out
  if (err) return fail(name_image(err, req.path));
  if (close_err) return fail(name_image(close_err, req.path));
  return kExitOk;
}

}  // namespace vdimg
