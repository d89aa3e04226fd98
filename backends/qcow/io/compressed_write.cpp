#include "backends/qcow/io/compressed_write.h"

#include <cstring>

#include "backends/qcow/io/cluster_alloc.h"
#include "backends/qcow/meta/compress.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

void CompressedWriteRequest::start(QcowImage& img, uint64_t guest, std::span<const std::byte> data,
                                   Completion done) {
  std::shared_ptr<CompressedWriteRequest> r(new CompressedWriteRequest(img, guest, data, std::move(done)));
  r->compress();
}

CompressedWriteRequest::CompressedWriteRequest(QcowImage& img, uint64_t guest,
                                               std::span<const std::byte> data, Completion done)
    : img_(img), guest_(guest), data_(data), done_(std::move(done)) {}

void CompressedWriteRequest::compress() {
  const Layout& l = img_.layout();
  const uint64_t cs = l.cluster_size();
  const Codec codec = l.version >= 3 && img_.header().compression_type == kCompressionZstd ? Codec::zstd : Codec::zlib;
  const size_t capacity = compress_capacity(l.version, cs);
  // Runs on the pool: touches only this request's buffers, never the image.
  auto work = [self = shared_from_this(), codec, capacity, cs] {
    std::vector<std::byte> whole;
    std::span<const std::byte> in = self->data_;
    if (in.size() < cs) {  // last cluster of an unaligned image: zero-padded, as QEMU does
      whole.assign(cs, std::byte{0});
      std::memcpy(whole.data(), in.data(), in.size());
      in = whole;
    }
    auto packed = compress_cluster(codec, in, capacity);
    if (packed) self->packed_ = std::move(*packed);
    else self->compress_error_ = packed.error();
  };
  img_.io().offload(std::move(work), [self = shared_from_this()] {
    if (self->compress_error_) return self->finish(self->compress_error_);
    if (self->packed_.empty()) {
      // Incompressible: store it as a normal cluster (the busy mark passes on with it).
      auto done = std::move(self->done_);
      return ClusterAllocRequest::start(self->img_, self->guest_, 1, self->guest_, self->data_, std::move(done));
    }
    self->alloc_l2();
  });
}

void CompressedWriteRequest::alloc_l2() {
  l1_index_ = img_.layout().l1_index(guest_);
  img_.prepare_l2(l1_index_, [self = shared_from_this()](Error e, uint64_t) {
    if (e) return self->finish(e);
    self->place();
  });
}

void CompressedWriteRequest::place() {
  auto at = img_.allocate_bytes(packed_.size());
  if (!at) return finish(at.error());
  host_ = *at;
  write_data();
}

void CompressedWriteRequest::write_data() {
  img_.data_file().async_write(IoKind::data, host_, packed_,
                               [self = shared_from_this()](Error e) { self->handle_write_data(e); });
}

void CompressedWriteRequest::handle_write_data(Error e) {
  if (e) return rollback(e.legacy_wrap("'" + img_.path() + "': writing compressed data at " + hex(host_)));
  link_l2();
}

void CompressedWriteRequest::link_l2() {
  const Layout& l = img_.layout();
  const uint64_t l2_off = l.l2_offset(img_.l1()[l1_index_]);
  img_.get_l2(l1_index_, l2_off, [self = shared_from_this(), l2_off](Error e, L2Ptr) {
    if (e) return self->rollback(e);
    const Layout& l = self->img_.layout();
    auto entry = l.version == 1 ? compressed_l2_entry_v1(l.cluster_bits, self->host_, self->packed_.size())
                                : compressed_l2_entry(l.cluster_bits, self->host_, self->packed_.size());
    if (!entry) return self->rollback(entry.error());
    L2Table& t = self->img_.l2_for_update(l2_off);
    const uint64_t i = l.l2_index(self->guest_) * l.words_per_entry();
    const uint64_t old = t[i];
    t[i] = *entry;
    if (l.extended_l2) t[i + 1] = 0;  // bitmaps are ignored for compressed clusters
    if (old) self->img_.release_entry(old, 0);
    self->finish({});
  });
}

void CompressedWriteRequest::rollback(Error e) {
  // Never referenced: drop its references now, and stop packing into that cluster.
  if (Refcounts* r = img_.refcounts()) (void)r->update(host_, packed_.size(), -1);
  img_.forget_packing();
  finish(e);
}

void CompressedWriteRequest::finish(Error e) {
  img_.clear_busy(guest_ >> img_.layout().cluster_bits, 1);
  auto done = std::move(done_);
  done(e);
}

}  // namespace vd::qcow
