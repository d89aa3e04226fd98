// Counting the references every structure makes (QEMU's calculate_refcounts). Each counted
// range must end less than one cluster past the end of the file (the last cluster may be
// partly written); a range beyond that is a corruption and is not counted, so the array
// never grows past the file size plus one cluster, whatever an entry says.
#include <algorithm>

#include "backends/qcow/check/check.h"
#include "backends/qcow/meta/snapshot_table.h"

namespace vd::qcow {
namespace {

constexpr uint64_t kL1Reserved = 0x7f000000000001ffull;
constexpr uint64_t kL2StdReserved = 0x3f000000000001feull;
constexpr uint64_t kReftableReserved = 0x1ffull;
constexpr uint64_t kBitmapEntryReserved = 0xff000000000001feull;
constexpr uint64_t kBitmapAllocMask = 0xffffffffull;
constexpr uint32_t kBitmapDirEntryHeader = 24;

uint64_t align8(uint64_t v) { return (v + 7) & ~uint64_t{7}; }

}  // namespace

// Entries start on 8-byte boundaries; the last one is not padded.
uint64_t stored_snapshot_table_size(const std::vector<Snapshot>& snaps) {
  uint64_t end = 0;
  for (const auto& s : snaps)
    end = align8(end) + kSnapshotEntryHeaderSize + s.extra_data.size() + s.id.size() + s.name.size();
  return end;
}

// The table entries of [offset, offset + entries * 8); what lies beyond the end of the file
// reads as zeros without being allocated (the size is bounded by the file, not the entry).
Result<std::vector<uint64_t>> Checker::read_table(uint64_t offset, uint64_t entries, const char* what) {
  uint64_t in_file = 0;
  if (offset < file_end_) in_file = std::min(entries, (file_end_ - offset) / 8);
  std::vector<std::byte> raw(in_file * 8);
  if (in_file)
    if (Error e = file_.read(IoKind::meta, offset, raw))
      return e.wrap("reading", what, offset).image(path_);
  std::vector<uint64_t> out(in_file);
  for (uint64_t i = 0; i < in_file; ++i) out[i] = load_be64(raw.data() + i * 8);
  return out;
}

void Checker::inc(CheckReport& r, RefArray& refs, uint64_t offset, uint64_t size) {
  if (size == 0) return;
  uint64_t end = 0;
  if (__builtin_add_overflow(offset, size, &end) || end >= file_end_ + cs_) {
    note("ERROR: counting reference for region exceeding the end of the file by one cluster "
         "or more: offset " + hex(offset) + " size " + hex(size));
    ++r.corruptions;
    return;
  }
  const uint64_t last = (end - 1) / cs_;
  if (last >= refs.counts.size()) refs.counts.resize(last + 1, 0);  // at most one cluster
  for (uint64_t c = offset / cs_; c <= last; ++c) {
    if (refs.counts[c] >= refcount_max_) {
      note("ERROR: overflow cluster offset=" + hex(c * cs_));
      note("Use qemu-img amend to increase the refcount entry width or qemu-img convert to "
           "create a clean copy if the image cannot be opened for writing");
      ++r.corruptions;
      continue;
    }
    ++refs.counts[c];
  }
}

Error Checker::count(CheckReport& r, RefArray& refs, bool frag_info, bool structures,
                     bool& rebuild) {
  refs.counts.assign((file_end_ + cs_ - 1) / cs_, 0);
  inc(r, refs, 0, cs_);  // the header
  if (Error e = count_l1(r, refs, hdr_.l1_table_offset, hdr_.l1_size, frag_info)) return e;
  if (data_file_ && !snaps_.empty()) {
    note("ERROR " + std::to_string(snaps_.size()) + " snapshots in image with data file");
    ++r.corruptions;
  }
  for (const auto& s : snaps_) {
    const std::string who = "ERROR snapshot " + s.id + " (" + s.name + ") ";
    if (s.l1_table_offset & (cs_ - 1)) {
      note(who + "l1_offset=" + hex(s.l1_table_offset) +
           ": L1 table is not cluster aligned; snapshot table entry corrupted");
      ++r.corruptions;
      continue;
    }
    if (uint64_t{s.l1_size} * 8 > kMaxL1Bytes) {
      note(who + "l1_size=" + hex(s.l1_size) + ": L1 table is too large; snapshot table entry corrupted");
      ++r.corruptions;
      continue;
    }
    if (Error e = count_l1(r, refs, s.l1_table_offset, s.l1_size, false)) return e;
  }
  inc(r, refs, hdr_.snapshots_offset, stored_snapshot_table_size(snaps_));
  if (structures) inc(r, refs, hdr_.refcount_table_offset, uint64_t{hdr_.refcount_table_clusters} * cs_);
  if (hdr_.crypto_header_length) inc(r, refs, hdr_.crypto_header_offset, hdr_.crypto_header_length);
  if (Error e = count_bitmaps(r, refs)) return e;
  if (structures) count_refblocks(r, refs, rebuild);
  return {};
}

// One L1 table: itself, each L2 table once per entry, and what the L2 tables reference.
// Only the active table (`active`) feeds the allocation and fragmentation figures.
Error Checker::count_l1(CheckReport& r, RefArray& refs, uint64_t l1_offset, uint64_t l1_size,
                        bool active) {
  if (l1_size == 0) return {};
  inc(r, refs, l1_offset, l1_size * 8);
  auto l1 = read_table(l1_offset, l1_size, "L1 table");
  if (!l1) {
    note("ERROR: I/O error in check_refcounts_l1");
    ++r.check_errors;
    return l1.error();
  }
  for (uint64_t entry : *l1) {
    if (!entry) continue;
    if (entry & kL1Reserved) {
      note("ERROR found L1 entry with reserved bits set: " + rawhex(entry));
      ++r.corruptions;
    }
    const uint64_t l2_offset = entry & kL1OffsetMask;
    inc(r, refs, l2_offset, cs_);
    if (l2_offset & (cs_ - 1)) {
      note("ERROR l2_offset=" + rawhex(l2_offset) + ": Table is not cluster aligned; L1 entry corrupted");
      ++r.corruptions;
    }
    if (Error e = count_l2(r, refs, l2_offset, active)) return e;
  }
  return {};
}

Error Checker::count_l2(CheckReport& r, RefArray& refs, uint64_t l2_offset, bool active) {
  const unsigned words = hdr_.extended_l2() ? 2 : 1;
  auto t = read_table(l2_offset, l2_entries_ * words, "L2 table");
  if (!t) {
    note("ERROR: I/O error in check_refcounts_l2");
    ++r.check_errors;
    return t.error();
  }
  uint64_t next_contiguous = 0;
  const uint64_t present = t->size() / words;  // entries past the end of the file read as 0
  for (uint64_t i = 0; i < present; ++i) {
    const uint64_t entry = (*t)[i * words];
    const uint64_t bitmap = words == 2 ? (*t)[i * 2 + 1] : 0;
    count_l2_entry(r, refs, entry, bitmap, i, active, next_contiguous);
  }
  return {};
}

// A compressed cluster references every host cluster its run touches, once per run.
void Checker::count_compressed(CheckReport& r, RefArray& refs, uint64_t entry, uint64_t bitmap,
                               uint64_t i, bool active) {
  const uint32_t shift = 62 - (hdr_.cluster_bits - 8);
  const uint64_t coffset = entry & ((1ull << shift) - 1);
  if (entry & kOflagCopied) {
    note("ERROR: coffset=" + hex(coffset) + ": copied flag must never be set for compressed clusters");
    ++r.corruptions;
  }
  if (data_file_) {
    note("ERROR compressed cluster " + std::to_string(i) + " with data file, entry=" + hex(entry));
    ++r.corruptions;
    return;
  }
  if (bitmap) {
    note("ERROR compressed cluster " + std::to_string(i) +
         " with non-zero subcluster allocation bitmap, entry=" + hex(entry));
    ++r.corruptions;
    return;
  }
  const uint64_t sectors = ((entry >> shift) & ((1ull << (hdr_.cluster_bits - 8)) - 1)) + 1;
  inc(r, refs, coffset, sectors * 512 - (coffset & 511));
  if (active) {
    ++r.allocated_clusters;
    ++r.compressed_clusters;
    ++r.fragmented_clusters;  // compressed clusters are fragmented by nature
  }
}

void Checker::count_l2_entry(CheckReport& r, RefArray& refs, uint64_t entry, uint64_t bitmap,
                             uint64_t i, bool active, uint64_t& next_contiguous) {
  if (entry & kOflagCompressed) return count_compressed(r, refs, entry, bitmap, i, active);
  const bool extended = hdr_.extended_l2();
  if (entry & kL2StdReserved) {
    note("ERROR found l2 entry with reserved bits set: " + rawhex(entry));
    ++r.corruptions;
  }
  const uint64_t offset = entry & kL2OffsetMask;
  const bool zero_flag = !extended && (entry & kOflagZero);
  const bool has_host = offset || (data_file_ && (entry & kOflagCopied) && !zero_flag);
  if (!has_host) {
    if (!zero_flag && (bitmap & kBitmapAllocMask)) {
      note("ERROR: Unallocated cluster has non-zero subcluster allocation map");
      ++r.corruptions;
    }
    return;
  }
  if ((bitmap >> 32) & bitmap) {
    note("ERROR offset=" + rawhex(offset) + ": Allocated cluster has corrupted subcluster allocation bitmap");
    ++r.corruptions;
  }
  if (offset & (cs_ - 1)) {
    ++r.corruptions;
    const bool has_data = extended ? (bitmap & kBitmapAllocMask) != 0 : !zero_flag;
    note("ERROR offset=" + rawhex(offset) +
         (has_data ? ": Data cluster is not properly aligned; L2 entry corrupted."
                   : ": Preallocated cluster is not properly aligned; L2 entry corrupted."));
  }
  if (active) {
    ++r.allocated_clusters;
    if (next_contiguous && offset != next_contiguous) ++r.fragmented_clusters;
    next_contiguous = offset + cs_;
  }
  if (!data_file_) inc(r, refs, offset, cs_);
}

// Persistent bitmaps (only when the autoclear bit says they are up to date): the bitmap
// directory, each bitmap table and the clusters the tables point at.
Error Checker::count_bitmaps(CheckReport& r, RefArray& refs) {
  if (!(hdr_.autoclear_features & kAutoclearBitmaps)) return {};
  const RawExtension* ext = nullptr;
  for (const auto& x : hdr_.unknown_extensions)
    if (x.type == kExtBitmaps && x.data.size() >= 24) ext = &x;
  if (!ext || load_be32(ext->data.data()) == 0) return {};
  const uint64_t dir_size = load_be64(ext->data.data() + 8);
  const uint64_t dir_offset = load_be64(ext->data.data() + 16);
  inc(r, refs, dir_offset, dir_size);
  if (dir_offset >= file_end_ || dir_size > file_end_ - dir_offset) {
    note("ERROR: bitmap directory at " + hex(dir_offset) + " lies beyond the end of the file");
    ++r.corruptions;
    return {};
  }
  std::vector<std::byte> dir(dir_size);
  if (Error e = file_.read(IoKind::meta, dir_offset, dir))
    return e.wrap("reading", "bitmap directory", dir_offset).image(path_);
  for (uint64_t pos = 0; pos + kBitmapDirEntryHeader <= dir.size();) {
    const std::byte* p = dir.data() + pos;
    const uint64_t table_offset = load_be64(p);
    const uint32_t table_size = load_be32(p + 8);
    inc(r, refs, table_offset, uint64_t{table_size} * 8);
    auto table = read_table(table_offset, table_size, "bitmap table");
    if (!table) return table.error();
    for (uint64_t entry : *table) {
      const uint64_t off = entry & kL2OffsetMask;
      if ((entry & kBitmapEntryReserved) || (off && ((entry & 1) || (off & (cs_ - 1))))) {
        ++r.corruptions;
        continue;
      }
      if (off) inc(r, refs, off, cs_);
    }
    pos += align8(kBitmapDirEntryHeader + uint64_t{load_be32(p + 20)} + load_be16(p + 18));
  }
  return {};
}

// The refcount blocks: each must be aligned, inside the image, and referenced exactly once.
void Checker::count_refblocks(CheckReport& r, RefArray& refs, bool& rebuild) {
  const auto& table = disk_->table();
  for (uint64_t i = 0; i < table.size(); ++i) {
    const uint64_t offset = table[i] & kReftableOffsetMask;
    const uint64_t cluster = offset / cs_;
    if (table[i] & kReftableReserved) {
      note("ERROR refcount table entry " + std::to_string(i) + " has reserved bits set");
      ++r.corruptions;
      rebuild = true;
      continue;
    }
    if (offset & (cs_ - 1)) {
      note("ERROR refcount block " + std::to_string(i) +
           " is not cluster aligned; refcount table entry corrupted");
      ++r.corruptions;
      rebuild = true;
      continue;
    }
    if (cluster >= refs.counts.size()) {
      // QEMU grows the file up to the block; a rebuild gets there without trusting the offset.
      const bool fix = mode_ == RepairMode::all;
      note(std::string(fix ? "Repairing" : "ERROR") + " refcount block " + std::to_string(i) +
           " is outside image");
      ++r.corruptions;
      if (fix) rebuild = true;
      continue;
    }
    if (!offset) continue;
    inc(r, refs, offset, cs_);
    if (refs.get(cluster) != 1) {
      note("ERROR refcount block " + std::to_string(i) + " refcount=" + std::to_string(refs.get(cluster)));
      ++r.corruptions;
      rebuild = true;
    }
  }
}

}  // namespace vd::qcow
