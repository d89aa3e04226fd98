// Internal snapshots: create, apply, delete (qemu-img snapshot -c/-a/-d).
//
// Refcounts follow QEMU's rule, which `qemu-img check` verifies: every L1 table (the active
// one and each snapshot's) adds one reference to each L2 table it names and, through that
// table, one to each cluster the table maps, even when two L1 tables share the L2 table.
// So taking a snapshot adds one to everything the active table reaches, and deleting one
// takes one from everything its table reaches. The COPIED flag marks an L1 or L2 entry
// whose cluster has refcount 1 (writable in place); it is recomputed after each change.
//
// Crash invariants (each step is made durable by a flush before the next):
//   create: snapshot L1 copy written -> refcounts raised (and COPIED cleared) -> new
//           snapshot table written -> header points at it -> old table freed.
//           A crash before the header leaves only leaks.
//   apply:  refcounts of the snapshot's clusters raised -> active L1 overwritten with the
//           snapshot's -> refcounts of the old active clusters dropped. A crash in between
//           leaves leaks, never a cluster referenced with refcount too low.
//   delete: snapshot table without the entry written, header updated -> refcounts of the
//           snapshot's clusters dropped and its L1 freed. A crash in between leaks.
#include <chrono>
#include <cstring>

#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/check/check.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/refcount.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {

namespace {
constexpr uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
}  // namespace

// The L2 table at `l2_off` as it stands (dirty, cached, or read now), for the synchronous
// snapshot operations.
Result<L2Ptr> QcowImage::l2_now(uint64_t l1_index, uint64_t l2_off) {
  if (auto it = dirty_l2_.find(l2_off); it != dirty_l2_.end()) return L2Ptr(it->second);
  if (L2Ptr t = cache_.find(l2_off)) return t;
  if (Error e = check_l2_location(l1_index, l2_off)) return e;
  std::vector<std::byte> raw(layout_.l2_table_bytes());
  if (Error e = file_->read(IoKind::meta, l2_off, raw))
    return e.wrap("reading", "L2 table", l2_off).image(path_);
  L2Ptr t = decode_l2(raw);
  cache_.insert(l2_off, t);
  return t;
}

// Adds `addend` to the refcount of every cluster `l1` reaches, then sets each entry's
// COPIED flag from the refcount (for the active table: its L1 entries too). Entries of an
// L2 table about to be freed are left alone: that table is never written again. All or
// nothing: when a refcount would overflow (refcount_bits below 16 and several snapshots),
// the updates made so far are undone and the flags recomputed.
Error QcowImage::walk_refcounts(std::vector<uint64_t>& l1, bool active, int addend) {
  std::vector<std::pair<uint64_t, uint64_t>> done;  // (offset, length) updated so far
  auto update = [&](uint64_t offset, uint64_t length) -> Error {
    if (!addend) return {};
    if (Error e = refs_->update(offset, length, addend)) return e;
    done.emplace_back(offset, length);
    return {};
  };
  Error e = walk_l1(l1, active, addend, update);
  if (!e || done.empty()) return e;
  for (auto it = done.rbegin(); it != done.rend(); ++it) (void)refs_->update(it->first, it->second, -addend);
  (void)walk_l1(l1, active, addend, [](uint64_t, uint64_t) { return Error{}; });
  return e;
}

Error QcowImage::walk_l1(std::vector<uint64_t>& l1, bool active, int addend,
                         const std::function<Error(uint64_t, uint64_t)>& update) {
  const uint64_t cs = layout_.cluster_size();
  const uint32_t x = 62 - (layout_.cluster_bits - 8);
  // A hostile entry must not make the walk count (and place refcount blocks for) clusters
  // that are not in the file, nor a cluster at an unaligned offset.
  auto count = [&](uint64_t offset, uint64_t length, bool aligned, const char* what) -> Error {
    const uint64_t end = offset + length;
    if ((aligned && (offset & (cs - 1))) || end < offset || ((end - 1) & ~(cs - 1)) >= file_end_)
      return Error(Errc::corrupt, std::string(what) + " at " + hex(offset) +
                                      " is unaligned or lies outside the image file")
          .image(path_)
          .structure(what)
          .at(offset);
    return update(offset, length);
  };
  for (uint64_t i = 0; i < l1.size(); ++i) {
    const uint64_t l2_off = layout_.l2_offset(l1[i]);
    if (!l2_off) continue;
    auto table = l2_now(i, l2_off);
    if (!table) return table.error();
    auto l2_refs = refs_->get(l2_off);
    if (!l2_refs) return l2_refs.error();
    const bool table_dies = addend < 0 && *l2_refs <= static_cast<uint64_t>(-addend);
    const L2Table& t = **table;
    for (uint64_t j = 0; j < t.size(); j += layout_.words_per_entry()) {
      const uint64_t e = t[j];
      if (e & kOflagCompressed) {
        const uint64_t host = e & ((1ull << x) - 1);
        const uint64_t sectors = ((e >> x) & ((1ull << (layout_.cluster_bits - 8)) - 1)) + 1;
        if (Error err = count(host & ~511ull, sectors * 512, false, "compressed cluster")) return err;
        continue;
      }
      const uint64_t host = e & kL2OffsetMask;
      if (!host) continue;
      if (Error err = count(host, cs, true, "data cluster")) return err;
      if (table_dies) continue;
      auto rc = refs_->get(host);
      if (!rc) return rc.error();
      const uint64_t flagged = *rc == 1 ? e | kOflagCopied : e & ~kOflagCopied;
      if (flagged != e) l2_for_update(l2_off)[j] = flagged;
    }
    if (Error err = count(l2_off, cs, true, "L2 table")) return err;
    if (!active) continue;
    auto rc = refs_->get(l2_off);
    if (!rc) return rc.error();
    const uint64_t flagged = *rc == 1 ? l1[i] | kOflagCopied : l1[i] & ~kOflagCopied;
    if (flagged != l1[i]) {
      l1[i] = flagged;
      mark_l1_dirty(i);
    }
  }
  return {};
}

Result<size_t> QcowImage::find_snapshot(const std::string& id_or_name) const {
  for (size_t i = 0; i < snapshots_.size(); ++i)
    if (snapshots_[i].id == id_or_name) return i;
  for (size_t i = 0; i < snapshots_.size(); ++i)
    if (snapshots_[i].name == id_or_name) return i;
  return Error(Errc::not_found, "no snapshot with id or name '" + id_or_name + "'").image(path_);
}

// The snapshot an apply or delete works on (a copy: the table changes under it), after the
// image is flushed and the entry validated.
Result<Snapshot> QcowImage::snapshot_for_op(const char* op, const std::string& id_or_name) {
  if (Error e = prepare_snapshot_op(op)) return e;
  auto index = find_snapshot(id_or_name);
  if (!index) return index.error();
  if (Error e = validate_snapshot(snapshots_[*index], hdr_, *index, file_end_, path_)) return e;
  return snapshots_[*index];
}

// The snapshot's L1 table, zero-padded to `entries`.
Result<std::vector<uint64_t>> QcowImage::read_snapshot_l1(const Snapshot& sn, uint64_t entries) {
  std::vector<uint64_t> l1(std::max<uint64_t>(entries, sn.l1_size), 0);
  std::vector<std::byte> raw(uint64_t{sn.l1_size} * 8);
  if (Error e = file_->read(IoKind::meta, sn.l1_table_offset, raw))
    return e.wrap("reading", "snapshot L1 table", sn.l1_table_offset).image(path_);
  for (uint32_t i = 0; i < sn.l1_size; ++i) l1[i] = load_be64(raw.data() + uint64_t{i} * 8);
  return l1;
}

Error QcowImage::prepare_snapshot_op(const char* op) {
  if (Error e = refuse_write(op)) return e;
  if (hdr_.version < 2 || !refs_)
    return Error(Errc::not_supported, "QCOW version 1 images have no internal snapshots").image(path_);
  if (data_file_)
    return Error(Errc::not_supported, "internal snapshots are not possible with an external data file").image(path_);
  if (writes_active_ || flushing_)
    return Error(Errc::busy, std::string("snapshot ") + op + " while requests are in flight").image(path_);
  forget_packing();
  return FlushRequest::run_sync(*this);
}

// Writes `snaps` as the snapshot table in new clusters and points the header at it; the old
// table is freed once the header is durable.
Error QcowImage::write_snapshot_table(std::vector<Snapshot> snaps) {
  const uint64_t cs = layout_.cluster_size();
  const uint64_t old_offset = hdr_.snapshots_offset;
  const uint64_t old_clusters = hdr_.nb_snapshots ? div_up(old_offset % cs + stored_snapshot_table_size(snapshots_), cs) : 0;
  uint64_t offset = 0;
  if (!snaps.empty()) {
    auto table = encode_snapshot_table(snaps, hdr_);
    if (!table) return table.error();
    auto at = allocate_clusters(div_up(table->size(), cs));
    if (!at) return at.error();
    if (Error e = file_->write(IoKind::meta, *at, *table))
      return e.wrap("writing", "snapshot table", *at).image(path_);
    offset = *at;
  }
  hdr_.snapshots_offset = offset;
  hdr_.nb_snapshots = static_cast<uint32_t>(snaps.size());
  header_dirty_ = true;
  if (old_clusters) refs_->release_later(old_offset, old_clusters * cs);
  // Re-read as written, so each entry's extra data is what the disk holds.
  snapshots_ = std::move(snaps);
  metadata_moved();
  if (Error e = FlushRequest::run_sync(*this)) return e;
  if (!offset) {
    snapshots_.clear();
    return {};
  }
  auto reread = read_snapshot_table(*file_, hdr_, path_);
  if (!reread) return reread.error();
  snapshots_ = std::move(*reread);
  return {};
}

Error QcowImage::snapshot_create(const std::string& name) {
  if (Error e = prepare_snapshot_op("create")) return e;
  if (snapshots_.size() >= kMaxSnapshots)
    return Error(Errc::too_large, "too many snapshots (" + std::to_string(kMaxSnapshots) + ")").image(path_);
  const uint64_t cs = layout_.cluster_size();
  Snapshot sn;
  uint64_t max_id = 0;
  for (const auto& s : snapshots_) max_id = std::max<uint64_t>(max_id, std::strtoull(s.id.c_str(), nullptr, 10));
  sn.id = std::to_string(max_id + 1);
  sn.name = name;
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto usec = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
  sn.date_sec = static_cast<uint32_t>(usec / 1000000);
  sn.date_nsec = static_cast<uint32_t>(usec % 1000000 * 1000);  // qemu-img keeps microseconds
  sn.disk_size = size_;
  sn.icount = 0;  // what qemu-img snapshot -c records
  sn.l1_size = static_cast<uint32_t>(l1_.size());
  // 1. The snapshot's L1 table: a copy of the active one in new clusters.
  if (!l1_.empty()) {
    auto at = allocate_clusters(div_up(l1_.size() * 8, cs));
    if (!at) return at.error();
    std::vector<std::byte> raw(l1_.size() * 8);
    for (size_t i = 0; i < l1_.size(); ++i) store_be64(raw.data() + i * 8, l1_[i]);
    if (Error e = file_->write(IoKind::meta, *at, raw))
      return e.wrap("writing", "snapshot L1 table", *at).image(path_);
    sn.l1_table_offset = *at;
  }
  // 2. One more reference to everything the active table reaches; durable before 3.
  if (Error e = walk_refcounts(l1_, true, +1)) {
    if (sn.l1_table_offset) rollback_clusters(sn.l1_table_offset, div_up(l1_.size() * 8, cs));
    (void)FlushRequest::run_sync(*this);
    return e;
  }
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // 3. The table with the new entry, then the header.
  auto snaps = snapshots_;
  snaps.push_back(std::move(sn));
  return write_snapshot_table(std::move(snaps));
}

Error QcowImage::snapshot_apply(const std::string& id_or_name) {
  // As qemu-img: bitmaps track the current state, which applying would replace under them.
  if (bitmaps_ && !bitmaps_->empty()) return Error(Errc::busy, "Device has active dirty bitmaps");
  auto found = snapshot_for_op("apply", id_or_name);
  if (!found) return found.error();
  const Snapshot& sn = *found;
  // The disk takes the snapshot's size; the active L1 must map all of it.
  const uint64_t disk_size = sn.disk_size.value_or(size_);
  const uint64_t needed = std::max<uint64_t>(sn.l1_size, div_up(disk_size, layout_.l2_coverage()));
  if (Error e = grow_l1(needed)) return e;
  auto read = read_snapshot_l1(sn, l1_.size());
  if (!read) return read.error();
  std::vector<uint64_t> snap_l1 = std::move(*read);
  // 1. One more reference to everything the snapshot reaches; durable before 2.
  if (Error e = walk_refcounts(snap_l1, false, +1)) {
    (void)FlushRequest::run_sync(*this);
    return e;
  }
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // 2. The active table becomes the snapshot's (flags recomputed in 3).
  std::vector<uint64_t> old_l1 = std::exchange(l1_, snap_l1);
  for (uint64_t i = 0; i < l1_.size(); ++i) l1_dirty_.insert(i);
  hdr_.size = disk_size;
  size_ = disk_size & ~(kSectorBytes - 1);
  header_dirty_ = true;
  cache_.clear();
  metadata_moved();
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // 3. The old active state loses its reference; then the COPIED flags follow.
  if (Error e = walk_refcounts(old_l1, false, -1)) return e;
  if (Error e = walk_refcounts(l1_, true, 0)) return e;
  return FlushRequest::run_sync(*this);
}

Error QcowImage::snapshot_delete(const std::string& id_or_name) {
  auto found = snapshot_for_op("delete", id_or_name);
  if (!found) return found.error();
  const Snapshot sn = *found;
  auto read = read_snapshot_l1(sn, sn.l1_size);
  if (!read) return read.error();
  std::vector<uint64_t> snap_l1 = std::move(*read);
  // 1. The table without the entry (durable, header included).
  auto snaps = snapshots_;
  for (auto it = snaps.begin(); it != snaps.end(); ++it)
    if (it->id == sn.id) {
      snaps.erase(it);
      break;
    }
  if (Error e = write_snapshot_table(std::move(snaps))) return e;
  // 2. Its clusters and its L1 table lose their reference; the active flags follow.
  if (Error e = walk_refcounts(snap_l1, false, -1)) return e;
  const uint64_t cs = layout_.cluster_size();
  if (sn.l1_size)
    if (Error e = refs_->update(sn.l1_table_offset, div_up(uint64_t{sn.l1_size} * 8, cs) * cs, -1)) return e;
  if (Error e = walk_refcounts(l1_, true, 0)) return e;
  return FlushRequest::run_sync(*this);
}

}  // namespace vd::qcow
