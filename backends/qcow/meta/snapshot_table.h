// The QCOW2 internal snapshot table: nb_snapshots variable-length entries at
// snapshots_offset, each starting on an 8-byte boundary:
//   l1_table_offset u64, l1_size u32, id_size u16, name_size u16, date_sec u32,
//   date_nsec u32, vm_clock_nsec u64, vm_state_size u32, extra_data_size u32  (40 bytes)
//   extra data (vm_state_size_large u64, disk_size u64, icount u64, then unknown bytes)
//   id, name (not NUL-terminated)
//
// Reading follows QEMU 7.2 (qcow2_read_snapshots): an entry with more than 1 KiB of extra
// data and a table past 64 MiB fail the open; a snapshot's own L1 location is checked only
// when the snapshot is used (validate_snapshot), so one bad entry does not make the whole
// image unreadable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

constexpr uint32_t kSnapshotEntryHeaderSize = 40;
constexpr uint32_t kSnapshotKnownExtraSize = 24;  // vm_state_size_large, disk_size, icount
constexpr uint32_t kSnapshotV3MinExtraSize = 16;  // v3 requires up to disk_size

// Reads the table described by h.nb_snapshots / h.snapshots_offset. The header's table
// location must have been validated (validate_layout). Extra data is kept as on disk in
// Snapshot::extra_data; disk_size and icount are set when the extra data holds them.
Result<std::vector<Snapshot>> read_snapshot_table(File& f, const Header& h, const std::string& path);

// The same over the table's bytes in memory (missing bytes read as zeros). For fuzzing.
Result<std::vector<Snapshot>> parse_snapshot_table(std::span<const std::byte> table, uint32_t count,
                                                   const std::string& path);

// Serialises the table as QEMU writes it: 24 bytes of known extra data (disk_size
// defaults to h.size, icount to all-ones) followed by any unknown extra bytes kept from
// the disk. Errors if an id or name is longer than 65535 bytes or the table would pass
// 64 MiB.
Result<std::vector<std::byte>> encode_snapshot_table(const std::vector<Snapshot>& snapshots,
                                                     const Header& h);

// Bytes encode_snapshot_table produces (0 for no snapshots).
uint64_t snapshot_table_size(const std::vector<Snapshot>& snapshots);

// Checks a snapshot before its L1 table is used (apply, delete, convert -l): L1 size at
// most 32 MiB, offset cluster aligned and ending below 2^63, and inside the file when
// `file_size` is not 0. `index` names the entry in messages.
Error validate_snapshot(const Snapshot& s, const Header& h, size_t index, uint64_t file_size,
                        const std::string& path);

// A v3 entry must carry at least 16 bytes of extra data (vm_state_size_large and
// disk_size). QEMU opens such an image; `check` reports the entry and `-r all` rewrites it.
bool snapshot_entry_incomplete(const Snapshot& s, uint32_t version);

}  // namespace vd::qcow
