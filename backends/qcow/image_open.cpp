// Opening a QCOW image: every header field and table location is validated (header.cpp)
// before it is used, and nothing is sized from an unchecked field.
#include <algorithm>

#include <filesystem>

#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/check/check.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"
#include "backends/crypto/luks.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {

QcowImage::QcowImage(const Backend& backend, std::string path, unsigned flags, IoProvider& io)
    : backend_(backend), path_(std::move(path)), flags_(flags), io_(io), cache_(32ull << 20) {}

QcowImage::~QcowImage() = default;

Result<std::unique_ptr<Image>> QcowImage::open(const Backend& backend, const std::string& path,
                                               const OpenOptions& opts, IoProvider& io) {
  unsigned flags = opts.flags;
  if (opts.snapshot) flags |= open_read_only;  // a snapshot is a read-only view
  std::unique_ptr<QcowImage> img(new QcowImage(backend, path, flags, io));
  img->cache_ = L2Cache(opts.cache_bytes);
  if (Error e = img->load(opts)) return e;
  (void)img->looks_preallocated();  // reads refcounts synchronously: now, not in block_status
  return std::unique_ptr<Image>(std::move(img));
}

Error QcowImage::load(const OpenOptions& opts) {
  const bool ro = flags_ & open_read_only;
  auto f = io_.open(path_, (ro ? file_read : (file_read | file_write)) | image_lock_mode(flags_));
  if (!f) return f.error();
  file_ = std::move(*f);
  data_ = file_.get();

  // check -r opens with open_no_repair: QEMU's repair mode accepts a missing refcount table
  // and a corrupt image, which the check then rebuilds and clears.
  const bool repairing = (flags_ & open_no_repair) && !ro;
  ReadHeaderOptions rh;
  rh.for_repair = repairing;
  auto h = read_header(*file_, path_, rh);
  if (!h) return h.error();
  hdr_ = std::move(*h);
  if (hdr_.version == 1 && backend_.name() != "qcow")
    return Error(Errc::wrong_format, "the image is QCOW version 1: open it as 'qcow'").image(path_);
  if (hdr_.version != 1 && backend_.name() != "qcow2")
    return Error(Errc::wrong_format, "the image is QCOW2: open it as 'qcow2'").image(path_);
  if ((hdr_.incompatible_features & kIncompatCorrupt) && !ro && !repairing)
    return Error(Errc::corrupt, "Image is corrupt; cannot be opened read/write").image(path_);
  layout_ = Layout::from(hdr_);
  size_ = hdr_.size & ~(kSectorBytes - 1);  // QEMU sees whole sectors only

  auto fs = file_->size();
  if (!fs) return fs.error();
  file_end_ = *fs;
  if (Error e = validate_layout(hdr_, file_end_, path_, repairing)) return e;
  if (Error e = open_data_file()) return e;
  if (Error e = open_encryption(opts)) return e;

  if (hdr_.version >= 2) {
    auto snaps = read_snapshot_table(*file_, hdr_, path_);
    if (!snaps) return snaps.error();
    snapshots_ = std::move(*snaps);
    // Bitmaps as QEMU loads them at every open: a hostile directory or table fails it.
    bitmaps_ = std::make_unique<BitmapSet>(*this);
    if (Error e = bitmaps_->load()) return e;
  }
  if (opts.snapshot) {
    if (Error e = select_snapshot(*opts.snapshot)) return e;
  } else if (Error e = load_l1(hdr_.l1_table_offset, hdr_.l1_size, "active L1 table")) {
    return e;
  }
  return open_for_writing();
}

// Read-write opens load the refcounts (QCOW2) or find the end of the file (QCOW v1), and
// clear the autoclear bits of everything vd does not keep up to date as it writes. The
// bitmaps (autoclear bit 0) vd keeps: they are marked in use on disk before the open returns.
Error QcowImage::open_for_writing() {
  if (flags_ & open_read_only) return {};
  const uint64_t cs = layout_.cluster_size();
  if (hdr_.version == 1) {
    v1_end_ = (file_end_ + cs - 1) & ~(cs - 1);
    return {};
  }
  // Lazy refcounts after a crash: the refcounts on disk may be stale. Like QEMU, a read-write
  // open rebuilds them (the check clears the dirty bit once the image is consistent).
  if ((hdr_.incompatible_features & kIncompatDirty) && !(flags_ & open_no_repair)) {
    auto report = check_image(*this, RepairMode::all);
    if (!report) return report.error().wrap("Could not repair dirty image").image(path_);
    if (report->check_errors || report->corruptions)
      return Error(Errc::corrupt, "Could not repair dirty image (" +
                                      std::to_string(report->corruptions) + " corruptions, " +
                                      std::to_string(report->check_errors) + " check errors remain)").image(path_);
  }
  refs_ = std::make_unique<Refcounts>(
      *file_, path_,
      Refcounts::Config{hdr_.cluster_bits, hdr_.refcount_order, hdr_.refcount_table_offset,
                        hdr_.refcount_table_clusters});
  if (Error e = refs_->load(file_end_)) return e;
  guard_refcounts();
  const uint64_t keep = hdr_.autoclear_features & (kAutoclearDataFileRaw | kAutoclearBitmaps);
  if (keep != hdr_.autoclear_features) {
    hdr_.autoclear_features = keep;
    if (Error e = write_metadata_header()) return e;
    if (Error e = file_->flush()) return e.wrap("flush").image(path_);
  }
  return bitmaps_ ? bitmaps_->mark_in_use() : Error{};
}

// The name recorded in the header, resolved as QEMU resolves it: a relative name is relative
// to the current directory (QEMU opens the data-file child by that name as given, unlike a
// backing file), so an image made with `qemu-img create -o data_file=img/x.data img/x` opens
// from the folder it was made in. Where nothing is found there, next to the image (where a
// data file usually lives, and where the image may have been moved with it).
Error QcowImage::open_data_file() {
  if (!hdr_.data_file) return {};
  namespace fs = std::filesystem;
  fs::path p(*hdr_.data_file);
  if (p.is_relative() && !io_.exists(p.string())) {
    const fs::path beside = fs::path(path_).parent_path() / p;
    if (io_.exists(beside.string())) p = beside;  // else the error names QEMU's path
  }
  const bool ro = flags_ & open_read_only;
  auto f = io_.open(p.string(), (ro ? file_read : (file_read | file_write)) | image_lock_mode(flags_));
  if (!f) return f.error().wrap("opening", "external data file").image(path_);
  data_file_ = std::move(*f);
  data_ = data_file_.get();
  return {};
}

Error QcowImage::open_encryption(const OpenOptions& opts) {
  if (hdr_.crypt_method == kCryptNone) return {};
  if (hdr_.crypt_method == kCryptLuks && hdr_.crypto_header_length >= kLuksHeaderSize) {
    // Described by info even when it is not unlocked; a bad header fails the unlock below.
    std::vector<std::byte> raw(kLuksHeaderSize);
    if (!file_->read(IoKind::meta, hdr_.crypto_header_offset, raw))
      if (auto info = luks_parse(raw, path_)) luks_ = std::move(*info);
  }
  if (flags_ & open_info_only) return {};
  if (!opts.passphrase)
    return Error(Errc::wrong_passphrase, "the image is encrypted: a passphrase is needed (--passphrase-file)")
        .image(path_);
  if (hdr_.crypt_method == kCryptAes) {
    auto c = make_legacy_aes(*opts.passphrase);
    if (!c) return c.error();
    cipher_ = std::move(*c);
    return {};
  }
  auto v = luks_unlock(*file_, hdr_.crypto_header_offset, hdr_.crypto_header_length,
                       *opts.passphrase, path_);
  if (!v) return v.error();
  cipher_ = std::move(v->cipher);
  luks_master_key_ = std::move(v->master_key);
  return {};
}

Error QcowImage::load_l1(uint64_t offset, uint32_t entries, const char* what) {
  // The header check bounded entries by kMaxL1Bytes and the range by the file size.
  if (uint64_t{entries} * 8 > kMaxL1Bytes)
    return Error(Errc::corrupt, std::string(what) + " too large").image(path_).structure(what).at(offset);
  if (offset + uint64_t{entries} * 8 > file_end_)
    return Error(Errc::corrupt, std::string(what) + " at " + hex(offset) + " lies beyond the end of the file")
        .image(path_)
        .structure(what)
        .at(offset);
  std::vector<std::byte> raw(uint64_t{entries} * 8);
  if (Error e = file_->read(IoKind::meta, offset, raw))
    return e.wrap("reading", what, offset).image(path_);
  metadata_moved();
  l1_.resize(entries);
  for (uint32_t i = 0; i < entries; ++i) l1_[i] = load_be64(raw.data() + uint64_t{i} * 8);
  return {};
}

Error QcowImage::select_snapshot(const std::string& name) {
  const Snapshot* found = nullptr;
  for (const auto& s : snapshots_)
    if (s.id == name) found = &s;
  if (!found)
    for (const auto& s : snapshots_)
      if (s.name == name) found = &s;
  if (!found)
    return Error(Errc::not_found, "no snapshot with id or name '" + name + "'").image(path_);
  if (Error e = validate_snapshot(*found, hdr_, static_cast<size_t>(found - snapshots_.data()), file_end_, path_))
    return e;
  // The virtual size stays the image's current one, as qemu-img 7.2 reads a snapshot
  // (convert -l): loading a snapshot's L1 does not change the disk's length, and what its
  // smaller L1 does not map reads as unallocated. snapshots() reports its own disk size.
  return load_l1(found->l1_table_offset, found->l1_size, "snapshot L1 table");
}

// QEMU consults the file's holes only for images that look metadata-preallocated: the file
// occupies clearly less space than its length (allocated clusters are mostly holes).
// QEMU's test for an image made with preallocation=metadata (qcow2_detect_metadata_preallocation):
// clusters with a reference, counted up to a threshold, against the clusters the file really
// occupies. Only then does block status look at the file's holes, so map agrees with
// qemu-img's on every image (a compressed run or a freed cluster leaves holes too).
// Computed once, at open (it reads refcounts, synchronously): block_status only asks.
bool QcowImage::looks_preallocated() {
  if (prealloc_known_) return prealloc_;
  prealloc_known_ = true;
  if (hdr_.version == 1) return false;  // QEMU's qcow driver never asks
  auto len = file_->size();
  auto used = file_->allocated_size();
  if (!len || !used) return false;
  const uint64_t cs = layout_.cluster_size();
  const uint64_t real = *used / cs;
  const uint64_t threshold = std::max(real * 10 / 9, real + 2);
  const uint64_t end = (*len + cs - 1) / cs;
  if (end < threshold) return false;
  std::unique_ptr<Refcounts> own;  // read-only images keep no refcounts: read them here
  Refcounts* refs = refs_.get();
  if (!refs) {
    own = std::make_unique<Refcounts>(*file_, path_,
                                      Refcounts::Config{hdr_.cluster_bits, hdr_.refcount_order,
                                                        hdr_.refcount_table_offset, hdr_.refcount_table_clusters});
    if (own->load(file_end_)) return false;
    refs = own.get();
  }
  uint64_t counted = 0;
  for (uint64_t c = 0; c < end && counted < threshold; ++c) {
    auto r = refs->get(c * cs);
    if (!r) return false;
    counted += *r != 0;
  }
  prealloc_ = counted >= threshold;
  return prealloc_;
}

}  // namespace vd::qcow
