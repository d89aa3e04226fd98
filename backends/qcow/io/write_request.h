// WriteRequest: one guest write. It walks the range run by run (write_request.cpp):
//   - clusters already allocated to this image alone (COPIED) are written in place;
//   - anything else goes through a ClusterAllocRequest (cluster_alloc.h), or, with
//     write_compressed, through a compressed cluster write;
//   - clusters another request is allocating are waited for, then looked up again.
// Runs are handled one after another; the completion runs once, with the first error, and
// never inside the call that started the request (io/request.h).
//
// The in-place path allocates nothing per request: the L2 table at hand is decoded inline
// (lookup_cached), and while the data is written the request is held in `self_`, its
// handler holding only `this`.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "backends/qcow/io/request.h"
#include "backends/qcow/meta/mapping.h"
#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

class WriteRequest : public Request<WriteRequest> {
 public:
  // With `ends_write`, the caller counted the write in on the gate (begin_write) and the
  // request counts it out before its completion runs; without, the caller does both.
  static void start(QcowImage& img, uint64_t offset, std::span<const std::byte> data,
                    unsigned flags, Completion done, bool ends_write = false);

 private:
  friend class Request<WriteRequest>;
  WriteRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t offset,
               std::span<const std::byte> data, unsigned flags, bool ends_write);
  void next();
  void handle_lookup(Error e, const Run& run);
  void write_in_place(const Run& run);
  void write_in_place_encrypted(const Run& run, std::function<void(Error)> landed);
  void allocate(const Run& run);
  bool try_compressed(const Run& run);
  void advance(Error e, uint64_t n);
  void landed_in_place(Error e);
  void finish(Error e);

  QcowImage& img_;
  uint64_t pos_;
  std::span<const std::byte> rest_;
  unsigned flags_;
  bool ends_write_;
  std::vector<std::byte> bounce_;
  // The in-place write in flight: its clusters' holds, length and host offset, and the
  // request kept alive until it lands.
  uint64_t held_first_ = 0, held_count_ = 0, in_place_n_ = 0, in_place_host_ = 0;
  std::shared_ptr<WriteRequest> self_;
};

}  // namespace vd::qcow
