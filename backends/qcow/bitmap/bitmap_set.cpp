// Loading, marking, storing and the API of the persistent bitmaps (bitmap_set.h).
#include "backends/qcow/bitmap/bitmap_set.h"

#include <algorithm>

#include "backends/common/endian.h"
#include "backends/qcow/image.h"
#include "backends/qcow/io/flush_request.h"

namespace vd::qcow {

namespace {

uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

Error not_found(const std::string& name) {
  return Error(Errc::not_found, "Dirty bitmap '" + name + "' not found");
}

}  // namespace

BitmapSet::Loaded* BitmapSet::find(const std::string& name) {
  for (auto& l : list_)
    if (l.entry.name == name) return &l;
  return nullptr;
}

const BitmapSet::Loaded* BitmapSet::find(const std::string& name) const {
  for (const auto& l : list_)
    if (l.entry.name == name) return &l;
  return nullptr;
}

void BitmapSet::retrack() {
  tracking_.clear();
  for (auto& l : list_)
    if (l.bits && l.enabled) tracking_.push_back(l.bits.get());
}

Error BitmapSet::load() {
  const Header& h = img_.hdr_;
  auto ext = find_bitmaps_ext(h);
  if (!ext) return {};
  const uint64_t cs = img_.layout_.cluster_size();
  auto dir = read_bitmap_directory(*img_.file_, *ext, cs, img_.size_, img_.path_);
  if (!dir) return dir.error();
  std::vector<std::byte> buf(cs);
  for (BitmapEntry& e : *dir) {
    Loaded l;
    l.entry = e;
    l.enabled = e.enabled();
    if (e.in_use()) {  // a writer stopped before storing it: its bits are lost
      list_.push_back(std::move(l));
      continue;
    }
    auto table = read_bitmap_table(*img_.file_, e, cs, img_.path_);
    if (!table) return table.error();
    if (table->size() != bitmap_table_entries(img_.size_, e.granularity_bits, cs))
      return Error(Errc::corrupt, "Could not read bitmap '" + e.name + "' from image: Invalid argument")
          .image(img_.path_)
          .structure("bitmap table")
          .at(e.table_offset);
    auto bits = std::make_unique<DirtyBitmap>(img_.size_, e.granularity_bits);
    for (uint64_t i = 0; i < table->size(); ++i) {
      const uint64_t entry = (*table)[i];
      const uint64_t off = entry & kBmeEntryOffsetMask;
      if (!off) {
        if (entry & kBmeEntryAllOnes) bits->fill_cluster(i, cs);
        continue;
      }
      // QEMU reads zeros past the end of the file (check reports the cluster).
      if (off >= img_.file_end_) continue;
      std::fill(buf.begin(), buf.end(), std::byte{0});
      const uint64_t n = std::min<uint64_t>(cs, img_.file_end_ - off);
      if (Error err = img_.file_->read(IoKind::meta, off, std::span(buf).first(n)))
        return err.wrap("Could not read bitmap '" + e.name + "' from image", "bitmap data", off).image(img_.path_);
      bits->load_cluster(i, buf);
    }
    l.table = std::move(*table);
    l.bits = std::move(bits);
    list_.push_back(std::move(l));
  }
  retrack();
  return {};
}

// The directory rewritten where it is (only flags change, so its size does not): QEMU's
// update_ext_header_and_dir_in_place, with the order and flushes of the crash invariant
// in bitmap_set.h.
Error BitmapSet::write_directory_in_place(const std::vector<BitmapEntry>& entries, uint64_t offset) {
  Header& h = img_.hdr_;
  auto bytes = encode_bitmap_directory(entries);
  h.autoclear_features &= ~kAutoclearBitmaps;  // the header stops vouching for the directory
  if (Error e = img_.write_metadata_header()) return e;
  if (Error e = img_.file_->flush()) return e.wrap("flush").image(img_.path_);
  if (Error e = img_.check_overlap(offset, bytes.size(), MetaKind::bitmap_directory)) return e;
  if (Error e = img_.file_->write(IoKind::meta, offset, bytes))
    return e.wrap("writing", "bitmap directory", offset).image(img_.path_);
  if (Error e = img_.file_->flush()) return e.wrap("flush").image(img_.path_);
  h.autoclear_features |= kAutoclearBitmaps;  // the directory is whole again
  if (Error e = img_.write_metadata_header()) return e;
  if (Error e = img_.file_->flush()) return e.wrap("flush").image(img_.path_);
  return {};
}

Error BitmapSet::mark_in_use() {
  auto ext = find_bitmaps_ext(img_.hdr_);
  if (!ext) return {};
  bool needed = false;
  std::vector<BitmapEntry> entries;
  for (auto& l : list_) {
    if (!l.entry.in_use()) {
      l.entry.flags |= kBmeFlagInUse;
      needed = true;
    }
    entries.push_back(l.entry);
  }
  changed_ = changed_ || needed;
  if (!needed) return {};
  if (Error e = write_directory_in_place(entries, ext->dir_offset))
    return e.wrap("Can't update bitmap directory").image(img_.path_);
  return {};
}

Error BitmapSet::release_old(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  if (ranges.empty()) return {};
  for (auto [off, len] : ranges) img_.refs_->release_later(off, len);
  return FlushRequest::run_sync(img_);
}

// Everything in new clusters, then the header switch, then the old clusters freed (the
// crash invariant in bitmap_set.h). Inconsistent bitmaps keep their entry as it is.
Error BitmapSet::store() {
  if (!changed_) return {};
  const uint64_t cs = img_.layout_.cluster_size();
  File& f = *img_.file_;
  std::vector<std::pair<uint64_t, uint64_t>> old = std::move(dropped_);
  dropped_.clear();
  std::vector<BitmapEntry> entries;
  std::vector<std::vector<uint64_t>> tables;
  std::vector<std::byte> buf(cs);
  for (auto& l : list_) {
    if (!l.bits) {
      entries.push_back(l.entry);
      tables.push_back(l.table);
      continue;
    }
    BitmapEntry e = l.entry;
    const uint64_t n = bitmap_table_entries(img_.size_, e.granularity_bits, cs);
    std::vector<uint64_t> table(n, 0);
    for (uint64_t i = 0; i < n; ++i) {
      if (l.bits->cluster_empty(i, cs)) continue;  // all zeros: no cluster, as QEMU writes it
      auto at = img_.allocate_clusters(1);
      if (!at) return at.error().wrap("Failed to allocate clusters for bitmap '" + e.name + "'");
      l.bits->store_cluster(i, buf);
      if (Error err = f.write(IoKind::meta, *at, buf))
        return err.wrap("Failed to write bitmap '" + e.name + "' to file", "bitmap data", *at).image(img_.path_);
      table[i] = *at;
    }
    const uint64_t tbytes = n * 8;
    auto tab_at = img_.allocate_clusters(round_up(tbytes, cs) / cs);
    if (!tab_at) return tab_at.error().wrap("Failed to allocate clusters for bitmap '" + e.name + "'");
    std::vector<std::byte> raw(round_up(tbytes, cs), std::byte{0});
    for (uint64_t i = 0; i < n; ++i) store_be64(raw.data() + i * 8, table[i]);
    if (Error err = f.write(IoKind::meta, *tab_at, raw))
      return err.wrap("Failed to write bitmap '" + e.name + "' to file", "bitmap table", *tab_at).image(img_.path_);
    if (e.table_offset) {
      old.emplace_back(e.table_offset, round_up(uint64_t{e.table_size} * 8, cs));
      for (uint64_t x : l.table)
        if (uint64_t off = x & kBmeEntryOffsetMask) old.emplace_back(off, cs);
    }
    e.table_offset = *tab_at;
    e.table_size = static_cast<uint32_t>(n);
    e.flags = l.enabled ? kBmeFlagAuto : 0;
    entries.push_back(e);
    tables.push_back(std::move(table));
  }
  auto old_ext = find_bitmaps_ext(img_.hdr_);
  std::optional<BitmapsExt> ext;
  if (!entries.empty()) {
    for (const auto& e : entries)
      if (!bitmap_entry_valid(e, cs, img_.size_))
        return Error(Errc::invalid_argument, "Bitmap '" + e.name + "' doesn't satisfy the constraints").image(img_.path_);
    auto dir = encode_bitmap_directory(entries);
    if (dir.size() > kMaxBitmapDirBytes) return Error(Errc::too_large, "Bitmap directory is too large").image(img_.path_);
    auto at = img_.allocate_clusters(round_up(dir.size(), cs) / cs);
    if (!at) return at.error().wrap("Failed to update bitmap extension");
    if (Error err = f.write(IoKind::meta, *at, dir))
      return err.wrap("writing", "bitmap directory", *at).image(img_.path_);
    ext = BitmapsExt{static_cast<uint32_t>(entries.size()), dir.size(), *at};
  }
  // New clusters and the refcounts that hold them durable before the header points at them.
  if (Error err = FlushRequest::run_sync(img_)) return err;
  set_bitmaps_ext(img_.hdr_, ext);
  img_.metadata_moved();
  if (Error err = img_.write_metadata_header()) return err;
  if (Error err = f.flush()) return err.wrap("flush").image(img_.path_);
  for (size_t i = 0; i < list_.size(); ++i) {
    list_[i].entry = entries[i];
    list_[i].table = std::move(tables[i]);
  }
  if (old_ext) old.emplace_back(old_ext->dir_offset, round_up(old_ext->dir_size, cs));
  changed_ = false;
  // Nothing points at the old clusters any more.
  return release_old(old);
}

Error BitmapSet::resize(uint64_t new_size) {
  for (auto& l : list_)
    if (!l.bits)
      return Error(Errc::invalid_argument, "Bitmap '" + l.entry.name +
                                               "' is inconsistent and cannot be used\n"
                                               "Try block-dirty-bitmap-remove to delete this bitmap from disk")
          .image(img_.path_);
  for (auto& l : list_) {
    auto grown = std::make_unique<DirtyBitmap>(new_size, l.entry.granularity_bits);
    for (uint64_t off = 0; off < std::min(new_size, l.bits->disk_size());) {
      auto [dirty, len] = l.bits->extent(off, UINT64_MAX);
      if (len == 0) break;
      if (dirty) grown->set(off, len);
      off += len;
    }
    l.bits = std::move(grown);
  }
  if (!list_.empty()) changed_ = true;
  retrack();
  return {};
}

void BitmapSet::add_info(std::vector<InfoField>& f) const {
  for (size_t i = 0; i < list_.size(); ++i) {
    const std::string k = "bitmaps." + std::to_string(i) + ".";
    // As qemu-img: the flags on disk (an open read-write image shows in-use, as QEMU's).
    int n = 0;
    if (list_[i].entry.in_use()) f.push_back({k + "flags." + std::to_string(n++), std::string("in-use")});
    if (list_[i].entry.enabled()) f.push_back({k + "flags." + std::to_string(n++), std::string("auto")});
    if (n == 0) f.push_back({k + "flags.[]", std::string()});
    f.push_back({k + "name", list_[i].entry.name});
    f.push_back({k + "granularity", list_[i].entry.granularity()});
  }
}

std::vector<BitmapInfo> BitmapSet::list() const {
  std::vector<BitmapInfo> out;
  for (const auto& l : list_)
    out.push_back({l.entry.name, l.entry.granularity(), l.enabled, l.entry.in_use(), !l.bits});
  return out;
}

Result<std::pair<bool, uint64_t>> BitmapSet::extent(const std::string& name, uint64_t offset,
                                                    uint64_t max_len) const {
  const Loaded* l = find(name);
  if (!l) return not_found(name);
  if (!l->bits)
    return Error(Errc::corrupt, "Bitmap '" + name + "' is inconsistent and cannot be used").image(img_.path_);
  return l->bits->extent(offset, max_len);
}

Result<BitmapSet::Loaded*> BitmapSet::usable(const char* op, const std::string& name) {
  if (img_.flags_ & open_read_only)
    return Error(Errc::read_only, "the image is open read-only").image(img_.path_).op(op);
  Loaded* l = find(name);
  if (!l) return not_found(name);
  if (!l->bits)
    return Error(Errc::invalid_argument, "Bitmap '" + name +
                                             "' is inconsistent and cannot be used\n"
                                             "Try block-dirty-bitmap-remove to delete this bitmap from disk");
  return l;
}

Error BitmapSet::add(const std::string& name, uint64_t granularity, bool enabled) {
  if (img_.flags_ & open_read_only)
    return Error(Errc::read_only, "the image is open read-only").image(img_.path_).op("add bitmap");
  // qemu's order: the request's granularity, then the name, then the format's limits.
  if (granularity < 512 || (granularity & (granularity - 1)))
    return Error(Errc::invalid_argument, "Granularity must be power of 2 and at least 512");
  if (find(name)) return Error(Errc::exists, "Bitmap already exists: " + name);
  if (img_.hdr_.version < 3)
    return Error(Errc::not_supported, "Can't make bitmap '" + name + "' persistent in '" + img_.path_ +
                                          "': Cannot store dirty bitmaps in qcow2 v2 files");
  if (Error e = check_new_bitmap(name, granularity, img_.size_, img_.layout_.cluster_size())) return e;
  if (list_.size() + 1 > kMaxBitmapCount) return Error(Errc::too_large, "Too many persistent bitmaps");
  Loaded l;
  l.entry.name = name;
  l.entry.granularity_bits = static_cast<uint8_t>(__builtin_ctzll(granularity));
  l.entry.flags = kBmeFlagInUse;  // not on disk yet: a crash before close leaves nothing
  l.enabled = enabled;
  l.bits = std::make_unique<DirtyBitmap>(img_.size_, l.entry.granularity_bits);
  list_.push_back(std::move(l));
  changed_ = true;
  retrack();
  return {};
}

Error BitmapSet::remove(const std::string& name) {
  if (img_.flags_ & open_read_only)
    return Error(Errc::read_only, "the image is open read-only").image(img_.path_).op("remove bitmap");
  auto it = std::find_if(list_.begin(), list_.end(), [&](const Loaded& l) { return l.entry.name == name; });
  if (it == list_.end()) return not_found(name);
  const uint64_t cs = img_.layout_.cluster_size();
  if (it->entry.table_offset && !it->bits) {
    // An inconsistent bitmap's table was never loaded; its clusters are freed all the same
    // (QEMU reads the table to free them; a table it cannot read fails the removal).
    auto table = read_bitmap_table(*img_.file_, it->entry, cs, img_.path_);
    if (!table) return table.error();
    it->table = std::move(*table);
  }
  if (it->entry.table_offset) {
    dropped_.emplace_back(it->entry.table_offset, round_up(uint64_t{it->entry.table_size} * 8, cs));
    for (uint64_t x : it->table)
      if (uint64_t off = x & kBmeEntryOffsetMask) dropped_.emplace_back(off, cs);
  }
  list_.erase(it);
  changed_ = true;
  retrack();
  return {};
}

Error BitmapSet::clear(const std::string& name) {
  auto l = usable("clear bitmap", name);
  if (!l) return l.error();
  (*l)->bits->clear_all();
  changed_ = true;
  return {};
}

Error BitmapSet::set_enabled(const std::string& name, bool enabled) {
  auto l = usable(enabled ? "enable bitmap" : "disable bitmap", name);
  if (!l) return l.error();
  (*l)->enabled = enabled;
  changed_ = true;
  retrack();
  return {};
}

Error BitmapSet::set_dirty(const std::string& name, uint64_t offset, uint64_t length) {
  auto l = usable("merge bitmap", name);
  if (!l) return l.error();
  (*l)->bits->set(offset, length);
  changed_ = true;
  return {};
}

}  // namespace vd::qcow
