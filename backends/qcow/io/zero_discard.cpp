#include "backends/qcow/io/zero_discard.h"

#include <algorithm>
#include <vector>

#include "backends/qcow/image.h"
#include "backends/qcow/io/write_request.h"

namespace vd::qcow {

namespace {
std::span<const std::byte> zero_buffer() {
  static const std::vector<std::byte> zeros(1u << 20);
  return zeros;
}
}  // namespace

void ZeroRequest::start(QcowImage& img, uint64_t offset, uint64_t length, unsigned flags, Mode mode,
                        Completion done) {
  launch(&ZeroRequest::run, img.io(), std::move(done), img, offset, length, flags, mode);
}

ZeroRequest::ZeroRequest(IoProvider& io, Completion done, QcowImage& img, uint64_t offset, uint64_t length,
                         unsigned flags, Mode mode)
    : Request(io, std::move(done)), img_(img), offset_(offset), length_(length), flags_(flags), mode_(mode) {}

void ZeroRequest::run() {
  const Header& h = img_.header();
  const uint64_t cs = img_.layout().cluster_size();
  const bool real_zeros = mode_ == Mode::zero && (h.version == 1 || (h.version == 2 && h.backing_file));
  if (real_zeros) return write_zero_bytes(offset_, length_, [self = shared_from_this()](Error e) { self->finish(e); });
  // Without the zero flag a discarded cluster would expose the backing file's stale data:
  // QEMU refuses discard on v2 images with a backing file, and so do we (it is advisory).
  if (mode_ == Mode::discard && h.version < 3 && h.backing_file) return finish({});

  const uint64_t end = offset_ + length_;
  uint64_t a = (offset_ + cs - 1) & ~(cs - 1);
  uint64_t b = end & ~(cs - 1);
  // The partial last cluster of an unaligned image counts as whole when the range covers
  // all of it (QEMU's block layer hands that tail to the driver on its own).
  if (end == img_.size() && b >= offset_) b = end;
  if (a >= b) {  // inside one cluster
    if (mode_ == Mode::discard) return finish({});
    return write_zero_bytes(offset_, length_, [self = shared_from_this()](Error e) { self->finish(e); });
  }
  pos_ = a;
  end_ = b;
  if (mode_ == Mode::zero) {
    tail_off_ = b;
    tail_len_ = end > b ? end - b : 0;
    if (offset_ < a)
      return write_zero_bytes(offset_, a - offset_, [self = shared_from_this()](Error e) {
        if (e) return self->finish(e);
        self->next_chunk();
      });
  }
  next_chunk();
}

void ZeroRequest::write_zero_bytes(uint64_t offset, uint64_t length, Completion then) {
  if (length == 0) return then({});
  const uint64_t n = std::min<uint64_t>(length, zero_buffer().size());
  WriteRequest::start(img_, offset, zero_buffer().first(n), 0,
                      [self = shared_from_this(), offset, length, n, then](Error e) {
                        if (e) return then(e);
                        self->write_zero_bytes(offset + n, length - n, then);
                      });
}

void ZeroRequest::next_chunk() {
  if (pos_ >= end_) {
    return write_zero_bytes(tail_off_, tail_len_, [self = shared_from_this()](Error e) { self->finish(e); });
  }
  const Layout& l = img_.layout();
  const uint64_t l1i = l.l1_index(pos_);
  const uint64_t entry = img_.l1()[l1i];
  const uint64_t l2_off = l.l2_offset(entry);
  const bool backing = img_.header().backing_file.has_value();
  if (!l2_off && !backing) {
    // No table and nothing below: the whole table's range already reads as zeros.
    pos_ = std::min(end_, l.l2_table_end(pos_));
    return img_.io().post([self = shared_from_this()] { self->next_chunk(); });
  }
  if (!l2_off || !(entry & kOflagCopied)) {
    return img_.prepare_l2(l1i, [self = shared_from_this()](Error e, uint64_t off) { self->handle_table(e, off); });
  }
  img_.get_l2(l1i, l2_off, [self = shared_from_this(), l2_off](Error e, L2Ptr) { self->handle_table(e, l2_off); });
}

void ZeroRequest::handle_table(Error e, uint64_t l2_offset) {
  if (e) return finish(e);
  const Layout& l = img_.layout();
  const uint64_t chunk_end = std::min(end_, l.l2_table_end(pos_));
  const uint64_t first = pos_ >> l.cluster_bits;
  const uint64_t count = ((chunk_end - 1) >> l.cluster_bits) - first + 1;
  if (uint64_t c; img_.clusters().any_held(first, count, &c)) {
    // An allocation in flight: wait for it, then redo the chunk.
    img_.clusters().wait(c, [self = shared_from_this()] { self->next_chunk(); });
    return;
  }
  apply(l2_offset);
}

void ZeroRequest::apply(uint64_t l2_offset) {
  const Layout& l = img_.layout();
  const bool v3 = l.version >= 3;
  const bool backing = img_.header().backing_file.has_value();
  const uint64_t chunk_end = std::min(end_, l.l2_table_end(pos_));
  const uint64_t all_zero = 0xffffffffull << 32;
  // An external data file maps guest offsets 1:1. QEMU keeps a raw one (data_file_raw) reading
  // as the guest does, and passes discards down to it: so do we.
  const bool punch_data_file = img_.header().data_file &&
                               (mode_ == Mode::discard || (img_.header().autoclear_features & kAutoclearDataFileRaw));
  L2Table& t = img_.l2_for_update(l2_offset);
  for (uint64_t g = pos_; g < chunk_end; g += l.cluster_size()) {
    const uint64_t i = l.l2_index(g) * l.words_per_entry();
    const uint64_t old = t[i], old_bitmap = l.extended_l2 ? t[i + 1] : 0;
    const bool allocated = (old & kOflagCompressed) || (old & kL2OffsetMask) ||
                           (img_.header().data_file && (old & kOflagCopied));
    // Zero writes without zero_may_unmap keep an allocated cluster's host space (v3 zero
    // flag or subcluster zero bits over it), as QEMU does; compressed data always goes.
    // (External data files map 1:1 and keep their own rules, below.)
    const bool keep = mode_ == Mode::zero && v3 && allocated && !(flags_ & zero_may_unmap) &&
                      !(old & kOflagCompressed) && !img_.header().data_file;
    uint64_t e = old, bitmap = old_bitmap;
    if (keep) {
      if (l.extended_l2) bitmap = all_zero;
      else e = old | kOflagZero;
    } else if (mode_ == Mode::zero || backing || allocated) {
      if (l.extended_l2) {
        e = 0;
        bitmap = all_zero;
      } else {
        e = v3 ? kOflagZero : 0;
      }
    }
    if (e == old && bitmap == old_bitmap) continue;
    t[i] = e;
    if (l.extended_l2) t[i + 1] = bitmap;
    if (keep) continue;
    if (allocated) img_.release_entry(old, old_bitmap);
    if (allocated && punch_data_file) punches_.emplace_back(g, std::min(l.cluster_size(), img_.size() - g));
  }
  pos_ = chunk_end;
  punch();
}

// The external data file's clusters just deallocated in the table: punch them there too,
// one after another, then the next L2 table.
void ZeroRequest::punch() {
  if (punches_.empty()) return next_chunk();
  const uint64_t off = punches_.back().first, len = punches_.back().second;
  punches_.pop_back();
  img_.data_file().async_discard(off, len, [self = shared_from_this(), off, len](Error e) {
    if (e) return self->finish(e.wrap("deallocating " + std::to_string(len) + " bytes of", "the data file", off)
                                   .image(self->img_.path()));
    self->punch();
  });
}

}  // namespace vd::qcow
