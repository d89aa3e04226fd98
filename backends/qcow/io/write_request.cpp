#include "backends/qcow/io/write_request.h"

#include <algorithm>
#include <cstring>

#include "backends/qcow/io/cluster_alloc.h"
#include "backends/qcow/io/compressed_write.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

namespace {
// Longest run allocated at once: bounds the fill buffer and keeps requests fair.
constexpr uint64_t kMaxAllocBytes = 8ull << 20;
}  // namespace

void WriteRequest::start(QcowImage& img, uint64_t offset, std::span<const std::byte> data,
                         unsigned flags, Completion done, bool ends_write) {
  launch(&WriteRequest::next, img.io(), std::move(done), img, offset, data, flags, ends_write);
}

WriteRequest::WriteRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t offset,
                           std::span<const std::byte> data, unsigned flags, bool ends_write)
    : Request(io, std::move(done)), img_(img), pos_(offset), rest_(data), flags_(flags), ends_write_(ends_write) {}

void WriteRequest::finish(Error e) {
  if (ends_write_) img_.end_write();
  Request::finish(std::move(e));
}

void WriteRequest::next() {
  if (rest_.empty()) return finish({});
  if (auto hit = img_.lookup_cached(pos_, rest_.size())) {
    if (!*hit) return finish(hit->error());
    return handle_lookup({}, **hit);
  }
  img_.lookup(pos_, rest_.size(), [self = shared_from_this()](Error e, Run run) {
    self->handle_lookup(e, run);
  });
}

void WriteRequest::handle_lookup(Error e, const Run& run) {
  if (e) return finish(e);
  const uint32_t cb = img_.layout().cluster_bits;
  const uint64_t first = pos_ >> cb, last = (pos_ + run.length - 1) >> cb;
  if (uint64_t c; img_.clusters().any_held(first, last - first + 1, &c)) {
    // Another request is allocating this cluster: look again once it is done.
    img_.clusters().wait(c, [self = shared_from_this()] { self->next(); });
    return;
  }
  if ((flags_ & write_compressed) && try_compressed(run)) return;
  if (run.kind == Run::Kind::data && run.copied) return write_in_place(run);
  allocate(run);
}

void WriteRequest::write_in_place(const Run& run) {
  const uint32_t cb = img_.layout().cluster_bits;
  const uint64_t first = pos_ >> cb, count = ((pos_ + run.length - 1) >> cb) - first + 1;
  img_.clusters().share(first, count);
  held_first_ = first;
  held_count_ = count;
  in_place_n_ = run.length;
  in_place_host_ = run.host_offset;
  // The L2 entry came from the image: a corrupt one may point at metadata.
  if (!img_.header().data_file)
    if (Error e = img_.check_overlap(run.host_offset, run.length)) return landed_in_place(e);
  if (img_.cipher()) {
    return write_in_place_encrypted(run, [self = shared_from_this()](Error e) { self->landed_in_place(e); });
  }
  self_ = shared_from_this();
  img_.data_file().async_write(IoKind::data, run.host_offset, rest_.first(run.length), [this](Error e) {
    auto self = std::move(self_);  // this request lives until the end of this handler
    landed_in_place(e ? e.wrap("writing", "data", in_place_host_).image(img_.path()) : e);
  });
}

void WriteRequest::landed_in_place(Error e) {
  img_.clusters().unshare(held_first_, held_count_);
  advance(e, in_place_n_);
}

// Encrypted data changes in whole 512-byte sectors: read and decrypt the partial ones, merge,
// encrypt, write.
void WriteRequest::write_in_place_encrypted(const Run& run, std::function<void(Error)> landed) {
  const uint64_t n = run.length;
  const uint64_t head = run.host_offset % 512;
  const uint64_t len = (head + n + 511) / 512 * 512;
  const uint64_t guest0 = pos_ - head, host0 = run.host_offset - head;
  bounce_.assign(len, std::byte{0});
  auto self = shared_from_this();
  auto write = [self, n, head, guest0, host0](std::function<void(Error)> then) {
    std::memcpy(self->bounce_.data() + head, self->rest_.data(), n);
    if (Error e = self->img_.encrypt(guest0, host0, self->bounce_)) return then(e);
    self->img_.data_file().async_write(IoKind::data, host0, self->bounce_, std::move(then));
  };
  if (head == 0 && n % 512 == 0) return write(std::move(landed));
  // Read-modify-write of a partial sector: a concurrent writer to another part of the same
  // sector would be lost between our read and our write. Hold the clusters busy meanwhile
  // (writers check busy clusters before they start: handle_lookup).
  const uint32_t cb = img_.layout().cluster_bits;
  const uint64_t first = pos_ >> cb, count = ((pos_ + n - 1) >> cb) - first + 1;
  img_.clusters().lock(first, count);
  auto release = [self, first, count, landed](Error e) {
    self->img_.clusters().unlock(first, count);
    landed(e);
  };
  img_.read_through(guest0, bounce_, [write, release](Error e) {
    if (e) return release(e);
    write(release);
  });
}

void WriteRequest::allocate(const Run& run) {
  const Layout& l = img_.layout();
  const uint64_t cs = l.cluster_size();
  const uint64_t first = pos_ & ~(cs - 1);
  const uint64_t len = std::min(run.length, kMaxAllocBytes);
  const uint64_t count = ((pos_ + len + cs - 1) & ~(cs - 1)) / cs - first / cs;
  // Extended L2 can end a run inside a cluster; the whole cluster is rewritten, so the data
  // for this request is what falls inside the allocated clusters.
  const uint64_t n = std::min<uint64_t>(rest_.size(), first + count * cs - pos_);
  img_.clusters().lock(first / cs, count);
  img_.clusters().when_unshared(first / cs, count, [self = shared_from_this(), first, count, n] {
    ClusterAllocRequest::start(self->img_, first, count, self->pos_, self->rest_.first(n),
                               [self, n](Error e) { self->advance(e, n); });
  });
}

// As QEMU: a compressed write covers whole clusters (or the image's unaligned last one) and
// never overwrites: a cluster with host space already fails the request (EIO in qemu-io).
// Encrypted images and external data files store the data uncompressed instead.
bool WriteRequest::try_compressed(const Run& run) {
  const Layout& l = img_.layout();
  const uint64_t cs = l.cluster_size();
  if (img_.cipher() || img_.header().data_file) return false;
  uint64_t n = cs;
  if (rest_.size() < cs) n = rest_.size();
  if ((pos_ & (cs - 1)) || (n < cs && pos_ + n != img_.size())) {
    finish(Error(Errc::invalid_argument, "not a whole cluster").image(img_.path()).op("compressed write").at(pos_));
    return true;
  }
  const bool empty = (run.kind == Run::Kind::unallocated || run.kind == Run::Kind::zero) && !run.host_reserved;
  if (!empty) {
    finish(Error(Errc::io, "refused: the cluster is allocated (compression cannot overwrite)")
               .image(img_.path()).op("compressed write").at(pos_));
    return true;
  }
  img_.clusters().lock(pos_ / cs, 1);
  CompressedWriteRequest::start(img_, pos_, rest_.first(n),
                                [self = shared_from_this(), n](Error e) { self->advance(e, n); });
  return true;
}

void WriteRequest::advance(Error e, uint64_t n) {
  if (e) return finish(e);
  pos_ += n;
  rest_ = rest_.subspan(n);
  next();
}

}  // namespace vd::qcow
