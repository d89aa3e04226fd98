// One open QCOW image (v1, v2 or v3). Split by operation (the on-disk structures are in
// meta/, consistency checks in check/, creation in create/):
//   image_open.cpp        open: header, data file, encryption, snapshots, L1, refcounts
//   image.cpp             properties, descriptive information, resize, close
//   image_meta.cpp        the backing file reference (rebase)
//   image_overlap.cpp     the overlap check before every write
//   snapshot_ops.cpp      internal snapshots (synchronous)
//   amend/                qemu-img amend: options, downgrade, refcount width
//   truncate_ops.cpp      resize --shrink and make_empty: clusters dropped for good
//   grow_ops.cpp          resize growing: preallocation=metadata, zeroing over a parent
//   io/image_lookup.cpp   guest offset -> run, loading L2 tables (joined when already in flight)
//   io/image_read.cpp     read and block_status
//   io/image_write.cpp    write entry points, the write gate, allocation helpers, table updates
//   io/request.h          the base of every request class: one owner, one exit, never inline
//   io/keyed_locks.*      the one waiting mechanism (clusters and L1 entries)
//   io/write_request.*    one guest write: in-place runs and cluster allocations
//   io/l2_prepare.*       a writable L2 table for an L1 entry (allocate or copy, link)
//   io/cluster_alloc.*    the cluster-allocation state machine
//   io/compressed_write.* one compressed cluster
//   io/zero_discard.*     write_zeroes and discard
//   io/flush_request.*    write-back of metadata in crash-safe order
//
// The data path (io/) uses only the asynchronous file calls (vd::AsyncFile); the synchronous
// ones serve open, create, check, resize, snapshots and close.
//
// Metadata is write-back: allocations change the L1/L2 tables and refcounts in memory, and
// the flush writes them in the order of the crash invariants (flush_request.h). Writes are
// gated while a flush runs, so a table is never changed while it is being written.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <deque>
#include <map>
#include <optional>
#include <span>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/crypto/crypto.h"
#include "backends/qcow/amend/amend.h"
#include "backends/qcow/io/keyed_locks.h"
#include "backends/qcow/meta/format.h"
#include "backends/qcow/meta/l2_cache.h"
#include "backends/crypto/luks.h"
#include "backends/qcow/meta/mapping.h"
#include "backends/qcow/meta/overlap.h"
#include "backends/qcow/meta/refcount.h"
#include "vd/backend.h"

namespace vd::qcow {

class BitmapSet;

class QcowImage final : public Image {
 public:
  static Result<std::unique_ptr<Image>> open(const Backend& backend, const std::string& path,
                                             const OpenOptions& opts, IoProvider& io);
  ~QcowImage() override;

  const Backend& backend() const override { return backend_; }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return flags_; }
  unsigned version() const override { return hdr_.version; }
  uint64_t size() const override { return size_; }
  Result<uint64_t> file_size() override;
  uint32_t cluster_size() const override { return static_cast<uint32_t>(layout_.cluster_size()); }

  void read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) override;
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
             Completion done) override;
  void write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) override;
  void discard(uint64_t offset, uint64_t length, Completion done) override;
  void flush(Completion done) override;
  void block_status(uint64_t offset, uint64_t length, ExtentHandler done) override;
  void set_parent_reader(std::shared_ptr<ParentReader> parent) override { parent_ = std::move(parent); }

  Geometry pchs() const override { return pchs_.is_set() ? pchs_ : derive_pchs(size_); }
  Error set_pchs(const Geometry& g) override;
  Geometry lchs() const override { return lchs_.is_set() ? lchs_ : derive_lchs(size_); }
  Error set_lchs(const Geometry& g) override;

  std::optional<std::string> parent_filename() const override { return hdr_.backing_file; }
  std::optional<std::string> parent_format() const override { return hdr_.backing_format; }
  Error set_parent(const std::optional<std::string>& filename,
                   const std::optional<std::string>& format) override;
  using Image::resize;
  Error resize(uint64_t new_size, const ResizeOptions& opts) override;

  std::vector<InfoField> format_info() const override;
  bool encrypted() const override { return hdr_.crypt_method != kCryptNone; }
  bool dirty() const override { return hdr_.incompatible_features & kIncompatDirty; }
  std::vector<SnapshotInfo> snapshots() const override;
  // snapshot_ops.cpp
  Error snapshot_create(const std::string& name) override;
  Error snapshot_apply(const std::string& id_or_name) override;
  Error snapshot_delete(const std::string& id_or_name) override;
  Result<CheckReport> check(RepairMode repair) override;
  Error close(bool remove) override;
  // truncate_ops.cpp
  Error make_empty() override;
  // amend/amend.cpp
  Error amend(const AmendOptions& opts) override;
  // Persistent dirty bitmaps (bitmap/bitmap_set.h); QCOW2 only.
  DirtyBitmaps* bitmaps() override;

  const Header& header() const { return hdr_; }
  const Layout& layout() const { return layout_; }

  // ---- For the request classes (write_request, cluster_alloc, zero_discard, flush) ----
  using RunHandler = std::function<void(Error, Run)>;
  using L2Handler = std::function<void(Error, L2Ptr)>;
  void lookup(uint64_t guest, uint64_t max_len, RunHandler done);
  // The run at `guest` when its L2 table is cached (or there is none); nullopt when the
  // table must be loaded (lookup then). Never does I/O.
  std::optional<Result<Run>> lookup_cached(uint64_t guest, uint64_t max_len);
  void get_l2(uint64_t l1_index, uint64_t l2_offset, L2Handler done);
  IoProvider& io() { return io_; }
  // The request classes see the files only through the asynchronous interface: a blocking
  // call on the data path does not compile.
  AsyncFile& file() { return *file_; }
  AsyncFile& data_file() { return *data_; }
  Refcounts* refcounts() { return refs_.get(); }
  bool has_parent() const { return parent_ != nullptr; }
  ParentReader* parent() { return parent_.get(); }
  const SectorCipher* cipher() const { return cipher_.get(); }
  std::vector<uint64_t>& l1() { return l1_; }

  // Reads [offset, offset + buf.size()) as the guest sees it through this image and its
  // parent (zeros where neither has data). Used to fill partial clusters.
  void read_through(uint64_t offset, std::span<std::byte> buf, Completion done);
  Error encrypt(uint64_t guest, uint64_t host, std::span<std::byte> buf) const;

  // The one waiting mechanism (io/keyed_locks.h). Guest clusters: locked while being
  // allocated (a second writer waits and looks again), shared by in-place writes in flight
  // (an allocation that rewrites a cluster — extended L2: a write into an unallocated
  // subcluster of an allocated cluster copies the cluster elsewhere — locks it, so no new
  // in-place write starts, then waits for those in flight to land before it reads the old
  // cluster: otherwise their data would be lost with it). L1 indexes: locked while their L2
  // table is being allocated or copied (io/l2_prepare.h).
  KeyedLocks& clusters() { return clusters_; }
  KeyedLocks& l1_tables() { return l1_tables_; }

  // The L2 table at `l2_offset` (already loaded), made writable and marked dirty.
  L2Table& l2_for_update(uint64_t l2_offset);
  void mark_l1_dirty(uint64_t index) { l1_dirty_.insert(index); }
  void mark_header_dirty() { header_dirty_ = true; }
  // Host space for data clusters: v2/v3 through the refcounts; v1 appended at the end. The
  // in-memory attempt: on the data path it may miss a refcount block (Refcounts::is_miss)
  // without having changed anything; requests use the async form, which loads and retries.
  Result<uint64_t> allocate_clusters(uint64_t count);
  void allocate_clusters_async(uint64_t count, std::function<void(Error, uint64_t)> done);
  // Runs an in-memory refcount step; if it misses a refcount block, loads the block
  // (asynchronously, joined) and runs it again. `then` may run inline: it is a request's
  // next step, never a completion.
  void refcount_step(std::function<Error()> attempt, Completion then);
  void allocation_step(std::function<Result<uint64_t>()> attempt, std::function<void(Error, uint64_t)> done);
  void rollback_clusters(uint64_t host, uint64_t count);
  // Drops the reference an L2 entry held (after the flush wrote the tables without it).
  void release_entry(uint64_t entry, uint64_t bitmap);
  // Makes the L1 entry `l1_index` point at a writable (COPIED) L2 table, allocating a new
  // one or copying a shared one (io/l2_prepare.h). Completes with the table's offset.
  void prepare_l2(uint64_t l1_index, std::function<void(Error, uint64_t)> done);
  // Clusters one L2 table takes.
  uint64_t l2_table_clusters() const {
    const uint64_t cs = layout_.cluster_size();
    return (layout_.l2_table_bytes() + cs - 1) / cs;
  }
  // Links the L2 table at `at` (a copy of `from`, or empty) in L1 entry `l1_index`, in
  // memory; `old` (0: none) loses the reference the active L1 held.
  void install_l2(uint64_t l1_index, uint64_t old, uint64_t at, const L2Ptr& from);
  Result<L2Table*> owned_l2(uint64_t l1_index);
  // Points the guest clusters from `guest` at `entries` (L2 entry words, one or two per
  // cluster with extended L2) in the loaded L2 table at `l2_offset`, releasing what the
  // old entries referenced. Shared by normal and compressed writes.
  void link_entries(uint64_t l2_offset, uint64_t guest, std::span<const uint64_t> entries);

  // The write gate: writes run between flushes; a flush waits for them to drain.
  void begin_write(std::function<void()> start);
  void end_write();
  // The bitmaps must be marked in use before the next write (bitmap/mark_in_use.h): the
  // gate holds writes meanwhile; if the marking fails, the writes it held fail with it.
  void marking_finished(Error e);
  bool failed_marking(const Completion& done);
  void flush_finished(Error e);
  Error write_metadata_header();
  // The header as the flush writes it. The refcount table fields follow a moved table only
  // once it is committed (`commit_reftable`: the new table is durable).
  Result<std::vector<std::byte>> encode_metadata_header(bool commit_reftable = false);
  // image_overlap.cpp: refuse an allocation, or a write of data or of a table, that would
  // land on other metadata (overlap.h), marking the image corrupt as QEMU does. `self` is
  // the kind of the table being written at `host` (it may overlap itself).
  Error check_allocation(uint64_t host, uint64_t length);
  Error check_overlap(uint64_t host, uint64_t length, std::optional<MetaKind> self = std::nullopt);
  // The tables moved or grew: the overlap map is rebuilt before the next check.
  void metadata_moved() { overlap_stale_ = true; }
  // The active L2 table of an L1 entry moved from `old` (0: none) to `now`.
  void l2_moved(uint64_t old, uint64_t now);
  // Installs the overlap check on the refcount write-back (after refs_ is (re)made).
  void guard_refcounts();
  // Compressed data goes to byte-granular space shared by several compressed clusters.
  Result<uint64_t> allocate_bytes(uint64_t length);
  void allocate_bytes_async(uint64_t length, std::function<void(Error, uint64_t)> done);
  void forget_packing() { zbytes_next_ = 0; }
  // The data path: the granules a write, write-zeroes or discard touches become dirty in the
  // enabled bitmaps (in memory; stored at close).
  void note_write(uint64_t offset, uint64_t length);
  void grew_to(uint64_t end);

  // create.cpp: allocates every L2 table and data cluster (preallocation=metadata|falloc|full).
  Error preallocate(int mode);

  // Something the flush would write: tables, refcounts or header fields.
  bool metadata_pending() const {
    return header_dirty_ || !dirty_l2_.empty() || !l1_dirty_.empty() ||
           (refs_ && (refs_->dirty() || refs_->has_releases()));
  }

  friend class FlushRequest;
  friend class BitmapSet;  // bitmap/: reads and rewrites the directory, allocates clusters
  friend class MarkInUseRequest;
  friend class Checker;  // check.h: reads the metadata, and reloads it after a repair

 private:
  QcowImage(const Backend& backend, std::string path, unsigned flags, IoProvider& io);

  // image_open.cpp
  Error load(const OpenOptions& opts);
  Error open_data_file();
  Error open_encryption(const OpenOptions& opts);
  Error open_for_writing();
  Error load_l1(uint64_t offset, uint32_t entries, const char* what);
  Error grow_l1(uint64_t entries);

  // snapshot_ops.cpp
  Result<L2Ptr> l2_now(uint64_t l1_index, uint64_t l2_offset);
  Error walk_refcounts(std::vector<uint64_t>& l1, bool active, int addend);
  Error walk_l1(std::vector<uint64_t>& l1, bool active, int addend,
                const std::function<Error(uint64_t, uint64_t)>& update);
  Result<size_t> find_snapshot(const std::string& id_or_name) const;
  Result<Snapshot> snapshot_for_op(const char* op, const std::string& id_or_name);
  Result<std::vector<uint64_t>> read_snapshot_l1(const Snapshot& sn, uint64_t entries);
  Error prepare_snapshot_op(const char* op);
  Error write_snapshot_table(std::vector<Snapshot> snaps);
  Error select_snapshot(const std::string& name);

  // amend/: qemu-img amend (amend.h)
  Error write_header_now();
  Error upgrade();
  Error downgrade(AmendProgress& progress);
  Error expand_zero_clusters(const std::vector<uint64_t>& l1, std::set<uint64_t>& seen,
                             const std::function<void(uint64_t)>& step);
  Error change_refcount_order(uint32_t order, AmendProgress& progress);

  // grow_ops.cpp
  Error grow(uint64_t new_size, const ResizeOptions& opts);
  Error preallocate_range(uint64_t from, uint64_t to, uint64_t& host_end);
  Error write_cow(uint64_t guest_cluster, uint64_t host, uint64_t from, uint64_t to, uint64_t entry);
  Error zero_range(uint64_t from, uint64_t to);

  // truncate_ops.cpp
  Error drop_clusters(uint64_t from);
  Error trim_file();
  Error punch_freed(const std::vector<uint64_t>& before);
  Error shrink(uint64_t new_size);

  // image_lookup.cpp
  void finish_l2_load(uint64_t l2_offset, Error e, L2Ptr table);
  Error check_l2_location(uint64_t l1_index, uint64_t l2_offset) const;
  L2Ptr decode_l2(std::span<const std::byte> raw) const;

  // image_read.cpp
  void read_run(uint64_t offset, std::span<std::byte> buf, Error e, const Run& run, ReadHandler done);
  void read_data(const Run& run, uint64_t guest, std::span<std::byte> buf, ReadHandler done);
  void read_compressed(const Run& run, uint64_t guest, std::span<std::byte> buf, ReadHandler done);
  Error decrypt(uint64_t guest, uint64_t host, std::span<std::byte> buf) const;

  Error refuse_write(const char* op) const;
  void add_luks_info(std::vector<InfoField>& f) const;
  bool looks_preallocated();
  const OverlapMap& overlap_map();
  Error mark_corrupt(const std::string& why);

  const Backend& backend_;
  std::string path_;
  unsigned flags_;
  IoProvider& io_;
  std::unique_ptr<File> file_;
  std::unique_ptr<File> data_file_;  // external data file, if any
  File* data_ = nullptr;             // where data clusters live

  Header hdr_;
  Layout layout_;
  uint64_t size_ = 0;
  uint64_t file_end_ = 0;  // size of the image file when last looked at
  std::vector<uint64_t> l1_;
  std::vector<Snapshot> snapshots_;
  std::unique_ptr<SectorCipher> cipher_;
  std::optional<LuksInfo> luks_;  // the LUKS header, for info (also on info-only opens)
  SecretBytes luks_master_key_;   // from the unlock: amend seals it into new key slots

  L2Cache cache_;
  std::unordered_map<uint64_t, std::vector<L2Handler>> l2_loads_;  // in flight, by offset

  // The last decompressed cluster (sequential partial reads of compressed images).
  uint64_t zcache_host_ = UINT64_MAX;
  std::shared_ptr<std::vector<std::byte>> zcache_;

  // Write-back state.
  std::unique_ptr<Refcounts> refs_;
  std::map<uint64_t, std::shared_ptr<L2Table>> dirty_l2_;  // by offset; pinned until flushed
  std::set<uint64_t> l1_dirty_;
  bool header_dirty_ = false;
  bool marked_dirty_ = false;  // this open set the dirty bit (lazy refcounts): clear on close
  bool corrupt_unwritten_ = false;  // marked corrupt in memory; the next flush writes it first
  KeyedLocks clusters_{io_};
  KeyedLocks l1_tables_{io_};
  unsigned writes_active_ = 0;
  bool flushing_ = false;
  bool marking_ = false;  // MarkInUseRequest running: writes and flushes wait
  Error mark_error_;      // set while the writes a failed marking held are failed
  std::deque<std::function<void()>> gated_;   // writes waiting for a flush to finish
  std::vector<Completion> flush_waiters_;     // flushes waiting for writes to drain
  uint64_t v1_end_ = 0;                       // QCOW v1: next free host offset
  uint64_t zbytes_next_ = 0;                  // next free byte for compressed data (0: none)

  OverlapMap overlap_;
  bool overlap_stale_ = true;
  uint64_t overlap_refs_epoch_ = 0;
  bool prealloc_known_ = false, prealloc_ = false;  // looks_preallocated(), computed once
  Geometry pchs_, lchs_;
  std::shared_ptr<ParentReader> parent_;
  std::unique_ptr<BitmapSet> bitmaps_;  // QCOW2: loaded at open, stored at close
  bool closed_ = false;
};

// Creates a QCOW image (format from `backend`: "qcow2" or "qcow") and opens it read-write.
Result<std::unique_ptr<Image>> create_image(const Backend& backend, const std::string& path,
                                            const CreateOptions& opts, IoProvider& io);

}  // namespace vd::qcow
