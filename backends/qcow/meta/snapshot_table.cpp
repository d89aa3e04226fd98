// Reading and writing the QCOW2 snapshot table. The table has no length field: its size
// is only known after parsing every entry, so reading is sequential, through a small
// window over the file, and stops as soon as the table passes QEMU's 64 MiB limit. No
// allocation is sized from a field before the field is checked.
#include "backends/qcow/meta/snapshot_table.h"

#include <algorithm>
#include <functional>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/header_detail.h"

namespace vd::qcow {
namespace {

using namespace detail;

// Reads `out.size()` bytes at `rel` bytes into the table.
using Fetch = std::function<Error(uint64_t rel, std::span<std::byte> out)>;

// Sequential reads of the table through a window, so a table of many small entries
// costs a few large reads.
class WindowReader {
 public:
  WindowReader(File& f, uint64_t base) : f_(f), base_(base) {}

  Error fetch(uint64_t rel, std::span<std::byte> out) {
    if (rel < start_ || rel + out.size() > start_ + buf_.size()) {
      buf_.assign(std::max<size_t>(kWindow, out.size()), std::byte{0});
      start_ = rel;
      if (Error e = f_.read(IoKind::meta, base_ + rel, buf_))
        return e.wrap("reading", "snapshot table", base_ + rel);
    }
    std::copy_n(buf_.begin() + (rel - start_), out.size(), out.begin());
    return {};
  }

 private:
  static constexpr size_t kWindow = 256 * 1024;
  File& f_;
  uint64_t base_;
  uint64_t start_ = 0;
  std::vector<std::byte> buf_;
};

void parse_known_extra(Snapshot& s) {
  const auto& x = s.extra_data;
  if (x.size() >= 8) s.vm_state_size = load_be64(x.data());
  if (x.size() >= 16) s.disk_size = load_be64(x.data() + 8);
  if (x.size() >= 24) s.icount = load_be64(x.data() + 16);
}

Result<std::string> fetch_string(const Fetch& fetch, uint64_t& rel, uint16_t len) {
  std::vector<std::byte> b(len);  // at most 64 KiB: the field is 16 bits
  if (Error e = fetch(rel, b)) return e;
  rel += len;
  return c_string(b.data(), b.size());
}

// One entry starting at `rel` (already 8-byte aligned); advances `rel` past it.
Result<Snapshot> parse_entry(const Fetch& fetch, uint64_t& rel, size_t index, uint64_t base,
                             const std::string& path) {
  std::byte e[kSnapshotEntryHeaderSize];
  if (Error err = fetch(rel, e)) return err;
  uint64_t entry_at = base + rel;
  rel += sizeof e;
  Snapshot s;
  s.l1_table_offset = load_be64(e);
  s.l1_size = load_be32(e + 8);
  uint16_t id_size = load_be16(e + 12), name_size = load_be16(e + 14);
  s.date_sec = load_be32(e + 16);
  s.date_nsec = load_be32(e + 20);
  s.vm_clock_nsec = load_be64(e + 24);
  s.vm_state_size = load_be32(e + 32);
  uint32_t extra_size = load_be32(e + 36);
  if (extra_size > kMaxSnapshotExtraData)
    return header_error(Errc::too_large, path,
                        "Too much extra metadata in snapshot table entry " + std::to_string(index) +
                            " (" + std::to_string(extra_size) + " bytes at " + hex(entry_at) +
                            ", at most 1024; qemu-img check -r all removes it)");
  s.extra_data.resize(extra_size);
  if (Error err = fetch(rel, s.extra_data)) return err;
  rel += extra_size;
  parse_known_extra(s);
  auto id = fetch_string(fetch, rel, id_size);
  if (!id) return id.error();
  auto name = fetch_string(fetch, rel, name_size);
  if (!name) return name.error();
  s.id = std::move(*id);
  s.name = std::move(*name);
  return s;
}

Result<std::vector<Snapshot>> parse_entries(const Fetch& fetch, uint32_t count, uint64_t base,
                                            const std::string& path) {
  if (count > kMaxSnapshots)
    return header_error(Errc::too_large, path,
                        "Snapshot table too large (" + std::to_string(count) + " entries)");
  std::vector<Snapshot> out;
  out.reserve(count);
  uint64_t rel = 0;
  for (uint32_t i = 0; i < count; ++i) {
    rel = round_up8(rel);
    auto s = parse_entry(fetch, rel, i, base, path);
    if (!s) return s.error();
    out.push_back(std::move(*s));
    if (rel > kMaxSnapshotTableBytes)
      return header_error(Errc::too_large, path,
                          "Snapshot table is too big (passes 64 MiB at entry " + std::to_string(i) +
                              " of " + std::to_string(count) + ", table at " + hex(base) +
                              "; qemu-img check -r all removes the overhanging snapshots)");
  }
  return out;
}

uint64_t entry_size(const Snapshot& s) {
  uint64_t extra = std::max<uint64_t>(kSnapshotKnownExtraSize, s.extra_data.size());
  return kSnapshotEntryHeaderSize + extra + s.id.size() + s.name.size();
}

void put_entry(const Snapshot& s, const Header& h, std::byte* p) {
  uint32_t extra = static_cast<uint32_t>(std::max<size_t>(kSnapshotKnownExtraSize, s.extra_data.size()));
  store_be64(p, s.l1_table_offset);
  store_be32(p + 8, s.l1_size);
  store_be16(p + 12, static_cast<uint16_t>(s.id.size()));
  store_be16(p + 14, static_cast<uint16_t>(s.name.size()));
  store_be32(p + 16, s.date_sec);
  store_be32(p + 20, s.date_nsec);
  store_be64(p + 24, s.vm_clock_nsec);
  store_be32(p + 32, static_cast<uint32_t>(s.vm_state_size));  // QEMU truncates too
  store_be32(p + 36, extra);
  std::byte* x = p + kSnapshotEntryHeaderSize;
  store_be64(x, s.vm_state_size);
  store_be64(x + 8, s.disk_size.value_or(h.size));
  store_be64(x + 16, s.icount.value_or(~uint64_t{0}));
  if (s.extra_data.size() > kSnapshotKnownExtraSize)
    std::copy(s.extra_data.begin() + kSnapshotKnownExtraSize, s.extra_data.end(), x + kSnapshotKnownExtraSize);
  std::byte* str = x + extra;
  std::copy_n(reinterpret_cast<const std::byte*>(s.id.data()), s.id.size(), str);
  std::copy_n(reinterpret_cast<const std::byte*>(s.name.data()), s.name.size(), str + s.id.size());
}

}  // namespace

Result<std::vector<Snapshot>> read_snapshot_table(File& f, const Header& h, const std::string& path) {
  if (h.version < 2 || h.nb_snapshots == 0) return std::vector<Snapshot>{};
  WindowReader reader(f, h.snapshots_offset);
  Fetch fetch = [&reader](uint64_t rel, std::span<std::byte> out) { return reader.fetch(rel, out); };
  return parse_entries(fetch, h.nb_snapshots, h.snapshots_offset, path);
}

Result<std::vector<Snapshot>> parse_snapshot_table(std::span<const std::byte> table, uint32_t count,
                                                   const std::string& path) {
  Fetch fetch = [table](uint64_t rel, std::span<std::byte> out) {
    std::fill(out.begin(), out.end(), std::byte{0});
    if (rel < table.size()) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), table.size() - rel));
      std::copy_n(table.begin() + rel, n, out.begin());
    }
    return Error{};
  };
  return parse_entries(fetch, count, 0, path);
}

uint64_t snapshot_table_size(const std::vector<Snapshot>& snapshots) {
  uint64_t size = 0;
  for (const Snapshot& s : snapshots) size = round_up8(size) + entry_size(s);
  return size;
}

Result<std::vector<std::byte>> encode_snapshot_table(const std::vector<Snapshot>& snapshots,
                                                     const Header& h) {
  if (snapshots.size() > kMaxSnapshots)
    return Error(Errc::too_large, "Snapshot table too large (" + std::to_string(snapshots.size()) + " entries)");
  for (const Snapshot& s : snapshots) {
    if (s.id.size() > UINT16_MAX || s.name.size() > UINT16_MAX)
      return Error(Errc::invalid_argument, "snapshot id or name '" + s.name.substr(0, 64) + "' longer than 65535 bytes");
    if (s.extra_data.size() > kMaxSnapshotExtraData)
      return Error(Errc::too_large, "snapshot '" + s.name + "' has more than 1024 bytes of extra data");
  }
  uint64_t total = snapshot_table_size(snapshots);
  if (total > kMaxSnapshotTableBytes)
    return Error(Errc::too_large, "Snapshot table is too big (" + std::to_string(total) + " bytes, at most 64 MiB)");
  std::vector<std::byte> out(total);
  uint64_t off = 0;
  for (const Snapshot& s : snapshots) {
    off = round_up8(off);
    put_entry(s, h, out.data() + off);
    off += entry_size(s);
  }
  return out;
}

Error validate_snapshot(const Snapshot& s, const Header& h, size_t index, uint64_t file_size,
                        const std::string& path) {
  std::string which = " (snapshot table entry " + std::to_string(index) + ", id '" + s.id + "')";
  if (Error e = validate_table(h, s.l1_table_offset, s.l1_size, 8, kMaxL1Bytes, "Snapshot L1 table", path))
    return Error(e.code(), e.detail() + which).image(e.path());
  uint64_t bytes = uint64_t{s.l1_size} * 8;
  if (file_size && bytes && (s.l1_table_offset > file_size || bytes > file_size - s.l1_table_offset))
    return header_error(Errc::corrupt, path,
                        "Snapshot L1 table offset invalid (" + hex(bytes) + " bytes at " +
                            hex(s.l1_table_offset) + " extend beyond the end of the file at " +
                            hex(file_size) + ")" + which);
  return {};
}

bool snapshot_entry_incomplete(const Snapshot& s, uint32_t version) {
  return version >= 3 && s.extra_data.size() < kSnapshotV3MinExtraSize;
}

}  // namespace vd::qcow
