// Dropping guest clusters for good: resize --shrink and make_empty (qemu-img commit without
// -d). Both follow QEMU's full discard (qcow2_cluster_discard with full_discard): the L2
// entries become 0 (unallocated, reading through the parent), an L2 table wholly past the
// point is unlinked from the L1 table, and everything they referenced loses that reference.
//
// Crash invariant: the references are removed in memory and written by the flush before any
// refcount is lowered (release_later: the flush's write_releases step runs after the L2 and
// L1 tables are on disk). A crash in between leaks clusters, never leaves a table pointing
// at a freed one. The file is trimmed only after that flush, past the last cluster that
// still has a reference. Before the trim, a shrink unlinks the refcount blocks left counting
// nothing (Refcounts::drop_empty_blocks: table written first, a crash leaks) and gives the
// clusters it freed back to the file system (discard), as QEMU's truncate does.
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

// Drops the mapping of every guest cluster from `from` (cluster aligned) to the end of the
// L1 table. A table wholly past `from` is unlinked without being changed: a table shared
// with a snapshot stays as the snapshot knows it, and the clusters it maps lose only the
// reference the active L1 gave them (QEMU's rule, snapshot_ops.cpp). A table cut in two
// is changed in place, or first copied when a snapshot shares it (the copy is written
// before the L1 entry points at it: install_l2).
Error QcowImage::drop_clusters(uint64_t from) {
  const uint64_t cover = layout_.l2_coverage();
  const unsigned w = layout_.words_per_entry();
  for (uint64_t i = from / cover; i < l1_.size(); ++i) {
    const uint64_t l2_off = layout_.l2_offset(l1_[i]);
    if (!l2_off) continue;
    auto table = l2_now(i, l2_off);
    if (!table) return table.error();
    const L2Table& t = **table;
    const uint64_t first = i * cover >= from ? 0 : layout_.l2_index(from);
    if (first == 0) {
      for (uint64_t j = 0; j < t.size(); j += w) release_entry(t[j], w == 2 ? t[j + 1] : 0);
      l1_[i] = 0;
      mark_l1_dirty(i);
      cache_.erase(l2_off);
      dirty_l2_.erase(l2_off);
      if (refs_) refs_->release_later(l2_off, layout_.cluster_size());
      metadata_moved();
      continue;
    }
    uint64_t at = l2_off;
    if (!(l1_[i] & kOflagCopied)) {
      auto copy = allocate_clusters(l2_table_clusters());
      if (!copy) return copy.error();
      install_l2(i, l2_off, *copy, *table);
      at = *copy;
    }
    L2Table& u = l2_for_update(at);
    for (uint64_t j = first * w; j < u.size(); j += w) {
      release_entry(u[j], w == 2 ? u[j + 1] : 0);
      u[j] = 0;
      if (w == 2) u[j + 1] = 0;
    }
  }
  return {};
}

// After the flush that lowered the refcounts: the file ends after the last cluster that
// still has a reference (as QEMU's truncate does after a shrink).
Error QcowImage::trim_file() {
  if (!refs_) return {};
  auto size = file_->size();
  if (!size) return size.error();
  const uint64_t cs = layout_.cluster_size();
  auto counts = refs_->all_refcounts((*size + cs - 1) / cs);
  if (!counts) return counts.error();
  uint64_t end = counts->size();
  while (end > 0 && (*counts)[end - 1] == 0) --end;
  if (end * cs >= *size) return {};
  if (Error e = file_->set_size(end * cs)) return e;
  file_end_ = end * cs;
  return {};
}

// The image file's clusters that had a reference in `before` and have none now are given
// back to the file system (QEMU discards what a shrink frees: QCOW2_DISCARD_ALWAYS).
Error QcowImage::punch_freed(const std::vector<uint64_t>& before) {
  const uint64_t cs = layout_.cluster_size();
  auto after = refs_->all_refcounts(before.size());
  if (!after) return after.error();
  for (uint64_t c = 0; c < before.size();) {
    if (!(before[c] && !(*after)[c])) {
      ++c;
      continue;
    }
    uint64_t n = 1;
    while (c + n < before.size() && before[c + n] && !(*after)[c + n]) ++n;
    if (Error e = file_->discard(c * cs, n * cs)) return e;
    c += n;
  }
  return {};
}

// Snapshots keep their own size and tables: only the active state shrinks (QEMU 7.2).
Error QcowImage::shrink(uint64_t new_size) {
  forget_packing();
  if (Error e = FlushRequest::run_sync(*this)) return e;
  std::vector<uint64_t> before;
  if (refs_) {
    auto size = file_->size();
    if (!size) return size.error();
    auto counts = refs_->all_refcounts((*size + layout_.cluster_size() - 1) / layout_.cluster_size());
    if (!counts) return counts.error();
    before = std::move(*counts);
  }
  const uint64_t cs = layout_.cluster_size();
  if (Error e = drop_clusters((new_size + cs - 1) / cs * cs)) return e;
  hdr_.size = new_size;
  size_ = new_size;
  header_dirty_ = true;
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // Refcount blocks that now count only themselves are unlinked and freed, as QEMU's
  // qcow2_shrink_reftable does, so that the file can end before them.
  if (refs_) {
    if (Error e = refs_->drop_empty_blocks()) return e;
    metadata_moved();
    if (Error e = FlushRequest::run_sync(*this)) return e;
    if (Error e = punch_freed(before)) return e;
  }
  return trim_file();
}

Error QcowImage::make_empty() {
  if (Error e = refuse_write("make_empty")) return e;
  if (writes_active_ || flushing_)
    return Error(Errc::busy, "emptying the image while requests are in flight").image(path_);
  if (hdr_.version == 1) {
    // QCOW v1: no refcounts; the L1 table is cleared and the file keeps its length.
    for (uint64_t i = 0; i < l1_.size(); ++i)
      if (l1_[i]) {
        l1_[i] = 0;
        mark_l1_dirty(i);
      }
    cache_.clear();
    return FlushRequest::run_sync(*this);
  }
  forget_packing();
  if (Error e = FlushRequest::run_sync(*this)) return e;
  if (Error e = drop_clusters(0)) return e;
  if (Error e = FlushRequest::run_sync(*this)) return e;
  return trim_file();
}

}  // namespace vd::qcow
