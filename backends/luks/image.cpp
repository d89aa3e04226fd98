// LuksImage: properties, geometry, resize and close. The data path is in image_io.cpp.
#include "backends/luks/luks.h"

namespace vd::luks {

uint64_t virtual_size(uint64_t file_size, uint64_t payload_offset) {
  return round_up_to_sector(file_size) - payload_offset;
}

LuksImage::LuksImage(const Backend& backend, std::string path, std::unique_ptr<File> file,
                     IoProvider& io, unsigned flags, qcow::LuksInfo info,
                     std::shared_ptr<const qcow::SectorCipher> cipher, uint64_t file_size)
    : backend_(backend), path_(std::move(path)), file_(std::move(file)), io_(io), flags_(flags),
      info_(std::move(info)), cipher_(std::move(cipher)),
      size_(virtual_size(file_size, info_.payload_offset)) {}

Result<uint64_t> LuksImage::file_size() {
  if (!file_) return Error(Errc::internal, "file size after the image was closed").image(path_);
  return file_->allocated_size();
}

// ---- Geometry ------------------------------------------------------------------------------

Geometry LuksImage::pchs() const { return pchs_.is_set() ? pchs_ : derive_pchs(size_); }
Geometry LuksImage::lchs() const { return lchs_.is_set() ? lchs_ : derive_lchs(size_); }


Error LuksImage::set_pchs(const Geometry& g) {
  if (Error e = check_geometry(path_, "physical", g, 16)) return e;
  pchs_ = g;
  return {};
}

Error LuksImage::set_lchs(const Geometry& g) {
  if (Error e = check_geometry(path_, "logical", g, 255)) return e;
  lchs_ = g;
  return {};
}

Error LuksImage::set_parent(const std::optional<std::string>& filename,
                            const std::optional<std::string>& format) {
  if (!filename && !format) return {};
  return Error(Errc::not_supported, "Backing file not supported for file format 'luks'").image(path_);
}

// ---- Resize, check, close ------------------------------------------------------------------

// QEMU truncates the file to payload offset + new size; the key is not needed for that.
Error LuksImage::resize(uint64_t new_size, const ResizeOptions& opts) {
  if (!file_) return Error(Errc::internal, "resize after the image was closed").image(path_);
  if (opts.preallocation != Preallocation::off)
    return Error(Errc::not_supported, std::string("Unsupported preallocation mode: ") +
                                                     preallocation_name(opts.preallocation))
        .image(path_);
  if (flags_ & open_read_only)
    return Error(Errc::read_only, "resize refused: the image is open read-only").image(path_);
  if (!locks_.idle())
    return Error(Errc::busy, "resize refused: writes are in flight").image(path_);
  const uint64_t payload = info_.payload_offset;
  if (new_size > static_cast<uint64_t>(INT64_MAX) - payload - (kSectorSize - 1))
    return Error(Errc::too_large, "size " + hex(new_size) + " is too large for a LUKS volume with its payload at " +
                                      hex(payload))
        .image(path_);
  if (Error e = file_->set_size(payload + new_size)) return e.wrap("resize").image(path_);
  size_ = virtual_size(payload + new_size, payload);
  return {};
}

std::vector<InfoField> LuksImage::format_info() const {
  std::vector<InfoField> f;
  qcow::append_luks_info(info_, "", f);
  return f;
}

Result<CheckReport> LuksImage::check(RepairMode) {
  return Error(Errc::not_supported, "This image format does not support checks");
}

Error LuksImage::close(bool remove) {
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

}  // namespace vd::luks
