// vdimg compare: do two disks read the same? Exit 0 identical, 1 different, 2 error, with
// qemu-img's messages (mismatch offsets at 512-byte sector granularity, as qemu-img's).
#include <algorithm>
#include <iostream>
#include <vector>

#include "host/vdimg/vdimg.h"

namespace vdimg {
namespace {

const char kUsage[] =
    "usage: vdimg compare [-f FMT] [-F FMT] [-s] [-p] [-q] IMAGE1 IMAGE2\n"
    "Compares the content of two disks (each through its backing chain).\n"
    "Exit status: 0 identical, 1 different, 2 error.\n"
    "  -f FMT   format of IMAGE1        -F FMT   format of IMAGE2\n"
    "  -s       strict: a size difference is a mismatch\n"
    "  -q       quiet\n";

constexpr int kExitDiffer = 1;
constexpr int kExitFailed = 2;
constexpr uint64_t kChunk = 4ull << 20;

// Reads the same range of two disks at once.
vd::Error read_both(vd::Runtime& rt, vd::Disk& a, vd::Disk& b, uint64_t off,
                    std::vector<std::byte>& ba, std::vector<std::byte>& bb) {
  return rt.wait([&](vd::Completion done) {
    auto state = std::make_shared<std::pair<int, vd::Error>>(2, vd::Error());
    auto one = [state, done](vd::Error e) {
      if (e && !state->second) state->second = std::move(e);
      if (--state->first == 0) done(state->second);
    };
    a.read(off, ba, one);
    b.read(off, bb, one);
  });
}

// Both disks report zeros or nothing for the whole range: no need to read it.
bool both_zero(vd::Runtime& rt, vd::Disk& d, uint64_t off, uint64_t len) {
  uint64_t pos = 0;
  while (pos < len) {
    vd::DiskExtent x;
    vd::Error e = rt.wait([&](vd::Completion done) {
      d.block_status(off + pos, len - pos, [&x, done](vd::Error err, vd::DiskExtent ext) {
        x = ext;
        done(err);
      });
    });
    if (e || x.extent.length == 0) return false;
    if (x.level >= 0 && x.extent.kind == vd::Extent::Kind::data) return false;
    pos += x.extent.length;
  }
  return true;
}

std::optional<uint64_t> first_difference(const std::vector<std::byte>& a,
                                         const std::vector<std::byte>& b) {
  auto m = std::mismatch(a.begin(), a.end(), b.begin());
  if (m.first == a.end()) return std::nullopt;
  return static_cast<uint64_t>(m.first - a.begin());
}

// Compares [0, len) of both; returns the first differing offset, if any.
vd::Result<std::optional<uint64_t>> compare_common(vd::Runtime& rt, vd::Disk& a, vd::Disk& b,
                                                   uint64_t len) {
  std::vector<std::byte> ba, bb;
  for (uint64_t off = 0; off < len; off += kChunk) {
    uint64_t n = std::min(kChunk, len - off);
    if (both_zero(rt, a, off, n) && both_zero(rt, b, off, n)) continue;
    ba.resize(n);
    bb.resize(n);
    if (auto err = read_both(rt, a, b, off, ba, bb)) return err;
    if (auto d = first_difference(ba, bb)) return std::optional<uint64_t>(off + *d);
  }
  return std::optional<uint64_t>();
}

// The part of the larger disk past the smaller one must read as zeros.
vd::Result<std::optional<uint64_t>> check_tail(vd::Runtime& rt, vd::Disk& d, uint64_t from) {
  std::vector<std::byte> buf;
  for (uint64_t off = from; off < d.size(); off += kChunk) {
    uint64_t n = std::min(kChunk, d.size() - off);
    if (both_zero(rt, d, off, n)) continue;
    buf.resize(n);
    if (auto err = rt.wait([&](vd::Completion done) { d.read(off, buf, std::move(done)); }))
      return err;
    auto it = std::find_if(buf.begin(), buf.end(), [](std::byte x) { return x != std::byte{0}; });
    if (it != buf.end()) return std::optional<uint64_t>(off + static_cast<uint64_t>(it - buf.begin()));
  }
  return std::optional<uint64_t>();
}

}  // namespace

int cmd_compare(const Argv& argv) {
  auto args = parse_args(argv, {{'f', "a-format", true}, {'F', "b-format", true},
                                {'s', "strict", false}, {'p', "progress", false},
                                {'q', "quiet", false}, {'U', "force-share", false},
                                {'T', "cache", true}, {0, "object", true}});
  if (!args) return fail(args.error(), kExitFailed);
  if (args->help) return print_usage(kUsage);
  if (auto err = expect_positional(*args, 2, 2, "two image names")) return fail(err, kExitFailed);
  bool quiet = args->has("quiet");
  Context ctx;
  OpenRequest ra, rb;
  ra.path = args->positional[0];
  ra.format = args->last("a-format");
  rb.path = args->positional[1];
  rb.format = args->last("b-format");
  auto a = open_disk(ctx, ra);
  if (!a) return fail(a.error(), kExitFailed);
  auto b = open_disk(ctx, rb);
  if (!b) return fail(b.error(), kExitFailed);

  uint64_t sa = (*a)->size(), sb = (*b)->size();
  if (sa != sb) {
    if (args->has("strict")) {
      if (!quiet) std::cout << "Strict mode: Image size mismatch!\n";
      return kExitDiffer;
    }
    if (!quiet) std::cout << "Warning: Image size mismatch!\n";
  }
  auto diff = compare_common(ctx.rt, **a, **b, std::min(sa, sb));
  if (diff && !*diff && sa != sb) diff = check_tail(ctx.rt, sa > sb ? **a : **b, std::min(sa, sb));
  if (!diff) return fail(diff.error(), kExitFailed);
  if (*diff) {
    if (!quiet) std::cout << "Content mismatch at offset " << (**diff & ~uint64_t{511}) << "!\n";
    return kExitDiffer;
  }
  if (!quiet) std::cout << "Images are identical.\n";
  return kExitOk;
}

}  // namespace vdimg
