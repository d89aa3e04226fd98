// ZeroRequest: write_zeroes and discard, QEMU's way (qcow2_co_pwrite_zeroes / pdiscard).
//
// Whole clusters change only their L2 entries (in memory; the flush writes them):
//   zero, v3:              zero flag (subclusters: every zero bit), old cluster released
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
//       +------------------------------- next L2 table --------------------------+
#pragma once

#include <cstdint>
#include <memory>

#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

class ZeroRequest : public std::enable_shared_from_this<ZeroRequest> {
 public:
  enum class Mode { zero, discard };
  static void start(QcowImage& img, uint64_t offset, uint64_t length, unsigned flags, Mode mode,
                    Completion done);

 private:
  ZeroRequest(QcowImage& img, uint64_t offset, uint64_t length, Mode mode, Completion done);
  void run();
  void write_zero_bytes(uint64_t offset, uint64_t length, Completion then);
  void next_chunk();
  void handle_table(Error e, uint64_t l2_offset);
  void apply(uint64_t l2_offset);
  Error punch(uint64_t offset, uint64_t length);
  void finish(Error e);

  QcowImage& img_;
  uint64_t offset_, length_;
  Mode mode_;
  Completion done_;
  uint64_t pos_ = 0, end_ = 0;  // whole clusters still to do
  uint64_t tail_off_ = 0, tail_len_ = 0;
};

}  // namespace vd::qcow
