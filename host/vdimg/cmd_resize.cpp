// vdimg resize: changes the virtual size of an image, absolutely or by +/- a delta.
#include <cctype>
#include <iostream>
#include <variant>

#include "backends/common/sizes.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg resize [-f FMT] [--preallocation=MODE] [--shrink] [--passphrase-file FILE] [-q]\n"
    "                    IMAGE [+|-]SIZE\n"
    "Sets the virtual size of IMAGE to SIZE, or grows/shrinks it by SIZE.\n"
    "  -f FMT     format of IMAGE\n"
    "  --preallocation=MODE  when growing: off (default), metadata (QCOW2: tables and\n"
    "             clusters allocated, data unwritten), falloc or full (raw, QCOW2: the new\n"
    "             area allocated)\n"
    "  --shrink   allow making the image smaller (data past the new end is lost;\n"
    "             QCOW2 frees the clusters there, raw is truncated)\n"
    "  --passphrase-file FILE  passphrase of an encrypted image\n"
    "  -q         quiet\n";

// A leading '-' followed by a digit is a size, not an option: take it out before the option
// parser sees it (qemu-img does the same for "resize IMG -1G").
std::optional<std::string> take_negative_size(Argv& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& w = argv[i];
    if (w.size() > 1 && w[0] == '-' && (std::isdigit(static_cast<unsigned char>(w[1])) || w[1] == '.')) {
      std::string size = w;
      argv.erase(argv.begin() + static_cast<long>(i));
      return size;
    }
  }
  return std::nullopt;
}

vd::Result<uint64_t> new_size(const std::string& arg, uint64_t current) {
  char sign = !arg.empty() && (arg[0] == '+' || arg[0] == '-') ? arg[0] : 0;
  auto amount = vd::parse_size(sign ? arg.substr(1) : arg);
  // qemu-img parses the size as the option 'size' of its options: in those words.
  if (!amount)
    return vd::Error(vd::Errc::invalid_argument,
                     "Parameter 'size' expects a non-negative number below 2^64\n"
                     "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                     "and exabytes, respectively.");
  if (sign == '+') {
    if (*amount > UINT64_MAX - current) return vd::Error(vd::Errc::too_large, "New image size too large");
    return current + *amount;
  }
  if (sign == '-') {
    if (*amount >= current) return vd::Error(vd::Errc::invalid_argument, "New image size must be positive");
    return current - *amount;
  }
  if (*amount == 0) return vd::Error(vd::Errc::invalid_argument, "New image size must be positive");
  return *amount;
}

// --preallocation falloc and full for the new area when growing (metadata is the QCOW2
// backend's own: Image::resize). raw and QCOW2 get qemu-img's result: raw falloc reserves
// the file's blocks (unwritten, they map as zeros), raw full writes zeros; QCOW2 writes
// zeros through the image, so the data clusters are allocated in guest order after their
// L2 tables, reading as zeros, as qemu's preallocation leaves them (for falloc qemu reserves
// their host space rather than writing it: the same map and check). Other formats refuse
// them in qemu's words.
vd::Error preallocate(vd::Runtime& rt, vd::Disk& disk, const std::string& format, const std::string& mode,
                      uint64_t from, uint64_t to) {
  if (mode == "off" || mode == "metadata") return {};
  if (format != "raw" && format != "qcow2")
    return vd::Error(vd::Errc::not_supported, "Unsupported preallocation mode: " + mode);
  if (format == "raw" && mode == "falloc") {
    // raw's write_zeroes without unmap punches and reserves the range again: the blocks are
    // allocated unwritten, as qemu's fallocate leaves them (they map as zeros).
    if (vd::Error e = rt.wait([&](vd::Completion done) { disk.write_zeroes(from, to - from, 0, std::move(done)); }))
      return e;
    return rt.wait([&](vd::Completion done) { disk.flush(std::move(done)); });
  }
  const std::vector<std::byte> zeros(1u << 20);
  for (uint64_t at = from; at < to;) {
    const uint64_t n = std::min<uint64_t>(zeros.size() - at % zeros.size(), to - at);
    if (vd::Error e = rt.wait([&](vd::Completion done) {
          disk.write(at, std::span(zeros.data(), static_cast<size_t>(n)), 0, std::move(done));
        }))
      return e;
    at += n;
  }
  return rt.wait([&](vd::Completion done) { disk.flush(std::move(done)); });
}

// The QCOW2 compat level and whether the image has subclusters, from its info fields.
std::string info_string(const vd::Image& image, const std::string& key) {
  for (const auto& f : image.format_info())
    if (f.key == key) {
      if (const auto* s = std::get_if<std::string>(&f.value)) return *s;
      if (const auto* b = std::get_if<bool>(&f.value)) return *b ? "true" : "false";
    }
  return {};
}

// Growing an image whose backing file is longer than its old size: qemu's bdrv_co_truncate
// zeroes the new area, so that the backing file's data there does not show through. The
// QCOW2 backend zeroes whole (sub)clusters in the resize (ResizeOptions::zero_new_area);
// the bytes from the old size to the first (sub)cluster boundary are written as zeros here.
vd::Error zero_head(vd::Runtime& rt, vd::Disk& disk, uint64_t from, uint64_t to) {
  vd::Image& top = disk.image(0);
  const uint64_t unit = info_string(top, "extended-l2") == "true" ? top.cluster_size() / 32 : top.cluster_size();
  const uint64_t zero_start = unit ? (from + unit - 1) / unit * unit : from;
  if (zero_start > from) {
    const std::vector<std::byte> zeros(static_cast<size_t>(std::min(zero_start, to) - from));
    if (vd::Error e = rt.wait([&](vd::Completion done) { disk.write(from, zeros, 0, std::move(done)); }))
      return e;
  }
  return rt.wait([&](vd::Completion done) { disk.flush(std::move(done)); });
}

// preallocation=metadata over a parent, with the old size inside a cluster the image does
// not map: the part of that cluster below the old size is rewritten with what the chain
// reads there first, so the cluster is this image's own data before the backend gives it
// host space (qemu copies it from the parent while preallocating; the same result).
vd::Error own_partial_cluster(vd::Runtime& rt, vd::Disk& disk, uint64_t old_size) {
  vd::Image& top = disk.image(0);
  const uint64_t cs = top.cluster_size();
  if (!cs || old_size % cs == 0 || info_string(top, "extended-l2") == "true") return {};
  const uint64_t start = old_size / cs * cs;
  std::vector<std::byte> buf(static_cast<size_t>(old_size - start));
  if (vd::Error e = rt.wait([&](vd::Completion done) { disk.read(start, buf, std::move(done)); })) return e;
  return rt.wait([&](vd::Completion done) { disk.write(start, buf, 0, std::move(done)); });
}

}  // namespace

int cmd_resize(const Argv& argv_in) {
  Argv argv = argv_in;
  auto negative = take_negative_size(argv);
  auto args = parse_args(argv, {{'f', "format", true}, {0, "shrink", false},
                                {'q', "quiet", false}, {0, "preallocation", true},
                                {0, "object", true}, {0, "image-opts", false},
                                {0, "passphrase-file", true},
                                {'U', "force-share", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  if (negative) args->positional.push_back(*negative);
  if (auto err = expect_positional(*args, 2, 2, "an image name and a size")) return fail(err);
  const std::string prealloc = args->last("preallocation").value_or("off");
  if (prealloc != "off" && prealloc != "metadata" && prealloc != "falloc" && prealloc != "full")
    return fail("Invalid preallocation mode '" + prealloc + "'");
  Context ctx;
  OpenRequest req;
  req.path = args->positional[0];
  req.format = args->last("format");
  req.flags = 0;
  if (vd::Error e = take_passphrase_file(*args, req)) return fail(e);
  // The chain is opened, as qemu-img does: a missing backing file fails in its words.
  req.force_share = args->has("force-share");  // refused: resizing writes
  if (auto err = take_image_options(*args, req)) return fail(err);
  auto disk = open_disk(ctx, req);
  if (!disk) return fail(disk.error());
  vd::Image& image = (*disk)->image(0);
  auto size = new_size(args->positional[1], image.size());
  if (!size) {
    (*disk)->close();
    return fail(size.error());  // qemu-img's words alone: the size is at fault, not the image
  }
  if (*size < image.size() && args->has("preallocation") && *args->last("preallocation") != "off") {
    (*disk)->close();
    return fail("Preallocation can only be used for growing images");
  }
  if (*size < image.size() && !args->has("shrink")) {
    (*disk)->close();
    // qemu-img's order: the error, then the warning.
    fail("Use the --shrink option to perform a shrink operation.");
    std::cerr << "vdimg: warning: Shrinking an image will delete all data beyond the shrunken "
                 "image's end. Before performing such an operation, make sure there is no "
                 "important data there.\n";
    return kExitError;
  }
  const uint64_t old_size = image.size();
  const std::string format = format_name(image);
  if (*size > old_size && prealloc != "off" &&
      (prealloc == "metadata" ? format != "qcow2" : format != "raw" && format != "qcow2")) {
    (*disk)->close();
    return fail("Unsupported preallocation mode: " + prealloc);
  }
  const bool zero_new = *size > old_size && (prealloc == "off" || prealloc == "metadata") && (*disk)->depth() > 1 &&
                        (*disk)->image(1).size() > old_size;
  if (zero_new && info_string(image, "compat") == "0.10") {
    (*disk)->close();
    return fail("Failed to zero out new clusters: Operation not supported");  // qemu's (v2 has none)
  }
  vd::ResizeOptions ro;
  ro.zero_new_area = zero_new;
  if (*size > old_size && prealloc == "metadata") ro.preallocation = vd::Preallocation::metadata;
  vd::Error err;
  if (ro.preallocation == vd::Preallocation::metadata && (*disk)->depth() > 1)
    err = own_partial_cluster(ctx.rt, **disk, old_size);
  if (!err) err = image.resize(*size, ro);
  if (!err && *size > old_size)
    err = zero_new ? zero_head(ctx.rt, **disk, old_size, *size)
                   : preallocate(ctx.rt, **disk, format, prealloc, old_size, *size);
  vd::Error close_err = (*disk)->close();
  if (err) return fail(name_image(err, req.path));
  if (close_err) return fail(name_image(close_err, req.path));
  if (!args->has("quiet")) std::cout << "Image resized.\n";
  return kExitOk;
}

}  // namespace vdimg
