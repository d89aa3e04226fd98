// The backend interface: what every image format implements. The host knows formats only
// through `Backend` (format level) and `Image` (one open image).
//
// Threading: an Image is used from one executor (see vd/io.h). Its asynchronous calls may
// be issued many at a time; each completion runs exactly once, posted to that executor.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "vd/error.h"
#include "vd/io.h"

namespace vd {

// ---- Geometry --------------------------------------------------------------------------

struct Geometry {
  uint32_t cylinders = 0;
  uint32_t heads = 0;
  uint32_t sectors = 0;
  bool is_set() const { return cylinders && heads && sectors; }
  bool operator==(const Geometry&) const = default;
};

// Physical CHS for an image of `size` bytes when the image stores none (VirtualBox's rule:
// 16 heads, 63 sectors, cylinders from the size, at most 16383).
VD_API Geometry derive_pchs(uint64_t size);
// Logical (BIOS) CHS for an image of `size` bytes: at most 1024 cylinders, 255 heads, 63
// sectors, heads chosen as the BIOS translation does.
VD_API Geometry derive_lchs(uint64_t size);
// For formats that keep a geometry set by the caller: ok when unset (all 0, derive again) or
// within CHS limits (heads 1..max_heads, sectors 1..63); else invalid_argument naming `path`.
VD_API Error check_geometry(const std::string& path, const char* kind, const Geometry& g, uint32_t max_heads);

// ---- Options and flags -----------------------------------------------------------------

enum OpenFlags : unsigned {
  open_read_only = 1u << 0,
  // The format was given by the user, not guessed by probing. Lifts the raw backend's
  // guard against writing a sector 0 that would probe as another format (CVE-2008-2004).
  open_format_given = 1u << 1,
  // Open for inspection only (info, map): skip work a data path needs, e.g. decrypting keys.
  open_info_only = 1u << 2,
  // Do not repair a dirty image on a read-write open (used by check, which repairs itself).
  open_no_repair = 1u << 3,
  // Share the image with writers in other processes (QEMU's force-share, qemu-img -U):
  // read-only opens only. Parents of a disk inherit it.
  open_force_share = 1u << 4,
  // Take no image locks at all (QEMU's locking=off). Parents of a disk inherit it.
  open_no_lock = 1u << 5,
};

// The FileMode lock bits (file_lock, file_share_all) an image's files are opened with
// under the OpenFlags `flags`.
constexpr unsigned image_lock_mode(unsigned flags) {
  if (flags & open_no_lock) return 0;
  return file_lock | ((flags & open_force_share) ? file_share_all : 0u);
}

struct OpenOptions {
  unsigned flags = 0;
  std::optional<std::string> passphrase;  // for encrypted images
  std::optional<std::string> snapshot;    // open this internal snapshot (read-only), by id or name
  uint64_t cache_bytes = 32ull << 20;     // metadata cache budget (QCOW L2 tables)
};

// Disks are whole 512-byte sectors, as in QEMU: a size given to create is rounded up.
constexpr uint64_t kSectorBytes = 512;
constexpr uint64_t round_up_to_sector(uint64_t n) {
  return n > UINT64_MAX - (kSectorBytes - 1) ? n & ~(kSectorBytes - 1) : (n + kSectorBytes - 1) & ~(kSectorBytes - 1);
}

struct CreateOptions {
  uint64_t size = 0;  // bytes; backends round it up to whole sectors (round_up_to_sector)
  std::map<std::string, std::string> options;  // qemu-img's -o key=value pairs
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  std::optional<std::string> passphrase;
};

enum Capability : unsigned {
  cap_create_dynamic = 1u << 0,
  cap_create_fixed = 1u << 1,
  cap_diff = 1u << 2,        // images may have a parent
  cap_async = 1u << 3,
  cap_discard = 1u << 4,
  cap_resize = 1u << 5,
  cap_compression = 1u << 6,
  cap_encryption = 1u << 7,
  cap_snapshots = 1u << 8,
  cap_check = 1u << 9,
};

enum WriteFlags : unsigned {
  write_fua = 1u << 0,         // durable when complete
  write_compressed = 1u << 1,  // store compressed if the format can (whole clusters only)
};

enum ZeroFlags : unsigned {
  zero_may_unmap = 1u << 0,  // deallocating is fine as long as the range reads as zeros
};

// ---- Results of data-path calls --------------------------------------------------------

// A read handles a prefix of the request (at least one byte). `allocated` false means this
// image does not hold that prefix: the buffer is untouched and the caller reads the parent.
struct ReadResult {
  uint64_t length = 0;
  bool allocated = true;
};
using ReadHandler = std::function<void(Error, ReadResult)>;

// Allocation status of a prefix of a range, for map, convert and the chain.
struct Extent {
  enum class Kind : uint8_t { unallocated, data, zero };
  uint64_t length = 0;
  Kind kind = Kind::unallocated;
  std::optional<uint64_t> host_offset;  // where the data lives in the image file, if plain
  bool compressed = false;
  bool encrypted = false;
  bool zero_data = false;  // data in place that reads as zeros (a hole in the file below)
};
using ExtentHandler = std::function<void(Error, Extent)>;

// Reads the content below an image (its parent chain) for copy-on-write of partial
// clusters. Past the end of the parent it reads zeros. Completion posted, never inline.
class VD_API ParentReader {
 public:
  virtual ~ParentReader() = default;
  virtual void read(uint64_t offset, std::span<std::byte> buf, Completion done) = 0;
};

// ---- Descriptive information (vdimg info, check) -----------------------------------------

using InfoValue = std::variant<bool, int64_t, uint64_t, std::string>;
struct InfoField {
  std::string key;  // qemu-img's JSON key, e.g. "compat", "refcount-bits"
  InfoValue value;
};

struct SnapshotInfo {
  std::string id;
  std::string name;
  uint64_t vm_state_size = 0;
  uint64_t disk_size = 0;  // virtual size recorded with the snapshot
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  std::optional<uint64_t> icount;
};

enum class RepairMode { none, leaks, all };

// qemu-img amend: format options to change on an existing image (qemu-img's -o key=value
// pairs), with --force and a progress callback (done, total; may be called with total 0).
struct AmendOptions {
  std::map<std::string, std::string> options;
  bool force = false;
  std::function<void(uint64_t, uint64_t)> progress;
};

// How Image::resize fills the area a growing resize adds (qemu-img resize --preallocation,
// QEMU's PreallocMode). Formats refuse a mode they do not have with not_supported ("Unsupported
// preallocation mode: MODE"); shrinking takes `off` only.
enum class Preallocation : uint8_t {
  off,       // nothing allocated: the new area reads as zeros (or through the parent)
  metadata,  // QCOW2: L2 tables and data clusters allocated, the data left unwritten
  falloc,    // the file's blocks reserved as well
  full,      // zeros written
};

constexpr const char* preallocation_name(Preallocation p) {
  switch (p) {
    case Preallocation::off: return "off";
    case Preallocation::metadata: return "metadata";
    case Preallocation::falloc: return "falloc";
    case Preallocation::full: return "full";
  }
  return "?";
}

struct ResizeOptions {
  Preallocation preallocation = Preallocation::off;
  // Growing over a parent longer than the old size: the new area must read as zeros, not as
  // the parent's data there (QEMU's truncate with BDRV_REQ_ZERO_WRITE). The format zeroes
  // whole allocation units from the first unit boundary at or after the old size (QCOW2:
  // cluster, or subcluster with extended L2; v3 only, else not_supported); the bytes
  // between the old size and that boundary are the caller's to write (vdimg writes zeros
  // there through the disk after the resize).
  bool zero_new_area = false;
};

struct CheckReport {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t check_errors = 0;  // could not be checked (I/O errors)
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t allocated_clusters = 0;
  uint64_t total_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  uint64_t image_end_offset = 0;
  std::vector<std::string> messages;  // one line per finding, qemu-img's wording where it has one
};

class Backend;

// ---- Persistent dirty bitmaps (QCOW2; docs/bitmaps.md) -----------------------------------

struct BitmapInfo {
  std::string name;
  uint64_t granularity = 0;  // bytes per bit
  bool enabled = false;      // records writes (qcow2's "auto" flag)
  bool in_use = false;       // in-use flag on disk
  bool inconsistent = false; // found in use when the image was opened: its bits are lost
};

// The bitmaps of one image, loaded when it was opened: every call answers from memory and
// never blocks. Changes reach the disk when the image is closed (or flushed, for the bits
// writes set). Reached from an Image through Image::bitmaps().
class VD_API DirtyBitmaps {
 public:
  virtual ~DirtyBitmaps() = default;
  virtual std::vector<BitmapInfo> list() const = 0;
  // From `offset` (bytes): whether the bitmap marks it dirty, and the length of the run that
  // shares that state (at most `max_len`; 0 at or past the disk's end). Like block status:
  // the caller steps through a range run by run. Fails for an unknown or inconsistent bitmap.
  virtual Result<std::pair<bool, uint64_t>> extent(const std::string& name, uint64_t offset,
                                                  uint64_t max_len) const = 0;
  // qemu-img bitmap's operations (read-write images; messages are qemu-img's).
  virtual Error add(const std::string& name, uint64_t granularity, bool enabled) = 0;
  virtual Error remove(const std::string& name) = 0;
  virtual Error clear(const std::string& name) = 0;
  virtual Error set_enabled(const std::string& name, bool enabled) = 0;
  // Marks [offset, offset + length) dirty in `name` (merging another bitmap into it).
  virtual Error set_dirty(const std::string& name, uint64_t offset, uint64_t length) = 0;
};

// ---- One open image ----------------------------------------------------------------------

class VD_API Image {
 public:
  virtual ~Image() = default;

  virtual const Backend& backend() const = 0;
  virtual const std::string& path() const = 0;
  virtual unsigned open_flags() const = 0;
  virtual unsigned version() const = 0;   // format version (QCOW: 1, 2, 3; raw: 0)
  virtual uint64_t size() const = 0;      // virtual size in bytes
  virtual Result<uint64_t> file_size() = 0;  // bytes the image occupies on its storage
  // Granularity of allocation (QCOW cluster size; raw 512). Writes aligned to it never
  // read the parent.
  virtual uint32_t cluster_size() const = 0;

  // Data path. Offsets and lengths are in bytes; no alignment is required.
  virtual void read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) = 0;
  virtual void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                     Completion done) = 0;
  // Afterwards the range reads as zeros through the chain.
  virtual void write_zeroes(uint64_t offset, uint64_t length, unsigned flags,
                            Completion done) = 0;
  // Gives the range back to the storage where the format can; what it then reads as
  // follows the format (qemu's rules), so interop tests compare with qemu-io.
  virtual void discard(uint64_t offset, uint64_t length, Completion done) = 0;
  virtual void flush(Completion done) = 0;
  virtual void block_status(uint64_t offset, uint64_t length, ExtentHandler done) = 0;

  // Supplies the content below this image for copy-on-write. The host's Disk attaches it
  // when it opens the chain; without one, the parent reads as zeros.
  virtual void set_parent_reader(std::shared_ptr<ParentReader> parent) = 0;

  // Geometry: unset values (0) mean "derive from the size".
  virtual Geometry pchs() const = 0;
  virtual Error set_pchs(const Geometry& g) = 0;
  virtual Geometry lchs() const = 0;
  virtual Error set_lchs(const Geometry& g) = 0;

  // Parent (backing) image as recorded in this image.
  virtual std::optional<std::string> parent_filename() const = 0;
  virtual std::optional<std::string> parent_format() const = 0;
  virtual Error set_parent(const std::optional<std::string>& filename,
                           const std::optional<std::string>& format) = 0;

  // Sets the virtual size (whole sectors). Growing fills the new area as `opts` asks;
  // shrinking drops what lies past the new end. Nothing may be in flight. Plugin ABI 4
  // added `opts` (ABI 3 had resize(new_size) alone, which the overload below keeps).
  virtual Error resize(uint64_t new_size, const ResizeOptions& opts) = 0;
  Error resize(uint64_t new_size) { return resize(new_size, ResizeOptions{}); }

  // Descriptive information for `vdimg info`: format-specific fields in qemu-img's terms.
  virtual std::vector<InfoField> format_info() const = 0;
  virtual bool encrypted() const = 0;
  // The image was not closed cleanly and its metadata may need a repair (QCOW2 lazy
  // refcounts); `info` shows it as the dirty flag.
  virtual bool dirty() const { return false; }
  virtual std::vector<SnapshotInfo> snapshots() const = 0;
  // Internal snapshots (formats with cap_snapshots), as qemu-img snapshot -c/-a/-d: create
  // one of the current state; make one the current state (what was current is dropped);
  // delete one. `id_or_name` matches an id first, then a name; the first match wins. The
  // image must be open read-write with no request in flight.
  virtual Error snapshot_create(const std::string& name);
  virtual Error snapshot_apply(const std::string& id_or_name);
  virtual Error snapshot_delete(const std::string& id_or_name);

  // Drops everything this image maps, so that it reads wholly through its parent again
  // (qemu-img commit without -d); the image must be open read-write, nothing in flight.
  virtual Error make_empty();
  // Changes format options in place (qemu-img amend); formats without any answer
  // not_supported. Refusals carry qemu-img's message.
  virtual Error amend(const AmendOptions& opts);

  // Consistency check and repair (formats without metadata answer not_supported).
  virtual Result<CheckReport> check(RepairMode repair) = 0;

  // Persistent dirty bitmaps, for formats that keep them (QCOW2); nullptr otherwise.
  virtual DirtyBitmaps* bitmaps() { return nullptr; }

  // Flushes and releases the image; with `remove`, deletes its file(s). After close the
  // image only answers property queries.
  virtual Error close(bool remove) = 0;
};

// ---- One format --------------------------------------------------------------------------

struct OptionHelp {
  std::string name;
  std::string help;
};

class VD_API Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;  // "qcow2", "qcow", "raw"
  virtual unsigned capabilities() const = 0;
  virtual std::vector<std::string_view> extensions() const = 0;
  virtual std::vector<OptionHelp> create_options() const = 0;

  // True if `file` holds an image of this format. Must not fail on any input.
  virtual bool probe(File& file) const = 0;
  virtual Result<std::unique_ptr<Image>> open(const std::string& path, const OpenOptions& opts,
                                              IoProvider& io) const = 0;
  virtual Result<std::unique_ptr<Image>> create(const std::string& path,
                                                const CreateOptions& opts,
                                                IoProvider& io) const = 0;
};

}  // namespace vd
