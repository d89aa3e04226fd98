// QCOW2 refcounts, kept in memory and written back at flush.
//
// The refcount table is read at open; refcount blocks are read on first use and stay in
// memory (their number is bounded by the file size, not the virtual size). Changes are made
// in memory and written by the flush, in the order the crash invariants need:
//
//   1. increases (new allocations) are written, with any new refcount blocks and a moved
//      refcount table, before the L2/L1 entries that reference the clusters;
//   2. decreases (clusters released by copy-on-write, discard, overwrite of compressed
//      data) are held back and written only after the tables that dropped the references
//      are on disk. A released cluster is reused only after that, so a crash can leak a
//      cluster but never leave one referenced twice or referenced with refcount 0.
//
// Loading blocks: synchronous operations (open, check, snapshots, resize, create) read a
// missing block at once through the synchronous File (the default). The data path never
// blocks: its refcount steps run under `AsyncLoads` (QcowImage::refcount_step), where a
// missing block is a *miss* — the call fails with `kMiss` before it changed
// anything, `take_miss()` names the block, the request loads it with `load_block` (joined
// like L2 loads: one read however many requests wait) and tries again. Loaded blocks stay.
// Allocation scans only in its first phase can miss; once it places a run, it treats a block
// that is not loaded as full (never hands out a cluster it cannot see is free).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

class Refcounts {
 public:
  struct Config {
    uint32_t cluster_bits = 16;
    uint32_t refcount_order = 4;
    uint64_t table_offset = 0;
    uint32_t table_clusters = 0;
  };
  Refcounts(File& file, std::string path, Config config);

  // The error a miss returns; the block to load is `take_miss()`.
  static bool is_miss(const Error& e);
  std::optional<uint64_t> take_miss() { return std::exchange(miss_, std::nullopt); }
  // Loads refcount block `index` asynchronously (joined with a load in flight). Completes
  // inline when it is already loaded; the caller is a request step, not a completion.
  void load_block(uint64_t index, Completion done);
  // A missing block is read at once through the synchronous File (the default, for
  // synchronous operations), except within `AsyncLoads`.
  // Within a data-path refcount step (QcowImage::refcount_step): a missing block is a miss.
  class AsyncLoads {
   public:
    explicit AsyncLoads(Refcounts* r) : r_(r), was_(r && r->sync_loads_) { if (r_) r_->sync_loads_ = false; }
    ~AsyncLoads() { if (r_) r_->sync_loads_ = was_; }
    AsyncLoads(const AsyncLoads&) = delete;
    AsyncLoads& operator=(const AsyncLoads&) = delete;
   private:
    Refcounts* r_;
    bool was_;
  };

  // Reads the refcount table. `file_end` is the current file size.
  Error load(uint64_t file_end);

  uint64_t max_refcount() const;
  uint64_t cluster_size() const { return 1ull << cfg_.cluster_bits; }
  const Config& config() const { return cfg_; }

  // Refcount of the cluster containing host offset `offset` (reads its block if needed).
  Result<uint64_t> get(uint64_t offset);
  // Adds `delta` to the refcount of each cluster of [offset, offset + length), in memory.
  Error update(uint64_t offset, uint64_t length, int64_t delta);

  // Finds `count` contiguous free clusters, sets their refcount to 1 and returns the host
  // offset of the first. Grows the refcount structures when needed (in memory).
  Result<uint64_t> allocate(uint64_t count);
  // Returns clusters allocated by `allocate` that were never referenced (rollback): they are
  // free again at once.
  Error unallocate(uint64_t offset, uint64_t count);
  // Drops one reference to each cluster of the range once the flush has written the tables
  // that no longer point at it (invariant 2 above).
  void release_later(uint64_t offset, uint64_t length);

  // Highest allocated cluster end: the file must be at least this long.
  uint64_t allocated_end() const { return alloc_end_; }

  // ---- Write-back, used by the flush in this order ----
  // Something to write: blocks, the table, or a moved table the header does not point at yet.
  bool dirty() const { return !dirty_blocks_.empty() || table_dirty_ || old_table_offset_ != 0; }
  bool move_pending() const { return old_table_offset_ != 0; }
  // Writes changed and new refcount blocks (step 1), then, after a flush, the refcount table
  // if it changed (step 2). `table_moved`: the header must be rewritten to point at it.
  Error write_blocks();
  bool table_dirty() const { return table_dirty_; }
  Error write_table(bool& table_moved);
  // The same, for the asynchronous flush: what to write (offset, bytes; checked by the
  // write guard), then `*_written()` once it is on disk. Nothing changes them meanwhile:
  // writes are gated while a flush runs.
  struct MetaWrite {
    uint64_t offset;
    std::span<const std::byte> bytes;
  };
  Result<std::vector<MetaWrite>> dirty_block_writes();
  void blocks_written() { dirty_blocks_.clear(); }
  Result<MetaWrite> table_write();  // bytes live until table_written()
  void table_written() { table_dirty_ = false; }
  // After the header points at the new table: frees the old table's clusters.
  void table_committed();
  bool has_releases() const { return !releases_.empty(); }
  // Applies the held-back decreases in memory (the caller then writes the blocks).
  Error apply_releases();

  // resize --shrink (QEMU's qcow2_shrink_reftable): unlinks every refcount block that counts
  // nothing but itself. The table is written and flushed at once; only then does each
  // block lose its own refcount, in memory (written by the next flush): a crash in between
  // leaks the blocks, never leaves a table entry pointing at a free cluster.
  Error drop_empty_blocks();

  // For check: iterate every cluster's refcount (reading every block).
  Result<std::vector<uint64_t>> all_refcounts(uint64_t clusters);
  uint64_t table_offset() const { return cfg_.table_offset; }
  // Where refcount block `index` lives (0: none), for tests and check.
  uint64_t block_offset(uint64_t index) const {
    return index < table_.size() ? table_[index] & 0xfffffffffffffe00ull : 0;
  }
  uint32_t table_clusters() const { return cfg_.table_clusters; }
  // Bumped whenever the table moves; the overlap map is then rebuilt from the table.
  uint64_t table_epoch() const { return table_epoch_; }
  // The blocks placed since the last call (offsets), for the overlap map to add singly.
  std::vector<uint64_t> take_new_blocks() { return std::exchange(new_blocks_, {}); }
  // Checks each block and table write before it is made (the image's overlap check).
  using WriteGuard = std::function<Error(uint64_t offset, uint64_t length, bool table)>;
  void set_write_guard(WriteGuard guard) { guard_ = std::move(guard); }

 private:
  using Block = std::vector<std::byte>;
  uint64_t entries_per_block() const { return (cluster_size() * 8) >> cfg_.refcount_order; }
  uint64_t read_entry(const Block& b, uint64_t i) const;
  void write_entry(Block& b, uint64_t i, uint64_t v) const;
  Result<Block*> block_for(uint64_t cluster, bool create);
  Result<uint64_t> get_cluster(uint64_t cluster);
  Error set_cluster(uint64_t cluster, uint64_t value);
  Error grow_table(uint64_t needed_entries);
  Result<bool> cluster_free(uint64_t cluster);  // refcount 0 (held-back releases are not 0 yet)
  struct Mutating;
  Error check_block_location(uint64_t index, uint64_t off) const;
  Result<Block*> read_block_now(uint64_t index, uint64_t off);

  File& file_;
  std::string path_;
  Config cfg_;
  std::vector<uint64_t> table_;                    // refcount table entries (block offsets)
  std::map<uint64_t, std::unique_ptr<Block>> blocks_;  // by table index
  std::set<uint64_t> dirty_blocks_;                // table indexes
  bool table_dirty_ = false;
  uint64_t old_table_offset_ = 0;  // to free once the header points at the new table
  uint32_t old_table_clusters_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> releases_;  // (offset, length)
  uint64_t file_end_ = 0;    // file size at load: refcount blocks must lie inside it
  uint64_t alloc_end_ = 0;   // end of the highest cluster with a refcount (bytes)
  uint64_t free_hint_ = 0;   // first cluster index that may be free
  uint64_t avoid_lo_ = 0, avoid_hi_ = 0;  // the run being allocated: no new block goes there
  std::set<uint64_t> placing_;             // clusters taken by new blocks not yet counted
  uint64_t table_epoch_ = 0;
  std::vector<uint64_t> new_blocks_;  // placed since take_new_blocks
  WriteGuard guard_;
  bool sync_loads_ = true;
  bool placing_run_ = false;  // second phase of an allocation: an unloaded block counts as full
  std::optional<uint64_t> miss_;
  std::map<uint64_t, std::vector<Completion>> loads_;  // in flight, by table index
  std::vector<std::byte> table_bytes_;                 // the table being written
};

}  // namespace vd::qcow
