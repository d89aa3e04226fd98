// The refcounts on disk, compared with the references counted (QEMU's compare_refcounts),
// and the OFLAG_COPIED flags of the active tables (check_oflag_copied).
#include "backends/qcow/check/check.h"

#include <algorithm>

#include "backends/qcow/image.h"

namespace vd::qcow {

std::string rawhex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t refcount_entry(std::span<const std::byte> b, uint32_t order, uint64_t i) {
  const uint32_t bits = 1u << order;
  if (bits < 8) {  // packed, least significant bits first
    const uint64_t bit = i * bits;
    return (std::to_integer<uint64_t>(b[bit / 8]) >> (bit % 8)) & ((1ull << bits) - 1);
  }
  const uint64_t n = bits / 8;
  uint64_t v = 0;
  for (uint64_t k = 0; k < n; ++k) v = (v << 8) | std::to_integer<uint64_t>(b[i * n + k]);
  return v;
}

void set_refcount_entry(std::span<std::byte> b, uint32_t order, uint64_t i, uint64_t v) {
  const uint32_t bits = 1u << order;
  if (bits < 8) {
    const uint64_t bit = i * bits;
    const uint64_t mask = ((1ull << bits) - 1) << (bit % 8);
    const auto byte = std::to_integer<uint64_t>(b[bit / 8]);
    b[bit / 8] = std::byte(static_cast<uint8_t>((byte & ~mask) | ((v << (bit % 8)) & mask)));
    return;
  }
  const uint64_t n = bits / 8;
  for (uint64_t k = n; k-- > 0; v >>= 8) b[i * n + k] = std::byte(v & 0xff);
}

// ---- DiskRefcounts -----------------------------------------------------------------------

DiskRefcounts::DiskRefcounts(File& file, std::string path, const Header& h, uint64_t file_end)
    : file_(file),
      path_(std::move(path)),
      cluster_bits_(h.cluster_bits),
      order_(h.refcount_order),
      table_offset_(h.refcount_table_offset),
      table_bytes_(std::min<uint64_t>(uint64_t{h.refcount_table_clusters} << h.cluster_bits,
                                      kMaxRefcountTableBytes)),
      file_end_(file_end),
      epb_((8ull << h.cluster_bits) >> h.refcount_order) {}

uint64_t DiskRefcounts::max_refcount() const {
  const uint32_t bits = 1u << order_;
  return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

// The table as QEMU loads it: the part past the end of the file reads as zeros.
Error DiskRefcounts::load() {
  table_.assign(table_bytes_ / 8, 0);
  if (table_offset_ >= file_end_) return {};
  const uint64_t in_file = std::min(table_bytes_, (file_end_ - table_offset_)) / 8;
  std::vector<std::byte> raw(in_file * 8);
  if (Error e = file_.read(IoKind::meta, table_offset_, raw))
    return e.wrap("reading", "refcount table", table_offset_).image(path_);
  for (uint64_t i = 0; i < in_file; ++i) table_[i] = load_be64(raw.data() + i * 8);
  return {};
}

// The block at table index `index`, or nullptr when it lies past the end of the file (it
// reads as zeros). Clean blocks are dropped when many are cached: the scan is sequential.
Result<std::vector<std::byte>*> DiskRefcounts::block(uint64_t index) {
  if (auto it = blocks_.find(index); it != blocks_.end()) return &it->second;
  const uint64_t off = table_[index] & kReftableOffsetMask;
  if (off >= file_end_) return static_cast<std::vector<std::byte>*>(nullptr);
  if (blocks_.size() >= 64) {
    for (auto it = blocks_.begin(); it != blocks_.end();) it = dirty_.count(it->first) ? std::next(it) : blocks_.erase(it);
  }
  std::vector<std::byte> b(uint64_t{1} << cluster_bits_);
  if (Error e = file_.read(IoKind::meta, off, b))
    return e.wrap("reading", "refcount block", off).image(path_);
  return &blocks_.emplace(index, std::move(b)).first->second;
}

Result<uint64_t> DiskRefcounts::get(uint64_t cluster) {
  const uint64_t index = cluster / epb_;
  if (index >= table_.size()) return uint64_t{0};
  const uint64_t off = table_[index] & kReftableOffsetMask;
  if (!off) return uint64_t{0};
  if (off & ((uint64_t{1} << cluster_bits_) - 1))
    return Error(Errc::corrupt, "Refblock offset " + hex(off) + " unaligned (reftable index: " + hex(index) + ")")
        .image(path_)
        .structure("refcount block")
        .at(off);
  auto b = block(index);
  if (!b) return b.error();
  if (!*b) return uint64_t{0};
  return refcount_entry(**b, order_, cluster % epb_);
}

Error DiskRefcounts::set(uint64_t cluster, uint64_t value) {
  const uint64_t index = cluster / epb_;
  auto b = index < table_.size() ? block(index) : Result<std::vector<std::byte>*>(nullptr);
  if (!b) return b.error();
  if (!*b)
    return Error(Errc::corrupt, "no refcount block for cluster " + hex(cluster << cluster_bits_)).image(path_);
  set_refcount_entry(**b, order_, cluster % epb_, value);
  dirty_[index] = true;
  return {};
}

Error DiskRefcounts::write_dirty() {
  for (const auto& [index, unused] : dirty_) {
    const uint64_t off = table_[index] & kReftableOffsetMask;
    if (Error e = file_.write(IoKind::meta, off, blocks_.at(index)))
      return e.wrap("writing", "refcount block", off).image(path_);
  }
  dirty_.clear();
  return {};
}

// ---- compare_refcounts -------------------------------------------------------------------

// A cluster with references but refcount 0 cannot be fixed in place (its block may be
// missing): that asks for a rebuild. Otherwise a repair sets the refcount to the references.
Error Checker::compare(CheckReport& r, const RefArray& refs, RepairMode fix, bool& rebuild,
                       uint64_t& highest) {
  highest = 0;
  bool wrote = false;
  for (uint64_t i = 0; i < refs.counts.size(); ++i) {
    auto on_disk = disk_->get(i);
    if (!on_disk) {
      note("Can't get refcount for cluster " + std::to_string(i) + ": " + on_disk.error().message());
      ++r.check_errors;
      continue;
    }
    const uint64_t rc = *on_disk, ref = refs.counts[i];
    if (rc || ref) highest = i;
    if (rc == ref) continue;
    const bool leak = rc > ref;
    if (rc == 0) rebuild = true;
    const bool repair = rc != 0 && (leak ? fix != RepairMode::none : fix == RepairMode::all);
    note(std::string(repair ? "Repairing" : leak ? "Leaked" : "ERROR") + " cluster " +
         std::to_string(i) + " refcount=" + std::to_string(rc) + " reference=" + std::to_string(ref));
    if (repair && !disk_->set(i, ref)) {
      ++(leak ? r.leaks_fixed : r.corruptions_fixed);
      wrote = true;
      continue;
    }
    ++(leak ? r.leaks : r.corruptions);
  }
  if (!wrote) return {};
  changed_ = true;
  if (Error e = disk_->write_dirty()) return e;
  return file_.flush();
}

// ---- check_oflag_copied ------------------------------------------------------------------

Error Checker::check_copied(CheckReport& r, RepairMode fix) {
  // -r leaks repairs the flags only when the refcounts are now known to be right.
  const bool repair = fix == RepairMode::all ||
                      (fix == RepairMode::leaks && !r.check_errors && !r.corruptions && !r.leaks);
  auto l1 = read_table(hdr_.l1_table_offset, hdr_.l1_size, "active L1 table");
  if (!l1) return l1.error();
  for (uint64_t i = 0; i < l1->size(); ++i) {
    const uint64_t entry = (*l1)[i];
    const uint64_t l2_offset = entry & kL1OffsetMask;
    if (!l2_offset) continue;
    auto rc = disk_->get(l2_offset / cs_);
    if (!rc) continue;  // reported by the comparison already
    if ((*rc == 1) != ((entry & kOflagCopied) != 0))
      if (Error e = fix_l1_copied(r, i, entry, *rc, repair)) return e;
    if (Error e = check_l2_copied(r, l2_offset, repair)) return e;
  }
  return {};
}

Error Checker::fix_l1_copied(CheckReport& r, uint64_t index, uint64_t entry, uint64_t refcount,
                             bool repair) {
  ++r.corruptions;
  note(std::string(repair ? "Repairing" : "ERROR") + " OFLAG_COPIED L2 cluster: l1_index=" +
       std::to_string(index) + " l1_entry=" + rawhex(entry) + " refcount=" + std::to_string(refcount));
  if (!repair) return {};
  const uint64_t fixed = refcount == 1 ? entry | kOflagCopied : entry & ~kOflagCopied;
  std::byte raw[8];
  store_be64(raw, fixed);
  if (Error e = file_.write(IoKind::meta, hdr_.l1_table_offset + index * 8, raw)) {
    ++r.check_errors;
    return e.wrap("writing", "active L1 table").image(path_);
  }
  --r.corruptions;
  ++r.corruptions_fixed;
  changed_ = true;
  return {};
}

Error Checker::check_l2_copied(CheckReport& r, uint64_t l2_offset, bool repair) {
  const unsigned words = hdr_.extended_l2() ? 2 : 1;
  auto t = read_table(l2_offset, l2_entries_ * words, "L2 table");
  if (!t) {
    note("ERROR: Could not read L2 table: " + t.error().message());
    ++r.check_errors;
    return t.error();
  }
  // Never write a table that is not where a table can be (QEMU's overlap check).
  const bool writable = !(l2_offset & (cs_ - 1)) && l2_offset >= cs_;
  uint64_t dirty = 0;
  for (uint64_t j = 0; j < t->size(); j += words) {
    const uint64_t entry = (*t)[j];
    if (entry & kOflagCompressed) continue;
    const uint64_t data = entry & kL2OffsetMask;
    const bool zero_flag = !hdr_.extended_l2() && (entry & kOflagZero);
    if (!data && !(data_file_ && (entry & kOflagCopied) && !zero_flag)) continue;
    uint64_t refcount = 1;  // clusters of an external data file are never shared
    if (!data_file_) {
      auto rc = disk_->get(data / cs_);
      if (!rc) continue;
      refcount = *rc;
    }
    if ((refcount == 1) == ((entry & kOflagCopied) != 0)) continue;
    ++r.corruptions;
    note(std::string(repair && writable ? "Repairing" : "ERROR") + " OFLAG_COPIED data cluster: l2_entry=" +
         rawhex(entry) + " refcount=" + std::to_string(refcount));
    if (!repair || !writable) continue;
    (*t)[j] = refcount == 1 ? entry | kOflagCopied : entry & ~kOflagCopied;
    ++dirty;
  }
  if (!dirty) return {};
  std::vector<std::byte> raw(t->size() * 8);
  for (uint64_t k = 0; k < t->size(); ++k) store_be64(raw.data() + k * 8, (*t)[k]);
  if (Error e = file_.write(IoKind::meta, l2_offset, raw)) {
    ++r.check_errors;
    return e.wrap("writing", "L2 table", l2_offset).image(path_);
  }
  r.corruptions -= dirty;
  r.corruptions_fixed += dirty;
  changed_ = true;
  return {};
}

}  // namespace vd::qcow
