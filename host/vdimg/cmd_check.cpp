// vdimg check: the top image's consistency check and repair, with qemu-img check's report
// and exit codes (0 clean, 2 corruptions, 3 only leaks, 1 could not check).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <sstream>

#include "host/vdimg/json.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg check [-f FMT] [-r leaks|all] [--output=human|json] [-q] [-T SRC_CACHE] [-U]\n"
    "                   [--passphrase-file FILE] IMAGE\n"
    "Checks the metadata of IMAGE (not its backing files, which must open) and optionally\n"
    "repairs it.\n"
    "Exit status: 0 consistent, 2 corruptions found, 3 only leaks found, 1 could not check,\n"
    "63 the format has no checks.\n"
    "  -f FMT        format of IMAGE\n"
    "  -r leaks|all  repair leaked clusters only, or everything\n"
    "  --output FMT  human (default) or json\n"
    "  --passphrase-file FILE  passphrase of an encrypted IMAGE; optional, since the check\n"
    "                reads only metadata (given, it must be right)\n"
    "  -q            quiet\n"
    "  -T SRC_CACHE  cache mode of IMAGE: writeback (default), none, writethrough,\n"
    "                directsync, unsafe\n"
    "  -U, --force-share  check while another process writes IMAGE (not with -r)\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

constexpr int kExitCorrupt = 2;
constexpr int kExitLeaks = 3;
constexpr int kExitNoChecks = 63;  // qemu-img's exit for a format without checks

double percent(uint64_t part, uint64_t whole) {
  return whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0;
}

void print_human(std::ostream& out, const vd::CheckReport& r) {
  if (r.corruptions)
    out << "\n" << r.corruptions << " errors were found on the image.\n"
        << "Data may be corrupted, or further writes to the image may corrupt it.\n";
  if (r.leaks)
    out << "\n" << r.leaks << " leaked clusters were found on the image.\n"
        << "This means waste of disk space, but no harm to data.\n";
  if (r.check_errors)
    out << "\n" << r.check_errors << " internal errors have occurred during the check.\n";
  if (!r.corruptions && !r.leaks && !r.check_errors) out << "No errors were found on the image.\n";
  if (r.total_clusters && r.allocated_clusters) {
    char line[200];
    std::snprintf(line, sizeof line,
                  "%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                  static_cast<unsigned long long>(r.allocated_clusters),
                  static_cast<unsigned long long>(r.total_clusters),
                  percent(r.allocated_clusters, r.total_clusters),
                  percent(r.fragmented_clusters, r.allocated_clusters),
                  percent(r.compressed_clusters, r.allocated_clusters));
    out << line;
  }
  if (r.image_end_offset) out << "Image end offset: " << r.image_end_offset << "\n";
}

// Keys in the order qemu-img 7.2 prints them (the bucket order of its hashed dictionary);
// the counters appear only when non-zero, as there.
Json report_json(const vd::CheckReport& r, const std::string& file, const std::string& fmt) {
  Json j = Json::object();
  auto opt = [&j](const char* key, uint64_t v) {
    if (v) j.set(key, v);
  };
  opt("image-end-offset", r.image_end_offset);
  opt("compressed-clusters", r.compressed_clusters);
  opt("total-clusters", r.total_clusters);
  opt("corruptions", r.corruptions);
  opt("corruptions-fixed", r.corruptions_fixed);
  j.set("check-errors", r.check_errors);
  opt("leaks", r.leaks);
  opt("leaks-fixed", r.leaks_fixed);
  opt("allocated-clusters", r.allocated_clusters);
  j.set("filename", file);
  j.set("format", fmt);
  opt("fragmented-clusters", r.fragmented_clusters);
  return j;
}

int exit_code(const vd::CheckReport& r) {
  if (r.check_errors) return kExitError;
  if (r.corruptions) return kExitCorrupt;
  if (r.leaks) return kExitLeaks;
  return kExitOk;
}

vd::Result<vd::RepairMode> repair_mode(const Args& args) {
  auto r = args.last("repair");
  if (!r) return vd::RepairMode::none;
  if (*r == "leaks") return vd::RepairMode::leaks;
  if (*r == "all") return vd::RepairMode::all;
  return vd::Error(vd::Errc::invalid_argument, "Unknown option value for -r (expecting 'leaks' or 'all'): " + *r);
}

// After a repair, qemu-img says what it fixed and checks again; the second report counts.
vd::Result<vd::CheckReport> repair_and_recheck(vd::Image& image, vd::RepairMode mode,
                                               std::ostream& out, bool human) {
  auto first = image.check(mode);
  if (!first) return first;
  if (!first->leaks_fixed && !first->corruptions_fixed) return first;
  if (human)
    out << "The following inconsistencies were found and repaired:\n\n"
        << "    " << first->leaks_fixed << " leaked clusters\n"
        << "    " << first->corruptions_fixed << " corruptions\n\n"
        << "Double checking the fixed image now...\n";
  auto second = image.check(vd::RepairMode::none);
  if (!second) return second;
  second->leaks_fixed = first->leaks_fixed;
  second->corruptions_fixed = first->corruptions_fixed;
  // qemu-img prints what the repair found and did, then what the double check finds.
  second->messages.insert(second->messages.begin(), first->messages.begin(), first->messages.end());
  return second;
}

}  // namespace

int cmd_check(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'r', "repair", true},
                                {0, "output", true}, {'q', "quiet", false},
                                {'U', "force-share", false}, {'T', nullptr, true},
                                {0, "object", true}, {0, "image-opts", false},
                                {0, "passphrase-file", true}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 1, 1, "an image name")) return fail(err);
  std::string output = args->last("output").value_or("human");
  if (output != "human" && output != "json") return fail("--output must be human or json");
  auto mode = repair_mode(*args);
  if (!mode) return fail(mode.error());

  auto cache = cache_args(*args, opt_src_cache);
  if (!cache) return fail(cache.error());
  Context ctx;
  OpenRequest req;
  req.cache = cache->src_cache;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = *mode == vd::RepairMode::none ? vd::open_read_only : vd::open_no_repair;
  req.force_share = args->has("force-share");
  if (auto err = take_image_options(*args, req)) return fail(err);
  if (!req.passphrase && req.secrets.empty()) {
    // The check reads metadata only: an encrypted image opens without its key.
    req.flags |= vd::open_info_only;
  }
  // Like qemu-img, the whole chain must open (a missing backing file fails the check),
  // though only the top image is checked.
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  vd::Image& image = (*disk)->image(0);
  const std::string& name = req.path;  // as given: qemu-img check names a json: image so

  std::ostringstream out;
  auto report = repair_and_recheck(image, *mode, out, output == "human");
  std::string fmt = format_name(image);
  vd::Error close_err = (*disk)->close();
  if (!report) {
    if (report.error().is(vd::Errc::not_supported))
      return fail("This image format does not support checks", kExitNoChecks);
    return fail(report.error().wrap("check").image(name));
  }
  for (const auto& m : report->messages) std::cerr << m << "\n";
  // qemu's check of a repair that only a rebuild could do (-r leaks on refcounts that need
  // one) fails with -EIO: no report, "Check failed: Input/output error".
  if (*mode != vd::RepairMode::none && report->check_errors &&
      std::find(report->messages.begin(), report->messages.end(), "ERROR need to rebuild refcount structures") !=
          report->messages.end())
    return fail("Check failed: " + std::string(std::strerror(EIO)));
  if (output == "json") out << report_json(*report, name, fmt).pretty() << "\n";
  else print_human(out, *report);
  if (!args->has("quiet") || output == "json") std::cout << out.str();
  if (close_err) return fail(name_image(close_err, name));
  // Internal errors: the report, then qemu-img's last line and exit 1.
  if (report->check_errors) return fail("Check failed");
  return exit_code(*report);
}

}  // namespace vdimg
