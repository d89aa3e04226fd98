// QcowImage: properties, descriptive information, and the calls of the write side.
#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/check/check.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

Result<uint64_t> QcowImage::file_size() {
  auto a = file_->allocated_size();
  if (!a || !data_file_) return a;
  auto b = data_file_->allocated_size();
  if (!b) return b;
  return *a + *b;
}

Error QcowImage::set_pchs(const Geometry& g) {
  if (g.heads > 16 || g.sectors > 63) return Error(Errc::invalid_argument, "invalid physical geometry");
  pchs_ = g;  // QCOW stores no geometry: kept for this session, as VirtualBox does
  return {};
}

Error QcowImage::set_lchs(const Geometry& g) {
  if (g.heads > 255 || g.sectors > 63) return Error(Errc::invalid_argument, "invalid logical geometry");
  lchs_ = g;
  return {};
}

// Growing: the new size is recorded, and a larger L1 table is allocated and written when the
// old one cannot map it; the new area is preallocated or zeroed as `opts` asks (grow_ops.cpp).
// Shrinking frees the clusters past the new end (truncate_ops.cpp).
Error QcowImage::resize(uint64_t new_size, const ResizeOptions& opts) {
  if (Error e = refuse_write("resize")) return e;
  if (hdr_.version == 1)
    return Error(Errc::not_supported, "Image format driver does not support resize").image(path_);
  if (opts.preallocation != Preallocation::off && opts.preallocation != Preallocation::metadata)
    return Error(Errc::not_supported, std::string("Unsupported preallocation mode: ") +
                                          preallocation_name(opts.preallocation))
        .image(path_);
  if (new_size % kSectorBytes)
    return Error(Errc::invalid_argument, "The new size must be a multiple of 512").image(path_);
  if (writes_active_ || flushing_)
    return Error(Errc::busy, "resize while requests are in flight").image(path_);
  // A v2 snapshot records no disk size: it would take the new one (QEMU refuses too).
  if (hdr_.version == 2 && !snapshots_.empty())
    return Error(Errc::not_supported, "Can't resize a v2 image which has snapshots").image(path_);
  if (new_size < size_ && opts.preallocation != Preallocation::off)
    return Error(Errc::invalid_argument, "Preallocation can't be used for shrinking an image").image(path_);
  if (bitmaps_)
    if (Error e = bitmaps_->resize(new_size)) return e;
  if (new_size < size_) {
    if (Error e = shrink(new_size)) return e;
    // An external data file takes the new size too, as QEMU does (once no entry points past
    // the end any more).
    if (data_file_)
      if (Error e = data_file_->set_size(new_size)) return e.wrap("resizing", "external data file").image(path_);
    return {};
  }
  return grow(new_size, opts);
}

// A larger active L1 table in new clusters; the flush writes it whole before the header
// points at it (write_l1 step), and the old one is freed after that.
Error QcowImage::grow_l1(uint64_t needed) {
  const uint64_t cs = layout_.cluster_size();
  if (needed * 8 > kMaxL1Bytes) return Error(Errc::too_large, "Image is too big").image(path_);
  if (needed <= l1_.size()) return {};
  const uint64_t clusters = (needed * 8 + cs - 1) / cs;
  auto at = allocate_clusters(clusters);
  if (!at) return at.error();
  refs_->release_later(hdr_.l1_table_offset, (uint64_t{hdr_.l1_size} * 8 + cs - 1) / cs * cs);
  l1_.resize(needed, 0);
  for (uint64_t i = 0; i < needed; ++i) l1_dirty_.insert(i);
  hdr_.l1_table_offset = *at;
  metadata_moved();
  hdr_.l1_size = static_cast<uint32_t>(needed);
  header_dirty_ = true;
  return file_->set_size(std::max<uint64_t>(file_end_, *at + clusters * cs));
}

DirtyBitmaps* QcowImage::bitmaps() { return bitmaps_.get(); }

Result<CheckReport> QcowImage::check(RepairMode repair) { return check_image(*this, repair); }

// qemu-img's "encrypt" block for LUKS, in the order it prints the fields.
void QcowImage::add_luks_info(std::vector<InfoField>& f) const {
  if (!luks_) {
    f.push_back({"encrypt.format", std::string("luks")});
    return;
  }
  const InfoField format{"encrypt.format", std::string("luks")};
  append_luks_info(*luks_, "encrypt.", f, &format);
}

std::vector<InfoField> QcowImage::format_info() const {
  std::vector<InfoField> f;
  if (hdr_.version == 1) return f;
  const bool v3 = hdr_.version >= 3;
  f.push_back({"compat", std::string(v3 ? "1.1" : "0.10")});
  f.push_back({"compression-type",
               std::string(hdr_.compression_type == kCompressionZstd ? "zstd" : "zlib")});
  if (v3) f.push_back({"lazy-refcounts", bool(hdr_.compatible_features & kCompatLazyRefcounts)});
  if (bitmaps_) bitmaps_->add_info(f);
  f.push_back({"refcount-bits", uint64_t{1} << hdr_.refcount_order});
  if (hdr_.data_file) {
    f.push_back({"data-file", *hdr_.data_file});
    f.push_back({"data-file-raw", bool(hdr_.autoclear_features & kAutoclearDataFileRaw)});
  }
  if (hdr_.crypt_method == kCryptLuks) add_luks_info(f);
  if (hdr_.crypt_method == kCryptAes) f.push_back({"encrypt.format", std::string("aes")});
  if (v3) {
    f.push_back({"corrupt", bool(hdr_.incompatible_features & kIncompatCorrupt)});
    f.push_back({"extended-l2", hdr_.extended_l2()});
  }
  return f;
}

std::vector<SnapshotInfo> QcowImage::snapshots() const {
  std::vector<SnapshotInfo> out;
  for (const auto& s : snapshots_) {
    SnapshotInfo i;
    i.id = s.id;
    i.name = s.name;
    i.vm_state_size = s.vm_state_size;
    i.disk_size = s.disk_size.value_or(hdr_.size);
    i.date_sec = s.date_sec;
    i.date_nsec = s.date_nsec;
    i.vm_clock_nsec = s.vm_clock_nsec;
    i.icount = s.icount;
    out.push_back(std::move(i));
  }
  return out;
}

Error QcowImage::close(bool remove) {
  if (closed_) return {};
  closed_ = true;
  Error first;
  // The flush stores the bitmaps too (its first step), clearing their in-use flags.
  if (!(flags_ & open_read_only)) first = FlushRequest::run_sync(*this);
  if (!first && marked_dirty_) {
    // Everything is on disk and consistent: the image is clean again.
    hdr_.incompatible_features &= ~kIncompatDirty;
    first = write_metadata_header();
    if (!first) first = file_->flush();
    marked_dirty_ = false;
  }
  cache_.clear();
  data_file_.reset();
  file_.reset();
  if (remove) {
    Error e = io_.remove(path_);
    if (!first) first = e;
  }
  return first;
}

}  // namespace vd::qcow
