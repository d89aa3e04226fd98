// QCOW on-disk format: constants and the parsed header, for QCOW v1 and QCOW2 v2/v3.
// Everything on disk is big-endian. Reference: QEMU docs/interop/qcow2.txt.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "backends/common/endian.h"

namespace vd::qcow {

constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"

// Header sizes.
constexpr uint32_t kV1HeaderSize = 48;
constexpr uint32_t kV2HeaderSize = 72;
constexpr uint32_t kV3HeaderMinSize = 104;  // 112 with compression_type and padding

// Limits (QEMU's, so every image it accepts we accept, and nothing more).
constexpr uint32_t kMinClusterBits = 9;
constexpr uint32_t kMaxClusterBits = 21;
constexpr uint32_t kV1MaxClusterBits = 16;
constexpr uint32_t kMaxBackingNameLength = 1023;
constexpr uint64_t kMaxL1Bytes = 32ull << 20;            // QCOW_MAX_L1_SIZE
constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;  // QCOW_MAX_REFTABLE_SIZE
constexpr uint32_t kMaxSnapshots = 65536;
constexpr uint64_t kMaxSnapshotTableBytes = 64ull << 20;
constexpr uint32_t kMaxSnapshotExtraData = 1024;
constexpr uint64_t kMaxVirtualSize = 1ull << 55;  // QCOW_MAX_... (qemu: 2^55 for v1 too?)
constexpr uint32_t kMaxCryptHeaderExt = 16u << 20;

// Table entry bits (QCOW2).
constexpr uint64_t kOflagCopied = 1ull << 63;
constexpr uint64_t kOflagCompressed = 1ull << 62;
constexpr uint64_t kOflagZero = 1ull << 0;
constexpr uint64_t kL1OffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kL2OffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kReftableOffsetMask = 0xfffffffffffffe00ull;
// QCOW v1: bit 63 marks a compressed cluster.
constexpr uint64_t kV1OflagCompressed = 1ull << 63;

// Incompatible features (v3).
constexpr uint64_t kIncompatDirty = 1ull << 0;
constexpr uint64_t kIncompatCorrupt = 1ull << 1;
constexpr uint64_t kIncompatDataFile = 1ull << 2;
constexpr uint64_t kIncompatCompression = 1ull << 3;
constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
constexpr uint64_t kIncompatKnown = 0x1f;
// Compatible features.
constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
// Autoclear features.
constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;

// Encryption methods.
constexpr uint32_t kCryptNone = 0;
constexpr uint32_t kCryptAes = 1;   // legacy AES-128-CBC, plain64 IV
constexpr uint32_t kCryptLuks = 2;  // QCOW2 only

// Compression types (header byte 104).
constexpr uint8_t kCompressionZlib = 0;
constexpr uint8_t kCompressionZstd = 1;

// Header extension types.
constexpr uint32_t kExtEnd = 0x00000000;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;
constexpr uint32_t kExtFeatureNames = 0x6803f857;
constexpr uint32_t kExtBitmaps = 0x23852875;
constexpr uint32_t kExtCryptoHeader = 0x0537be77;
constexpr uint32_t kExtDataFile = 0x44415441;

struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;
};

// An extension we do not interpret, kept so a header rewrite preserves it.
struct RawExtension {
  uint32_t type = 0;
  std::vector<std::byte> data;
};

struct Header {
  uint32_t version = 0;  // 1, 2 or 3
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t mtime = 0;  // v1 only
  uint64_t size = 0;   // virtual size
  uint32_t cluster_bits = 0;
  uint32_t l2_bits = 0;  // entries per L2 table = 1 << l2_bits (v1: stored; v2/3: derived)
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;  // entries
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  // v3 (zero for v2)
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;  // v2 is always 4 (16-bit refcounts)
  uint32_t header_length = 0;   // bytes of the fixed header (72 for v2)
  uint8_t compression_type = kCompressionZlib;

  // From the backing-file name and the header extensions.
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  std::optional<std::string> data_file;  // external data file name
  std::vector<FeatureName> feature_names;
  uint64_t crypto_header_offset = 0;  // LUKS header location (crypt_method 2)
  uint64_t crypto_header_length = 0;
  bool has_bitmaps_extension = false;
  std::vector<RawExtension> unknown_extensions;
  // v3: bytes of the fixed header past the 112 that QEMU knows (header_length > 112),
  // kept so a header rewrite preserves them as QEMU does.
  std::vector<std::byte> unknown_header_fields;

  // Derived.
  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
  // Bytes per L2 entry: 8, or 16 with extended L2 (subclusters).
  uint32_t l2_entry_size() const { return extended_l2() ? 16 : 8; }
};

// A snapshot table entry (QCOW2).
struct Snapshot {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id;
  std::string name;
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t vm_state_size = 0;
  std::optional<uint64_t> disk_size;  // extra data: virtual disk size at snapshot time
  std::optional<uint64_t> icount;     // extra data: instruction count
  std::vector<std::byte> extra_data;  // as on disk, for rewriting
};

}  // namespace vd::qcow
