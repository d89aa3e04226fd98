// CompressedWriteRequest: stores one whole guest cluster compressed (convert -c).
//
//   alloc_l2 -> compress --(does not shrink)--> ClusterAllocRequest (stored as is)
//                  |
//                  v
//              alloc_bytes -> write_data -> link_l2 -> finish
//                                  | error
//                                  v
//                              rollback (drop the reference to the packed cluster) -> finish
//
// Compressed runs are packed at byte granularity; each holds one reference to the host
// cluster it lies in, so a cluster shared by several runs is freed only with the last one.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

class CompressedWriteRequest : public std::enable_shared_from_this<CompressedWriteRequest> {
 public:
  // The cluster at `guest` must be marked busy; `data` is its content (shorter only for the
  // last cluster of an unaligned image: the rest is zero).
  static void start(QcowImage& img, uint64_t guest, std::span<const std::byte> data, Completion done);

 private:
  CompressedWriteRequest(QcowImage& img, uint64_t guest, std::span<const std::byte> data, Completion done);
  void alloc_l2();
  void compress();
  void write_data();
  void handle_write_data(Error e);
  void link_l2();
  void rollback(Error e);
  void finish(Error e);

  QcowImage& img_;
  const uint64_t guest_;
  const std::span<const std::byte> data_;
  Completion done_;
  uint64_t l1_index_ = 0;
  uint64_t host_ = 0;
  std::vector<std::byte> packed_;
};

}  // namespace vd::qcow
