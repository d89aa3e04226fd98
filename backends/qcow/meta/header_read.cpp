// Probing and reading QCOW headers: the fixed fields of v1, v2 and v3, then the checks
// in the order QEMU's open runs them, so a header with several faults reports the same
// first one.
#include <algorithm>
#include <climits>
#include <cstring>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/header_detail.h"

namespace vd::qcow {
namespace {

using namespace detail;

// QEMU only probes qcow2 when the file holds its whole header struct.
constexpr size_t kQcow2ProbeBytes = kV3FullHeaderSize;

bool read_prefix(File& f, std::span<std::byte> buf) {
  auto size = f.size();
  if (!size || *size < buf.size()) return false;
  return !f.read(IoKind::meta, 0, buf);
}

void parse_fixed_qcow2(const std::byte* p, Header& h) {
  h.version = load_be32(p + kOffVersion);
  h.backing_file_offset = load_be64(p + kOffBackingOffset);
  h.backing_file_size = load_be32(p + kOffBackingSize);
  h.cluster_bits = load_be32(p + kOffClusterBits);
  h.size = load_be64(p + kOffSize);
  h.crypt_method = load_be32(p + kOffCryptMethod);
  h.l1_size = load_be32(p + kOffL1Size);
  h.l1_table_offset = load_be64(p + kOffL1Offset);
  h.refcount_table_offset = load_be64(p + kOffRefcountOffset);
  h.refcount_table_clusters = load_be32(p + kOffRefcountClusters);
  h.nb_snapshots = load_be32(p + kOffNbSnapshots);
  h.snapshots_offset = load_be64(p + kOffSnapshotsOffset);
  if (h.version == 2) {
    h.refcount_order = 4;
    h.header_length = kV2HeaderSize;
    return;
  }
  h.incompatible_features = load_be64(p + kOffIncompat);
  h.compatible_features = load_be64(p + kOffCompat);
  h.autoclear_features = load_be64(p + kOffAutoclear);
  h.refcount_order = load_be32(p + kOffRefcountOrder);
  h.header_length = load_be32(p + kOffHeaderLength);
  // The byte exists only in headers long enough to hold it; older ones mean zlib.
  h.compression_type = h.header_length > kOffCompressionType
                           ? std::to_integer<uint8_t>(p[kOffCompressionType])
                           : kCompressionZlib;
}

// The checks QEMU makes before it looks at the extensions: they bound where the
// extensions and the backing name may be.
Error check_header_bounds(const Header& h, const std::string& path) {
  if (Error e = check_header_length(h, path)) return e;
  if (h.backing_file_offset > h.cluster_size())
    return header_error(Errc::corrupt, path,
                        "Invalid backing file offset " + hex(h.backing_file_offset) +
                            " (beyond the header cluster of " + hex(h.cluster_size()) + " bytes)");
  return {};
}

Error check_identity(const Header& h, uint32_t magic, const std::string& path) {
  if (magic != kMagic)
    return header_error(Errc::wrong_format, path, "Image is not in qcow2 format (bad magic " +
                                                      hex(magic) + " at 0x0)");
  return validate_qcow2_basics(h, path);
}

Error read_qcow2_backing_name(std::span<const std::byte> c0, Header& h, const std::string& path) {
  if (h.backing_file_offset == 0) return {};
  uint64_t room = std::min<uint64_t>(kMaxBackingNameLength, h.cluster_size() - h.backing_file_offset);
  if (h.backing_file_size > room)
    return header_error(Errc::corrupt, path,
                        "Backing file name too long (" + std::to_string(h.backing_file_size) +
                            " bytes at " + hex(h.backing_file_offset) + ", at most " +
                            std::to_string(room) + " fit)");
  std::string name = c_string(c0.data() + h.backing_file_offset, h.backing_file_size);
  if (!name.empty()) h.backing_file = std::move(name);
  return {};
}

// header_length <= cluster size is checked, so the bytes are inside `c0`.
void read_unknown_header_fields(std::span<const std::byte> c0, Header& h) {
  if (h.version >= 3 && h.header_length > kV3FullHeaderSize) {
    auto first = c0.begin() + kV3FullHeaderSize;
    h.unknown_header_fields.assign(first, c0.begin() + h.header_length);
  }
}

Error parse_qcow2_cluster(std::span<const std::byte> c0, Header& h, const std::string& path) {
  if (Error e = check_header_bounds(h, path)) return e;
  h.l2_bits = h.cluster_bits - (h.extended_l2() ? 4 : 3);  // an L2 table is one cluster
  read_unknown_header_fields(c0, h);
  uint64_t ext_end = h.backing_file_offset ? h.backing_file_offset : h.cluster_size();
  // Extension errors wait until the fields are checked, as in QEMU; but the feature
  // names they carry are needed to name unsupported features.
  Error ext_error = parse_extensions(c0, h.header_length, ext_end, h, path);
  if (Error e = validate_qcow2_fields(h, path)) return e;
  if (ext_error) return ext_error;
  // QEMU ignores a data-file name unless the feature bit says the data is elsewhere.
  if (!(h.incompatible_features & kIncompatDataFile)) h.data_file.reset();
  if (Error e = validate_qcow2_extensions(h, path)) return e;
  return read_qcow2_backing_name(c0, h, path);
}

// ---- QCOW v1 ----

Result<Header> parse_qcow1_fixed(const std::byte* p, const std::string& path) {
  Header h;
  h.version = load_be32(p + kOffVersion);
  h.backing_file_offset = load_be64(p + kOffBackingOffset);
  h.backing_file_size = load_be32(p + kOffBackingSize);
  h.mtime = load_be32(p + kV1OffMtime);
  h.size = load_be64(p + kV1OffSize);
  h.cluster_bits = std::to_integer<uint32_t>(p[kV1OffClusterBits]);
  h.l2_bits = std::to_integer<uint32_t>(p[kV1OffL2Bits]);
  h.crypt_method = load_be32(p + kV1OffCryptMethod);
  h.l1_table_offset = load_be64(p + kV1OffL1Offset);
  h.header_length = kV1HeaderSize;
  if (Error e = validate_qcow1_fields(h, path)) return e;
  h.l1_size = static_cast<uint32_t>(l1_entries_for_size(h, h.size));
  return h;
}

Error read_qcow1_backing_name(File& f, uint64_t file_size, Header& h, const std::string& path) {
  if (h.backing_file_offset == 0) return {};
  if (h.backing_file_size > kMaxBackingNameLength)
    return header_error(Errc::corrupt, path,
                        "Backing file name too long (" + std::to_string(h.backing_file_size) +
                            " bytes at " + hex(h.backing_file_offset) + ", at most 1023)");
  if (h.backing_file_offset > file_size || h.backing_file_size > file_size - h.backing_file_offset)
    return header_error(Errc::corrupt, path,
                        "Invalid backing file offset " + hex(h.backing_file_offset) +
                            " (name of " + std::to_string(h.backing_file_size) +
                            " bytes beyond the end of the file at " + hex(file_size) + ")");
  std::vector<std::byte> buf(h.backing_file_size);
  if (Error e = f.read(IoKind::meta, h.backing_file_offset, buf))
    return e.wrap("reading", "backing file name", h.backing_file_offset).image(path);
  std::string name = c_string(buf.data(), buf.size());
  if (!name.empty()) h.backing_file = std::move(name);
  return {};
}

Result<Header> read_qcow1(File& f, const std::byte* fixed, uint64_t file_size,
                          const std::string& path, const ReadHeaderOptions& opts) {
  auto h = parse_qcow1_fixed(fixed, path);
  if (!h) return h;
  if (Error e = read_qcow1_backing_name(f, file_size, *h, path)) return e;
  if (opts.check_layout) {
    if (Error e = validate_layout(*h, file_size, path, opts.for_repair)) return e;
  }
  return h;
}

}  // namespace

bool probe_qcow2(File& f) {
  std::byte buf[kQcow2ProbeBytes];
  if (!read_prefix(f, buf)) return false;
  return load_be32(buf) == kMagic && load_be32(buf + kOffVersion) >= 2;
}

bool probe_qcow1(File& f) {
  std::byte buf[kV1HeaderSize];
  if (!read_prefix(f, buf)) return false;
  return load_be32(buf) == kMagic && load_be32(buf + kOffVersion) == 1;
}

Result<Header> parse_qcow2_header(std::span<const std::byte> head, const std::string& path) {
  std::byte fixed[kV3FullHeaderSize] = {};
  std::memcpy(fixed, head.data(), std::min(head.size(), sizeof fixed));
  Header h;
  parse_fixed_qcow2(fixed, h);
  if (Error e = check_identity(h, load_be32(fixed), path)) return e;
  // The extensions and the backing name live in the first cluster; bytes the caller did
  // not supply (a file shorter than one cluster) read as zeros.
  std::vector<std::byte> padded;
  std::span<const std::byte> c0 = head;
  if (head.size() < h.cluster_size()) {
    padded.assign(h.cluster_size(), std::byte{0});
    std::copy(head.begin(), head.end(), padded.begin());
    c0 = padded;
  }
  if (Error e = parse_qcow2_cluster(c0.first(h.cluster_size()), h, path)) return e;
  return h;
}

Result<Header> read_header(File& f, const std::string& path, const ReadHeaderOptions& opts) {
  auto file_size = f.size();
  if (!file_size) return file_size.error().wrap("size").image(path);
  std::byte fixed[kV3FullHeaderSize] = {};
  if (Error e = f.read(IoKind::meta, 0, fixed)) return e.wrap("reading", "header", 0).image(path);
  if (load_be32(fixed) == kMagic && load_be32(fixed + kOffVersion) == 1)
    return read_qcow1(f, fixed, *file_size, path, opts);

  Header probe;
  parse_fixed_qcow2(fixed, probe);
  if (Error e = check_identity(probe, load_be32(fixed), path)) return e;
  // cluster_bits is checked: the buffer is at most 2 MiB.
  std::vector<std::byte> c0(probe.cluster_size());
  size_t have = static_cast<size_t>(std::min<uint64_t>(c0.size(), *file_size));
  if (Error e = f.read(IoKind::meta, 0, std::span(c0).first(have)))
    return e.wrap("reading", "header cluster", 0).image(path);
  auto h = parse_qcow2_header(c0, path);
  if (!h) return h;
  if (h->backing_file && h->backing_file_offset + h->backing_file_size > *file_size)
    return header_error(Errc::corrupt, path,
                        "Invalid backing file offset " + hex(h->backing_file_offset) +
                            " (name beyond the end of the file at " + hex(*file_size) + ")");
  if (opts.check_layout) {
    if (Error e = validate_layout(*h, *file_size, path, opts.for_repair)) return e;
  }
  return h;
}

}  // namespace vd::qcow
