// Repairs that replace structures: rebuilding the refcount table and blocks from the
// references counted, clearing the dirty/corrupt bits, and reloading the open image.
//
// Crash safety of the rebuild: the new blocks and table go past everything the image uses
// (and past the end of the file), are written whole and flushed; only then does one write
// of 12 bytes (inside one sector) point the header at the new table, and another flush
// makes it durable. Until that write the old structures are untouched and in use; after it
// they are unreferenced, with refcount 0 in the new blocks.
#include <algorithm>

#include "backends/qcow/check/check.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {
namespace {

constexpr uint64_t kHeaderRefcountTable = 48;  // refcount_table_offset, refcount_table_clusters
constexpr uint64_t kHeaderIncompatible = 72;   // incompatible_features (v3)

uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

}  // namespace

Error Checker::rebuild_structures(RefArray& refs) {
  const uint64_t epb = disk_->entries_per_block();
  // Everything referenced, and the file itself, ends before `start`.
  uint64_t start = div_up(file_end_, cs_);
  for (uint64_t c = refs.counts.size(); c-- > start;)
    if (refs.counts[c]) {
      start = c + 1;
      break;
    }
  // The blocks must also describe themselves and the table: iterate to the fixed point.
  uint64_t nblocks = 0, tclusters = 0;
  for (;;) {
    const uint64_t nb = div_up(start + nblocks + tclusters, epb);
    const uint64_t tc = div_up(nb * 8, cs_);
    if (nb == nblocks && tc == tclusters) break;
    nblocks = nb;
    tclusters = tc;
  }
  if (tclusters * cs_ > kMaxRefcountTableBytes)
    return Error(Errc::too_large, "a rebuilt refcount table would exceed " +
                                      std::to_string(kMaxRefcountTableBytes >> 20) + " MiB").image(path_);
  const uint64_t end = start + nblocks + tclusters;
  refs.counts.resize(end, 0);
  std::fill(refs.counts.begin() + static_cast<ptrdiff_t>(start), refs.counts.end(), 1);

  if (Error e = write_refblocks(refs, start * cs_, nblocks)) return e;
  const uint64_t table_at = (start + nblocks) * cs_;
  std::vector<std::byte> table(tclusters * cs_);
  for (uint64_t b = 0; b < nblocks; ++b) store_be64(table.data() + b * 8, (start + b) * cs_);
  if (Error e = file_.write(IoKind::meta, table_at, table))
    return e.wrap("writing", "new refcount table", table_at).image(path_);
  if (Error e = file_.flush()) return e.wrap("flush").image(path_);

  std::byte field[12];
  store_be64(field, table_at);
  store_be32(field + 8, static_cast<uint32_t>(tclusters));
  if (Error e = write_header_field(kHeaderRefcountTable, field)) return e;
  hdr_.refcount_table_offset = table_at;
  hdr_.refcount_table_clusters = static_cast<uint32_t>(tclusters);
  changed_ = true;

  auto size = file_.size();
  if (!size) return size.error();
  file_end_ = *size;
  disk_ = std::make_unique<DiskRefcounts>(file_, path_, hdr_, file_end_);
  return disk_->load();
}

// Block b describes clusters [b * epb, (b + 1) * epb): their counted references.
Error Checker::write_refblocks(const RefArray& refs, uint64_t first_block_offset, uint64_t nblocks) {
  const uint64_t epb = disk_->entries_per_block();
  std::vector<std::byte> block(cs_);
  for (uint64_t b = 0; b < nblocks; ++b) {
    std::fill(block.begin(), block.end(), std::byte{0});
    const uint64_t first = b * epb;
    const uint64_t last = std::min<uint64_t>(first + epb, refs.counts.size());
    for (uint64_t c = first; c < last; ++c)
      set_refcount_entry(block, hdr_.refcount_order, c - first, std::min(refs.counts[c], refcount_max_));
    const uint64_t at = first_block_offset + b * cs_;
    if (Error e = file_.write(IoKind::meta, at, block))
      return e.wrap("writing", "a new refcount block", at).image(path_);
  }
  return {};
}

// Header fields are rewritten in place, one small write each, and flushed at once.
Error Checker::write_header_field(uint64_t offset, std::span<const std::byte> bytes) {
  if (Error e = file_.write(IoKind::meta, offset, bytes))
    return e.wrap("writing", "header", offset).image(path_);
  if (Error e = file_.flush()) return e.wrap("flush").image(path_);
  return {};
}

// QEMU's qcow2_mark_clean and qcow2_mark_consistent: the refcounts are right again.
Error Checker::mark_clean() {
  const uint64_t bits = kIncompatDirty | kIncompatCorrupt;
  if (hdr_.version < 3 || !(hdr_.incompatible_features & bits)) return {};
  if (Error e = file_.flush()) return e.wrap("flush").image(path_);
  std::byte field[8];
  store_be64(field, hdr_.incompatible_features & ~bits);
  if (Error e = write_header_field(kHeaderIncompatible, field)) return e;
  hdr_.incompatible_features &= ~bits;
  changed_ = true;
  return {};
}

// The open image drops what it cached from the old metadata: header fields, L1 table, L2
// tables and refcounts.
Error Checker::reload_image() {
  QcowImage& m = img_;
  m.hdr_.refcount_table_offset = hdr_.refcount_table_offset;
  m.hdr_.refcount_table_clusters = hdr_.refcount_table_clusters;
  m.hdr_.incompatible_features = hdr_.incompatible_features;
  auto size = file_.size();
  if (!size) return size.error();
  m.file_end_ = *size;
  m.cache_.clear();
  m.forget_packing();
  if (Error e = m.load_l1(hdr_.l1_table_offset, hdr_.l1_size, "active L1 table")) return e;
  if (!(m.open_flags() & open_read_only)) {
    m.refs_ = std::make_unique<Refcounts>(
        file_, path_,
        Refcounts::Config{hdr_.cluster_bits, hdr_.refcount_order, hdr_.refcount_table_offset,
                          hdr_.refcount_table_clusters});
    if (Error e = m.refs_->load(m.file_end_)) return e;
    m.guard_refcounts();
  }
  return {};
}

// Incomplete v3 snapshot entries: the table is written again, whole, in new clusters (the
// encoder adds the missing extra data). The image's own write-back does the ordering: the
// new table and its raised refcounts are durable before the header points at it, and the
// old table's clusters are freed only after that.
Error Checker::rewrite_snapshot_table(CheckReport& s) {
  if (Error e = reload_image()) return e;  // the image's refcounts serve the allocation
  auto table = encode_snapshot_table(snaps_, hdr_);
  if (!table) return table.error();
  QcowImage& m = img_;
  const uint64_t clusters = div_up(table->size(), cs_);
  auto at = m.refs_->allocate(clusters);
  if (!at) return at.error();
  if (Error e = file_.write(IoKind::meta, *at, *table))
    return e.wrap("writing", "snapshot table", *at).image(path_);
  const uint64_t old_offset = m.hdr_.snapshots_offset;
  const uint64_t old_clusters = div_up(old_offset % cs_ + stored_snapshot_table_size(snaps_), cs_);
  m.hdr_.snapshots_offset = *at;
  m.mark_header_dirty();
  if (old_clusters) m.refs_->release_later(old_offset, old_clusters * cs_);
  if (Error e = FlushRequest::run_sync(m)) return e;
  hdr_.snapshots_offset = *at;
  auto reread = read_snapshot_table(file_, m.hdr_, path_);
  if (!reread) return reread.error();
  m.snapshots_ = *reread;
  snaps_ = std::move(*reread);
  s.corruptions_fixed += s.corruptions;
  s.corruptions = 0;
  changed_ = true;
  return {};
}

}  // namespace vd::qcow
