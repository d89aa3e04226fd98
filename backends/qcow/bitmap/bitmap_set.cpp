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
  disk_entries_ = *dir;
  disk_ext_ = ext;
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
Error BitmapSet::write_directory_in_place(const std::vector<std::byte>& bytes, uint64_t offset) {
  Header& h = img_.hdr_;
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

// The directory on disk with every entry in use (QEMU marks every bitmap it loaded, enabled
// or not). Nothing changes in memory until marked(): a marking that fails is tried again.
std::vector<std::byte> BitmapSet::in_use_directory(uint64_t& offset) const {
  // Where the directory is on disk, even while a failed marking left the autoclear bit
  // clear in memory.
  if (!disk_ext_ || disk_entries_.empty()) return {};
  offset = disk_ext_->dir_offset;
  auto entries = disk_entries_;
  for (auto& e : entries) e.flags |= kBmeFlagInUse;
  return encode_bitmap_directory(entries);
}

// The marking is on disk: the entries there are in use (and info shows it, as qemu-img).
void BitmapSet::marked() {
  for (auto& e : disk_entries_) e.flags |= kBmeFlagInUse;
  for (auto& l : list_)
    if (l.entry.table_offset) l.entry.flags |= kBmeFlagInUse;
  on_disk_clean_ = false;
  changed_ = true;  // in use on disk: a store must clear it
}

bool BitmapSet::all_in_use() const {
  for (const auto& e : disk_entries_)
    if (!e.in_use()) return false;
  return true;
}

// Synchronous marking (open; the API's operations, which run with no request in flight).
Error BitmapSet::mark_now() {
  if (all_in_use()) return {};
  uint64_t offset = 0;
  auto dir = in_use_directory(offset);
  if (dir.empty()) return {};
  if (Error e = write_directory_in_place(dir, offset)) return e.wrap("Can't update bitmap directory").image(img_.path_);
  marked();
  return {};
}

Error BitmapSet::mark_in_use() { return mark_now(); }

// ---- Storing (the first step of a flush) ---------------------------------------------

uint64_t BitmapSet::plan_store() {
  const uint64_t cs = img_.layout_.cluster_size();
  auto plan = std::make_unique<Plan>();
  plan->old = std::move(dropped_);
  dropped_.clear();
  for (auto& l : list_) {
    if (!l.bits) {  // inconsistent: its entry stays as it is, in use
      plan->entries.push_back(l.entry);
      plan->tables.push_back(l.table);
      continue;
    }
    BitmapEntry e = l.entry;
    const uint64_t n = bitmap_table_entries(img_.size_, e.granularity_bits, cs);
    Plan::Data d{plan->entries.size(), {}};
    for (uint64_t i = 0; i < n; ++i) {
      if (l.bits->cluster_empty(i, cs)) continue;  // all zeros: no cluster, as QEMU writes it
      std::vector<std::byte> buf(cs);
      l.bits->store_cluster(i, buf);
      d.clusters.emplace_back(i, std::move(buf));
    }
    plan->clusters += d.clusters.size() + round_up(n * 8, cs) / cs;
    if (e.table_offset) {
      plan->old.emplace_back(e.table_offset, round_up(uint64_t{e.table_size} * 8, cs));
      for (uint64_t x : l.table)
        if (uint64_t off = x & kBmeEntryOffsetMask) plan->old.emplace_back(off, cs);
    }
    e.table_size = static_cast<uint32_t>(n);
    e.flags = l.enabled ? kBmeFlagAuto : 0;
    plan->data.push_back(std::move(d));
    plan->entries.push_back(e);
    plan->tables.emplace_back(n, 0);
  }
  if (!plan->entries.empty()) plan->clusters += round_up(bitmap_directory_bytes(plan->entries), cs) / cs;
  if (disk_ext_) plan->old.emplace_back(disk_ext_->dir_offset, round_up(disk_ext_->dir_size, cs));
  changed_ = false;  // a write from now on marks the next flush
  plan_ = std::move(plan);
  return plan_->clusters;
}

std::vector<Refcounts::MetaWrite> BitmapSet::place_store(uint64_t at) {
  const uint64_t cs = img_.layout_.cluster_size();
  Plan& p = *plan_;
  p.encoded.reserve(p.data.size() + 1);  // the writes point into it
  std::vector<Refcounts::MetaWrite> writes;
  for (auto& d : p.data) {
    auto& table = p.tables[d.entry];
    for (auto& [index, buf] : d.clusters) {
      table[index] = at;
      writes.push_back({at, buf});
      at += cs;
    }
    BitmapEntry& e = p.entries[d.entry];
    e.table_offset = at;
    std::vector<std::byte> raw(round_up(table.size() * 8, cs), std::byte{0});
    for (uint64_t i = 0; i < table.size(); ++i) store_be64(raw.data() + i * 8, table[i]);
    at += raw.size();
    p.encoded.push_back(std::move(raw));
    writes.push_back({e.table_offset, p.encoded.back()});
  }
  if (!p.entries.empty()) {
    auto dir = encode_bitmap_directory(p.entries);
    p.ext = BitmapsExt{static_cast<uint32_t>(p.entries.size()), dir.size(), at};
    p.encoded.push_back(std::move(dir));
    writes.push_back({at, p.encoded.back()});
  }
  return writes;  // (p.encoded was reserved by count: no reallocation moved a buffer)
}

void BitmapSet::commit_store() {
  Plan& p = *plan_;
  set_bitmaps_ext(img_.hdr_, p.ext);
  disk_ext_ = p.ext;
  disk_entries_ = p.entries;
  img_.mark_header_dirty();
  img_.metadata_moved();
  size_t k = 0;
  for (auto& l : list_) {
    l.entry = p.entries[k];
    l.table = std::move(p.tables[k]);
    ++k;
  }
  for (auto [off, len] : p.old) img_.refs_->release_later(off, len);
  on_disk_clean_ = true;
  plan_.reset();
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
  if (Error e = mark_now()) return e;
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
  if (Error e = mark_now()) return e;
  (*l)->bits->clear_all();
  changed_ = true;
  return {};
}

Error BitmapSet::set_enabled(const std::string& name, bool enabled) {
  auto l = usable(enabled ? "enable bitmap" : "disable bitmap", name);
  if (!l) return l.error();
  if (Error e = mark_now()) return e;
  (*l)->enabled = enabled;
  changed_ = true;
  retrack();
  return {};
}

Error BitmapSet::set_dirty(const std::string& name, uint64_t offset, uint64_t length) {
  auto l = usable("merge bitmap", name);
  if (!l) return l.error();
  if (Error e = mark_now()) return e;
  (*l)->bits->set(offset, length);
  changed_ = true;
  return {};
}

}  // namespace vd::qcow
