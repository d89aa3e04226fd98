#include "backends/qcow/io/cluster_alloc.h"

#include <algorithm>
#include <cstring>

#include "backends/qcow/image.h"

namespace vd::qcow {

void ClusterAllocRequest::start(QcowImage& img, uint64_t first_guest, uint64_t count,
                                uint64_t data_offset, std::span<const std::byte> data, Completion done) {
  std::shared_ptr<ClusterAllocRequest> r(
      new ClusterAllocRequest(img, first_guest, count, data_offset, data, std::move(done)));
  r->alloc_l2();
}

ClusterAllocRequest::ClusterAllocRequest(QcowImage& img, uint64_t first_guest, uint64_t count,
                                         uint64_t data_offset, std::span<const std::byte> data,
                                         Completion done)
    : img_(img), guest_(first_guest), count_(count), data_offset_(data_offset), data_(data),
      done_(std::move(done)) {}

void ClusterAllocRequest::alloc_l2() {
  l1_index_ = img_.layout().l1_index(guest_);
  img_.prepare_l2(l1_index_, [self = shared_from_this()](Error e, uint64_t) { self->handle_alloc_l2(e); });
}

void ClusterAllocRequest::handle_alloc_l2(Error e) {
  if (e) return finish(e);
  alloc_data();
}

void ClusterAllocRequest::alloc_data() {
  if (img_.header().data_file) {
    // External data file: guest and host offsets are the same, nothing is refcounted.
    host_ = guest_;
  } else {
    auto at = img_.allocate_clusters(count_);
    if (!at) return finish(at.error());
    host_ = *at;
    allocated_ = true;
  }
  fill();
}

void ClusterAllocRequest::fill() {
  const uint64_t cs = img_.layout().cluster_size();
  const uint64_t end = guest_ + count_ * cs;
  const uint64_t data_end = data_offset_ + data_.size();
  const bool whole = data_offset_ == guest_ && data_end == end;
  if (whole && !img_.cipher()) return write_data();  // the caller's buffer is written as is

  bounce_.resize(count_ * cs);
  fills_pending_ = 1;  // held until every read is issued
  auto self = shared_from_this();
  // The last cluster of an image whose size is not cluster aligned lies partly past the end:
  // read only what the guest has and leave the rest zero, as QEMU writes it.
  auto read_cluster = [&](uint64_t g) {
    const uint64_t n = std::min<uint64_t>(cs, img_.size() - std::min(img_.size(), g));
    if (n == 0) return;
    ++fills_pending_;
    img_.read_through(g, std::span(bounce_).subspan(g - guest_, n), [self](Error e) { self->handle_fill(e); });
  };
  if (data_offset_ > guest_) read_cluster(guest_);
  const uint64_t last = end - cs;
  if (data_end < end && (last != guest_ || data_offset_ == guest_)) read_cluster(last);
  handle_fill({});
}

void ClusterAllocRequest::handle_fill(Error e) {
  if (e && !fill_error_) fill_error_ = e;
  if (--fills_pending_ > 0) return;
  if (fill_error_) return rollback(fill_error_);
  if (!data_.empty()) std::memcpy(bounce_.data() + (data_offset_ - guest_), data_.data(), data_.size());
  write_data();
}

void ClusterAllocRequest::write_data() {
  std::span<const std::byte> out = data_;
  if (!bounce_.empty()) {
    if (img_.cipher())
      if (Error e = img_.encrypt(guest_, host_, bounce_)) return rollback(e);
    out = bounce_;
  } else if (img_.cipher()) {
    bounce_.assign(data_.begin(), data_.end());
    if (Error e = img_.encrypt(guest_, host_, bounce_)) return rollback(e);
    out = bounce_;
  }
  img_.data_file().async_write(IoKind::data, host_, out,
                               [self = shared_from_this()](Error e) { self->handle_write_data(e); });
}

void ClusterAllocRequest::handle_write_data(Error e) {
  if (e) return rollback(e.legacy_wrap("'" + img_.path() + "': writing data at " + hex(host_)));
  link_l2();
}

void ClusterAllocRequest::link_l2() {
  // The table may have left the cache while the data was written: get it again.
  const uint64_t l2_off = img_.layout().l2_offset(img_.l1()[l1_index_]);
  img_.get_l2(l1_index_, l2_off, [self = shared_from_this(), l2_off](Error e, L2Ptr) {
    if (e) return self->handle_link_l2(e);
    const Layout& l = self->img_.layout();
    L2Table& t = self->img_.l2_for_update(l2_off);
    const uint64_t cs = l.cluster_size();
    const bool v1 = l.version == 1;
    for (uint64_t k = 0; k < self->count_; ++k) {
      const uint64_t i = l.l2_index(self->guest_ + k * cs) * l.words_per_entry();
      const uint64_t old = t[i];
      t[i] = v1 ? self->host_ + k * cs : ((self->host_ + k * cs) | kOflagCopied);
      if (l.extended_l2) t[i + 1] = 0xffffffffull;  // every subcluster allocated, none zero
      if (old) self->img_.release_entry(old, 0);
    }
    self->handle_link_l2({});
  });
}

void ClusterAllocRequest::handle_link_l2(Error e) {
  if (e) return rollback(e);
  finish({});
}

void ClusterAllocRequest::rollback(Error e) {
  if (allocated_) img_.rollback_clusters(host_, count_);
  allocated_ = false;
  finish(e);
}

void ClusterAllocRequest::finish(Error e) {
  img_.clear_busy(guest_ >> img_.layout().cluster_bits, count_);
  auto done = std::move(done_);
  done(e);
}

}  // namespace vd::qcow
