// The overlap check (overlap.h): every write the backend makes into the image file is
// checked against the metadata map first.
#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {

const OverlapMap& QcowImage::overlap_map() {
  const uint64_t cs = layout_.cluster_size();
  if (refs_ && refs_->table_epoch() != overlap_refs_epoch_) overlap_stale_ = true;
  if (!overlap_stale_) {
    if (refs_)
      for (uint64_t off : refs_->take_new_blocks()) overlap_.add_table(off, cs, MetaKind::refcount_block);
    return overlap_;
  }
  overlap_.clear();
  overlap_.add(0, hdr_.version == 1 ? 48 : cs, MetaKind::header);  // v1: the fixed header only
  overlap_.add(hdr_.l1_table_offset, uint64_t{l1_.size()} * 8, MetaKind::active_l1);
  for (uint64_t e : l1_)
    if (uint64_t off = layout_.l2_offset(e)) overlap_.add_table(off, layout_.l2_table_bytes(), MetaKind::active_l2);
  if (refs_) {
    overlap_.add(refs_->table_offset(), uint64_t{refs_->table_clusters()} * cs, MetaKind::refcount_table);
    const uint64_t blocks = uint64_t{refs_->table_clusters()} * cs / 8;
    for (uint64_t i = 0; i < blocks; ++i)
      if (uint64_t off = refs_->block_offset(i)) overlap_.add_table(off, cs, MetaKind::refcount_block);
    overlap_refs_epoch_ = refs_->table_epoch();
    (void)refs_->take_new_blocks();  // already in the table
  }
  if (hdr_.nb_snapshots) {
    overlap_.add(hdr_.snapshots_offset, std::max<uint64_t>(snapshot_table_size(snapshots_), 1), MetaKind::snapshot_table);
    for (const auto& s : snapshots_) overlap_.add(s.l1_table_offset, uint64_t{s.l1_size} * 8, MetaKind::inactive_l1);
  }
  // QEMU's overlap check covers the bitmap directory (QCOW2_OL_BITMAP_DIRECTORY), not the
  // bitmap tables and data. Where it is on disk, also while an in-place update has the
  // autoclear bit clear (the map may be built in between).
  if (bitmaps_)
    if (auto bm = bitmaps_->directory()) overlap_.add(bm->dir_offset, bm->dir_size, MetaKind::bitmap_directory);
  overlap_.seal();
  overlap_stale_ = false;
  return overlap_;
}

void QcowImage::l2_moved(uint64_t old, uint64_t now) {
  if (overlap_stale_) return;  // the next rebuild reads the L1 table
  if (old) overlap_.remove_table(old, MetaKind::active_l2);
  overlap_.add_table(now, layout_.l2_table_bytes(), MetaKind::active_l2);
}

void QcowImage::guard_refcounts() {
  metadata_moved();
  if (!refs_) return;
  refs_->set_write_guard([this](uint64_t off, uint64_t len, bool table) {
    return check_overlap(off, len, table ? MetaKind::refcount_table : MetaKind::refcount_block);
  });
}

// The corrupt bit is set in memory; the next flush (or close) writes the header first of all,
// before anything else it has to write can fail on the same corruption. (No blocking write
// here: this runs on the data path.)
Error QcowImage::mark_corrupt(const std::string& why) {
  if (hdr_.version >= 2 && !(hdr_.incompatible_features & kIncompatCorrupt)) {
    hdr_.incompatible_features |= kIncompatCorrupt;
    corrupt_unwritten_ = true;
  }
  return Error(Errc::corrupt, "Marking image as corrupt: " + why).image(path_);
}

// An allocation that lands on known metadata: the refcounts must be wrong, and writing
// there would destroy the image.
Error QcowImage::check_allocation(uint64_t host, uint64_t length) {
  if (auto hit = overlap_map().find(host, length))
    return mark_corrupt("Preventing invalid allocation at offset " + hex(host) + " (overlaps with " +
                        meta_kind_name(*hit) + ")");
  return {};
}

Error QcowImage::check_overlap(uint64_t host, uint64_t length, std::optional<MetaKind> self) {
  if (auto hit = overlap_map().find(host, length, self))
    return mark_corrupt("Preventing invalid write on metadata at offset " + hex(host) + " (overlaps with " +
                        meta_kind_name(*hit) + ")");
  return {};
}

}  // namespace vd::qcow
