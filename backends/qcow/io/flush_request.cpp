#include "backends/qcow/io/flush_request.h"

#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

FlushRequest::FlushRequest(IoProvider& io, QcowImage& img, bool blocking, Completion done)
    : Request(io, std::move(done)), img_(img), blocking_(blocking) {}

void FlushRequest::start(QcowImage& img) {
  launch(&FlushRequest::store_bitmaps, img.io(), img, false, [&img](Error e) { img.flush_finished(e); });
}

Error FlushRequest::run_sync(QcowImage& img) {
  Error result;
  // Every step runs inline in blocking mode; refcount blocks load synchronously (outside a
  // refcount step, the default).
  std::shared_ptr<FlushRequest> r(new FlushRequest(img.io(), img, true, [&result](Error e) { result = e; }));
  r->store_bitmaps();
  // Blocking mode never waits for the executor; an unfinished flush here is a bug.
  if (!r->finished()) return Error(Errc::internal, "a blocking flush did not complete").image(img.path());
  return result;
}

void FlushRequest::write(uint64_t offset, std::span<const std::byte> bytes, Completion then) {
  if (blocking_) return then(img_.file_->write(IoKind::meta, offset, bytes));
  img_.file_->async_write(IoKind::meta, offset, bytes, std::move(then));
}

// A file flush (and the external data file's), then `next`: the barrier between two steps.
void FlushRequest::sync(void (FlushRequest::*next)()) {
  auto failed = [this](Error e, const char* what) { end(e.wrap("flush", what).image(img_.path())); };
  if (blocking_) {
    if (img_.data_file_)
      if (Error e = img_.data_file_->flush()) return failed(e, "of the data file");
    if (Error e = img_.file_->flush()) return failed(e, "");
    return ((*this).*next)();
  }
  auto self = shared_from_this();
  auto after_main = [self, next, failed](Error e) {
    if (e) return failed(e, "");
    ((*self).*next)();
  };
  if (!img_.data_file_) return img_.file_->async_flush(after_main);
  img_.data_file_->async_flush([self, after_main, failed](Error e) {
    if (e) return failed(e, "of the data file");
    self->img_.file_->async_flush(after_main);
  });
}

// Issues every write at once (they are independent within a step), then `next` after a
// barrier; the first error stops the flush.
void FlushRequest::write_all(std::vector<Refcounts::MetaWrite> writes,
                             const char* structure, void (FlushRequest::*next)()) {
  if (writes.empty()) return sync(next);
  pending_ = writes.size() + 1;  // held until every write is issued
  first_error_ = {};
  auto self = shared_from_this();
  auto landed = [self, next, structure](uint64_t off, Error e) {
    if (e && !self->first_error_) self->first_error_ = e.wrap("writing", structure, off).image(self->img_.path());
    if (--self->pending_ > 0) return;
    if (self->first_error_) return self->end(self->first_error_);
    self->sync(next);
  };
  for (const auto& w : writes) {
    const uint64_t off = w.offset;
    write(off, w.bytes, [landed, off](Error e) { landed(off, e); });
  }
  landed(0, {});
}

void FlushRequest::write_header(void (FlushRequest::*next)(), bool commit_reftable) {
  auto bytes = img_.encode_metadata_header(commit_reftable);
  if (!bytes) return end(bytes.error());
  header_ = std::move(*bytes);
  write(0, header_, [self = shared_from_this(), next](Error e) {
    if (e) return self->end(e.wrap("writing", "the header").image(self->img_.path()));
    self->img_.header_dirty_ = false;
    self->img_.corrupt_unwritten_ = false;
    self->sync(next);
  });
}

// Persistent bitmaps (bitmap/bitmap_set.h): what changed goes to new clusters, written
// here, before everything else, so that the steps below make them durable with the data
// (sync_data) and their refcounts (write_refblocks) before the header points at the new
// directory (write_header_fields); the old clusters are released after that
// (write_releases). A crash before the header switch leaves the old directory, whose
// bitmaps are in use (inconsistent to every reader), and leaked clusters.
void FlushRequest::store_bitmaps() {
  BitmapSet* b = img_.bitmaps_.get();
  // An image marked corrupt gets no new metadata: its bitmaps stay in use (inconsistent),
  // as QEMU leaves them when it stops writing a corrupt image.
  if (!b || !b->store_pending() || !img_.refs_ || (img_.hdr_.incompatible_features & kIncompatCorrupt))
    return sync_data();
  const uint64_t n = b->plan_store();
  if (n == 0) {  // the last bitmap was removed: only the header changes
    b->commit_store();
    return sync_data();
  }
  auto placed = [self = shared_from_this(), b](Error e, uint64_t at) {
    if (e) {
      b->store_failed();
      return self->end(e.wrap("Failed to allocate clusters for bitmaps").image(self->img_.path()));
    }
    self->write_all(b->place_store(at), "bitmap", &FlushRequest::bitmaps_stored);
  };
  if (blocking_) {
    auto at = img_.allocate_clusters(n);
    return placed(at ? Error{} : at.error(), at ? *at : 0);
  }
  img_.allocation_step([&img = img_, n] { return img.allocate_clusters(n); }, placed);
}

// write_all ended with a barrier: the bitmaps are durable (as is the guest data).
void FlushRequest::bitmaps_stored() {
  img_.bitmaps_->commit_store();
  mark_dirty();
}

void FlushRequest::sync_data() { sync(&FlushRequest::mark_dirty); }

// Lazy refcounts (v3 compatible bit 0): as QEMU does, the dirty bit is on disk before the
// first metadata write after the image was clean, and is cleared only by a clean close. A
// crash in between leaves an image that readers repair (refcounts rebuilt) before use.
// A corrupt bit set on the data path (an overlap refusal) goes out here too, first.
void FlushRequest::mark_dirty() {
  const bool lazy = img_.hdr_.compatible_features & kCompatLazyRefcounts;
  if (img_.corrupt_unwritten_ && !(lazy && !img_.dirty() && img_.metadata_pending()))
    return write_header(&FlushRequest::write_refblocks);
  if (!lazy || img_.dirty() || !img_.metadata_pending()) return write_refblocks();
  img_.hdr_.incompatible_features |= kIncompatDirty;
  img_.marked_dirty_ = true;
  write_header(&FlushRequest::write_refblocks);
}

// Invariant 2 (refcount before reference): raised refcounts and new blocks reach the disk
// before any table that points at the clusters they count.
void FlushRequest::write_refblocks() {
  Refcounts* refs = img_.refs_.get();
  if (!refs || !refs->dirty()) return write_l2();
  auto blocks = refs->dirty_block_writes();
  if (!blocks) return end(blocks.error());
  write_all(std::move(*blocks), "refcount block", &FlushRequest::refblocks_written);
}

// Writes are gated while a flush runs, so the blocks did not change while they were written.
void FlushRequest::refblocks_written() {
  img_.refs_->blocks_written();
  write_reftable();
}

void FlushRequest::write_reftable() {
  Refcounts* refs = img_.refs_.get();
  // A moved table whose header update failed last time is still pending: finish it.
  if (!refs->table_dirty() && !refs->move_pending()) return write_l2();
  if (!refs->table_dirty()) return commit_reftable();
  auto table = refs->table_write();
  if (!table) return end(table.error());
  write(table->offset, table->bytes, [self = shared_from_this(), off = table->offset](Error e) {
    if (e) return self->end(e.wrap("writing", "the refcount table", off).image(self->img_.path()));
    Refcounts* r = self->img_.refs_.get();
    r->table_written();
    // The header may point at the new table only once the table is durable.
    self->sync(r->move_pending() ? &FlushRequest::commit_reftable : &FlushRequest::write_l2);
  });
}

void FlushRequest::commit_reftable() { write_header(&FlushRequest::reftable_committed, true); }

// The header points at the new table on disk: the old table's clusters can be released
// (after the tables, in write_releases).
void FlushRequest::reftable_committed() {
  img_.refs_->table_committed();
  write_l2();
}

// Invariant 1: an L2 table before the L1 entry that points at it.
void FlushRequest::write_l2() {
  for (auto& [off, t] : img_.dirty_l2_) tables_.emplace_back(off, t);
  if (tables_.empty()) return write_l1();
  encoded_.resize(tables_.size());
  std::vector<Refcounts::MetaWrite> writes;
  for (size_t i = 0; i < tables_.size(); ++i) {
    const auto& t = *tables_[i].second;
    auto& raw = encoded_[i];
    raw.resize(t.size() * 8);
    for (size_t k = 0; k < t.size(); ++k) store_be64(raw.data() + k * 8, t[k]);
    // Its offset came from the L1 table: a corrupt entry may point at other metadata.
    if (Error e = img_.check_overlap(tables_[i].first, raw.size(), MetaKind::active_l2)) return end(e);
    writes.push_back({tables_[i].first, raw});
  }
  // Tables written are clean; they stay in the cache (a failed flush leaves them dirty, as
  // the flush stops before anything that depends on them).
  write_all(std::move(writes), "L2 table", &FlushRequest::write_l1);
}

void FlushRequest::write_l1() {
  for (auto& [off, t] : tables_) {
    auto it = img_.dirty_l2_.find(off);
    if (it != img_.dirty_l2_.end() && it->second == t) img_.dirty_l2_.erase(it);
  }
  if (img_.l1_dirty_.empty()) return write_header_fields();
  // Whole 512-byte sectors of the table that hold a changed entry.
  const auto& l1 = img_.l1_;
  std::vector<Refcounts::MetaWrite> writes;
  encoded_.clear();
  uint64_t last = UINT64_MAX;
  std::vector<uint64_t> firsts;
  for (uint64_t idx : img_.l1_dirty_) {
    const uint64_t first = idx / 64 * 64;
    if (first != last) firsts.push_back(first);
    last = first;
  }
  encoded_.resize(firsts.size());
  for (size_t i = 0; i < firsts.size(); ++i) {
    const uint64_t first = firsts[i], n = std::min<uint64_t>(64, l1.size() - first);
    encoded_[i].assign(n * 8, std::byte{0});
    for (uint64_t k = 0; k < n; ++k) store_be64(encoded_[i].data() + k * 8, l1[first + k]);
    const uint64_t at = img_.hdr_.l1_table_offset + first * 8;
    if (Error e = img_.check_overlap(at, encoded_[i].size(), MetaKind::active_l1)) return end(e);
    writes.push_back({at, encoded_[i]});
  }
  write_all(std::move(writes), "the L1 table", &FlushRequest::l1_written);
}

void FlushRequest::l1_written() {
  img_.l1_dirty_.clear();  // gated: no entry changed while the sectors were written
  write_header_fields();
}

// After the L1 table: a header pointing at a new L1 table (resize) needs it on disk first.
void FlushRequest::write_header_fields() {
  if (!img_.header_dirty_) return write_releases();
  write_header(&FlushRequest::write_releases);
}

// Invariant 2 (lowered after the last reference is gone): only now that no table on disk
// points at the released clusters.
void FlushRequest::write_releases() {
  Refcounts* refs = img_.refs_.get();
  if (!refs || !refs->has_releases()) return end({});
  auto apply = [refs] { return refs->apply_releases(); };
  auto write_blocks = [self = shared_from_this()](Error e) {
    if (e) return self->end(e);
    Refcounts* r = self->img_.refs_.get();
    auto blocks = r->dirty_block_writes();
    if (!blocks) return self->end(blocks.error());
    self->write_all(std::move(*blocks), "refcount block", &FlushRequest::releases_written);
  };
  // Blocking mode loads missing refcount blocks synchronously (the default); the
  // data path's flush through a refcount step, which loads them asynchronously.
  if (blocking_) return write_blocks(apply());
  img_.refcount_step(apply, write_blocks);
}

// The one exit of the steps. A step refused because the metadata overlaps (the image was just
// marked corrupt) still gets the corrupt bit onto the disk before the flush reports failure.
void FlushRequest::end(Error e) {
  if (e && img_.bitmaps_ && img_.bitmaps_->store_planned()) img_.bitmaps_->store_failed();
  if (!e || !img_.corrupt_unwritten_ || corrupt_tried_) return finish(std::move(e));
  corrupt_tried_ = true;
  auto bytes = img_.encode_metadata_header();
  if (!bytes) return finish(std::move(e));
  header_ = std::move(*bytes);
  write(0, header_, [self = shared_from_this(), e](Error we) {
    if (!we) self->img_.corrupt_unwritten_ = false;
    self->sync_then_finish(e);
  });
}

void FlushRequest::sync_then_finish(Error e) {
  if (blocking_) {
    (void)img_.file_->flush();
    return finish(std::move(e));
  }
  img_.file_->async_flush([self = shared_from_this(), e](Error) { self->finish(e); });
}

void FlushRequest::releases_written() {
  img_.refs_->blocks_written();
  end({});
}

}  // namespace vd::qcow
