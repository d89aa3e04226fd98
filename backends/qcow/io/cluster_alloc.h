// ClusterAllocRequest: writes guest data into clusters that need new host space (never
// allocated, zero, compressed, or shared with a snapshot), all within one L2 table.
//
//   start
//     |
//     v
//   alloc_l2 ------ (table missing or shared) allocate/copy it, link it in L1 (in memory):
//     |             an L2PrepareRequest (io/l2_prepare.h)
//     |  error -> finish
//     v
//   alloc_data ---- host clusters for the whole run (refcount 1, in memory; a refcount block
//     |             not loaded yet is loaded asynchronously and the allocation tried again)
//     |  error -> finish
//     v
//   fill ---------- partial head/tail clusters: read their current content through the chain
//     |  error -> rollback
//     v
//   write_data ---- one write of the whole clusters (encrypted when the image is)
//     |  error -> rollback
//     v
//   link_l2 ------- the L2 table again (it may have left the cache meanwhile), then
//     |             handle_link_l2 points the entries at the new clusters (in memory); old
//     |             clusters are released once the flush has written the table without them
//     |  error -> rollback
//     v
//   finish <------- rollback: return the data clusters, trim the file where it grew
//
// The first error is the one reported; the completion runs exactly once, never inside start
// (io/request.h). The cluster locks are released before it runs. A new L2 table stays
// linked after a later failure: it is valid metadata and other requests may use it already.
// Crash invariants (docs/design.md): the data is on disk before the flush writes the L2 entry
// pointing at it, the L2 table before its L1 entry, the refcount before either
// (flush_request.h); nothing here writes metadata.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backends/qcow/io/request.h"
#include "backends/qcow/meta/l2_cache.h"
#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

class ClusterAllocRequest : public Request<ClusterAllocRequest> {
 public:
  // Clusters [first_guest, first_guest + count * cluster) must be locked by the caller
  // (QcowImage::clusters());
  // `data` is the new content of guest range [data_offset, data_offset + data.size()) inside
  // them. The request unlocks them before it completes.
  static void start(QcowImage& img, uint64_t first_guest, uint64_t count, uint64_t data_offset,
                    std::span<const std::byte> data, Completion done);

 private:
  friend class Request<ClusterAllocRequest>;
  ClusterAllocRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t first_guest,
                      uint64_t count, uint64_t data_offset, std::span<const std::byte> data);
  void alloc_l2();
  void handle_alloc_l2(Error e);
  void alloc_data();
  void fill();
  void handle_fill(Error e);
  void write_data();
  void handle_write_data(Error e);
  void link_l2();
  void handle_link_l2(Error e, uint64_t l2_offset);
  void rollback(Error e);
  void done(Error e);

  QcowImage& img_;
  const uint64_t guest_;
  const uint64_t count_;
  const uint64_t data_offset_;
  const std::span<const std::byte> data_;
  uint64_t l1_index_ = 0;
  uint64_t host_ = 0;
  bool allocated_ = false;
  std::vector<std::byte> bounce_;  // whole clusters when the data does not cover them
  int fills_pending_ = 0;
  Error fill_error_;
};

}  // namespace vd::qcow
