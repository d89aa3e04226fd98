// vdimg snapshot: lists internal snapshots (-l). Creating, applying and deleting them need
// backend support the Image interface does not offer yet, and say so.
#include <iostream>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg snapshot [-l | -c NAME | -a NAME | -d NAME] [-f FMT] [-q] IMAGE\n"
    "  -l   list the internal snapshots of IMAGE (default)\n"
    "  -c, -a, -d   create, apply, delete: not supported yet\n";

}  // namespace

int cmd_snapshot(const Argv& argv) {
  auto args = parse_args(argv, {{'l', "list", false}, {'c', "create", true},
                                {'a', "apply", true}, {'d', "delete", true},
                                {'f', "format", true}, {'q', "quiet", false},
                                {'U', "force-share", false}, {0, "object", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  const std::string& path = args->positional[0];
  for (const char* op : {"create", "apply", "delete"})
    if (args->has(op))
      return fail(path + ": snapshot " + op + " is not supported by vdimg yet");
  Context ctx;
  OpenRequest req;
  req.path = path;
  req.format = args->last("format");
  req.flags = vd::open_read_only | vd::open_info_only;
  req.no_backing = true;
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  auto snaps = (*disk)->image(0).snapshots();
  (*disk)->close();
  if (!snaps.empty() && !args->has("quiet")) print_snapshot_table(std::cout, snaps);
  return kExitOk;
}

}  // namespace vdimg
