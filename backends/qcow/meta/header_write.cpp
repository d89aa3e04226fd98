// Encoding headers the way QEMU 7.2 lays them out, so an image we write compares
// byte for byte with one qemu-img writes, and a header we rewrite keeps what we did not
// interpret (unknown header fields and extensions).
#include <algorithm>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/header_detail.h"

namespace vd::qcow {
namespace {

using namespace detail;

Error encode_error(Errc e, const std::string& what) { return Error(e, "encoding a QCOW header: " + what); }

Result<uint32_t> fixed_length(const Header& h) {
  if (h.version == 2) return kV2HeaderSize;
  uint32_t len = h.header_length ? h.header_length : kV3FullHeaderSize;
  if (len < kV3HeaderMinSize || len > h.cluster_size())
    return encode_error(Errc::invalid_argument, "header_length " + std::to_string(len) +
                                                    " outside 104 and the cluster size");
  if (len <= kOffCompressionType && h.compression_type != kCompressionZlib)
    return encode_error(Errc::invalid_argument,
                        "a header of 104 bytes has no room for the compression type");
  return len;
}

void put_fixed_qcow2(const Header& h, uint32_t len, std::byte* p) {
  store_be32(p, kMagic);
  store_be32(p + kOffVersion, h.version);
  store_be32(p + kOffClusterBits, h.cluster_bits);
  store_be64(p + kOffSize, h.size);
  store_be32(p + kOffCryptMethod, h.crypt_method);
  store_be32(p + kOffL1Size, h.l1_size);
  store_be64(p + kOffL1Offset, h.l1_table_offset);
  store_be64(p + kOffRefcountOffset, h.refcount_table_offset);
  store_be32(p + kOffRefcountClusters, h.refcount_table_clusters);
  store_be32(p + kOffNbSnapshots, h.nb_snapshots);
  store_be64(p + kOffSnapshotsOffset, h.snapshots_offset);
  if (h.version == 2) return;
  store_be64(p + kOffIncompat, h.incompatible_features);
  store_be64(p + kOffCompat, h.compatible_features);
  store_be64(p + kOffAutoclear, h.autoclear_features);
  store_be32(p + kOffRefcountOrder, h.refcount_order);
  store_be32(p + kOffHeaderLength, len);
  if (len > kOffCompressionType) p[kOffCompressionType] = std::byte{h.compression_type};
  if (len > kV3FullHeaderSize) {
    size_t n = std::min<size_t>(h.unknown_header_fields.size(), len - kV3FullHeaderSize);
    std::copy_n(h.unknown_header_fields.begin(), n, p + kV3FullHeaderSize);
  }
}

// Places the backing file name at `at` and records where it went.
void put_backing_name(const Header& h, size_t at, std::vector<std::byte>& buf, size_t offset_field,
                      size_t size_field) {
  if (!h.backing_file || h.backing_file->empty()) return;
  const std::string& name = *h.backing_file;
  std::copy_n(reinterpret_cast<const std::byte*>(name.data()), name.size(), buf.begin() + at);
  store_be64(buf.data() + offset_field, at);
  store_be32(buf.data() + size_field, static_cast<uint32_t>(name.size()));
}

Result<std::vector<std::byte>> encode_qcow2(const Header& h) {
  if (Error e = validate_qcow2_basics(h, "(new header)")) return e;
  auto len = fixed_length(h);
  if (!len) return len.error();
  auto ext = encode_extensions(h);
  if (!ext) return ext.error();
  size_t name_len = h.backing_file ? h.backing_file->size() : 0;
  size_t used = *len + ext->size() + name_len;
  if (used > h.cluster_size())
    return encode_error(Errc::too_large, "header, extensions and backing file name (" +
                                             std::to_string(used) + " bytes) do not fit in the first cluster of " +
                                             std::to_string(h.cluster_size()) + " bytes");
  std::vector<std::byte> buf(h.cluster_size());
  put_fixed_qcow2(h, *len, buf.data());
  std::copy(ext->begin(), ext->end(), buf.begin() + *len);
  put_backing_name(h, *len + ext->size(), buf, kOffBackingOffset, kOffBackingSize);
  return buf;
}

Result<std::vector<std::byte>> encode_qcow1(const Header& h) {
  if (h.cluster_bits < 9 || h.cluster_bits > kV1MaxClusterBits || h.l2_bits < 6 || h.l2_bits > 13)
    return encode_error(Errc::invalid_argument, "QCOW v1 cluster_bits " + std::to_string(h.cluster_bits) +
                                                    " or l2_bits " + std::to_string(h.l2_bits) + " out of range");
  size_t name_len = h.backing_file ? h.backing_file->size() : 0;
  std::vector<std::byte> buf(kV1HeaderSize + name_len);
  std::byte* p = buf.data();
  store_be32(p, kMagic);
  store_be32(p + kOffVersion, 1);
  store_be32(p + kV1OffMtime, h.mtime);
  store_be64(p + kV1OffSize, h.size);
  p[kV1OffClusterBits] = std::byte(h.cluster_bits);
  p[kV1OffL2Bits] = std::byte(h.l2_bits);
  store_be32(p + kV1OffCryptMethod, h.crypt_method);
  store_be64(p + kV1OffL1Offset, h.l1_table_offset);
  put_backing_name(h, kV1HeaderSize, buf, kOffBackingOffset, kOffBackingSize);
  return buf;
}

}  // namespace

Result<std::vector<std::byte>> encode_header(const Header& h) {
  if (h.backing_file && h.backing_file->size() > kMaxBackingNameLength)
    return encode_error(Errc::invalid_argument, "Backing file name too long (" +
                                                    std::to_string(h.backing_file->size()) +
                                                    " bytes, at most 1023)");
  if (h.version == 1) return encode_qcow1(h);
  return encode_qcow2(h);
}

std::vector<FeatureName> qemu_feature_names(uint32_t version, uint32_t cluster_bits) {
  // QEMU leaves the table out for small clusters: with 512-byte clusters it would leave
  // 8 bytes for a backing file name.
  if (version < 3 || cluster_bits <= 12) return {};
  return {
      {0, 0, "dirty bit"},
      {0, 1, "corrupt bit"},
      {0, 2, "external data file"},
      {0, 3, "compression type"},
      {0, 4, "extended L2 entries"},
      {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},
      {2, 1, "raw external data"},
  };
}

}  // namespace vd::qcow
