// ZeroRequest: write_zeroes and discard, QEMU's way (qcow2_co_pwrite_zeroes / pdiscard).
//
// Whole clusters change only their L2 entries (in memory; the flush writes them):
//   zero, v3:              zero flag (subclusters: every zero bit); with zero_may_unmap the
//                          old cluster is released, without it an allocated cluster keeps
//                          its host space (QEMU's zero-allocated entry); compressed clusters
//                          are always released
//   zero, v2 w/o backing:  unallocated, old cluster released
//   discard:               zero flag on v3 when the image has a backing file or the
//                          cluster was allocated, unallocated on v2 when it was allocated;
//                          otherwise left as it is. v2 with a backing file: no-op (QEMU
//                          refuses it: there is no zero flag to hide the backing data)
// With an external data file, whole clusters are also deallocated there on discard, and on
// zero writes when the data file is raw (it must keep reading as the guest does).
// Partial clusters: zero writes real zeros through WriteRequest; discard ignores them,
// except the last cluster of an image whose size is not cluster aligned. Writing zeros on
// v2 with a backing file, and on QCOW v1, writes real zeros everywhere.
//
//   next_chunk -> prepare_l2 (when the table is missing or shared) -> get_l2 -> apply
//       ^                                                                       |
//       |                                               punch (external data file: the
//       |                                               deallocated clusters, asynchronously)
//       |                                                                       |
//       +------------------------------- next L2 table --------------------------+
//
// The completion runs once, never inside start (io/request.h).
#pragma once

#include <cstdint>
#include <memory>

#include <vector>

#include "backends/qcow/io/request.h"
#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

class ZeroRequest : public Request<ZeroRequest> {
 public:
  enum class Mode { zero, discard };
  static void start(QcowImage& img, uint64_t offset, uint64_t length, unsigned flags, Mode mode,
                    Completion done);

 private:
  friend class Request<ZeroRequest>;
  ZeroRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t offset, uint64_t length,
              unsigned flags, Mode mode);
  void run();
  void write_zero_bytes(uint64_t offset, uint64_t length, Completion then);
  void next_chunk();
  void handle_table(Error e, uint64_t l2_offset);
  void apply(uint64_t l2_offset);
  void punch();

  QcowImage& img_;
  uint64_t offset_, length_;
  unsigned flags_;
  Mode mode_;
  std::vector<std::pair<uint64_t, uint64_t>> punches_;  // data-file ranges to deallocate
  uint64_t pos_ = 0, end_ = 0;  // whole clusters still to do
  uint64_t tail_off_ = 0, tail_len_ = 0;
};

}  // namespace vd::qcow
