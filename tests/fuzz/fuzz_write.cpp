// Arbitrary bytes as an image opened read-write, then a small workload taken from the last
// bytes of the input (writes, compressed writes, zero writes, discards, flushes, internal
// snapshot create/apply/delete), then reopen and read.
#include <algorithm>
#include <vector>

#include "fuzz_common.h"

namespace {
struct Op {
  uint8_t kind;
  uint32_t off;
  uint16_t len;
};
std::vector<Op> ops_from(const uint8_t* p, size_t n) {
  std::vector<Op> ops;
  for (size_t i = 0; i + 7 <= n && ops.size() < 12; i += 7)
    ops.push_back({p[i], uint32_t(p[i + 1]) << 24 | uint32_t(p[i + 2]) << 16 | uint32_t(p[i + 3]) << 8 | p[i + 4],
                   static_cast<uint16_t>(p[i + 5] << 8 | p[i + 6])});
  return ops;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const size_t tail = std::min<size_t>(size, 84);
  vdfuzz::Harness h;
  h.put("/img", {data, size - tail});
  auto disk = h.open("/img", nullptr, true);
  if (!disk) return 0;
  std::vector<std::byte> buf(65536, std::byte{0x5a});  // op.len + 1 <= 65536
  for (const Op& op : ops_from(data + size - tail, tail)) {
    const uint64_t dsize = disk->size();
    if (dsize == 0) break;
    const uint64_t off = op.off % dsize;
    const uint64_t len = std::min<uint64_t>(op.len + 1, dsize - off);
    vd::Image& top = disk->image(0);
    switch (op.kind % 8) {
      case 0: h.wait([&](vd::Completion c) { disk->write(off, std::span(buf.data(), len), 0, c); }); break;
      case 1: h.wait([&](vd::Completion c) { disk->write_zeroes(off, len, 0, c); }); break;
      case 2: h.wait([&](vd::Completion c) { disk->discard(off, len, c); }); break;
      case 3: h.wait([&](vd::Completion c) { disk->flush(c); }); break;
      case 4: (void)top.snapshot_create(op.len & 1 ? "a" : "b"); break;
      case 5: (void)top.snapshot_apply(op.len & 1 ? "1" : "b"); break;
      case 6: (void)top.snapshot_delete(op.len & 1 ? "a" : "2"); break;
      case 7: {
        const uint64_t cs = top.cluster_size();
        const uint64_t at = off / cs * cs, n = std::min<uint64_t>({cs, dsize - at, buf.size()});
        h.wait([&](vd::Completion c) { disk->write(at, std::span(buf.data(), n), vd::write_compressed, c); });
        break;
      }
    }
  }
  (void)disk->close();
  disk.reset();
  if (auto again = h.open("/img", nullptr, false)) h.read_sample(*again, 7);
  return 0;
}
