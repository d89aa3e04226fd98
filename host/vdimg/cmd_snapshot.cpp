// vdimg snapshot: lists (-l), creates (-c), applies (-a) and deletes (-d) internal snapshots,
// with qemu-img's messages. Only metadata changes: encrypted images need no passphrase.
#include <iostream>
#include <optional>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg snapshot [-l | -c NAME | -a NAME | -d NAME] [-f FMT] [-q] [-U] IMAGE\n"
    "  -l   list the internal snapshots of IMAGE (default)\n"
    "  -c NAME   create a snapshot of the current state named NAME (ids are numbered)\n"
    "  -a NAME   apply: the current state becomes snapshot NAME (by id, else by name);\n"
    "            what was current and not in a snapshot is lost\n"
    "  -d NAME   delete the (first) snapshot named NAME\n"
    "  -q        quiet\n"
    "  -U, --force-share  list even while another process writes IMAGE (with -l only)\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

// Runs one of create/apply/delete on the image opened read-write (metadata only).
int change_snapshot(const Args& args, const std::string& op, const std::string& name) {
  Context ctx;
  OpenRequest req;
  req.path = args.positional[0];
  req.format = args.last("format");
  const bool force_share = args.has("force-share");
  if (auto err = take_image_options(args, req)) return fail(err);
  req.flags = vd::open_info_only;
  // The chain opens too, as qemu-img opens it (a missing backing file fails in its words).
  req.force_share = force_share;  // refused: a change needs the image read-write
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  vd::Image& img = (*disk)->image(0);
  vd::Error e;
  std::string what;
  if (op == "create") {
    e = img.snapshot_create(name);
    what = "Could not create snapshot '" + name + "': ";
    // qemu-img prints the driver's errno: "-95 (Operation not supported)".
    if (e.is(vd::Errc::not_supported)) e = vd::Error(vd::Errc::not_supported, "-95 (Operation not supported)");
  } else if (op == "apply") {
    e = img.snapshot_apply(name);
    what = "Could not apply snapshot '" + name + "': ";
    if (e.is(vd::Errc::not_found)) e = vd::Error(vd::Errc::not_found, "Failed to load snapshot: No such file or directory");
    if (e.is(vd::Errc::not_supported)) e = vd::Error(vd::Errc::not_supported, "Block driver does not support snapshots");
  } else {
    // qemu-img finds the snapshot to delete by name only (the first of that name).
    std::optional<std::string> id;
    for (const auto& sn : img.snapshots())
      if (!id && sn.name == name) id = sn.id;
    e = id ? img.snapshot_delete(*id) : vd::Error(vd::Errc::not_found, "no such snapshot");
    what = "Could not delete snapshot '" + name + "': ";
    if (e.is(vd::Errc::not_found)) e = vd::Error(vd::Errc::not_found, "snapshot not found");
  }
  vd::Error closed = (*disk)->close();
  if (e) return fail(what + e.message());
  if (closed) return fail(closed);
  return kExitOk;
}

}  // namespace

int cmd_snapshot(const Argv& argv) {
  auto args = parse_args(argv, {{'l', "list", false}, {'c', "create", true},
                                {'a', "apply", true}, {'d', "delete", true},
                                {'f', "format", true}, {'q', "quiet", false},
                                {'U', "force-share", false}, {0, "object", true},
                                {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  const std::string& path = args->positional[0];
  for (const char* op : {"create", "apply", "delete"})
    if (args->has(op)) return change_snapshot(*args, op, *args->last(op));
  Context ctx;
  OpenRequest req;
  req.path = path;
  req.format = args->last("format");
  req.flags = vd::open_read_only | vd::open_info_only;
  // The chain opens too, as qemu-img opens it (a missing backing file fails in its words).
  req.force_share = args->has("force-share");
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  auto snaps = (*disk)->image(0).snapshots();
  (*disk)->close();
  if (!snaps.empty() && !args->has("quiet")) print_snapshot_table(std::cout, snaps);
  return kExitOk;
}

}  // namespace vdimg
