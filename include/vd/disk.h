// A Disk is a chain of images, top (writable) to base, seen as one virtual disk.
//
// Reads go through the chain: a range the top does not hold is read from its parent, and so
// on; past the base, and past the end of a parent shorter than its child, it reads zeros.
// Writes go to the top; the top fills partial clusters from the chain through the
// ParentReader the Disk attaches to each image.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vd/backend.h"
#include "vd/error.h"
#include "vd/io.h"
#include "vd/registry.h"

namespace vd {

struct DiskOpenOptions {
  std::optional<std::string> format;  // format of the top image; probed when empty
  unsigned flags = 0;                 // OpenFlags for the top; parents always read-only
  std::optional<std::string> passphrase;
  std::optional<std::string> snapshot;  // open this internal snapshot of the top (read-only)
  bool no_backing = false;              // open the top alone
  size_t max_depth = 256;               // longest chain accepted
  uint64_t cache_bytes = 32ull << 20;
};

// Where a range of the disk comes from.
struct DiskExtent {
  Extent extent;
  int level = -1;  // index in the chain (0 = top) of the image holding it; -1: none (zeros)
};
using DiskExtentHandler = std::function<void(Error, DiskExtent)>;

class VD_API Disk {
 public:
  // Opens `path` and follows parent filenames (relative to each child's folder, or
  // absolute), honouring a recorded parent format and otherwise probing. Refuses loops,
  // missing parents and chains deeper than max_depth, with an error that prints the chain.
  static Result<std::unique_ptr<Disk>> open(const std::string& path, const DiskOpenOptions& opts,
                                            const Registry& registry, IoProvider& io);
  // A disk over images already open, top first (tests, embedders with their own policy).
  static Result<std::unique_ptr<Disk>> assemble(std::vector<std::unique_ptr<Image>> chain);

  ~Disk();

  uint64_t size() const;
  size_t depth() const;        // number of images
  Image& image(size_t level);  // 0 = top
  const Image& image(size_t level) const;
  bool read_only() const;

  void read(uint64_t offset, std::span<std::byte> buf, Completion done);
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags, Completion done);
  void write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done);
  void discard(uint64_t offset, uint64_t length, Completion done);
  void flush(Completion done);
  // Allocation status of a prefix of the range, looking down the chain.
  void block_status(uint64_t offset, uint64_t length, DiskExtentHandler done);

  // Flushes and closes every image, top first. Returns the first error.
  Error close();

 private:
  struct Impl;
  explicit Disk(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vd
