// MarkInUseRequest: after a flush stored the bitmaps (not in use on disk), the first write
// waits for this: the directory is rewritten in place with every bitmap in use, in the
// order of QEMU's in-place update (bitmap_set.h):
//
//   header, autoclear bit 0 cleared -- flush    the directory is no longer trusted
//   directory, in use set ------------ flush
//   header, autoclear bit 0 set ------- flush    trusted again, and in use
//
// Writes are held at the image gate meanwhile (QcowImage::begin_write); a flush asked for
// meanwhile starts when it ends.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/qcow/io/request.h"

namespace vd::qcow {

class QcowImage;

class MarkInUseRequest : public Request<MarkInUseRequest> {
 public:
  static void start(QcowImage& img, Completion done);

 private:
  friend class Request<MarkInUseRequest>;
  MarkInUseRequest(IoProvider& io, QcowImage& img, Completion done);
  void write_header(bool trusted, void (MarkInUseRequest::*next)());
  void sync(void (MarkInUseRequest::*next)());
  void distrust();
  void write_directory();
  void trust();
  void done();

  QcowImage& img_;
  std::vector<std::byte> header_;
  std::vector<std::byte> dir_;
  uint64_t dir_offset_ = 0;
};

}  // namespace vd::qcow
