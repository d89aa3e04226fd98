// QCOW2 persistent dirty bitmaps on disk (docs/interop/qcow2.txt, "Bitmaps extension"):
//
//   header extension 0x23852875 (only trusted while autoclear bit 0 is set)
//     nb_bitmaps u32, reserved u32 (0), bitmap_directory_size u64, bitmap_directory_offset u64
//   bitmap directory: nb_bitmaps entries, each 8-byte aligned:
//     bitmap_table_offset u64, bitmap_table_size u32 (entries), flags u32 (bit 0 in_use,
//     bit 1 auto), type u8 (1: dirty tracking), granularity_bits u8, name_size u16,
//     extra_data_size u32, extra data, name (no terminator), padding to 8
//   bitmap table: one u64 per cluster of bitmap data: 0 all zeros, 1 all ones, else the
//     cluster-aligned offset of the data cluster (bits 1..8 and 56..63 reserved)
//   bitmap data: bit k (byte k / 8, bit k % 8) covers guest bytes [k, k+1) * granularity
//
// Validation follows QEMU 7.2 (block/qcow2-bitmap.c) check by check, so every directory it
// refuses we refuse, with its wording: a hostile directory fails the open, as in QEMU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

constexpr uint32_t kBmeFlagInUse = 1u << 0;
constexpr uint32_t kBmeFlagAuto = 1u << 1;
constexpr uint32_t kBmeReservedFlags = 0xfffffffcu;  // QEMU 7.2: bit 2 (extra_data_compatible) too
constexpr uint64_t kBmeEntryReserved = 0xff000000000001feull;
constexpr uint64_t kBmeEntryOffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kBmeEntryAllOnes = 1;
constexpr uint32_t kBmeMaxTableSize = 0x8000000;   // entries
constexpr uint64_t kBmeMaxPhysSize = 0x20000000;    // bytes of bitmap data
constexpr uint32_t kBmeMinGranularityBits = 9;
constexpr uint32_t kBmeMaxGranularityBits = 31;
constexpr uint32_t kBmeMaxNameSize = 1023;
constexpr uint8_t kBmeTypeDirtyTracking = 1;
constexpr uint32_t kBmeEntryHeader = 24;
constexpr uint32_t kMaxBitmapCount = 65535;
constexpr uint64_t kMaxBitmapDirBytes = 64ull << 20;

// The extension's fields.
struct BitmapsExt {
  uint32_t nb_bitmaps = 0;
  uint64_t dir_size = 0;
  uint64_t dir_offset = 0;
};

// The extension kept in the header (extensions.cpp keeps it raw, and only while the
// autoclear bit says the bitmaps are valid).
std::optional<BitmapsExt> find_bitmaps_ext(const Header& h);
// Sets (or with nullopt removes) the extension and the autoclear bit with it.
void set_bitmaps_ext(Header& h, const std::optional<BitmapsExt>& ext);

struct BitmapEntry {
  uint64_t table_offset = 0;
  uint32_t table_size = 0;
  uint32_t flags = 0;
  uint8_t granularity_bits = 16;
  std::string name;
  bool in_use() const { return flags & kBmeFlagInUse; }
  bool enabled() const { return flags & kBmeFlagAuto; }
  uint64_t granularity() const { return uint64_t{1} << granularity_bits; }
};

// Clusters of bitmap data (= table entries) a bitmap of `disk_size` bytes needs.
uint64_t bitmap_table_entries(uint64_t disk_size, uint32_t granularity_bits, uint64_t cluster_size);

// Parses and validates a directory read from the image. `disk_size` is the virtual size.
Result<std::vector<BitmapEntry>> parse_bitmap_directory(std::span<const std::byte> dir,
                                                        uint32_t nb_bitmaps, uint64_t cluster_size,
                                                        uint64_t disk_size, const std::string& path);
Result<std::vector<BitmapEntry>> read_bitmap_directory(File& f, const BitmapsExt& ext,
                                                       uint64_t cluster_size, uint64_t disk_size,
                                                       const std::string& path);
// The entry's checks as QEMU's check_dir_entry (also run before a directory is written).
bool bitmap_entry_valid(const BitmapEntry& e, uint64_t cluster_size, uint64_t disk_size);
uint64_t bitmap_directory_bytes(const std::vector<BitmapEntry>& list);
std::vector<std::byte> encode_bitmap_directory(const std::vector<BitmapEntry>& list);

// A table entry's reserved bits and alignment (QEMU's check_table_entry).
bool bitmap_table_entry_valid(uint64_t entry, uint64_t cluster_size);
// Reads the bitmap's table and checks every entry.
Result<std::vector<uint64_t>> read_bitmap_table(File& f, const BitmapEntry& e, uint64_t cluster_size,
                                                const std::string& path);

// qemu's constraints on a new bitmap (check_constraints_on_bitmap); the message is qemu-img's.
Error check_new_bitmap(const std::string& name, uint64_t granularity, uint64_t disk_size,
                       uint64_t cluster_size);

}  // namespace vd::qcow
