// refcount_bits changes (what QEMU's qcow2_change_refcount_order achieves, done our own way):
// the refcounts of every cluster are read, new refcount blocks of the new width and a new
// refcount table are laid out past the end of the file, and the header switches to them.
//
// Crash invariant: the new table and blocks are written and flushed while nothing points at
// them (to the old structures they are free clusters past the end). The header then changes
// the refcount order, table offset and table size in one write of its first sector (all
// three fields lie in the first 104 bytes), flushed. Before that write the image is the old
// one, after it the new one; a crash between leaves clusters past the end that no structure
// references, never a mix. The old table and blocks get no refcount in the new structures:
// once the header points at those, they are free.
#include <cinttypes>
#include <cstdio>

#include "backends/qcow/amend/amend.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/header.h"

namespace vd::qcow {

namespace {

constexpr uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Stores refcount `v` as entry `i` of a block of `bits`-wide entries (the on-disk packing:
// big-endian from 8 bits up, least significant bits first below).
void put_entry(std::vector<std::byte>& b, uint64_t i, uint64_t v, uint32_t bits) {
  if (bits < 8) {
    const uint64_t bit = i * bits;
    b[bit / 8] |= std::byte(static_cast<uint8_t>(v << (bit % 8)));
    return;
  }
  const size_t n = bits / 8;
  for (size_t k = n; k-- > 0; v >>= 8) b[i * n + k] = std::byte(v & 0xff);
}

}  // namespace

Error QcowImage::change_refcount_order(uint32_t order, AmendProgress& progress) {
  const uint64_t cs = layout_.cluster_size();
  const uint32_t bits = 1u << order;
  const uint64_t max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
  auto size = file_->size();
  if (!size) return size.error();
  const uint64_t start = div_up(std::max(*size, refs_->allocated_end()), cs);
  auto read = refs_->all_refcounts(start);
  if (!read) return read.error();
  std::vector<uint64_t> counts = std::move(*read);
  // The old structures are not carried over.
  for (uint64_t c = 0; c < refs_->table_clusters(); ++c) counts[refs_->table_offset() / cs + c] = 0;
  for (uint64_t i = 0;; ++i) {
    const uint64_t at = refs_->block_offset(i);
    if (i >= uint64_t{refs_->table_clusters()} * cs / 8) break;
    if (at && at / cs < counts.size()) counts[at / cs] = 0;
  }
  for (uint64_t c = 0; c < counts.size(); ++c)
    if (counts[c] > max) {
      char msg[160];
      std::snprintf(msg, sizeof msg,
                    "Cannot decrease refcount entry width to %u bits: Cluster at offset %#" PRIx64
                    " has a refcount of %" PRIu64,
                    bits, c * cs, counts[c]);
      return Error(Errc::not_supported, msg);
    }
  // Table, then blocks, from cluster `start`; they must also count themselves.
  const uint64_t per_block = cs * 8 / bits;
  uint64_t blocks = 0, table = 0;
  for (;;) {
    const uint64_t b = div_up(start + table + blocks, per_block);
    const uint64_t t = div_up(b * 8, cs);
    if (b == blocks && t == table) break;
    blocks = b;
    table = t;
  }
  counts.resize(start + table + blocks, 0);
  for (uint64_t c = start; c < start + table + blocks; ++c) counts[c] = 1;
  std::vector<std::byte> table_bytes(table * cs);
  std::vector<std::byte> block(cs);
  for (uint64_t k = 0; k < blocks; ++k) {
    progress.report(k, blocks + 1);
    std::fill(block.begin(), block.end(), std::byte{0});
    for (uint64_t e = 0; e < per_block && k * per_block + e < counts.size(); ++e)
      put_entry(block, e, counts[k * per_block + e], bits);
    const uint64_t at = (start + table + k) * cs;
    store_be64(table_bytes.data() + k * 8, at);
    if (Error e = file_->write(IoKind::meta, at, block))
      return e.wrap("writing", "new refcount block", at).image(path_);
  }
  if (Error e = file_->write(IoKind::meta, start * cs, table_bytes))
    return e.wrap("writing", "new refcount table", start * cs).image(path_);
  if (Error e = file_->flush()) return e.wrap("flush").image(path_);
  // The switch: one sector.
  Header next = hdr_;
  next.refcount_order = order;
  next.refcount_table_offset = start * cs;
  next.refcount_table_clusters = static_cast<uint32_t>(table);
  auto bytes = encode_header(next);
  if (!bytes) return bytes.error().wrap("encoding", "the header").image(path_);
  if (Error e = file_->write(IoKind::meta, 0, std::span<const std::byte>(bytes->data(), kSectorBytes)))
    return e.wrap("writing", "the header", 0).image(path_);
  if (Error e = file_->flush()) return e.wrap("flush").image(path_);
  hdr_ = std::move(next);
  file_end_ = std::max(file_end_, (start + table + blocks) * cs);
  refs_ = std::make_unique<Refcounts>(
      *file_, path_,
      Refcounts::Config{hdr_.cluster_bits, hdr_.refcount_order, hdr_.refcount_table_offset,
                        hdr_.refcount_table_clusters});
  if (Error e = refs_->load(file_end_)) return e;
  guard_refcounts();
  progress.report(blocks + 1, blocks + 1);
  return {};
}

}  // namespace vd::qcow
