// The bitmap directory and tables: parse, validate (QEMU's checks and wording), encode.
#include "backends/qcow/bitmap/bitmap_dir.h"

#include <algorithm>
#include <set>

#include "backends/common/endian.h"

namespace vd::qcow {

namespace {

constexpr uint32_t kExtBytes = 24;

Error dir_error(const std::string& path, const std::string& what, uint64_t at) {
  return Error(Errc::corrupt, what).image(path).structure("bitmap directory").at(at);
}

uint64_t entry_bytes(uint64_t name_size, uint64_t extra) {
  return (kBmeEntryHeader + name_size + extra + 7) & ~uint64_t{7};
}

}  // namespace

std::optional<BitmapsExt> find_bitmaps_ext(const Header& h) {
  if (!(h.autoclear_features & kAutoclearBitmaps)) return std::nullopt;
  for (const RawExtension& x : h.unknown_extensions)
    if (x.type == kExtBitmaps && x.data.size() == kExtBytes) {
      BitmapsExt e;
      e.nb_bitmaps = load_be32(x.data.data());
      e.dir_size = load_be64(x.data.data() + 8);
      e.dir_offset = load_be64(x.data.data() + 16);
      return e;
    }
  return std::nullopt;
}

void set_bitmaps_ext(Header& h, const std::optional<BitmapsExt>& ext) {
  auto& xs = h.unknown_extensions;
  xs.erase(std::remove_if(xs.begin(), xs.end(), [](const RawExtension& x) { return x.type == kExtBitmaps; }),
           xs.end());
  if (!ext) {
    h.autoclear_features &= ~kAutoclearBitmaps;
    h.has_bitmaps_extension = false;
    return;
  }
  RawExtension x;
  x.type = kExtBitmaps;
  x.data.resize(kExtBytes);
  store_be32(x.data.data(), ext->nb_bitmaps);
  store_be64(x.data.data() + 8, ext->dir_size);
  store_be64(x.data.data() + 16, ext->dir_offset);
  // QEMU writes the bitmaps extension before any other unknown one; order does not matter
  // to readers, but keeping it first keeps our headers byte-comparable with QEMU's.
  xs.insert(xs.begin(), std::move(x));
  h.autoclear_features |= kAutoclearBitmaps;
  h.has_bitmaps_extension = true;
}

uint64_t bitmap_table_entries(uint64_t disk_size, uint32_t granularity_bits, uint64_t cluster_size) {
  const uint64_t granules = (disk_size + (uint64_t{1} << granularity_bits) - 1) >> granularity_bits;
  const uint64_t bytes = (granules + 7) / 8;
  return (bytes + cluster_size - 1) / cluster_size;
}

bool bitmap_entry_valid(const BitmapEntry& e, uint64_t cluster_size, uint64_t disk_size) {
  if (e.table_size == 0 || e.table_offset == 0 || e.table_offset % cluster_size ||
      e.table_size > kBmeMaxTableSize || e.granularity_bits > kBmeMaxGranularityBits ||
      e.granularity_bits < kBmeMinGranularityBits || (e.flags & kBmeReservedFlags) ||
      e.name.size() > kBmeMaxNameSize)
    return false;
  const uint64_t phys = uint64_t{e.table_size} * cluster_size;
  if (phys > kBmeMaxPhysSize) return false;
  // A valid (not in-use) bitmap must cover the whole disk; an in-use one may be stale
  // (an image resized without updating it), as QEMU allows.
  if (!e.in_use() && disk_size > ((phys * 8) << e.granularity_bits)) return false;
  return true;
}

Result<std::vector<BitmapEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                        uint32_t nb_bitmaps, uint64_t cluster_size,
                                                        uint64_t disk_size, const std::string& path) {
  if (dir.empty()) return dir_error(path, "Requested bitmap directory size is zero", 0);
  if (dir.size() > kMaxBitmapDirBytes) return dir_error(path, "Requested bitmap directory size is too big", 0);
  std::vector<BitmapEntry> out;
  std::set<std::string> names;
  uint64_t pos = 0;
  while (pos < dir.size()) {
    if (dir.size() - pos < kBmeEntryHeader) return dir_error(path, "Broken bitmap directory", pos);
    if (out.size() + 1 > nb_bitmaps)
      return dir_error(path, "More bitmaps found than specified in header extension", pos);
    const std::byte* p = dir.data() + pos;
    BitmapEntry e;
    e.table_offset = load_be64(p);
    e.table_size = load_be32(p + 8);
    e.flags = load_be32(p + 12);
    const uint8_t type = std::to_integer<uint8_t>(p[16]);
    e.granularity_bits = std::to_integer<uint8_t>(p[17]);
    const uint16_t name_size = load_be16(p + 18);
    const uint32_t extra = load_be32(p + 20);
    const uint64_t size = entry_bytes(name_size, extra);
    if (size > dir.size() - pos) return dir_error(path, "Broken bitmap directory", pos);
    if (extra != 0) return dir_error(path, "Bitmap extra data is not supported", pos);
    e.name.assign(reinterpret_cast<const char*>(p + kBmeEntryHeader), name_size);
    if (type != kBmeTypeDirtyTracking || !bitmap_entry_valid(e, cluster_size, disk_size))
      return dir_error(path, "Bitmap '" + e.name + "' doesn't satisfy the constraints", pos);
    // QEMU creates an in-memory bitmap per entry: a second entry of the same name fails.
    if (!names.insert(e.name).second) return dir_error(path, "Bitmap already exists: " + e.name, pos);
    out.push_back(std::move(e));
    pos += size;
  }
  if (out.size() != nb_bitmaps)
    return dir_error(path, "Less bitmaps found than specified in header extension", pos);
  return out;
}

Result<std::vector<BitmapEntry>> read_bitmap_directory(File& f, const BitmapsExt& ext,
                                                       uint64_t cluster_size, uint64_t disk_size,
                                                       const std::string& path) {
  if (ext.dir_size == 0) return dir_error(path, "Requested bitmap directory size is zero", ext.dir_offset);
  if (ext.dir_size > kMaxBitmapDirBytes)
    return dir_error(path, "Requested bitmap directory size is too big", ext.dir_offset);
  std::vector<std::byte> dir(ext.dir_size);
  if (Error e = f.read(IoKind::meta, ext.dir_offset, dir))
    return e.wrap("Failed to read bitmap directory", "bitmap directory", ext.dir_offset).image(path);
  auto list = parse_bitmap_directory(dir, ext.nb_bitmaps, cluster_size, disk_size, path);
  if (!list) {
    Error e = list.error();
    return e.at(ext.dir_offset + e.offset().value_or(0));
  }
  return list;
}

uint64_t bitmap_directory_bytes(const std::vector<BitmapEntry>& list) {
  uint64_t n = 0;
  for (const auto& e : list) n += entry_bytes(e.name.size(), 0);
  return n;
}

std::vector<std::byte> encode_bitmap_directory(const std::vector<BitmapEntry>& list) {
  std::vector<std::byte> out(bitmap_directory_bytes(list));
  uint64_t pos = 0;
  for (const auto& e : list) {
    std::byte* p = out.data() + pos;
    store_be64(p, e.table_offset);
    store_be32(p + 8, e.table_size);
    store_be32(p + 12, e.flags);
    p[16] = std::byte{kBmeTypeDirtyTracking};
    p[17] = std::byte{e.granularity_bits};
    store_be16(p + 18, static_cast<uint16_t>(e.name.size()));
    store_be32(p + 20, 0);
    std::copy_n(reinterpret_cast<const std::byte*>(e.name.data()), e.name.size(), p + kBmeEntryHeader);
    pos += entry_bytes(e.name.size(), 0);
  }
  return out;
}

bool bitmap_table_entry_valid(uint64_t entry, uint64_t cluster_size) {
  if (entry & kBmeEntryReserved) return false;
  const uint64_t off = entry & kBmeEntryOffsetMask;
  return !off || (!(entry & kBmeEntryAllOnes) && off % cluster_size == 0);
}

Result<std::vector<uint64_t>> read_bitmap_table(File& f, const BitmapEntry& e, uint64_t cluster_size,
                                                const std::string& path) {
  std::vector<std::byte> raw(uint64_t{e.table_size} * 8);
  auto bad = [&](uint64_t at) {
    return Error(Errc::corrupt, "Could not read bitmap_table table from image for bitmap '" + e.name +
                                    "': Invalid argument")
        .image(path)
        .structure("bitmap table")
        .at(at);
  };
  if (Error err = f.read(IoKind::meta, e.table_offset, raw)) {
    // QEMU reads zeros past the end of the file; a table there is as unusable as a bad entry.
    return err.wrap("Could not read bitmap_table table from image for bitmap '" + e.name + "'",
                    "bitmap table", e.table_offset)
        .image(path);
  }
  std::vector<uint64_t> table(e.table_size);
  for (uint64_t i = 0; i < table.size(); ++i) {
    table[i] = load_be64(raw.data() + i * 8);
    if (!bitmap_table_entry_valid(table[i], cluster_size)) return bad(e.table_offset + i * 8);
  }
  return table;
}

Error check_new_bitmap(const std::string& name, uint64_t granularity, uint64_t disk_size,
                       uint64_t cluster_size) {
  // qemu checks the request first (block-dirty-bitmap-add), then the format's limits.
  if (granularity < 512 || (granularity & (granularity - 1)))
    return Error(Errc::invalid_argument, "Granularity must be power of 2 and at least 512");
  const uint32_t bits = static_cast<uint32_t>(__builtin_ctzll(granularity));
  if (bits > kBmeMaxGranularityBits)
    return Error(Errc::invalid_argument, "Granularity exceeds maximum (2147483648 bytes)");
  const uint64_t granules = (disk_size + granularity - 1) / granularity;
  const uint64_t bytes = (granules + 7) / 8;
  if (bytes > kBmeMaxPhysSize || bytes > uint64_t{kBmeMaxTableSize} * cluster_size)
    return Error(Errc::invalid_argument, "Too much space will be occupied by the bitmap. Use larger granularity");
  if (name.size() > kBmeMaxNameSize)
    return Error(Errc::invalid_argument, "Name length exceeds maximum (1023 characters)");
  return {};
}

}  // namespace vd::qcow
