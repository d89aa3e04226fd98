// L2PrepareRequest: makes L1 entry `l1_index` point at a writable (COPIED) L2 table, for a
// write, a zero write or a discard that changes entries in it. Completes with the table's
// offset; the table is loaded (in the cache or dirty) when it completes.
//
//   start
//     |  another request is preparing this L1 entry --> wait --> start again
//     v
//   check ---------- writable already (COPIED, or QCOW v1) --> load_table --> finish(offset)
//     |  missing, or shared with a snapshot
//     v
//   load_old ------- shared: read the old table (joined with other loads of it)
//     |  error --> finish(error)
//     v
//   allocate ------- host clusters for the new table (refcount 1, in memory; a refcount
//     |              block not loaded yet is loaded and the allocation tried again)
//     |  error --> finish(error)
//     v
//   link ----------- the copy (or an empty table) is dirty and cached, the L1 entry points at
//     |              it (in memory), the old table loses the reference the active L1 held
//     v
//   finish --------- wakes the requests that waited for this L1 entry
//
// Crash invariants: nothing here writes. The flush writes the new table before the L1 entry
// that points at it, and lowers the old table's refcount only after that (flush_request.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "backends/qcow/io/request.h"
#include "backends/qcow/meta/l2_cache.h"

namespace vd::qcow {

class QcowImage;

class L2PrepareRequest : public Request<L2PrepareRequest> {
 public:
  using Handler = std::function<void(Error, uint64_t l2_offset)>;
  static void start(QcowImage& img, uint64_t l1_index, Handler done);

 private:
  friend class Request<L2PrepareRequest>;
  L2PrepareRequest(IoProvider& io, QcowImage& img, uint64_t l1_index, std::shared_ptr<uint64_t> offset,
                   Completion done);
  void check();
  void load_table();
  void load_old();
  void allocate();
  void link(uint64_t at);
  void done(Error e);

  QcowImage& img_;
  const uint64_t l1_index_;
  std::shared_ptr<uint64_t> result_;
  uint64_t old_ = 0;       // the table the L1 entry points at now (0: none)
  L2Ptr from_;             // its content, to copy
  uint64_t offset_ = 0;    // the writable table
  bool locked_ = false;    // this request holds the L1 entry
};

}  // namespace vd::qcow
