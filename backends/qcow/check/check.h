// QCOW2 consistency check and repair: what `qemu-img check [-r leaks|all]` does (QEMU 7.2,
// block/qcow2-refcount.c), on an open QcowImage, with synchronous I/O (an offline operation).
//
//   count references ---- every structure's references, in an array with one entry per
//     |                   cluster of the file (check_refs.cpp): header, L1/L2 tables of the
//     |                   active image and of every snapshot, data and compressed clusters,
//     |                   snapshot table, refcount table and blocks, LUKS header, bitmaps
//   compare ------------- with the refcounts on disk (check_compare.cpp): higher on disk is
//     |                   a leak, lower is a corruption; -r lowers / raises them in place
//     |
//     +-- refcount structure unusable (a referenced cluster has refcount 0, a refblock is
//     |   unaligned, outside the image or shared) and -r all: rebuild (check_repair.cpp):
//     |   new refcount blocks and table written past the end of the image and flushed, then
//     |   the header switched to them in one 12-byte write, then flushed again. The old
//     |   structures are left untouched until the header no longer points at them, so a crash
//     |   at any point leaves either the old image or the repaired one.
//     |
//   OFLAG_COPIED -------- each active L1/L2 entry's COPIED flag against its refcount
//     |
//   mark clean ---------- with a repair that left no corruption: clear the dirty and corrupt
//     |                   bits, then reload the image's refcounts, L1 table and L2 cache
//
// Memory is proportional to the file size in clusters, never to a value read from the image:
// a reference beyond the end of the file (by a cluster or more) is reported, not counted.
// Messages use QEMU's wording (users search for them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/backend.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

class QcowImage;

// Runs the check (and the repair `mode` asks for; the image must then be read-write).
// Returns the report; an Error only when the check could not run at all.
Result<CheckReport> check_image(QcowImage& img, RepairMode mode);

// Refcount entries inside one refcount block of 2^order-bit entries.
uint64_t refcount_entry(std::span<const std::byte> block, uint32_t order, uint64_t index);
void set_refcount_entry(std::span<std::byte> block, uint32_t order, uint64_t index, uint64_t value);

// The refcounts as stored on disk, read (and, for a repair, written) directly: the refcount
// table from the header, blocks read on first use. A block beyond the end of the file reads
// as zeros, as QEMU does; an unaligned one is an error for every cluster it would describe.
class DiskRefcounts {
 public:
  DiskRefcounts(File& file, std::string path, const Header& h, uint64_t file_end);
  Error load();
  uint64_t max_refcount() const;
  uint64_t entries_per_block() const { return epb_; }
  const std::vector<uint64_t>& table() const { return table_; }
  Result<uint64_t> get(uint64_t cluster);
  // Changes an existing block's entry in memory; write_dirty() writes the changed blocks.
  Error set(uint64_t cluster, uint64_t value);
  Error write_dirty();

 private:
  Result<std::vector<std::byte>*> block(uint64_t index);

  File& file_;
  std::string path_;
  uint32_t cluster_bits_, order_;
  uint64_t table_offset_, table_bytes_, file_end_, epb_;
  std::vector<uint64_t> table_;
  std::map<uint64_t, std::vector<std::byte>> blocks_;  // by table index
  std::map<uint64_t, bool> dirty_;
};

// References counted per cluster of the file, saturating at the image's refcount maximum
// (where QEMU reports an overflow).
struct RefArray {
  std::vector<uint64_t> counts;
  uint64_t get(uint64_t c) const { return c < counts.size() ? counts[c] : 0; }
};

// Snapshot of what a check needs from the image, and the state of one run.
class Checker {
 public:
  Checker(QcowImage& img, RepairMode mode);
  Result<CheckReport> run();

 private:
  // check.cpp
  Error prepare();
  Error check_refcounts(CheckReport& r);
  Error repair_by_rebuild(CheckReport& r, RefArray& refs, uint64_t& highest);
  void check_snapshot_entries(CheckReport& r);
  Error finish(CheckReport& r);
  void note(std::string m) { messages_.push_back(std::move(m)); }

  // check_refs.cpp: QEMU's calculate_refcounts. `structures` false leaves out the refcount
  // table and blocks (the rebuild replaces them).
  Error count(CheckReport& r, RefArray& refs, bool frag_info, bool structures, bool& rebuild);
  void inc(CheckReport& r, RefArray& refs, uint64_t offset, uint64_t size);
  Error count_l1(CheckReport& r, RefArray& refs, uint64_t l1_offset, uint64_t l1_size, bool active);
  Error count_l2(CheckReport& r, RefArray& refs, uint64_t l2_offset, bool active);
  void count_l2_entry(CheckReport& r, RefArray& refs, uint64_t entry, uint64_t bitmap, uint64_t i,
                      bool active, uint64_t& next_contiguous);
  void count_compressed(CheckReport& r, RefArray& refs, uint64_t entry, uint64_t bitmap, uint64_t i,
                        bool active);
  Error count_bitmaps(CheckReport& r, RefArray& refs);
  void count_refblocks(CheckReport& r, RefArray& refs, bool& rebuild);
  Result<std::vector<uint64_t>> read_table(uint64_t offset, uint64_t entries, const char* what);

  // check_compare.cpp
  Error compare(CheckReport& r, const RefArray& refs, RepairMode fix, bool& rebuild,
                uint64_t& highest);
  Error check_copied(CheckReport& r, RepairMode fix);
  Error fix_l1_copied(CheckReport& r, uint64_t index, uint64_t entry, uint64_t refcount, bool repair);
  Error check_l2_copied(CheckReport& r, uint64_t l2_offset, bool repair);

  // check_repair.cpp
  Error rebuild_structures(RefArray& refs);
  Error write_refblocks(const RefArray& refs, uint64_t first_block_offset, uint64_t nblocks);
  Error write_header_field(uint64_t offset, std::span<const std::byte> bytes);
  Error mark_clean();
  Error reload_image();
  Error rewrite_snapshot_table(CheckReport& s);

  QcowImage& img_;
  RepairMode mode_;
  File& file_;
  const std::string& path_;
  Header hdr_;
  std::vector<Snapshot> snaps_;
  uint64_t cs_ = 0;
  uint64_t file_end_ = 0;
  uint64_t l2_entries_ = 0;
  uint64_t refcount_max_ = 0;
  bool data_file_ = false;
  std::unique_ptr<DiskRefcounts> disk_;
  std::vector<std::string> messages_;
  bool changed_ = false;  // the repair wrote something: the image's state must be reloaded
};

// Bytes the snapshot table occupies as stored (QEMU's snapshots_size).
uint64_t stored_snapshot_table_size(const std::vector<Snapshot>& snaps);

// "0x%llx" without the prefix, for QEMU's messages that print raw hex.
std::string rawhex(uint64_t v);

}  // namespace vd::qcow
