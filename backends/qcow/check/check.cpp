// The check's order of work (QEMU's qcow2_co_check_locked and qcow2_check_refcounts): see
// check.h for the diagram.
#include "backends/qcow/check/check.h"

#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {

Result<CheckReport> check_image(QcowImage& img, RepairMode mode) { return Checker(img, mode).run(); }

Checker::Checker(QcowImage& img, RepairMode mode)
    : img_(img), mode_(mode), file_(*img.file_), path_(img.path()) {}

// Writes made through the image reach the disk first: the check reads the disk only.
Error Checker::prepare() {
  if (img_.hdr_.version == 1)
    return Error(Errc::not_supported, "QCOW version 1 images cannot be checked").image(path_);
  const bool ro = img_.open_flags() & open_read_only;
  if (mode_ != RepairMode::none && ro)
    return Error(Errc::read_only, "repairing needs the image opened read-write").image(path_);
  if (!ro) {
    if (img_.writes_active_ || img_.flushing_)
      return Error(Errc::busy, "check while requests are in flight").image(path_);
    if (img_.refs_)
      if (Error e = FlushRequest::run_sync(img_)) return e;
  }
  hdr_ = img_.hdr_;
  snaps_ = img_.snapshots_;
  cs_ = hdr_.cluster_size();
  l2_entries_ = cs_ / hdr_.l2_entry_size();
  data_file_ = hdr_.data_file.has_value();
  auto size = file_.size();
  if (!size) return size.error();
  file_end_ = *size;
  disk_ = std::make_unique<DiskRefcounts>(file_, path_, hdr_, file_end_);
  refcount_max_ = disk_->max_refcount();
  return disk_->load();
}

Result<CheckReport> Checker::run() {
  if (Error e = prepare()) return e;
  CheckReport r, snapshots;
  check_snapshot_entries(snapshots);
  Error e = check_refcounts(r);
  if (!e && snapshots.corruptions && mode_ == RepairMode::all) e = rewrite_snapshot_table(snapshots);
  r.corruptions += snapshots.corruptions;
  r.corruptions_fixed += snapshots.corruptions_fixed;
  r.total_clusters = (hdr_.size + cs_ - 1) / cs_;
  if (!e) e = finish(r);
  else if (changed_) (void)reload_image();  // what was written stays; drop stale caches
  r.messages = std::move(messages_);
  if (e) return e;
  return r;
}

// v3 snapshot entries must hold the virtual disk size in their extra data.
void Checker::check_snapshot_entries(CheckReport& r) {
  for (size_t i = 0; i < snaps_.size(); ++i) {
    if (!snapshot_entry_incomplete(snaps_[i], hdr_.version)) continue;
    note(std::string(mode_ == RepairMode::all ? "Repairing" : "ERROR") + " snapshot table entry " +
         std::to_string(i) + " is incomplete");
    ++r.corruptions;
  }
}

Error Checker::check_refcounts(CheckReport& r) {
  RefArray refs;
  bool rebuild = false;
  if (Error e = count(r, refs, true, true, rebuild)) return e;
  const CheckReport before = r;
  const size_t first_messages = messages_.size();
  uint64_t highest = 0;
  if (Error e = compare(r, refs, RepairMode::none, rebuild, highest)) return e;
  if (rebuild && mode_ == RepairMode::all) {
    r.check_errors = before.check_errors;  // unreadable refcounts of the replaced structure
    if (Error e = repair_by_rebuild(r, refs, highest)) return e;
  } else if (mode_ != RepairMode::none) {
    if (rebuild) {
      note("ERROR need to rebuild refcount structures");
      ++r.check_errors;
      return {};
    }
    if (r.leaks || r.corruptions) {
      r = before;
      messages_.resize(first_messages);  // the repair pass says it all again
      if (Error e = compare(r, refs, mode_, rebuild, highest)) return e;
    }
  }
  if (Error e = check_copied(r, mode_)) return e;
  r.image_end_offset = (highest + 1) * cs_;
  return {};
}

// New refcount structures replace the old ones; what the comparison found is fixed unless
// counting the references again still finds it.
Error Checker::repair_by_rebuild(CheckReport& r, RefArray& refs, uint64_t& highest) {
  note("Rebuilding refcount structure");
  // As qemu counts them: the old refcount table and blocks included, so that once the new
  // ones replace them they are leaks, which the pass below frees ("Repairing cluster ...
  // refcount=1 reference=0", as qemu reports them). The recount's own findings were said.
  CheckReport scratch;
  bool unused = false;
  const size_t said = messages_.size();
  if (Error e = count(scratch, refs, false, true, unused)) return e;
  messages_.resize(said);
  if (Error e = rebuild_structures(refs)) return e;

  CheckReport after;
  bool still_broken = false;
  if (Error e = count(after, refs, false, true, still_broken)) return e;
  if (Error e = compare(after, refs, RepairMode::leaks, still_broken, highest)) return e;
  if (still_broken) note("ERROR rebuilt refcount structure is still broken");
  if (after.corruptions < r.corruptions) r.corruptions_fixed += r.corruptions - after.corruptions;
  if (after.leaks < r.leaks) r.leaks_fixed += r.leaks - after.leaks;
  r.corruptions = after.corruptions;
  r.leaks = after.leaks;
  r.check_errors += after.check_errors;
  return {};
}

// A repair that left the image consistent clears the dirty and corrupt bits; whatever was
// rewritten is then reloaded into the open image.
Error Checker::finish(CheckReport& r) {
  if (mode_ != RepairMode::none && !r.check_errors && !r.corruptions) {
    if (Error e = mark_clean()) return e;
  }
  if (!changed_) return {};
  if (Error e = file_.flush()) return e.wrap("flush").image(path_);  // COPIED fixes
  return reload_image();
}

}  // namespace vd::qcow
