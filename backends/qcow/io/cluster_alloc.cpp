#include "backends/qcow/io/cluster_alloc.h"

#include <algorithm>
#include <cstring>

#include "backends/qcow/image.h"

namespace vd::qcow {

void ClusterAllocRequest::start(QcowImage& img, uint64_t first_guest, uint64_t count,
                                uint64_t data_offset, std::span<const std::byte> data, Completion done) {
  launch(&ClusterAllocRequest::alloc_l2, img.io(), std::move(done), img, first_guest, count, data_offset, data);
}

ClusterAllocRequest::ClusterAllocRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t first_guest,
                                         uint64_t count, uint64_t data_offset, std::span<const std::byte> data)
    : Request(io, std::move(done)), img_(img), guest_(first_guest), count_(count), data_offset_(data_offset),
      data_(data) {}

void ClusterAllocRequest::alloc_l2() {
  l1_index_ = img_.layout().l1_index(guest_);
  img_.prepare_l2(l1_index_, [self = shared_from_this()](Error e, uint64_t) { self->handle_alloc_l2(e); });
}

void ClusterAllocRequest::handle_alloc_l2(Error e) {
  if (e) return done(e);
  alloc_data();
}

void ClusterAllocRequest::alloc_data() {
  if (img_.header().data_file) {
    // External data file: guest and host offsets are the same, nothing is refcounted.
    host_ = guest_;
    return fill();
  }
  img_.allocate_clusters_async(count_, [self = shared_from_this()](Error e, uint64_t at) {
    if (e) return self->done(e);
    self->host_ = at;
    self->allocated_ = true;
    self->fill();
  });
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
  if (e) return rollback(e.wrap("writing", "data", host_).image(img_.path()));
  link_l2();
}

void ClusterAllocRequest::link_l2() {
  // The table may have left the cache while the data was written: get it again.
  const uint64_t l2_off = img_.layout().l2_offset(img_.l1()[l1_index_]);
  img_.get_l2(l1_index_, l2_off,
              [self = shared_from_this(), l2_off](Error e, L2Ptr) { self->handle_link_l2(e, l2_off); });
}

// Invariant 1 (data before its L2 entry): the data write has completed; the flush writes the
// table after a barrier that makes the data durable.
void ClusterAllocRequest::handle_link_l2(Error e, uint64_t l2_offset) {
  if (e) return rollback(e);
  const Layout& l = img_.layout();
  const uint64_t cs = l.cluster_size(), words = l.words_per_entry();
  std::vector<uint64_t> entries(count_ * words, 0);
  for (uint64_t k = 0; k < count_; ++k) {
    entries[k * words] = l.version == 1 ? host_ + k * cs : ((host_ + k * cs) | kOflagCopied);
    if (l.extended_l2) entries[k * words + 1] = 0xffffffffull;  // every subcluster allocated, none zero
  }
  img_.link_entries(l2_offset, guest_, entries);
  done({});
}

void ClusterAllocRequest::rollback(Error e) {
  if (allocated_) img_.rollback_clusters(host_, count_);
  allocated_ = false;
  done(e);
}

void ClusterAllocRequest::done(Error e) {
  img_.clusters().unlock(guest_ >> img_.layout().cluster_bits, count_);
  finish(std::move(e));
}

}  // namespace vd::qcow
