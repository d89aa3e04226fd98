// RawImage: the virtual disk is the file. Every byte is allocated here (a raw image has no
// parent), so reads always answer allocated, and block_status reports data in place.
//
// Completions are never run inline: errors detected before any I/O and the results of
// synchronous file calls (discard, zeroing) are delivered through IoProvider::post.
#include <algorithm>
#include <array>
#include <cstring>

#include "backends/common/recycle.h"
#include "backends/raw/raw.h"

namespace vd::raw {

RawImage::RawImage(const Backend& backend, std::string path, std::unique_ptr<File> file,
                   IoProvider& io, unsigned flags, uint64_t size)
    : backend_(backend), path_(std::move(path)), file_(std::move(file)), io_(io),
      flags_(flags), size_(size) {}

// ---- Checks --------------------------------------------------------------------------------

Error RawImage::check_open(const char* op) const {
  if (file_) return {};
  return Error(Errc::internal, std::string(op) + " on '" + path_ + "' after it was closed");
}

Error RawImage::check_writable(const char* op) const {
  if (auto e = check_open(op)) return e;
  if (!(flags_ & open_read_only)) return {};
  return Error(Errc::read_only, std::string(op) + " refused: '" + path_ + "' is open read-only");
}

Error RawImage::check_range(const char* op, uint64_t offset, uint64_t length) const {
  if (offset <= size_ && length <= size_ - offset) return {};
  return Error(Errc::out_of_range, std::string(op) + " of '" + path_ + "' at " + hex(offset) +
                                       " length " + hex(length) + " ends beyond the disk size " +
                                       hex(size_));
}

void RawImage::post(Completion done, Error e) {
  io_.post([done = std::move(done), e = std::move(e)]() { done(e); });
}

// ---- Probe guard -----------------------------------------------------------------------------

bool RawImage::guarded(uint64_t offset, uint64_t length) const {
  return !(flags_ & open_format_given) && length > 0 && offset < kSectorSize;
}

Error RawImage::guard_sector0(std::span<const std::byte> sector) const {
  auto format = foreign_format(sector);
  if (!format) return {};
  return Error(Errc::permission,
               "write to sector 0 of raw image '" + path_ + "' refused: it would then probe as " +
                   std::string(*format) +
                   " (the format was guessed; open the image with -f raw to allow this)");
}

// ---- Data path -----------------------------------------------------------------------------

void RawImage::read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) {
  Error e = check_open("read");
  if (!e) e = check_range("read", offset, buf.size());
  if (e || buf.empty()) {
    return io_.post([done = std::move(done), e] { done(e, ReadResult{0, true}); });
  }
  // The file's completion holds a pointer to the pending read (inline in std::function), whose
  // memory is recycled: no heap allocation per read.
  struct PendingRead final : detail::Recycled<PendingRead> {
    PendingRead(ReadHandler d, uint64_t n) : done(std::move(d)), len(n) {}
    ReadHandler done;
    uint64_t len;
  };
  auto* op = new PendingRead(std::move(done), buf.size());
  file_->async_read(IoKind::data, offset, buf, [op](Error err) {
    ReadHandler done = std::move(op->done);
    const uint64_t len = op->len;
    delete op;
    done(err, ReadResult{err ? 0 : len, true});
  });
}

void RawImage::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                     Completion done) {
  Error e = check_writable("write");
  if (!e) e = check_range("write", offset, buf.size());
  if (e || buf.empty()) return post(std::move(done), e);
  if (!guarded(offset, buf.size())) return write_data(offset, buf, flags, std::move(done));
  sector0_.enter([this, offset, buf, flags, done = std::move(done)]() mutable {
    guarded_write(offset, buf, flags, [this, done = std::move(done)](Error err) {
      sector0_.leave();
      done(std::move(err));
    });
  });
}

// Builds the first sector as it would be after the write: the written bytes over the
// current ones (read first unless the write covers the whole sector).
void RawImage::guarded_write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                             Completion done) {
  const size_t sector_len = static_cast<size_t>(std::min<uint64_t>(kSectorSize, size_));
  std::shared_ptr<std::byte[]> sector(new std::byte[sector_len]());
  if (offset == 0 && buf.size() >= sector_len) {
    std::memcpy(sector.get(), buf.data(), sector_len);
    return write_checked(offset, buf, flags, std::move(sector), std::move(done));
  }
  file_->async_read(IoKind::data, 0, std::span(sector.get(), sector_len),
                    [this, offset, buf, flags, sector, done = std::move(done)](Error e) mutable {
                      if (e) return done(std::move(e));
                      write_checked(offset, buf, flags, std::move(sector), std::move(done));
                    });
}

void RawImage::write_checked(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                             std::shared_ptr<std::byte[]> sector, Completion done) {
  const size_t sector_len = static_cast<size_t>(std::min<uint64_t>(kSectorSize, size_));
  const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), sector_len - offset));
  std::memcpy(sector.get() + offset, buf.data(), n);
  if (Error e = guard_sector0(std::span(sector.get(), sector_len))) {
    return post(std::move(done), std::move(e));
  }
  write_data(offset, buf, flags, std::move(done));
}

void RawImage::write_data(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                          Completion done) {
  if (!(flags & write_fua)) return file_->async_write(IoKind::data, offset, buf, std::move(done));
  file_->async_write(IoKind::data, offset, buf, [this, done = std::move(done)](Error e) mutable {
    if (e) return done(std::move(e));
    file_->async_flush(std::move(done));
  });
}

void RawImage::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  zero_range(offset, length, flags, false, std::move(done));
}

// Punching a hole leaves the range reading as zeros, exactly to the byte (what qemu-io
// leaves after an unaligned discard on a raw file), so discard and write_zeroes share this.
void RawImage::discard(uint64_t offset, uint64_t length, Completion done) {
  zero_range(offset, length, zero_may_unmap, true, std::move(done));
}

// qemu does not guard zeroing, but a zeroed byte can complete a signature that contains a
// zero ("QED\0"), so a guessed-format image checks the resulting sector here too.
void RawImage::zero_range(uint64_t offset, uint64_t length, unsigned flags, bool unmap_only,
                          Completion done) {
  const char* op = unmap_only ? "discard" : "write_zeroes";
  Error e = check_writable(op);
  if (!e) e = check_range(op, offset, length);
  if (e || length == 0) return post(std::move(done), e);
  const bool unmap = flags & zero_may_unmap;
  if (!guarded(offset, length)) return zero_now(offset, length, unmap, std::move(done));
  sector0_.enter([this, offset, length, unmap, done = std::move(done)]() mutable {
    const size_t sector_len = static_cast<size_t>(std::min<uint64_t>(kSectorSize, size_));
    auto sector = std::make_shared<std::array<std::byte, kSectorSize>>();
    file_->async_read(IoKind::data, 0, std::span(sector->data(), sector_len),
                      [this, offset, length, unmap, sector, sector_len, done = std::move(done)](Error err) mutable {
                        const size_t end = static_cast<size_t>(std::min<uint64_t>(offset + length, sector_len));
                        std::fill(sector->begin() + static_cast<std::ptrdiff_t>(offset),
                                  sector->begin() + static_cast<std::ptrdiff_t>(end), std::byte{0});
                        if (!err) err = guard_sector0(std::span(sector->data(), sector_len));
                        auto leave = [this, done = std::move(done)](Error e) mutable {
                          sector0_.leave();
                          done(std::move(e));
                        };
                        if (err) return leave(std::move(err));
                        zero_now(offset, length, unmap, std::move(leave));
                      });
  });
}

// Without unmap the range must stay allocated: punch, then reserve it again (what
// FALLOC_FL_ZERO_RANGE does in one call, which the File seam does not offer).
void RawImage::zero_now(uint64_t offset, uint64_t length, bool unmap, Completion done) {
  file_->async_discard(offset, length, [this, offset, length, unmap, done = std::move(done)](Error e) mutable {
    if (e || unmap) return done(std::move(e));
    file_->async_allocate(offset, length, std::move(done));
  });
}

void RawImage::flush(Completion done) {
  if (Error e = check_open("flush")) return post(std::move(done), std::move(e));
  if (flags_ & open_read_only) return post(std::move(done), {});
  file_->async_flush(std::move(done));
}

void RawImage::block_status(uint64_t offset, uint64_t length, ExtentHandler done) {
  Error e = check_open("block_status");
  if (!e) e = check_range("block_status", offset, length);
  Extent ext{length, Extent::Kind::data, offset, false, false};
  if (e || !length) return post([done = std::move(done), ext](Error err) { done(err, err ? Extent{} : ext); }, e);
  // Holes of a sparse file read as zeros: report them so map and convert skip them.
  auto answer = [done = std::move(done), ext, length](Error err, FileExtent fx) mutable {
    if (err) return done(err, {});
    if (fx.length) {
      ext.length = std::min(length, fx.length);
      if (!fx.data) ext.kind = Extent::Kind::zero;  // still at its place in the file
    } else {
      ext.kind = Extent::Kind::zero;  // the partial last sector, past the end of the file
    }
    done({}, ext);
  };
  // The cached extent of a read-only image (whose holes nothing of ours can fill or punch).
  const auto& c = extent_cache_;
  if (c && offset >= c->start && offset < c->end) {
    const FileExtent fx{c->data, c->end - offset};
    return post([answer = std::move(answer), fx](Error) mutable { answer({}, fx); }, {});
  }
  file_->async_extent_at(offset, [this, offset, answer = std::move(answer)](Error err, FileExtent fx) mutable {
    if (!err && fx.length && (flags_ & open_read_only))
      extent_cache_ = CachedExtent{offset, offset + fx.length, fx.data};
    answer(err, fx);
  });
}

// ---- Properties ----------------------------------------------------------------------------

Result<uint64_t> RawImage::file_size() {
  if (Error e = check_open("file size")) return e;
  return file_->allocated_size();
}

Geometry RawImage::pchs() const { return pchs_.is_set() ? pchs_ : derive_pchs(size_); }
Geometry RawImage::lchs() const { return lchs_.is_set() ? lchs_ : derive_lchs(size_); }


Error RawImage::set_pchs(const Geometry& g) {
  if (Error e = check_geometry(path_, "physical", g, 16)) return e;
  pchs_ = g;
  return {};
}

Error RawImage::set_lchs(const Geometry& g) {
  if (Error e = check_geometry(path_, "logical", g, 255)) return e;
  lchs_ = g;
  return {};
}

Error RawImage::set_parent(const std::optional<std::string>& filename,
                           const std::optional<std::string>& format) {
  if (!filename && !format) return {};
  return Error(Errc::not_supported, "raw image '" + path_ + "' cannot have a backing file");
}

// Preallocation of the new area is the caller's (vdimg reserves or writes it through the
// data path); the file only changes length here.
Error RawImage::resize(uint64_t new_size, const ResizeOptions& opts) {
  if (Error e = check_writable("resize")) return e;
  if (opts.preallocation != Preallocation::off)
    return Error(Errc::not_supported, std::string("Unsupported preallocation mode: ") +
                                                     preallocation_name(opts.preallocation))
        .image(path_);
  if (Error e = file_->set_size(new_size)) return e;
  size_ = round_up_to_sector(new_size);  // as at open: the partial last sector reads zeros past the end
  extent_cache_.reset();
  return {};
}

Result<CheckReport> RawImage::check(RepairMode) {
  return Error(Errc::not_supported, "This image format does not support checks");
}

Error RawImage::close(bool remove) {
  if (!file_) return {};
  Error first;
  if (!(flags_ & open_read_only)) first = file_->flush();
  file_.reset();
  if (remove) {
    Error e = io_.remove(path_);
    if (!first) first = e;
  }
  return first;
}

}  // namespace vd::raw
