#include "backends/qcow/bitmap/mark_in_use.h"

#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

MarkInUseRequest::MarkInUseRequest(IoProvider& io, QcowImage& img, Completion done)
    : Request(io, std::move(done)), img_(img) {}

void MarkInUseRequest::start(QcowImage& img, Completion done) {
  launch(&MarkInUseRequest::distrust, img.io(), img, std::move(done));
}

void MarkInUseRequest::write_header(bool trusted, void (MarkInUseRequest::*next)()) {
  Header& h = img_.hdr_;
  if (trusted) h.autoclear_features |= kAutoclearBitmaps;
  else h.autoclear_features &= ~kAutoclearBitmaps;
  auto bytes = img_.encode_metadata_header();
  if (!bytes) return finish(bytes.error());
  header_ = std::move(*bytes);
  img_.file().async_write(IoKind::meta, 0, header_, [self = shared_from_this(), next](Error e) {
    if (e) return self->finish(e.wrap("writing", "the header", 0).image(self->img_.path()));
    self->sync(next);
  });
}

void MarkInUseRequest::sync(void (MarkInUseRequest::*next)()) {
  img_.file().async_flush([self = shared_from_this(), next](Error e) {
    if (e) return self->finish(e.wrap("flush").image(self->img_.path()));
    ((*self).*next)();
  });
}

void MarkInUseRequest::distrust() {
  dir_ = img_.bitmaps_->in_use_directory(dir_offset_);
  if (dir_.empty()) return finish({});
  write_header(false, &MarkInUseRequest::write_directory);
}

void MarkInUseRequest::write_directory() {
  if (Error e = img_.check_overlap(dir_offset_, dir_.size(), MetaKind::bitmap_directory)) return finish(e);
  img_.file().async_write(IoKind::meta, dir_offset_, dir_, [self = shared_from_this()](Error e) {
    if (e) return self->finish(e.wrap("writing", "bitmap directory", self->dir_offset_).image(self->img_.path()));
    self->sync(&MarkInUseRequest::trust);
  });
}

void MarkInUseRequest::trust() { write_header(true, &MarkInUseRequest::done); }

void MarkInUseRequest::done() {
  img_.bitmaps_->marked();
  finish({});
}

}  // namespace vd::qcow
