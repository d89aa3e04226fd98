#include "backends/qcow/io/l2_prepare.h"

#include "backends/qcow/image.h"

namespace vd::qcow {

// The Request's completion carries only the error; the offset travels in a cell the
// completion owns (it may run posted, after the request is gone).
void L2PrepareRequest::start(QcowImage& img, uint64_t l1_index, Handler done) {
  auto offset = std::make_shared<uint64_t>(0);
  launch(&L2PrepareRequest::check, img.io(), img, l1_index, offset,
         [offset, done = std::move(done)](Error e) { done(e, e ? 0 : *offset); });
}

L2PrepareRequest::L2PrepareRequest(IoProvider& io, QcowImage& img, uint64_t l1_index,
                                   std::shared_ptr<uint64_t> offset, Completion done)
    : Request(io, std::move(done)), img_(img), l1_index_(l1_index), result_(std::move(offset)) {}

void L2PrepareRequest::check() {
  if (img_.l1_tables().held(l1_index_)) {
    // Another request is preparing this entry: look again once it is linked.
    img_.l1_tables().wait(l1_index_, [self = shared_from_this()] { self->check(); });
    return;
  }
  const Layout& l = img_.layout();
  const uint64_t entry = img_.l1()[l1_index_];
  old_ = l.l2_offset(entry);
  const bool writable = old_ && (l.version == 1 || (entry & kOflagCopied));
  if (writable) {
    offset_ = old_;
    return load_table();
  }
  // From here until link, a second request for this entry waits (it would allocate too).
  img_.l1_tables().lock(l1_index_);
  locked_ = true;
  if (!old_) return allocate();
  load_old();
}

void L2PrepareRequest::load_table() {
  img_.get_l2(l1_index_, offset_, [self = shared_from_this()](Error e, L2Ptr) { self->done(e); });
}

void L2PrepareRequest::load_old() {
  img_.get_l2(l1_index_, old_, [self = shared_from_this()](Error e, L2Ptr t) {
    if (e) return self->done(e);
    self->from_ = std::move(t);
    self->allocate();
  });
}

void L2PrepareRequest::allocate() {
  img_.allocate_clusters_async(img_.l2_table_clusters(), [self = shared_from_this()](Error e, uint64_t at) {
    if (e) return self->done(e);
    self->link(at);
  });
}

void L2PrepareRequest::link(uint64_t at) {
  img_.install_l2(l1_index_, old_, at, from_);
  offset_ = at;
  done({});
}

void L2PrepareRequest::done(Error e) {
  if (locked_) img_.l1_tables().unlock(l1_index_);
  locked_ = false;
  *result_ = offset_;
  finish(std::move(e));
}

}  // namespace vd::qcow
