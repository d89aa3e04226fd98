// vdimg compare: do two disks read the same? qemu-img compare's walk, messages and exit
// codes: 0 identical, 1 different, 2 on any error (qemu-img: 3 and 4 after the open).
//
// Both disks are walked by block status. Ranges both know to read as zeros are skipped;
// ranges both hold are read and compared; a range only one holds must read as zeros there.
// Strict mode (-s) also requires equal sizes and the same block status everywhere (qemu's
// status bits: data, zero, offset valid, allocated, end of file). With different sizes the
// common part is compared first; only if it is equal comes the size warning, and then the
// larger disk's tail must read as zeros.
#include <algorithm>
#include <iostream>
#include <vector>

#include "host/vdimg/progress.h"
#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-s] [-p] [-q] [-U]\n"
    "                     [--passphrase-file FILE] [--b-passphrase-file FILE] IMAGE1 IMAGE2\n"
    "Compares the content of two disks (each through its backing chain).\n"
    "Exit status: 0 identical, 1 different, 2 on any error (qemu-img uses 3 and 4 for\n"
    "errors after the open).\n"
    "  -f FMT   format of IMAGE1        -F FMT   format of IMAGE2\n"
    "  -s       strict: sizes and allocation status must match too\n"
    "  -T SRC_CACHE  cache mode of both disks: writeback (default), none, writethrough,\n"
    "           directsync, unsafe\n"
    "  -p       show progress\n"
    "  -q       quiet\n"
    "  --passphrase-file FILE    passphrase of encrypted images (IMAGE1 and IMAGE2)\n"
    "  --b-passphrase-file FILE  a different passphrase for IMAGE2\n"
    "  -U, --force-share  open even while another process writes IMAGE1 or IMAGE2\n"
    "  --object secret,id=ID,data=KEY|file=PATH  a key for an encrypted image, named by a\n"
    "                          json:{...} name or by --image-opts: driver=qcow2,file.filename=F,\n"
    "                          encrypt.key-secret=ID (luks: key-secret=ID)\n"
    "  --image-opts            IMAGE1 and IMAGE2 are such an option list, not a file name\n";

constexpr int kExitDiffer = 1;
constexpr int kExitOpen = 2;
// qemu-img uses 3 and 4 for failures after the open; the vdimg contract (docs/cli.md) says
// every error exits 2.
constexpr int kExitStatus = 2;
constexpr int kExitRead = 2;
constexpr uint64_t kBufBytes = 2ull << 20;  // qemu-img's IO_BUF_SIZE: the longest read
constexpr uint64_t kSector = 512;

// qemu's block-status bits, as qemu-img compare's strict mode compares them.
enum Status : unsigned {
  st_data = 0x01,
  st_zero = 0x02,
  st_offset_valid = 0x04,
  st_allocated = 0x10,
  st_eof = 0x20,
};

struct Side {
  std::string name;
  vd::Disk* disk = nullptr;
  uint64_t size = 0;
};

// The length qemu's block status answers for the extent `x` at `offset`: what vd answers,
// except that qemu's QCOW version 1 driver answers one cluster at a time (in each image it
// asks on the way down). Only the end-of-file bit depends on it.
uint64_t qemu_length(const Side& side, uint64_t offset, const vd::DiskExtent& x) {
  uint64_t len = x.extent.length;
  const size_t levels = x.level < 0 ? side.disk->depth() : static_cast<size_t>(x.level) + 1;
  for (size_t level = 0; level < levels && level < side.disk->depth(); ++level) {
    const vd::Image& img = side.disk->image(level);
    if (img.backend().name() != "qcow" || img.cluster_size() == 0) continue;
    len = std::min<uint64_t>(len, img.cluster_size() - offset % img.cluster_size());
  }
  return len;
}

// The status qemu gives the extent `x` found at `offset` of `side`.
unsigned status_of(const Side& side, uint64_t offset, const vd::DiskExtent& x) {
  const vd::Extent& e = x.extent;
  const bool plain = e.host_offset && !e.compressed && !e.encrypted;
  unsigned s = 0;
  if (x.level < 0) {
    s = st_zero;
  } else if (e.kind == vd::Extent::Kind::unallocated) {
    // Held by nobody: zeros below the base; past the end of a shorter parent qemu counts
    // the zeros as allocated by that parent.
    const bool has_parent = static_cast<size_t>(x.level) + 1 < side.disk->depth();
    s = has_parent ? st_zero | st_allocated : st_zero | (plain ? st_offset_valid : 0u);
  } else if (e.kind == vd::Extent::Kind::zero) {
    s = st_zero | st_allocated | (plain ? st_offset_valid : 0u);
  } else {
    s = st_data | st_allocated | (plain ? st_offset_valid : 0u) | (e.zero_data ? st_zero : 0u);
  }
  // End of file: of the disk; and, for zeros below the base, of the base too (qemu keeps
  // the end-of-file bit of the last image it asked when none holds the range).
  const uint64_t end = offset + qemu_length(side, offset, x);
  if (end == side.size) s |= st_eof;
  if (x.level > 0 && !(s & st_allocated) && end == side.disk->image(static_cast<size_t>(x.level)).size())
    s |= st_eof;
  return s;
}

struct StatusAt {
  unsigned status = 0;
  uint64_t length = 0;
};

vd::Result<StatusAt> status_at(vd::Runtime& rt, const Side& side, uint64_t offset) {
  auto x = block_status_of(rt, *side.disk, offset, side.size - offset);
  if (!x) return x.error();
  return StatusAt{status_of(side, offset, *x), x->extent.length};
}

// Reads the same range of two disks at once.
vd::Error read_both(vd::Runtime& rt, const Side& a, const Side& b, uint64_t off,
                    std::vector<std::byte>& ba, std::vector<std::byte>& bb) {
  return rt.wait([&](vd::Completion done) {
    auto state = std::make_shared<std::pair<int, vd::Error>>(2, vd::Error());
    auto one = [state, done](vd::Error e) {
      if (e && !state->second) state->second = std::move(e);
      if (--state->first == 0) done(state->second);
    };
    a.disk->read(off, ba, one);
    b.disk->read(off, bb, one);
  });
}

// Index of the first 512-byte sector that differs (qemu reports sectors), if any.
std::optional<uint64_t> first_different_sector(const std::vector<std::byte>& a,
                                               const std::vector<std::byte>& b) {
  auto m = std::mismatch(a.begin(), a.end(), b.begin());
  if (m.first == a.end()) return std::nullopt;
  return static_cast<uint64_t>(m.first - a.begin()) & ~(kSector - 1);
}

std::optional<uint64_t> first_nonzero_sector(const std::vector<std::byte>& buf) {
  auto it = std::find_if(buf.begin(), buf.end(), [](std::byte x) { return x != std::byte{0}; });
  if (it == buf.end()) return std::nullopt;
  return static_cast<uint64_t>(it - buf.begin()) & ~(kSector - 1);
}

// The outcome of the walk: an exit code, set once something is decided.
class Comparison {
 public:
  Comparison(vd::Runtime& rt, Side a, Side b, bool strict, bool quiet, QemuProgress& progress)
      : rt_(rt), a_(std::move(a)), b_(std::move(b)), strict_(strict), quiet_(quiet), progress_(progress) {}

  int run() {
    // qemu-img's progress: each range compared is its share of the larger disk.
    const float base = static_cast<float>(std::max(a_.size, b_.size));
    auto advance = [&](uint64_t chunk) { progress_.print(static_cast<float>(chunk) / base * 100, 100); };
    progress_.print(0, 100);
    if (strict_ && a_.size != b_.size) return differ("Strict mode: Image size mismatch!");
    const uint64_t common = std::min(a_.size, b_.size);
    uint64_t offset = 0;
    while (offset < common) {
      auto chunk = compare_at(offset);
      if (!chunk) return code_;
      offset += *chunk;
      advance(*chunk);
    }
    if (a_.size != b_.size) {
      say("Warning: Image size mismatch!");
      if (!check_tail(a_.size > b_.size ? a_ : b_, offset, advance)) return code_;
    }
    say("Images are identical.");
    return kExitOk;
  }

 private:
  // Compares the range starting at `offset`; returns its length, or nothing once decided.
  std::optional<uint64_t> compare_at(uint64_t offset) {
    auto s1 = status_at(rt_, a_, offset);
    if (!s1) return status_failed(a_, s1.error());
    auto s2 = status_at(rt_, b_, offset);
    if (!s2) return status_failed(b_, s2.error());
    uint64_t chunk = std::min(s1->length, s2->length);
    if (strict_ && s1->status != s2->status) {
      differ("Strict mode: Offset " + std::to_string(offset) + " block status mismatch!");
      return std::nullopt;
    }
    if ((s1->status & st_zero) && (s2->status & st_zero)) return chunk;
    const bool held1 = s1->status & st_allocated, held2 = s2->status & st_allocated;
    if (!held1 && !held2) return chunk;
    chunk = std::min(chunk, kBufBytes);
    bool same = held1 == held2 ? same_content(offset, chunk)
                               : reads_zeros(held1 ? a_ : b_, offset, chunk);
    if (!same) return std::nullopt;
    return chunk;
  }

  bool same_content(uint64_t offset, uint64_t len) {
    buf1_.resize(len);
    buf2_.resize(len);
    if (vd::Error e = read_both(rt_, a_, b_, offset, buf1_, buf2_)) return read_failed(offset, e);
    if (auto d = first_different_sector(buf1_, buf2_)) return mismatch(offset + *d);
    return true;
  }

  bool reads_zeros(const Side& side, uint64_t offset, uint64_t len) {
    buf1_.resize(len);
    vd::Error e = rt_.wait([&](vd::Completion done) { side.disk->read(offset, buf1_, std::move(done)); });
    if (e) return read_failed(offset, name_image(e, side.name));
    if (auto d = first_nonzero_sector(buf1_)) return mismatch(offset + *d);
    return true;
  }

  // The part of the larger disk past the smaller one must read as zeros.
  template <class Advance>
  bool check_tail(const Side& over, uint64_t offset, Advance advance) {
    while (offset < over.size) {
      auto s = status_at(rt_, over, offset);
      if (!s) {
        status_failed(over, s.error());
        return false;
      }
      uint64_t chunk = s->length;
      if ((s->status & st_allocated) && !(s->status & st_zero)) {
        chunk = std::min(chunk, kBufBytes);
        if (!reads_zeros(over, offset, chunk)) return false;
      }
      offset += chunk;
      advance(chunk);
    }
    return true;
  }

  void say(const std::string& line) const {
    if (!quiet_) std::cout << line << "\n";
  }
  int differ(const std::string& line) {
    say(line);
    return code_ = kExitDiffer;
  }
  bool mismatch(uint64_t offset) {
    differ("Content mismatch at offset " + std::to_string(offset) + "!");
    return false;
  }
  std::optional<uint64_t> status_failed(const Side& side, const vd::Error& e) {
    code_ = fail("Sector allocation test failed for " + side.name + ": " + e.message(), kExitStatus);
    return std::nullopt;
  }
  bool read_failed(uint64_t offset, const vd::Error& e) {
    code_ = fail("Error while reading offset " + std::to_string(offset) + ": " + e.message(), kExitRead);
    return false;
  }

  vd::Runtime& rt_;
  Side a_, b_;
  bool strict_, quiet_;
  QemuProgress& progress_;
  int code_ = kExitOk;
  std::vector<std::byte> buf1_, buf2_;
};

// The passphrases: --passphrase-file for both images, --b-passphrase-file for IMAGE2 only.
vd::Error read_passphrases(const Args& args, OpenRequest& ra, OpenRequest& rb) {
  if (auto file = args.last("passphrase-file")) {
    auto pass = read_passphrase_file(*file);
    if (!pass) return pass.error();
    ra.passphrase = rb.passphrase = *pass;
  }
  if (auto file = args.last("b-passphrase-file")) {
    auto pass = read_passphrase_file(*file);
    if (!pass) return pass.error();
    rb.passphrase = *pass;
  }
  return {};
}

}  // namespace

int cmd_compare(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "a-format", true}, {'F', "b-format", true},
                                {'s', "strict", false}, {'p', "progress", false},
                                {'q', "quiet", false}, {'U', "force-share", false},
                                {'T', nullptr, true}, {0, "object", true},
                                {0, "passphrase-file", true}, {0, "b-passphrase-file", true},
                                {0, "image-opts", false}});
  if (!args) return fail(args.error(), kExitOpen);
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 2, 2, "two image names")) return fail(err, kExitOpen);
  // From here qemu-img ends its output with the progress newline, failures included.
  QemuProgress progress(args->has("progress") && !args->has("quiet"), 2.0f);
  auto cache = cache_args(*args, opt_src_cache);
  if (!cache) return fail(cache.error(), kExitOpen);  // qemu-img compare's exit 2
  Context ctx;
  OpenRequest ra, rb;
  ra.cache = rb.cache = cache->src_cache;
  ra.path = args->positional[0];
  ra.format = args->last("a-format");
  rb.path = args->positional[1];
  rb.format = args->last("b-format");
  ra.force_share = rb.force_share = args->has("force-share");
  if (args->has("image-opts") && (ra.format || rb.format))
    return fail("--image-opts and --format are mutually exclusive", kExitOpen);
  for (OpenRequest* r : {&ra, &rb})  // --image-opts applies to both names, as in qemu-img
    if (auto err = take_image_options(*args, *r)) return fail(err, kExitOpen);
  if (auto err = read_passphrases(*args, ra, rb)) return fail(err, kExitOpen);
  auto a = open_disk(ctx, ra);
  if (!a) return fail(a.error(), kExitOpen);
  auto b = open_disk(ctx, rb);
  if (!b) return fail(b.error(), kExitOpen);

  Comparison cmp(ctx.rt, Side{ra.path, a->get(), (*a)->size()},
                 Side{rb.path, b->get(), (*b)->size()}, args->has("strict"), args->has("quiet"), progress);
  int code = cmp.run();
  (*b)->close();
  (*a)->close();
  return code;
}

}  // namespace vdimg
