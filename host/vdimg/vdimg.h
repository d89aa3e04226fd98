// What every vdimg subcommand shares: the runtime and registry, error reporting in
// "vdimg: ..." form, opening disks the way the command line asks, and the subcommand table.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/vdimg/args.h"
#include "vd/disk.h"
#include "vd/error.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace vdimg {

// Exit codes shared by the subcommands.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;

// The built-in formats plus those of the plugins main() loaded (--plugin, VD_PLUGIN_PATH).
vd::Registry run_registry();

// The environment of one run: the runtime (with the -i aio), the registry and the -q flag.
struct Context {
  explicit Context(vd::Aio aio = vd::Aio::automatic) : rt(0, aio) {}
  vd::Runtime rt;
  vd::Registry registry = run_registry();
  bool quiet = false;
};

// Prints "vdimg: MESSAGE" to stderr; returns `code` so callers can `return fail(...)`.
int fail(const std::string& message, int code = kExitError);
int fail(const vd::Error& error, int code = kExitError);

// Prints the usage text of a subcommand to stdout (for --help) and returns 0.
int print_usage(const char* usage);

// Reads a passphrase file: its content with one trailing newline (and CR) removed.
vd::Result<std::string> read_passphrase_file(const std::string& path);

// Opens IMAGE as a Disk through its chain. `format` given by the user sets
// open_format_given (lifting the raw probe guard).
struct OpenRequest {
  std::string path;
  std::optional<std::string> format;
  unsigned flags = vd::open_read_only;
  std::optional<std::string> passphrase;
  std::optional<std::string> snapshot;
  bool no_backing = false;
  // -U/--force-share: share the image with writers (read-only opens only, as qemu-img).
  bool force_share = false;
  vd::CacheMode cache = vd::CacheMode::writeback;  // -t or -T (cache_args)
  // `path` is an --image-opts string ("driver=qcow2,file.filename=x,encrypt.key-secret=ID");
  // a path "json:{...}" is one too, in JSON (image_spec.h).
  bool image_opts = false;
  // The --object secret objects by id: the keys those two forms name.
  std::map<std::string, std::string> secrets;
  // info: qemu-img opens the image without I/O and never looks its key-secret up.
  bool key_unused = false;
  // Set by resolve_request: the json:/--image-opts text `path` came from (for messages).
  std::string shown_as;
  // Set by resolve_request: an option left unused, refused once the image has opened.
  vd::Error refusal;
};
// A json: or --image-opts request as a plain one: path the file, format the driver,
// passphrase the key the key-secret names (qemu's words for what is wrong in it). For the
// commands that open the images of a chain themselves (commit).
vd::Result<OpenRequest> resolve_request(Context& ctx, const OpenRequest& req);
// A missing IMAGE, data file or backing file fails in qemu-img's words ("Could not open
// 'x': ..."; qemu_open_error words the errors of Disk::open so). A json: path or an
// --image-opts string opens the file it names, with the key its key-secret names.
vd::Result<std::unique_ptr<vd::Disk>> open_disk(Context& ctx, const OpenRequest& req);
// --passphrase-file FILE, when given, into req.passphrase.
vd::Error take_passphrase_file(const Args& args, OpenRequest& req);
// Everything of the command line that says how IMAGE opens, for the commands that have
// qemu-img's --object and --image-opts: the secrets, the --image-opts flag (refused with -f,
// as qemu-img does) and --passphrase-file when the command has it.
vd::Error take_image_options(const Args& args, OpenRequest& req);
// The name qemu-img prints for the image `req` opened (info's "image:"): the path, or for a
// json:/--image-opts name the file, or json:{...} when a key-secret was given.
std::string display_name(const OpenRequest& req, const vd::Disk& disk);
// open_disk, with a missing internal snapshot (req.snapshot) in qemu-img's words.
vd::Result<std::unique_ptr<vd::Disk>> open_disk_at_snapshot(Context& ctx, const OpenRequest& req);
vd::Error qemu_open_error(const std::string& top, const vd::Error& e);
// Disk::block_status of [off, off + len), waited for; an answer of no bytes or more than
// asked is an internal error naming the offset.
vd::Result<vd::DiskExtent> block_status_of(vd::Runtime& rt, vd::Disk& disk, uint64_t off, uint64_t len);


// Host cache and aio options as qemu-img and qemu-io take them; one parser for every
// command. `which` says which of the options the command has (its own spec must list them,
// under the short letter or qemu's long name: cache, aio, nocache); -n is qemu-io's
// nocache (short for -t none), not convert's or bench's -n.
enum CacheOption : unsigned { opt_cache = 1, opt_src_cache = 2, opt_aio = 4, opt_nocache = 8 };
struct CacheArgs {
  vd::CacheMode cache = vd::CacheMode::writeback;      // -t: the image the command writes
  vd::CacheMode src_cache = vd::CacheMode::writeback;  // -T: the images it only reads
  vd::Aio aio = vd::Aio::automatic;                    // -i
};
// `cache_default`: qemu-img's default for -t (writeback; convert's is unsafe).
// `bad_cache`: qemu-img's message for a bad -t, when not "Invalid cache option: MODE"
// (bench says "Invalid cache mode").
vd::Result<CacheArgs> cache_args(const Args& args, unsigned which,
                                 vd::CacheMode cache_default = vd::CacheMode::writeback,
                                 const char* bad_cache = nullptr);

// Prefixes the image name unless the message already names it.
vd::Error name_image(const vd::Error& error, const std::string& path);

// The format name of an open image ("qcow2").
std::string format_name(const vd::Image& image);

// Checks that exactly `count` positional arguments were given.
vd::Error expect_positional(const Args& args, size_t min, size_t max, const char* what);

// qemu-img's cvtnum_full: a size with suffixes, in [min, max]. A malformed one prints the
// first of qemu-img's two lines and returns the second; one out of range returns "Invalid
// NAME specified. Must be between MIN and MAX.".
vd::Result<int64_t> cvtnum(const std::string& name, const std::string& text, int64_t min = 0,
                           int64_t max = INT64_MAX);

// The snapshot a -l argument names: "NAME", "snapshot.name=NAME" or "snapshot.id=ID".
std::string snapshot_ref(const std::string& arg);

// Resolves a parent name recorded in an image the way the chain does: absolute stays, a
// relative one is relative to the folder of the child.
std::string resolve_relative(const std::string& child_path, const std::string& name);

// qemu-img's "Snapshot list:" table (info, snapshot -l).
void print_snapshot_table(std::ostream& out, const std::vector<vd::SnapshotInfo>& snaps);

// `-o help` in qemu-img's layout (option_help.cpp); `with_filename` when the command line
// names the image (the file protocol's options are then listed too).
int print_option_help(const vd::Backend& backend, bool with_filename);

// Subcommands: each takes the words after its name.
using Argv = std::vector<std::string>;
int cmd_amend(const Argv& argv);
int cmd_info(const Argv& argv);
int cmd_create(const Argv& argv);
int cmd_convert(const Argv& argv);
int cmd_compare(const Argv& argv);
int cmd_map(const Argv& argv);
int cmd_io(const Argv& argv);
int cmd_check(const Argv& argv);
int cmd_resize(const Argv& argv);
int cmd_bench(const Argv& argv);
int cmd_commit(const Argv& argv);
int cmd_rebase(const Argv& argv);
int cmd_snapshot(const Argv& argv);
int cmd_measure(const Argv& argv);
int cmd_dd(const Argv& argv);
int cmd_bitmap(const Argv& argv);
// convert --bitmaps (cmd_bitmap.cpp): checks the source's bitmaps before the copy, then
// copies every one (name, granularity, enabled, bits) into the target after it.
vd::Error check_source_bitmaps(vd::Image& src, bool skip_broken);
vd::Error target_supports_bitmaps(vd::Image& dst);
vd::Error copy_bitmaps(vd::Image& src, vd::Image& dst, bool skip_broken);

}  // namespace vdimg
