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
//   close            store(): the bits go to new clusters, then the directory (in use
//                    cleared), then the header points at it, then the old clusters are freed.
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
#include <string>
#include <vector>

#include "backends/qcow/bitmap/bitmap_dir.h"
#include "backends/qcow/bitmap/dirty_bitmap.h"
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
  // Close: writes what changed since the open (nothing on a read-only open). Synchronous,
  // after the data path's metadata is flushed.
  Error store();
  // The disk grew or shrank: bitmaps follow (new granules clean); refused while one is
  // inconsistent, as QEMU refuses.
  Error resize(uint64_t new_size);

  // The data path: marks [offset, offset + length) in every enabled, consistent bitmap.
  void note_write(uint64_t offset, uint64_t length) {
    for (DirtyBitmap* b : tracking_) b->set(offset, length);
  }
  bool empty() const { return list_.empty(); }
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
  Error write_directory_in_place(const std::vector<BitmapEntry>& entries, uint64_t offset);
  Error release_old(const std::vector<std::pair<uint64_t, uint64_t>>& ranges);

  QcowImage& img_;
  std::vector<Loaded> list_;
  std::vector<DirtyBitmap*> tracking_;  // enabled and consistent: what a write marks
  std::vector<std::pair<uint64_t, uint64_t>> dropped_;  // clusters of removed bitmaps
  bool changed_ = false;  // something to store at close
};

}  // namespace vd::qcow
