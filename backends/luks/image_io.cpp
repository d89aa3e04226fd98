// LuksImage data path. The payload is a run of 512-byte sectors, each encrypted with the IV
// of its sector number counted from the payload start (QEMU's block/crypto.c).
//
// Reads: a sector-aligned read lands in the caller's buffer and is decrypted there; an
// unaligned one reads the covering sectors into a bounce buffer. Decryption runs on the
// provider's pool (IoProvider::offload). Reads take no lock: a read concurrent with a write
// of the same sectors sees the old or the new sectors, as with any disk.
// Writes: write_op.cpp. Zeroes: encrypted zeros, written in chunks of 1 MiB.
// Discard: accepted and ignored, as QEMU does (a hole would not decrypt to zeros).
#include <algorithm>
#include <cstring>

#include "backends/luks/luks.h"

namespace vd::luks {
namespace {

constexpr uint64_t kZeroChunk = 1u << 20;

bool aligned(uint64_t offset, uint64_t length) {
  return offset % kSectorSize == 0 && length % kSectorSize == 0;
}

// Decrypts `buf` (whole sectors from `sector`) on the pool, then runs `done` on the executor.
void decrypt_then(IoProvider& io, std::shared_ptr<const qcow::SectorCipher> cipher,
                  uint64_t sector, std::span<std::byte> buf, std::function<void(Error)> done) {
  auto err = std::make_shared<Error>();
  io.offload([cipher = std::move(cipher), sector, buf, err]() { *err = cipher->decrypt(sector, buf); },
             [err, done = std::move(done)]() { done(*err); });
}

}  // namespace

void LuksImage::post(Completion done, Error e) {
  io_.post([done = std::move(done), e = std::move(e)]() { done(e); });
}

Error LuksImage::check_data_path(const char* op, bool write, uint64_t offset,
                                 uint64_t length) const {
  if (!file_)
    return Error(Errc::internal, std::string(op) + " on '" + path_ + "' after it was closed");
  if (write && (flags_ & open_read_only))
    return Error(Errc::read_only, std::string(op) + " refused: '" + path_ + "' is open read-only");
  if (offset > size_ || length > size_ - offset)
    return Error(Errc::out_of_range, std::string(op) + " of '" + path_ + "' at " + hex(offset) +
                                         " length " + hex(length) +
                                         " ends beyond the disk size " + hex(size_));
  return {};
}

// ---- Reads ---------------------------------------------------------------------------------

void LuksImage::read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) {
  const uint64_t len = buf.size();
  Completion finish = [done = std::move(done), len](Error e) {
    done(e, ReadResult{e ? 0 : len, true});
  };
  Error e = check_data_path("read", false, offset, len);
  if (!e && !cipher_ && len)
    e = Error(Errc::wrong_passphrase, "read of '" + path_ + "' refused: it was opened without "
                                      "its passphrase (information only)");
  if (e || len == 0) return post(std::move(finish), std::move(e));
  if (aligned(offset, len)) return read_aligned(offset, buf, std::move(finish));
  read_bounced(offset, buf, std::move(finish));
}

void LuksImage::read_aligned(uint64_t offset, std::span<std::byte> buf, Completion done) {
  const uint64_t host = payload_offset() + offset;
  file_->async_read(IoKind::data, host, buf,
                    [this, offset, buf, host, done = std::move(done)](Error e) mutable {
                      if (e) return done(std::move(e));
                      decrypt_then(io_, cipher_, offset / kSectorSize, buf,
                                   [this, host, done = std::move(done)](Error d) {
                                     if (d) d = d.wrap("decrypting", "data", host).image(path_);
                                     done(std::move(d));
                                   });
                    });
}

void LuksImage::read_bounced(uint64_t offset, std::span<std::byte> buf, Completion done) {
  const uint64_t first = offset / kSectorSize;
  const uint64_t end = (offset + buf.size() + kSectorSize - 1) / kSectorSize;
  auto bounce = std::make_shared<std::vector<std::byte>>(static_cast<size_t>((end - first) * kSectorSize));
  auto copy_out = [this, offset, first, buf, bounce, done = std::move(done)](Error d) mutable {
    if (d) return done(d.wrap("decrypting", "data", payload_offset() + first * kSectorSize).image(path_));
    std::memcpy(buf.data(), bounce->data() + (offset - first * kSectorSize), buf.size());
    done({});
  };
  file_->async_read(IoKind::data, payload_offset() + first * kSectorSize, *bounce,
                    [this, first, bounce, copy_out = std::move(copy_out)](Error e) mutable {
                      if (e) return copy_out(std::move(e));
                      decrypt_then(io_, cipher_, first, *bounce, std::move(copy_out));
                    });
}

// ---- Writes --------------------------------------------------------------------------------

void LuksImage::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                      Completion done) {
  Error e = check_data_path("write", true, offset, buf.size());
  if (!e && !cipher_ && !buf.empty())
    e = Error(Errc::wrong_passphrase, "write to '" + path_ + "' refused: it was opened without "
                                      "its passphrase (information only)");
  if (e || buf.empty()) return post(std::move(done), std::move(e));
  start_write(*this, offset, buf, flags, std::move(done));
}

// Zeros must read back as zeros, so they are written encrypted like any data; the chunks go
// one after the other to bound the memory a large request takes.
void LuksImage::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  Error e = check_data_path("write_zeroes", true, offset, length);
  if (!e && !cipher_ && length)
    e = Error(Errc::wrong_passphrase, "write_zeroes to '" + path_ + "' refused: it was opened "
                                      "without its passphrase (information only)");
  if (e || length == 0) return post(std::move(done), std::move(e));
  auto zeros = std::make_shared<std::vector<std::byte>>(static_cast<size_t>(std::min(length, kZeroChunk)));
  (void)flags;  // zero_may_unmap cannot apply: a hole would not read as zeros
  zero_chunk(offset, offset + length, std::move(zeros), std::move(done));
}

void LuksImage::zero_chunk(uint64_t offset, uint64_t end,
                           std::shared_ptr<std::vector<std::byte>> zeros, Completion done) {
  // Chunks end on 1 MiB boundaries of the disk, so only the first and last can be partial.
  const uint64_t next = std::min(end, (offset / kZeroChunk + 1) * kZeroChunk);
  auto chunk = std::span<const std::byte>(*zeros).first(static_cast<size_t>(next - offset));
  start_write(*this, offset, chunk, 0,
              [this, next, end, zeros, done = std::move(done)](Error e) mutable {
                if (e || next == end) return done(std::move(e));
                zero_chunk(next, end, std::move(zeros), std::move(done));
              });
}

void LuksImage::discard(uint64_t offset, uint64_t length, Completion done) {
  post(std::move(done), check_data_path("discard", true, offset, length));
}

void LuksImage::flush(Completion done) {
  if (!file_)
    return post(std::move(done), Error(Errc::internal, "flush on '" + path_ + "' after it was closed"));
  if (flags_ & open_read_only) return post(std::move(done), {});
  file_->async_flush(std::move(done));
}

// Everything is data: an unwritten sector decrypts to noise, not zeros, so nothing may be
// skipped as zero. The host offset is withheld (the bytes there are ciphertext), as QEMU
// does for encrypted images.
void LuksImage::block_status(uint64_t offset, uint64_t length, ExtentHandler done) {
  Error e = check_data_path("block_status", false, offset, length);
  Extent ext;
  ext.length = length;
  ext.kind = Extent::Kind::data;
  ext.encrypted = true;
  io_.post([done = std::move(done), e = std::move(e), ext]() { done(e, e ? Extent{} : ext); });
}

}  // namespace vd::luks
