// Internals shared by the header files (header_read/validate/write.cpp, extensions.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/error.h"

namespace vd::qcow::detail {

// Fixed header field offsets (QCOW2, see docs/interop/qcow2.txt).
constexpr size_t kOffVersion = 4;
constexpr size_t kOffBackingOffset = 8;
constexpr size_t kOffBackingSize = 16;
constexpr size_t kOffClusterBits = 20;
constexpr size_t kOffSize = 24;
constexpr size_t kOffCryptMethod = 32;
constexpr size_t kOffL1Size = 36;
constexpr size_t kOffL1Offset = 40;
constexpr size_t kOffRefcountOffset = 48;
constexpr size_t kOffRefcountClusters = 56;
constexpr size_t kOffNbSnapshots = 60;
constexpr size_t kOffSnapshotsOffset = 64;
constexpr size_t kOffIncompat = 72;
constexpr size_t kOffCompat = 80;
constexpr size_t kOffAutoclear = 88;
constexpr size_t kOffRefcountOrder = 96;
constexpr size_t kOffHeaderLength = 100;
constexpr size_t kOffCompressionType = 104;
constexpr uint32_t kV3FullHeaderSize = 112;  // QEMU's struct, with compression_type

// QCOW v1 field offsets that differ from QCOW2.
constexpr size_t kV1OffMtime = 20;
constexpr size_t kV1OffSize = 24;
constexpr size_t kV1OffClusterBits = 32;
constexpr size_t kV1OffL2Bits = 33;
constexpr size_t kV1OffCryptMethod = 36;
constexpr size_t kV1OffL1Offset = 40;

constexpr size_t kFeatureEntrySize = 48;  // type, bit, 46-byte name
constexpr size_t kFeatureNameMax = 46;
constexpr size_t kMaxBackingFormatLength = 15;  // QEMU keeps it in char[16]
constexpr uint32_t kBitmapsExtSize = 24;
constexpr uint32_t kMaxBitmaps = 65535;
constexpr uint64_t kMaxBitmapDirectorySize = 64ull << 20;

// "'<path>': <what>" with the given kind.
Error header_error(Errc e, const std::string& path, const std::string& what);

// A C string stored in `len` bytes: cut at the first NUL, as QEMU's char arrays do.
std::string c_string(const std::byte* p, size_t len);

inline uint64_t round_up8(uint64_t v) { return (v + 7) & ~uint64_t{7}; }

// Parses the extensions in [start, end) of the header cluster `c0` into `h`. Needs the
// fixed fields (crypt_method, autoclear bits, cluster_bits) already in `h`. Stops at the
// first error and returns it; what was parsed before it (the feature-name table, for
// naming unsupported features) stays in `h`.
Error parse_extensions(std::span<const std::byte> c0, uint64_t start, uint64_t end, Header& h,
                       const std::string& path);

// Appends the extensions of `h` and the end marker to `out`, in QEMU's order.
Result<std::vector<std::byte>> encode_extensions(const Header& h);

// Version 2/3 and cluster size: checked first, the cluster size bounds everything else.
Error validate_qcow2_basics(const Header& h, const std::string& path);
// header_length: at least 104 for v3, at most one cluster.
Error check_header_length(const Header& h, const std::string& path);
// The checks of QEMU's open on the fixed fields alone, in its order.
Error validate_qcow2_fields(const Header& h, const std::string& path);
Error validate_qcow1_fields(const Header& h, const std::string& path);
// After the extensions: data file and crypto header consistency.
Error validate_qcow2_extensions(const Header& h, const std::string& path);

}  // namespace vd::qcow::detail
