// The raw backend: the virtual disk is the file, byte for byte.
//
//   raw.cpp        the Backend (probe, create with qemu-img's raw options, open)
//   raw_image.cpp  RawImage: the data path and the image properties
//   probe_guard.cpp which other format a sector 0 would probe as (CVE-2008-2004)
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "vd/backend.h"

namespace vd::raw {

constexpr uint32_t kSectorSize = 512;

// The format a first sector would be taken for by a prober, or empty if only raw fits.
// `sector` is the first min(512, size) bytes of the image.
std::optional<std::string_view> foreign_format(std::span<const std::byte> sector);

// Runs guarded sector-0 writes one at a time: each checks the sector it would leave
// against the current one, so two concurrent partial writes must not both check against
// the same stale sector and together assemble another format's magic.
class Sector0Queue {
 public:
  // Runs `op` now or after the operations ahead of it; `op` calls leave() when done.
  void enter(std::function<void()> op);
  void leave();

 private:
  bool busy_ = false;
  std::deque<std::function<void()>> waiting_;
};

class RawImage final : public Image {
 public:
  RawImage(const Backend& backend, std::string path, std::unique_ptr<File> file,
           IoProvider& io, unsigned flags, uint64_t size);

  const Backend& backend() const override { return backend_; }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return flags_; }
  unsigned version() const override { return 0; }
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
  void set_parent_reader(std::shared_ptr<ParentReader>) override {}  // raw has no parent

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
  std::vector<InfoField> format_info() const override { return {}; }
  bool encrypted() const override { return false; }
  std::vector<SnapshotInfo> snapshots() const override { return {}; }
  Result<CheckReport> check(RepairMode repair) override;
  Error close(bool remove) override;

 private:
  Error check_open(const char* op) const;
  Error check_writable(const char* op) const;
  Error check_range(const char* op, uint64_t offset, uint64_t length) const;
  bool guarded(uint64_t offset, uint64_t length) const;
  Error guard_sector0(std::span<const std::byte> sector) const;
  void post(Completion done, Error e);
  void zero_range(uint64_t offset, uint64_t length, unsigned flags, bool unmap_only,
                  Completion done);
  void zero_now(uint64_t offset, uint64_t length, bool unmap, Completion done);
  void guarded_write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                     Completion done);
  void write_checked(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                     std::shared_ptr<std::byte[]> sector, Completion done);
  void write_data(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                  Completion done);

  const Backend& backend_;
  std::string path_;
  std::unique_ptr<File> file_;
  IoProvider& io_;
  unsigned flags_;
  uint64_t size_;
  Geometry pchs_;
  Geometry lchs_;
  Sector0Queue sector0_;
  // The last file extent found in a read-only image: [start, end) is data, or a hole. Its
  // file does not change under a read-only open, and each SEEK_HOLE walks the page cache up
  // to the next hole, so a caller asking chunk by chunk would pay that walk every time.
  struct CachedExtent { uint64_t start = 0, end = 0; bool data = true; };
  std::optional<CachedExtent> extent_cache_;
};

}  // namespace vd::raw
