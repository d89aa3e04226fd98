// WriteRequest: one guest write. It walks the range run by run (write_request.cpp):
//   - clusters already allocated to this image alone (COPIED) are written in place;
//   - anything else goes through a ClusterAllocRequest (cluster_alloc.h), or, with
//     write_compressed, through a compressed cluster write;
//   - clusters another request is allocating are waited for, then looked up again.
// Runs are handled one after another; the completion runs once, with the first error, and
// never inside the call that started the request (io/request.h).
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
  static void start(QcowImage& img, uint64_t offset, std::span<const std::byte> data,
                    unsigned flags, Completion done);

 private:
  friend class Request<WriteRequest>;
  WriteRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t offset,
               std::span<const std::byte> data, unsigned flags);
  void next();
  void handle_lookup(Error e, const Run& run);
  void write_in_place(const Run& run);
  void write_in_place_encrypted(const Run& run, std::function<void(Error)> landed);
  void allocate(const Run& run);
  bool try_compressed(const Run& run);
  void advance(Error e, uint64_t n);

  QcowImage& img_;
  uint64_t pos_;
  std::span<const std::byte> rest_;
  unsigned flags_;
  std::vector<std::byte> bounce_;
};

}  // namespace vd::qcow
