// Header checks. Each one mirrors a check of QEMU 7.2's open and keeps its wording, then
// adds the field's value and offset. Kinds: not_supported for what a valid image may use
// but we (and QEMU) do not implement, too_large for QEMU's -EFBIG limits, corrupt for the rest.
#include <climits>
#include <cstdio>
#include <cstring>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/header_detail.h"

namespace vd::qcow {
namespace detail {

Error header_error(Errc e, const std::string& path, const std::string& what) {
  return Error(e, what).image(path);
}

std::string c_string(const std::byte* p, size_t len) {
  if (len == 0) return {};
  const void* nul = std::memchr(p, 0, len);
  size_t n = nul ? static_cast<size_t>(static_cast<const std::byte*>(nul) - p) : len;
  return std::string(reinterpret_cast<const char*>(p), n);
}

namespace {

std::string plain_hex(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

Error check_compression(const Header& h, const std::string& path) {
  if (h.compression_type != kCompressionZlib && h.compression_type != kCompressionZstd)
    return header_error(Errc::not_supported, path,
                        "qcow2: unknown compression type: " + std::to_string(h.compression_type) +
                            " (byte at " + hex(kOffCompressionType) + ")");
  bool bit = h.incompatible_features & kIncompatCompression;
  if (h.compression_type == kCompressionZlib && bit)
    return header_error(Errc::corrupt, path,
                        "qcow2: Compression type incompatible feature bit must not be set "
                        "(compression type is zlib)");
  if (h.compression_type != kCompressionZlib && !bit)
    return header_error(Errc::corrupt, path,
                        "qcow2: Compression type incompatible feature bit must be set "
                        "(compression type is zstd)");
  return {};
}

Error check_feature_bits(const Header& h, const std::string& path) {
  uint64_t unknown = h.incompatible_features & ~kIncompatKnown;
  if (unknown)
    return header_error(Errc::not_supported, path,
                        "Unsupported qcow2 feature(s): " + describe_incompatible(h, unknown));
  if (h.extended_l2() && (h.cluster_size() >> 5) < (1u << kMinClusterBits))
    return header_error(Errc::not_supported, path,
                        "Unsupported subcluster size: " + std::to_string(h.cluster_size() >> 5) +
                            " (extended L2 entries need clusters of at least 16 KiB)");
  return {};
}

// Bytes `bytes` at `offset` must end inside a file of `file_size` bytes.
Error check_inside_file(uint64_t offset, uint64_t bytes, uint64_t file_size, const std::string& name,
                        const std::string& path) {
  if (file_size == 0 || bytes == 0) return {};
  if (offset <= file_size && bytes <= file_size - offset) return {};
  return header_error(Errc::corrupt, path,
                      name + " offset invalid (" + hex(bytes) + " bytes at " + hex(offset) +
                          " extend beyond the end of the file at " + hex(file_size) + ")");
}

Error check_qcow2_layout_in_file(const Header& h, uint64_t file_size, const std::string& path,
                                 bool for_repair) {
  if (Error e = check_inside_file(h.l1_table_offset, uint64_t{h.l1_size} * 8, file_size,
                                  "Active L1 table", path))
    return e;
  // The first refcount cluster must exist; QEMU reads any rest of the table past the end
  // of the file as zeros, so that is tolerated.
  if (h.refcount_table_clusters)
    if (Error e = check_inside_file(h.refcount_table_offset, 1, file_size, "Reference count table", path))
      return e;
  if (!for_repair)
    if (Error e = check_inside_file(h.snapshots_offset, uint64_t{h.nb_snapshots} * 40, file_size,
                                    "Snapshot table", path))
      return e;
  if (h.crypto_header_offset)
    return check_inside_file(h.crypto_header_offset, h.crypto_header_length, file_size,
                             "Encryption header", path);
  return {};
}

Error validate_qcow2_layout(const Header& h, uint64_t file_size, const std::string& path,
                            bool for_repair) {
  if (h.refcount_table_clusters == 0 && !for_repair)
    return header_error(Errc::corrupt, path,
                        "Image does not contain a reference count table (refcount_table_clusters "
                        "at " + hex(kOffRefcountClusters) + " is 0)");
  if (Error e = validate_table(h, h.refcount_table_offset, h.refcount_table_clusters,
                               h.cluster_size(), kMaxRefcountTableBytes, "Reference count table", path))
    return e;
  if (!for_repair)
    if (Error e = validate_table(h, h.snapshots_offset, h.nb_snapshots, 40,
                                 40ull * kMaxSnapshots, "Snapshot table", path))
      return e;
  if (Error e = validate_table(h, h.l1_table_offset, h.l1_size, 8, kMaxL1Bytes, "Active L1 table", path))
    return e;
  uint64_t needed = l1_entries_for_size(h, h.size);
  if (h.l1_size < needed)
    return header_error(Errc::corrupt, path,
                        "L1 table is too small (" + std::to_string(h.l1_size) + " entries at " +
                            hex(h.l1_table_offset) + ", virtual size " + std::to_string(h.size) +
                            " needs " + std::to_string(needed) + ")");
  return check_qcow2_layout_in_file(h, file_size, path, for_repair);
}

Error validate_qcow1_layout(const Header& h, uint64_t file_size, const std::string& path) {
  uint64_t bytes = uint64_t{h.l1_size} * 8;
  if (h.l1_table_offset > uint64_t{INT64_MAX} - bytes)
    return header_error(Errc::corrupt, path,
                        "Active L1 table offset invalid (" + hex(h.l1_table_offset) + ")");
  return check_inside_file(h.l1_table_offset, bytes, file_size, "Active L1 table", path);
}

}  // namespace

Error check_header_length(const Header& h, const std::string& path) {
  if (h.version == 3 && h.header_length < kV3HeaderMinSize)
    return header_error(Errc::corrupt, path,
                        "qcow2 header too short (header_length " + std::to_string(h.header_length) +
                            " at " + hex(kOffHeaderLength) + ", minimum 104)");
  if (h.header_length > h.cluster_size())
    return header_error(Errc::corrupt, path,
                        "qcow2 header exceeds cluster size (header_length " + hex(h.header_length) +
                            " at " + hex(kOffHeaderLength) + ", cluster size " +
                            hex(h.cluster_size()) + ")");
  return {};
}

Error validate_qcow2_basics(const Header& h, const std::string& path) {
  if (h.version < 2 || h.version > 3)
    return header_error(Errc::not_supported, path,
                        "Unsupported qcow2 version " + std::to_string(h.version));
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits)
    return header_error(Errc::not_supported, path,
                        "Unsupported cluster size: 2^" + std::to_string(h.cluster_bits) +
                            " (cluster_bits at " + hex(kOffClusterBits) + "; 2^9 to 2^21 allowed)");
  return {};
}

Error validate_qcow2_fields(const Header& h, const std::string& path) {
  if (Error e = validate_qcow2_basics(h, path)) return e;
  if (Error e = check_header_length(h, path)) return e;
  if (Error e = check_feature_bits(h, path)) return e;
  if (h.refcount_order > 6)
    return header_error(Errc::corrupt, path,
                        "Reference count entry width too large; may not exceed 64 bits "
                        "(refcount_order " + std::to_string(h.refcount_order) + " at " +
                            hex(kOffRefcountOrder) + ")");
  if (h.crypt_method > kCryptLuks)
    return header_error(Errc::not_supported, path,
                        "Unsupported encryption method " + std::to_string(h.crypt_method) +
                            " (crypt_method at " + hex(kOffCryptMethod) + ")");
  if (Error e = check_compression(h, path)) return e;
  if (l1_entries_for_size(h, h.size) > INT_MAX)
    return header_error(Errc::too_large, path,
                        "Image is too big (virtual size " + std::to_string(h.size) + " at " +
                            hex(kOffSize) + ")");
  return {};
}

Error validate_qcow2_extensions(const Header& h, const std::string& path) {
  bool data_file = h.incompatible_features & kIncompatDataFile;
  if (data_file && !h.data_file)
    return header_error(Errc::not_supported, path,
                        "'data-file' is required for this image (external data file bit set, "
                        "no data file header extension)");
  if (!data_file && (h.autoclear_features & kAutoclearDataFileRaw))
    return header_error(Errc::corrupt, path, "data-file-raw requires a data file");
  if (h.crypt_method == kCryptLuks && h.crypto_header_offset == 0)
    return header_error(Errc::corrupt, path, "Missing CRYPTO header for crypt method 2");
  return {};
}

Error validate_qcow1_fields(const Header& h, const std::string& path) {
  if (h.version != 1)
    return header_error(Errc::not_supported, path,
                        "Unsupported qcow version " + std::to_string(h.version));
  if (h.size <= 1)
    return header_error(Errc::corrupt, path, "Image size is too small (must be at least 2 bytes)");
  if (h.cluster_bits < 9 || h.cluster_bits > kV1MaxClusterBits)
    return header_error(Errc::not_supported, path,
                        "Cluster size must be between 512 and 64k (cluster_bits " +
                            std::to_string(h.cluster_bits) + " at " + hex(kV1OffClusterBits) + ")");
  if (h.l2_bits < 9 - 3 || h.l2_bits > 16 - 3)
    return header_error(Errc::not_supported, path,
                        "L2 table size must be between 512 and 64k (l2_bits " +
                            std::to_string(h.l2_bits) + " at " + hex(kV1OffL2Bits) + ")");
  if (h.crypt_method > kCryptAes)
    return header_error(Errc::not_supported, path,
                        "invalid encryption method in qcow header: Unsupported encryption method " +
                            std::to_string(h.crypt_method));
  uint64_t span = 1ull << (h.cluster_bits + h.l2_bits);
  if (h.size > UINT64_MAX - span || l1_entries_for_size(h, h.size) > INT_MAX / 8)
    return header_error(Errc::too_large, path,
                        "Image too large (virtual size " + std::to_string(h.size) + " at " +
                            hex(kV1OffSize) + ")");
  return {};
}

}  // namespace detail

using namespace detail;

uint64_t l1_entries_for_size(const Header& h, uint64_t virtual_size) {
  uint32_t l2_bits = h.version == 1 ? h.l2_bits : h.cluster_bits - (h.extended_l2() ? 4 : 3);
  uint32_t shift = h.cluster_bits + l2_bits;
  if (shift >= 64) return virtual_size ? 1 : 0;
  uint64_t mask = (1ull << shift) - 1;
  return (virtual_size >> shift) + ((virtual_size & mask) ? 1 : 0);
}

Error validate_fields(const Header& h, const std::string& path) {
  if (h.version == 1) return validate_qcow1_fields(h, path);
  if (Error e = validate_qcow2_fields(h, path)) return e;
  return validate_qcow2_extensions(h, path);
}

Error validate_table(const Header& h, uint64_t offset, uint64_t entries, uint64_t entry_len,
                     uint64_t max_bytes, const std::string& name, const std::string& path) {
  if (entries > max_bytes / entry_len)
    return header_error(Errc::too_large, path,
                        name + " too large (" + std::to_string(entries) + " entries of " +
                            std::to_string(entry_len) + " bytes at " + hex(offset) + ", at most " +
                            hex(max_bytes) + " bytes)");
  uint64_t bytes = entries * entry_len;
  if (uint64_t{INT64_MAX} - bytes < offset || (offset & (h.cluster_size() - 1)))
    return header_error(Errc::corrupt, path,
                        name + " offset invalid (" + hex(offset) + ", " + hex(bytes) +
                            " bytes; must be cluster aligned and end below 2^63)");
  return {};
}

Error validate_layout(const Header& h, uint64_t file_size, const std::string& path,
                      bool for_repair) {
  if (h.version == 1) return validate_qcow1_layout(h, file_size, path);
  return validate_qcow2_layout(h, file_size, path, for_repair);
}

std::string describe_incompatible(const Header& h, uint64_t bits) {
  std::string out;
  auto add = [&out](const std::string& s) {
    if (!out.empty()) out += ", ";
    out += s;
  };
  // QEMU's table ends at the first entry without a name.
  for (const FeatureName& f : h.feature_names) {
    if (f.name.empty()) break;
    if (f.type != 0 || f.bit >= 64 || !(bits & (1ull << f.bit))) continue;
    add(f.name.substr(0, kFeatureNameMax));
    bits &= ~(1ull << f.bit);
  }
  if (bits) add("Unknown incompatible feature: " + plain_hex(bits));
  return out;
}

}  // namespace vd::qcow
