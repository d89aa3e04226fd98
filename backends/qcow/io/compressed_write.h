// CompressedWriteRequest: stores one whole guest cluster compressed (convert -c).
//
//   compress (on the I/O pool) --(does not shrink)--> ClusterAllocRequest (stored as is)
//       |
//       v
//   alloc_l2 -> place -> write_data -> link_l2 -> finish
//   (L2PrepareRequest) (bytes in a packed cluster; a refcount block not loaded yet is
//                       loaded and the placement tried again)
//                                  | error
//                                  v
//                              rollback (drop the references to the packed clusters) -> finish
//
// Compression runs off the image's executor (IoProvider::offload), so several clusters of a
// convert compress at once; everything that touches the image runs back on the executor.
// Compressed runs are packed at byte granularity and may continue into the next cluster when
// it is free, as QEMU packs them; each run holds one reference to every host cluster it
// touches, so a cluster shared by several runs is freed only with the last one.
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

class CompressedWriteRequest : public Request<CompressedWriteRequest> {
 public:
  // The cluster at `guest` must be locked (QcowImage::clusters()); `data` is its content
  // (shorter only for the last cluster of an unaligned image: the rest is zero).
  static void start(QcowImage& img, uint64_t guest, std::span<const std::byte> data, Completion done);

 private:
  friend class Request<CompressedWriteRequest>;
  CompressedWriteRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t guest,
                         std::span<const std::byte> data);
  void compress();
  void alloc_l2();
  void place();
  void write_data();
  void handle_write_data(Error e);
  void link_l2();
  void handle_link_l2(Error e, uint64_t l2_offset);
  void rollback(Error e);
  void done(Error e);

  QcowImage& img_;
  const uint64_t guest_;
  const std::span<const std::byte> data_;
  uint64_t l1_index_ = 0;
  uint64_t host_ = 0;
  std::vector<std::byte> packed_;
  Error compress_error_;  // set on the pool, read back on the executor
};

}  // namespace vd::qcow
