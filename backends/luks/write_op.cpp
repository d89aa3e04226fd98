// One guest write to a LUKS volume.
//
//   lock sectors --> read partial edge sectors --> decrypt edges, merge the new bytes
//        |                 | error                        |
//        |                 v                              v
//        |              finish <------- error ------- encrypt (thread pool)
//        |                 ^                              |
//        |                 +------- error ------- write at payload + first sector
//        |                 ^                              |
//        |                 +------- error / ok ----- flush (FUA only)
//
// finish() is the single exit: it releases the sectors and runs the completion once. The
// caller's buffer is never modified: the data is encrypted in a bounce buffer the request
// owns (the guest's memory must not see ciphertext, and the buffer is const).
#include <cstring>

#include "backends/luks/luks.h"

namespace vd::luks {
namespace {

class WriteOp : public std::enable_shared_from_this<WriteOp> {
 public:
  WriteOp(LuksImage& image, uint64_t offset, std::span<const std::byte> buf, unsigned flags,
          Completion done)
      : image_(image), offset_(offset), buf_(buf), flags_(flags), done_(std::move(done)),
        first_(offset / kSectorSize),
        end_((offset + buf.size() + kSectorSize - 1) / kSectorSize) {}

  void start() {
    auto self = shared_from_this();
    image_.locks().lock(first_, end_, [self]() { self->read_edges(); });
  }

 private:
  bool head_partial() const { return offset_ % kSectorSize != 0; }
  bool tail_partial() const { return (offset_ + buf_.size()) % kSectorSize != 0; }
  uint64_t host(uint64_t sector) const { return image_.payload_offset() + sector * kSectorSize; }
  std::span<std::byte> sector_span(uint64_t sector) {
    return std::span(bounce_).subspan(static_cast<size_t>((sector - first_) * kSectorSize),
                                      kSectorSize);
  }

  // The partial first and last sectors are read whole (one read if they are the same).
  void read_edges() {
    bounce_.resize(static_cast<size_t>((end_ - first_) * kSectorSize));
    if (head_partial()) edges_.push_back(first_);
    if (tail_partial() && !(head_partial() && end_ - 1 == first_)) edges_.push_back(end_ - 1);
    if (edges_.empty()) return merge();
    pending_ = edges_.size();
    for (uint64_t s : edges_) {
      image_.file().async_read(IoKind::data, host(s), sector_span(s),
                               [self = shared_from_this()](Error e) { self->edge_read(e); });
    }
  }

  void edge_read(Error e) {
    if (e && !first_error_) first_error_ = std::move(e);
    if (--pending_) return;
    if (first_error_) return finish(first_error_);
    for (uint64_t s : edges_) {
      if (Error d = image_.cipher()->decrypt(s, sector_span(s)))
        return finish(d.wrap("decrypting for read-modify-write", "sector", host(s)).image(image_.path()));
    }
    merge();
  }

  void merge() {
    std::memcpy(bounce_.data() + (offset_ - first_ * kSectorSize), buf_.data(), buf_.size());
    encrypt();
  }

  // Encrypting is the CPU-heavy part: it runs on the provider's pool, touching only the
  // bounce buffer and the (thread-safe) cipher.
  void encrypt() {
    auto self = shared_from_this();
    auto cipher = image_.cipher();
    image_.io().offload(
        [self, cipher]() { self->crypt_error_ = cipher->encrypt(self->first_, self->bounce_); },
        [self]() { self->write(); });
  }

  void write() {
    if (crypt_error_)
      return finish(crypt_error_.wrap("encrypting", "sector", host(first_)).image(image_.path()));
    image_.file().async_write(IoKind::data, host(first_), bounce_,
                              [self = shared_from_this()](Error e) { self->written(std::move(e)); });
  }

  void written(Error e) {
    if (e || !(flags_ & write_fua)) return finish(std::move(e));
    image_.file().async_flush([self = shared_from_this()](Error f) { self->finish(std::move(f)); });
  }

  void finish(Error e) {
    image_.locks().unlock(first_, end_);
    auto done = std::move(done_);
    done(std::move(e));
  }

  LuksImage& image_;
  const uint64_t offset_;
  const std::span<const std::byte> buf_;
  const unsigned flags_;
  Completion done_;
  const uint64_t first_, end_;  // sectors [first_, end_) of the payload
  std::vector<std::byte> bounce_;
  std::vector<uint64_t> edges_;
  size_t pending_ = 0;
  Error first_error_;
  Error crypt_error_;
};

}  // namespace

void start_write(LuksImage& image, uint64_t offset, std::span<const std::byte> buf,
                 unsigned flags, Completion done) {
  std::make_shared<WriteOp>(image, offset, buf, flags, std::move(done))->start();
}

}  // namespace vd::luks
