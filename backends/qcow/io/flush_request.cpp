#include "backends/qcow/io/flush_request.h"

#include "backends/qcow/image.h"

namespace vd::qcow {

void FlushRequest::start(QcowImage& img) {
  std::shared_ptr<FlushRequest> r(new FlushRequest(img, false));
  r->sync_data();
}

Error FlushRequest::run_sync(QcowImage& img) {
  std::shared_ptr<FlushRequest> r(new FlushRequest(img, true));
  r->sync_data();  // every step runs inline in blocking mode
  return r->result_;
}

// Runs a file flush (and the external data file's), then `next`.
void FlushRequest::sync(void (FlushRequest::*next)()) {
  if (blocking_) {
    Error e = img_.data_file_ ? img_.data_file_->flush() : Error{};
    if (!e) e = img_.file_->flush();
    if (e) return finish(e.legacy_wrap("'" + img_.path() + "': flush"));
    return ((*this).*next)();
  }
  auto self = shared_from_this();
  auto after_main = [self, next](Error e) {
    if (e) return self->finish(e.legacy_wrap("'" + self->img_.path() + "': flush"));
    ((*self).*next)();
  };
  if (img_.data_file_) {
    img_.data_file_->async_flush([self, after_main](Error e) {
      if (e) return self->finish(e.legacy_wrap("'" + self->img_.path() + "': flush of the data file"));
      self->img_.file_->async_flush(after_main);
    });
    return;
  }
  img_.file_->async_flush(after_main);
}

void FlushRequest::sync_data() { sync(&FlushRequest::mark_dirty); }

// Lazy refcounts (v3 compatible bit 0): as QEMU does, the dirty bit is on disk before the
// first metadata write after the image was clean, and is cleared only by a clean close. A
// crash in between leaves an image that readers repair (refcounts rebuilt) before use.
void FlushRequest::mark_dirty() {
  const bool lazy = img_.hdr_.compatible_features & kCompatLazyRefcounts;
  if (!lazy || img_.dirty() || !img_.metadata_pending()) return write_refblocks();
  img_.hdr_.incompatible_features |= kIncompatDirty;
  img_.marked_dirty_ = true;
  if (Error e = img_.write_metadata_header()) return finish(e);
  sync(&FlushRequest::write_refblocks);
}

void FlushRequest::write_refblocks() {
  Refcounts* refs = img_.refs_.get();
  if (!refs || !refs->dirty()) return write_l2();
  if (Error e = refs->write_blocks()) return finish(e);
  sync(&FlushRequest::write_reftable);
}

void FlushRequest::write_reftable() {
  Refcounts* refs = img_.refs_.get();
  // A moved table whose header update failed last time is still pending: finish it.
  if (!refs->table_dirty() && !refs->move_pending()) return write_l2();
  bool moved = false;
  if (refs->table_dirty())
    if (Error e = refs->write_table(moved)) return finish(e);
  if (!refs->move_pending()) return sync(&FlushRequest::write_l2);
  // The header may point at the new table only once the table is durable.
  sync(&FlushRequest::commit_reftable);
}

void FlushRequest::commit_reftable() {
  if (Error e = img_.write_metadata_header()) return finish(e);
  img_.refs_->table_committed();
  sync(&FlushRequest::write_l2);
}

void FlushRequest::write_l2() {
  for (auto& [off, t] : img_.dirty_l2_) tables_.emplace_back(off, t);
  if (tables_.empty()) return write_l1();
  encoded_.resize(tables_.size());
  l2_pending_ = tables_.size();
  auto self = shared_from_this();
  for (size_t i = 0; i < tables_.size(); ++i) {
    const auto& t = *tables_[i].second;
    auto& raw = encoded_[i];
    raw.resize(t.size() * 8);
    for (size_t k = 0; k < t.size(); ++k) store_be64(raw.data() + k * 8, t[k]);
    // Its offset came from the L1 table: a corrupt entry may point at other metadata.
    if (Error e = img_.check_overlap(tables_[i].first, raw.size(), MetaKind::active_l2)) {
      handle_write_l2(e);
      continue;
    }
    if (blocking_) handle_write_l2(img_.file_->write(IoKind::meta, tables_[i].first, raw));
    else img_.file_->async_write(IoKind::meta, tables_[i].first, raw, [self](Error e) { self->handle_write_l2(e); });
  }
}

void FlushRequest::handle_write_l2(Error e) {
  if (e && !l2_error_) l2_error_ = e.legacy_wrap("'" + img_.path() + "': writing an L2 table");
  if (--l2_pending_ > 0) return;
  if (l2_error_) return finish(l2_error_);
  // Tables written are clean; they stay in the cache.
  for (auto& [off, t] : tables_) {
    auto it = img_.dirty_l2_.find(off);
    if (it != img_.dirty_l2_.end() && it->second == t) img_.dirty_l2_.erase(it);
  }
  sync(&FlushRequest::write_l1);
}

void FlushRequest::write_l1() {
  if (img_.l1_dirty_.empty()) return write_header();
  // Whole 512-byte sectors of the table that hold a changed entry.
  const auto& l1 = img_.l1_;
  std::vector<std::byte> sector;
  uint64_t last = UINT64_MAX;
  for (uint64_t idx : img_.l1_dirty_) {
    const uint64_t first = idx / 64 * 64;
    if (first == last) continue;
    last = first;
    const uint64_t n = std::min<uint64_t>(64, l1.size() - first);
    sector.assign(n * 8, std::byte{0});
    for (uint64_t k = 0; k < n; ++k) store_be64(sector.data() + k * 8, l1[first + k]);
    const uint64_t at = img_.hdr_.l1_table_offset + first * 8;
    if (Error e = img_.check_overlap(at, sector.size(), MetaKind::active_l1)) return finish(e);
    if (Error e = img_.file_->write(IoKind::meta, at, sector))
      return finish(e.legacy_wrap("'" + img_.path() + "': writing the L1 table"));
  }
  img_.l1_dirty_.clear();
  sync(&FlushRequest::write_header);
}

// After the L1 table: a header pointing at a new L1 table (resize) needs it on disk first.
void FlushRequest::write_header() {
  if (!img_.header_dirty_) return write_releases();
  if (Error e = img_.write_metadata_header()) return finish(e);
  sync(&FlushRequest::write_releases);
}

void FlushRequest::write_releases() {
  Refcounts* refs = img_.refs_.get();
  if (!refs || !refs->has_releases()) return finish({});
  if (Error e = refs->apply_releases()) return finish(e);
  if (Error e = refs->write_blocks()) return finish(e);
  sync(&FlushRequest::finish_ok);
}

void FlushRequest::finish_ok() { finish({}); }

void FlushRequest::finish(Error e) {
  if (blocking_) {
    result_ = e;
    return;
  }
  img_.flush_finished(e);
}

}  // namespace vd::qcow
