// QCOW header: probing, parsing with QEMU's validation, and encoding.
//
// The parse follows QEMU 7.2's open (block/qcow2.c, block/qcow.c) check by check, so that
// every image QEMU opens we open, every image it refuses we refuse, and our messages
// contain QEMU's wording (users search for it) plus the image path and the offset.
// On top of QEMU's checks, validate_layout() refuses tables that lie beyond the end of
// the file: QEMU would read zeros there, we would rather not size allocations from them.
//
// Files:
//   header_read.cpp      probes, read_header, the fixed v1/v2/v3 fields
//   header_validate.cpp  field checks, table layout checks, feature names in messages
//   extensions.cpp       header extensions: parse and encode
//   header_write.cpp     encode_header
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

// True when the file starts like a QCOW2 image: magic and version >= 2. Like QEMU, a
// version we do not support (4) still probes as qcow2, so opening it explains the
// version instead of falling back to raw. Files shorter than QEMU's header struct (112
// bytes) do not probe.
bool probe_qcow2(File& f);
// True when the file starts like a QCOW v1 image: magic and version 1.
bool probe_qcow1(File& f);

struct ReadHeaderOptions {
  // Also run validate_layout() against the file size (what an open needs).
  bool check_layout = true;
  // QEMU's BDRV_O_CHECK: tolerate a missing refcount table and do not validate the
  // snapshot table's location, so `check -r all` can open the image and repair it.
  bool for_repair = false;
};

// Reads and validates the header (v1, v2 or v3), its extensions and the backing file name.
// For v1, Header::l1_size and l2_bits come from the header as QEMU derives them.
Result<Header> read_header(File& f, const std::string& path, const ReadHeaderOptions& opts = {});

// The same for a QCOW2 header already in memory: `head` is the start of the file (its
// first cluster, or less: missing bytes read as zeros). No layout checks. For fuzzing.
Result<Header> parse_qcow2_header(std::span<const std::byte> head, const std::string& path);

// The field checks read_header runs (cluster size, refcount width, encryption method,
// compression type, feature bits, virtual size...). Useful before encoding a new header.
Error validate_fields(const Header& h, const std::string& path);

// Checks table locations: L1 (size, alignment, overflow, large enough for the virtual
// size, inside the file), refcount table (v2/v3), snapshot table (v2/v3), crypto header.
// Errors name the table and its offset. `file_size` 0 skips the end-of-file checks.
Error validate_layout(const Header& h, uint64_t file_size, const std::string& path,
                      bool for_repair = false);

// QEMU's qcow2_validate_table: `entries` of `entry_len` bytes at `offset`, at most
// `max_bytes` in all, cluster aligned, ending below 2^63. `name` is e.g. "Active L1 table".
Error validate_table(const Header& h, uint64_t offset, uint64_t entries, uint64_t entry_len,
                     uint64_t max_bytes, const std::string& name, const std::string& path);

// L1 entries needed to map the virtual size (QEMU's size_to_l1).
uint64_t l1_entries_for_size(const Header& h, uint64_t virtual_size);

// Serialises a header as QEMU lays it out. v2/v3: one cluster-sized buffer holding the
// fixed header (header_length bytes; 0 means 72 for v2 and 112 for v3), the extensions
// (backing format, data file, crypto header, feature names, then the kept ones such as
// bitmaps and unknown ones, in order), the end marker and the backing file name, whose
// offset and size are filled in. v1: the 48-byte header and the backing file name right
// after it (the L1 table conventionally follows at the next multiple of 8). Errors if
// it does not fit in the first cluster or a field is out of range.
Result<std::vector<std::byte>> encode_header(const Header& h);

// The feature-name table QEMU 7.2 writes into a v3 header. Empty for v2 and for
// clusters of 4 KiB or less, where QEMU leaves it out to keep room for the backing name.
std::vector<FeatureName> qemu_feature_names(uint32_t version, uint32_t cluster_bits);

// Names of the incompatible feature bits `bits`, taken from the header's feature-name
// table, the rest as "Unknown incompatible feature: <hex>", comma-separated as QEMU does.
std::string describe_incompatible(const Header& h, uint64_t bits);

}  // namespace vd::qcow
