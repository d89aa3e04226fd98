// FlushRequest: makes everything written before the flush durable, writing the metadata the
// writes changed in memory in the order of the crash invariants (docs/design.md). Each step ends
// with a file flush, so no later step's writes can reach the disk before an earlier step's:
//
//   drain (the image gate: writes in flight finish, new ones wait)
//     |
//   store_bitmaps -- changed persistent bitmaps to new clusters (bitmap/bitmap_set.h);
//     |              the steps below make them durable, count them, then switch the header
//     |              to their directory and release the old clusters
//   sync_data ------ data of new clusters durable                 (invariant 1: data first)
//     |
//   mark_dirty ----- lazy refcounts: the header's dirty bit, before any metadata; a corrupt
//     |              bit set by an overlap refusal goes out here too
//     |
//   write_refblocks  raised refcounts and new refcount blocks       (invariant 2: refcount
//     |                                                              before the reference)
//   write_reftable - a new/grown refcount table, then the header pointing at it
//     |              (a block before its table entry; the table before the header)
//   write_l2 ------- dirty L2 tables                                 (before their L1 entries)
//     |
//   write_l1 ------- dirty L1 entries
//     |
//   write_header --- header fields (size, a moved L1 table, feature bits)
//     |
//   write_releases - lowered refcounts (blocks not loaded yet are loaded first), only now
//     |              that no table on disk points at them
//     |              (invariant 2: lowered after the last reference is gone)
//   finish --------- the flushes waiting are completed; gated writes resume
//
// An error stops the flush at that step and is reported to every waiting flush. The
// in-memory state stays dirty, so the next flush writes it again; what reached the disk
// already is consistent (at worst clusters leak). Lowering refcounts may need refcount
// blocks that are not loaded yet: write_releases loads them asynchronously and tries again.
//
// The same steps serve two callers through `MetaIo`: the data path's flush (asynchronous
// calls only, never blocking the executor) and close/resize/snapshot/check, which run with
// no request in flight and use the synchronous File (their continuations run inline).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backends/qcow/io/request.h"
#include "backends/qcow/meta/l2_cache.h"
#include "backends/qcow/meta/refcount.h"
#include "vd/error.h"

namespace vd::qcow {

class QcowImage;

class FlushRequest : public Request<FlushRequest> {
 public:
  // Called by the image once the gate has drained; ends in QcowImage::flush_finished.
  static void start(QcowImage& img);
  // The same steps with blocking I/O, for close and resize (no write may be in flight).
  static Error run_sync(QcowImage& img);

 private:
  friend class Request<FlushRequest>;
  FlushRequest(IoProvider& io, QcowImage& img, bool blocking, Completion done);
  // The two kinds of file access the steps use.
  void write(uint64_t offset, std::span<const std::byte> bytes, Completion then);
  void sync(void (FlushRequest::*next)());
  void write_all(std::vector<Refcounts::MetaWrite> writes, const char* structure,
                 void (FlushRequest::*next)());
  void write_header(void (FlushRequest::*next)(), bool commit_reftable = false);

  void store_bitmaps();
  void bitmaps_stored();
  void sync_data();
  void mark_dirty();
  void write_refblocks();
  void refblocks_written();
  void write_reftable();
  void commit_reftable();
  void reftable_committed();
  void write_l2();
  void write_l1();
  void l1_written();
  void write_header_fields();
  void write_releases();
  void releases_written();
  void end(Error e);
  void sync_then_finish(Error e);

  QcowImage& img_;
  const bool blocking_;
  std::vector<std::pair<uint64_t, std::shared_ptr<L2Table>>> tables_;
  std::vector<std::vector<std::byte>> encoded_;
  std::vector<std::byte> header_;
  size_t pending_ = 0;
  bool corrupt_tried_ = false;
  Error first_error_;
};

}  // namespace vd::qcow
