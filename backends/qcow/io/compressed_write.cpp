#include "backends/qcow/io/compressed_write.h"

#include <cstring>

#include "backends/qcow/io/cluster_alloc.h"
#include "backends/qcow/meta/compress.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

void CompressedWriteRequest::start(QcowImage& img, uint64_t guest, std::span<const std::byte> data,
                                   Completion done) {
  launch(&CompressedWriteRequest::compress, img.io(), std::move(done), img, guest, data);
}

CompressedWriteRequest::CompressedWriteRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t guest,
                                               std::span<const std::byte> data)
    : Request(io, std::move(done)), img_(img), guest_(guest), data_(data) {}

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
    if (self->compress_error_) return self->done(self->compress_error_);
    if (self->packed_.empty()) {
      // Incompressible: store it as a normal cluster (the cluster lock passes on with it).
      return ClusterAllocRequest::start(self->img_, self->guest_, 1, self->guest_, self->data_, self->hand_over());
    }
    self->alloc_l2();
  });
}

void CompressedWriteRequest::alloc_l2() {
  l1_index_ = img_.layout().l1_index(guest_);
  img_.prepare_l2(l1_index_, [self = shared_from_this()](Error e, uint64_t) {
    if (e) return self->done(e);
    self->place();
  });
}

void CompressedWriteRequest::place() {
  img_.allocate_bytes_async(packed_.size(), [self = shared_from_this()](Error e, uint64_t at) {
    if (e) return self->done(e);
    self->host_ = at;
    self->write_data();
  });
}

void CompressedWriteRequest::write_data() {
  img_.data_file().async_write(IoKind::data, host_, packed_,
                               [self = shared_from_this()](Error e) { self->handle_write_data(e); });
}

void CompressedWriteRequest::handle_write_data(Error e) {
  if (e) return rollback(e.wrap("writing", "compressed data", host_).image(img_.path()));
  link_l2();
}

void CompressedWriteRequest::link_l2() {
  const uint64_t l2_off = img_.layout().l2_offset(img_.l1()[l1_index_]);
  img_.get_l2(l1_index_, l2_off,
              [self = shared_from_this(), l2_off](Error e, L2Ptr) { self->handle_link_l2(e, l2_off); });
}

// Invariant 1: the compressed data has landed; the flush writes the entry after a barrier.
void CompressedWriteRequest::handle_link_l2(Error e, uint64_t l2_offset) {
  if (e) return rollback(e);
  const Layout& l = img_.layout();
  auto entry = l.version == 1 ? compressed_l2_entry_v1(l.cluster_bits, host_, packed_.size())
                              : compressed_l2_entry(l.cluster_bits, host_, packed_.size());
  if (!entry) return rollback(entry.error());
  std::vector<uint64_t> entries(l.words_per_entry(), 0);  // subcluster bitmaps are ignored
  entries[0] = *entry;
  img_.link_entries(l2_offset, guest_, entries);
  done({});
}

void CompressedWriteRequest::rollback(Error e) {
  // Never referenced: drop its references now (its clusters were loaded when it was placed),
  // and stop packing into that cluster.
  if (Refcounts* r = img_.refcounts()) (void)r->update(host_, packed_.size(), -1);
  img_.forget_packing();
  done(e);
}

void CompressedWriteRequest::done(Error e) {
  img_.clusters().unlock(guest_ >> img_.layout().cluster_bits, 1);
  finish(std::move(e));
}

}  // namespace vd::qcow
