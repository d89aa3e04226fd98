// The persistent dirty bitmaps of one open QCOW2 image, kept as QEMU keeps them:
//
//   open (any mode)  the directory and every table are read and validated (bitmap_dir.h);
//                    a hostile one fails the open, as in QEMU. The bits of every bitmap not
//                    found in use are loaded into memory. One found in use was being written
//                    when its writer stopped (a crash): it is inconsistent, its bits are
//                    never loaded nor trusted, and it stays as it is on disk.
//   read-write open  every consistent bitmap is marked in use on disk (mark_in_use), before
//                    the open returns, so before any write: from then on the bits on disk
//                    are stale until a store rewrites them.
//   every write      write, write-zeroes and discard set the bits of the granules they touch
//                    in each enabled bitmap (note_write: in memory, synchronous, no I/O).
//   flush and close  the first step of every flush (FlushRequest) stores what changed: the
//                    bits go to new clusters, then the directory (in use cleared), then the
//                    header points at it, then the old clusters are freed. So a crash loses
//                    nothing that was flushed.
//   next write       after a flush stored them, the first write that dirties a clean
//                    granule waits until the bitmaps are marked in use again
//                    (MarkInUseRequest, the same in-place update as the open's), so no such
//                    write reaches the disk while a bitmap there looks valid and misses it.
//                    Writes over granules already dirty are covered by the stored bitmap.
//
// Crash invariants (the same as the rest of the metadata, docs/design.md):
//   - the in-use marking rewrites the directory in place, so the header first stops vouching
//     for it (autoclear bit cleared and flushed), the directory is written and flushed, and
//     only then is the bit set again: a torn directory is never trusted (a crash in between
//     loses the bitmaps, which every reader then ignores; qemu-img check reclaims them).
//   - a store never overwrites what the header points at: data clusters, tables and the
//     new directory are written to new clusters and made durable with the refcounts that
//     hold them (FlushRequest) before the header switches to the new directory; the old
//     clusters are released only after that. A crash before the switch leaves the old
//     directory (bitmaps in use: inconsistent) and leaked clusters, never a torn bitmap.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/qcow/bitmap/bitmap_dir.h"
#include "backends/qcow/bitmap/dirty_bitmap.h"
#include "backends/qcow/meta/refcount.h"
#include "vd/backend.h"

namespace vd::qcow {

class QcowImage;

class BitmapSet final : public DirtyBitmaps {
 public:
  explicit BitmapSet(QcowImage& img) : img_(img) {}

  // At open, after the header and the snapshot table. Synchronous.
  Error load();
  // A read-write open: marks the consistent bitmaps in use on disk. Synchronous.
  Error mark_in_use();
  // ---- Storing, as the first step of every flush (FlushRequest::store_bitmaps) ----
  // Something differs from the disk: bits set, in-use flags to clear, bitmaps added,
  // removed or changed.
  bool store_pending() const { return changed_; }
  // Snapshots what to store (serialises the bits now: writes that arrive while the flush
  // runs mark the next one) and answers how many clusters it needs (0: no bitmap left).
  uint64_t plan_store();
  // The planned clusters at `at` (one run, just allocated): the writes that put them there.
  std::vector<Refcounts::MetaWrite> place_store(uint64_t at);
  // The writes are durable: the header (written later in the same flush, after the
  // refcounts) points at the new directory, and the old clusters are released after it.
  void commit_store();
  // The flush failed before commit: the next one stores again.
  void store_failed() { changed_ = true; plan_.reset(); }
  bool store_planned() const { return plan_ != nullptr; }

  // After a flush stored them, the bitmaps on disk are not in use: before the next write
  // is issued they must be marked again (MarkInUseRequest), or a crash after that write
  // would leave a bitmap that looks consistent and misses it.
  bool needs_mark() const { return on_disk_clean_ && changed_ && !all_in_use(); }
  // The directory bytes with every consistent bitmap in use, and where they go.
  std::vector<std::byte> in_use_directory(uint64_t& offset) const;
  void marked();

  // The disk grew or shrank: bitmaps follow (new granules clean); refused while one is
  // inconsistent, as QEMU refuses.
  Error resize(uint64_t new_size);

  // The data path: marks [offset, offset + length) in every enabled, consistent bitmap.
  // Only a write that dirties a clean granule changes anything: one over granules already
  // dirty is covered by what the last flush stored, so it needs neither a store nor a
  // marking (writes that keep hitting the same regions between flushes cost nothing).
  void note_write(uint64_t offset, uint64_t length) {
    bool any = false;
    for (DirtyBitmap* b : tracking_) any = b->set(offset, length) || any;
    if (any) changed_ = true;
  }
  bool empty() const { return list_.empty(); }
  // The directory on disk (for the overlap map).
  const std::optional<BitmapsExt>& directory() const { return disk_ext_; }
  // qemu-img info's "bitmaps" list (format-specific fields, dotted keys).
  void add_info(std::vector<InfoField>& f) const;

  // DirtyBitmaps (include/vd/backend.h)
  std::vector<BitmapInfo> list() const override;
  Result<std::pair<bool, uint64_t>> extent(const std::string& name, uint64_t offset,
                                          uint64_t max_len) const override;
  Error add(const std::string& name, uint64_t granularity, bool enabled) override;
  Error remove(const std::string& name) override;
  Error clear(const std::string& name) override;
  Error set_enabled(const std::string& name, bool enabled) override;
  Error set_dirty(const std::string& name, uint64_t offset, uint64_t length) override;

 private:
  struct Loaded {
    BitmapEntry entry;               // as on disk (table_offset 0: not stored yet)
    std::vector<uint64_t> table;     // its bitmap table as on disk
    std::unique_ptr<DirtyBitmap> bits;  // null when inconsistent
    bool enabled = false;
  };
  Loaded* find(const std::string& name);
  const Loaded* find(const std::string& name) const;
  Result<Loaded*> usable(const char* op, const std::string& name);
  void retrack();
  Error write_directory_in_place(const std::vector<std::byte>& bytes, uint64_t offset);
  bool all_in_use() const;
  Error mark_now();

  struct Plan {
    std::vector<BitmapEntry> entries;          // the new directory (in use cleared)
    std::vector<std::vector<uint64_t>> tables;  // their tables (offsets filled by place_store)
    // Per consistent bitmap: its index in `entries` and, per non-empty data cluster, the
    // table index and the serialised bits.
    struct Data {
      size_t entry;
      std::vector<std::pair<uint64_t, std::vector<std::byte>>> clusters;
    };
    std::vector<Data> data;
    std::vector<std::vector<std::byte>> encoded;  // tables and directory, kept for the writes
    std::vector<std::pair<uint64_t, uint64_t>> old;  // clusters to release after the switch
    std::optional<BitmapsExt> ext;
    uint64_t clusters = 0;
  };

  QcowImage& img_;
  std::vector<Loaded> list_;
  std::vector<BitmapEntry> disk_entries_;  // the directory as on disk
  std::optional<BitmapsExt> disk_ext_;     // and where it is
  std::vector<DirtyBitmap*> tracking_;  // enabled and consistent: what a write marks
  std::vector<std::pair<uint64_t, uint64_t>> dropped_;  // clusters of removed bitmaps
  bool changed_ = false;        // something to store at the next flush
  bool on_disk_clean_ = false;  // the last flush stored them: not in use on disk
  std::unique_ptr<Plan> plan_;
};

}  // namespace vd::qcow
