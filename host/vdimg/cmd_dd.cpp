// vdimg dd: qemu-img dd. Copies the disk `if=` (through its chain) into a new image `of=`
// of format -O, `bs` bytes at a time, starting `skip` blocks in, as qemu-img 7.2 does it:
//
//   - the output is as large as the input, or `count * bs` bytes when that is smaller, less
//     the `skip * bs` bytes skipped (so `count` counts from the start of the input, not from
//     the skip: qemu-img's rule, unlike dd(1)'s);
//   - a skip past the end makes an empty output, with a message but exit status 0;
//   - every block is written, zeros included: the output is fully allocated.
//
// The copy moves several blocks per request (whole blocks, up to about 1 MiB): the output
// is the same as block by block, as nothing reads the output meanwhile.
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "backends/common/sizes.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg dd [-U] [-f FMT] [-O FMT] [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS]\n"
    "                if=INPUT of=OUTPUT\n"
    "Copies INPUT (through its backing chain) into a new image OUTPUT.\n"
    "  -f FMT            format of INPUT (probed when absent)\n"
    "  -O FMT            format of OUTPUT (default raw)\n"
    "  -U, --force-share open INPUT even while another process writes it\n"
    "  bs=BYTES          read and write up to BYTES bytes at a time (default: 512)\n"
    "  count=N           copy only N input blocks (counted from the start of INPUT)\n"
    "  if=FILE           read from FILE\n"
    "  of=FILE           write to FILE\n"
    "  skip=N            skip N bs-sized blocks at the start of input\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted IMAGE, named by a\n"
    "                          json:{...} IMAGE or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE is such an option list, not a file name\n";

struct DdOperands {
  int64_t bs = 512;
  std::optional<int64_t> count, skip;
  std::optional<std::string> in, out;
};

// The operands in order; the first bad one stops the command, as qemu-img.
vd::Result<DdOperands> parse_operands(const std::vector<std::string>& words) {
  DdOperands d;
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  for (const auto& w : words) {
    const size_t eq = w.find('=');
    const std::string key = w.substr(0, eq), value = eq == std::string::npos ? "" : w.substr(eq + 1);
    if (eq == std::string::npos || (key != "bs" && key != "count" && key != "if" && key != "of" && key != "skip"))
      return vd::Error(vd::Errc::invalid_argument, "unrecognized operand " + key);
    if (key == "if") {
      d.in = value;
    } else if (key == "of") {
      d.out = value;
    } else {
      auto n = cvtnum(key, value, key == "bs" ? 1 : 0, key == "bs" ? std::numeric_limits<int>::max() : kMax);
      if (!n) return n.error();
      (key == "bs" ? d.bs : key == "count" ? d.count.emplace() : d.skip.emplace()) = *n;
    }
  }
  if (!d.in || !d.out) return vd::Error(vd::Errc::invalid_argument, "Must specify both input and output files");
  return d;
}

// Creates OUTPUT with the format's default options and opens it.
vd::Result<std::unique_ptr<vd::Disk>> create_output(Context& ctx, const vd::Backend& backend,
                                                    const std::string& path, uint64_t size) {
  vd::CreateOptions opts;
  opts.size = size;
  auto created = backend.create(path, opts, ctx.rt.files());
  if (!created) {
    const vd::Error& e = created.error();
    std::string why = e.system_errno() ? "Could not create '" + path + "': " + std::strerror(e.system_errno())
                                       : e.message();
    return vd::Error(e.code(), path + ": error while creating output image: " + why);
  }
  if (auto err = (*created)->close(false)) return name_image(err, path);
  OpenRequest req;
  req.path = path;
  req.format = std::string(backend.name());
  req.flags = 0;
  return open_disk(ctx, req);
}

vd::Error copy(Context& ctx, vd::Disk& in, vd::Disk& out, uint64_t in_pos, uint64_t end, uint64_t bs) {
  const uint64_t step = bs * std::max<uint64_t>(1, (1u << 20) / bs);
  std::vector<std::byte> buf(std::min(step, end > in_pos ? end - in_pos : 0));
  for (uint64_t out_pos = 0; in_pos < end;) {
    const uint64_t n = std::min(step, end - in_pos);
    std::span<std::byte> chunk(buf.data(), n);
    vd::Error err = ctx.rt.wait([&](vd::Completion done) { in.read(in_pos, chunk, std::move(done)); });
    if (err) return err.wrap("error while reading from input image file");
    err = ctx.rt.wait([&](vd::Completion done) { out.write(out_pos, chunk, 0, std::move(done)); });
    if (err) return err.wrap("error while writing to output image file");
    in_pos += n;
    out_pos += n;
  }
  return ctx.rt.wait([&](vd::Completion done) { out.flush(std::move(done)); });
}

}  // namespace

int cmd_dd(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "format", true}, {'O', nullptr, true}, {'U', "force-share", false},
                                {0, "object", true}, {0, "passphrase-file", true}, {0, "image-opts", false}});
  if (!args) return fail(args.error());
  if (args->help) return print_usage(kUsage);
  auto dd = parse_operands(args->positional);
  if (!dd) return fail(dd.error());

  Context ctx;
  OpenRequest req;
  req.path = *dd->in;
  req.format = args->last("format");
  req.force_share = args->has("force-share");
  if (vd::Error e = take_image_options(*args, req)) return fail(e);
  auto in = open_disk(ctx, req);
  if (!in) return fail(in.error());
  const vd::Backend* backend = ctx.registry.find(args->last("O").value_or("raw"));
  if (!backend) return fail("Unknown file format");

  const uint64_t bs = static_cast<uint64_t>(dd->bs);
  uint64_t size = (*in)->size();
  if (dd->count && static_cast<uint64_t>(*dd->count) <= uint64_t(INT64_MAX) / bs && *dd->count * bs < size)
    size = *dd->count * bs;
  const uint64_t skip = dd->skip.value_or(0);
  const bool past_end = skip > uint64_t(INT64_MAX) / bs || size < skip * bs;
  auto out = create_output(ctx, *backend, *dd->out, past_end ? 0 : size - skip * bs);
  if (!out) return fail(out.error());
  // As dd(1): an offset past the end makes an empty output, and is no failure.
  if (past_end) fail(*dd->in + ": cannot skip to specified offset");
  vd::Error err = past_end ? vd::Error() : copy(ctx, **in, **out, skip * bs, size, bs);
  vd::Error close_err = (*out)->close();
  (*in)->close();
  if (err) return fail(err);
  if (close_err) return fail(name_image(close_err, *dd->out));
  return kExitOk;
}

}  // namespace vdimg
