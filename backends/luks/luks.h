// The luks format: QEMU's raw LUKS1 volume ("qemu-img create -f luks"). The whole file is a
// LUKS1 container; the guest disk is its payload, from payload_offset to the end of the file.
//
//   backend.cpp       the Backend: probe, open (unlock), create
//   create_opts.cpp   qemu-img's luks create options -> LuksCreateSpec
//   image.cpp         LuksImage: properties, geometry, resize, close
//   amend.cpp         LuksImage::amend: qemu-img amend's key slot options
//   image_io.cpp      LuksImage: the data path (sector-granular encrypt/decrypt)
//   write_op.cpp      one guest write: lock its sectors, read-modify-write the partial ones
//   sector_locks.cpp  serialises writes whose sectors overlap
//
// The LUKS header, key slots, sector ciphers and qemu-img info's LUKS fields are shared with
// the QCOW backend (backends/crypto: luks.h, crypto.h); this backend only places the payload
// in the file. QEMU's rules (block/crypto.c):
//   - virtual size = the file size rounded up to whole sectors, minus the payload offset;
//   - sector n of the guest disk is encrypted with the IV of sector number n (payload-relative);
//   - create makes the file payload_offset + size bytes long (the size not rounded);
//   - resize sets the file size to payload_offset + new size;
//   - discard does nothing (the driver has none, and a hole would not decrypt to zeros);
//   - write_zeroes writes encrypted zeros;
//   - block status: the whole disk is data, at no host offset a reader could use.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backends/crypto/luks.h"
#include "vd/backend.h"

namespace vd::luks {

constexpr uint32_t kSectorSize = qcow::kLuksSectorSize;

// ---- Create options ----------------------------------------------------------------------

enum class Prealloc { off, falloc, full };

struct LuksCreateSpec {
  qcow::LuksCreateOptions luks;
  Prealloc prealloc = Prealloc::off;
};

// Parses qemu-img's luks -o options (key-secret, cipher-alg, cipher-mode, ivgen-alg,
// ivgen-hash-alg, hash-alg, iter-time, preallocation), with qemu-img's messages.
Result<LuksCreateSpec> parse_create_options(const CreateOptions& opts, const std::string& path);
std::vector<OptionHelp> create_option_help();

// ---- Write serialisation ---------------------------------------------------------------------

// Grants sector ranges [first, end) to writes so that no two overlapping ranges are held at
// once: a write that read-modify-writes a partial sector must not have another write change
// that sector between its read and its write. Overlapping requests are granted in the order
// they asked. Single-threaded (the image's executor).
class SectorLocks {
 public:
  // Runs `granted` once the range is free (inline when it is free now).
  void lock(uint64_t first, uint64_t end, std::function<void()> granted);
  // Releases a range taken by lock(); grants waiting requests that now fit.
  void unlock(uint64_t first, uint64_t end);
  bool idle() const { return held_.empty() && waiting_.empty(); }

 private:
  struct Range {
    uint64_t first, end;
    bool overlaps(uint64_t f, uint64_t e) const { return f < end && first < e; }
  };
  struct Waiter {
    Range range;
    std::function<void()> granted;
  };
  bool conflicts(const Range& r, size_t waiters_before) const;

  std::vector<Range> held_;
  std::deque<Waiter> waiting_;
};

// ---- The image ----------------------------------------------------------------------------

class LuksImage final : public Image {
 public:
  // `cipher` is null for an image opened for information only (no passphrase): the data
  // path then refuses every request.
  LuksImage(const Backend& backend, std::string path, std::unique_ptr<File> file, IoProvider& io,
            unsigned flags, qcow::LuksInfo info, std::shared_ptr<const qcow::SectorCipher> cipher,
            uint64_t file_size);

  const Backend& backend() const override { return backend_; }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return flags_; }
  unsigned version() const override { return 1; }  // LUKS1
  uint64_t size() const override { return size_; }
  Result<uint64_t> file_size() override;
  uint32_t cluster_size() const override { return kSectorSize; }

  void read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) override;
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
             Completion done) override;
  void write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) override;
  void discard(uint64_t offset, uint64_t length, Completion done) override;
  void flush(Completion done) override;
  void block_status(uint64_t offset, uint64_t length, ExtentHandler done) override;
  void set_parent_reader(std::shared_ptr<ParentReader>) override {}  // no parent

  Geometry pchs() const override;
  Error set_pchs(const Geometry& g) override;
  Geometry lchs() const override;
  Error set_lchs(const Geometry& g) override;

  std::optional<std::string> parent_filename() const override { return std::nullopt; }
  std::optional<std::string> parent_format() const override { return std::nullopt; }
  Error set_parent(const std::optional<std::string>& filename,
                   const std::optional<std::string>& format) override;

  using Image::resize;
  Error resize(uint64_t new_size, const ResizeOptions& opts) override;
  Error amend(const AmendOptions& opts) override;
  std::vector<InfoField> format_info() const override;
  bool encrypted() const override { return true; }
  std::vector<SnapshotInfo> snapshots() const override { return {}; }
  Result<CheckReport> check(RepairMode repair) override;
  Error close(bool remove) override;

  // For the request classes (write_op.cpp, image_io.cpp).
  File& file() { return *file_; }
  IoProvider& io() { return io_; }
  SectorLocks& locks() { return locks_; }
  const std::shared_ptr<const qcow::SectorCipher>& cipher() const { return cipher_; }
  uint64_t payload_offset() const { return info_.payload_offset; }
  void post(Completion done, Error e);
  // The master key the volume was unlocked with: amend seals it into new key slots.
  void keep_master_key(qcow::SecretBytes mk) { master_key_ = std::move(mk); }

 private:
  Error check_data_path(const char* op, bool write, uint64_t offset, uint64_t length) const;
  void read_aligned(uint64_t offset, std::span<std::byte> buf, Completion done);
  void read_bounced(uint64_t offset, std::span<std::byte> buf, Completion done);
  void zero_chunk(uint64_t offset, uint64_t end, std::shared_ptr<std::vector<std::byte>> zeros,
                  Completion done);

  const Backend& backend_;
  std::string path_;
  std::unique_ptr<File> file_;
  IoProvider& io_;
  unsigned flags_;
  qcow::LuksInfo info_;
  std::shared_ptr<const qcow::SectorCipher> cipher_;
  uint64_t size_ = 0;
  Geometry pchs_;
  Geometry lchs_;
  SectorLocks locks_;
  qcow::SecretBytes master_key_;
};

// The virtual size QEMU gives a volume whose file is `file_size` bytes: whole sectors after
// the payload offset (the caller has checked payload_offset <= file_size).
uint64_t virtual_size(uint64_t file_size, uint64_t payload_offset);

// One guest write (write_op.cpp): encrypts a copy of `buf` and writes it, read-modify-writing
// a partial first or last sector. Holds the write's sectors in the image's SectorLocks from
// before the read of a partial sector until its write completed. `done` runs exactly once.
void start_write(LuksImage& image, uint64_t offset, std::span<const std::byte> buf,
                 unsigned flags, Completion done);

}  // namespace vd::luks
