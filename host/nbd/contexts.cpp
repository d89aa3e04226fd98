// The built-in metadata contexts: base:allocation and qemu:allocation-depth, both answered
// from Disk::block_status (one call describes a prefix of the range down the chain), and
// qemu:dirty-bitmap:NAME, answered from the top image's persistent bitmap in memory.
#include <boost/asio/dispatch.hpp>

#include "vd/nbd.h"

namespace vd::nbd {

MetaContext::~MetaContext() = default;

namespace {

class DiskContext : public MetaContext {
 public:
  DiskContext(std::string name, std::shared_ptr<Disk> disk, bool depth)
      : name_(std::move(name)), disk_(std::move(disk)), depth_(depth) {}
  const std::string& name() const override { return name_; }
  void status(uint64_t offset, uint64_t length, StatusHandler done) override {
    disk_->block_status(offset, length, [depth = depth_, done = std::move(done)](Error e, DiskExtent x) {
      if (e) return done(std::move(e), 0, 0);
      done({}, x.extent.length, depth ? depth_flags(x) : allocation_flags(x));
    });
  }

  // As qemu's NBD server: HOLE unless some image holds data there; ZERO when it reads as
  // zeros (zero clusters, nothing below, data over a hole in the file).
  static uint32_t allocation_flags(const DiskExtent& x) {
    switch (x.extent.kind) {
      case Extent::Kind::unallocated:
      case Extent::Kind::zero:
        return kStateHole | kStateZero;
      case Extent::Kind::data:
        return x.extent.zero_data ? kStateZero : 0;
    }
    return 0;
  }
  // qemu-nbd -A: the 1-based level holding the range; 0 when no image does.
  static uint32_t depth_flags(const DiskExtent& x) {
    if (x.level < 0 || x.extent.kind == Extent::Kind::unallocated) return 0;
    return static_cast<uint32_t>(x.level) + 1;
  }

 private:
  std::string name_;
  std::shared_ptr<Disk> disk_;
  bool depth_;
};

// qemu-nbd -B NAME: bit 0 (NBD_STATE_DIRTY) set where the bitmap marks the range changed.
// The bitmap is the one the top image keeps on every write (writes through this server
// included), so a backup client sees what changed up to the moment it asks.
class BitmapContext : public MetaContext {
 public:
  BitmapContext(std::string bitmap, std::shared_ptr<Disk> disk)
      : name_("qemu:dirty-bitmap:" + bitmap), bitmap_(std::move(bitmap)), disk_(std::move(disk)) {}
  const std::string& name() const override { return name_; }
  void status(uint64_t offset, uint64_t length, StatusHandler done) override {
    // The bits belong to the image's executor (the write path sets them there unlocked).
    auto run = [this, offset, length, done = std::move(done)] {
      if (disk_->closed()) return done(Error(Errc::canceled, "the disk is closed"), 0, 0);
      DirtyBitmaps* b = disk_->image(0).bitmaps();
      if (!b) return done(Error(Errc::not_supported, "the image has no bitmaps"), 0, 0);
      auto x = b->extent(bitmap_, offset, length);
      if (!x) return done(x.error(), 0, 0);
      if (x->second == 0) return done(Error(Errc::internal, "bitmap ends before the disk"), 0, 0);
      done({}, x->second, x->first ? 1u : 0u);
    };
    if (auto ex = disk_->get_executor()) boost::asio::dispatch(ex, std::move(run));
    else run();
  }

 private:
  std::string name_, bitmap_;
  std::shared_ptr<Disk> disk_;
};

}  // namespace

Result<std::shared_ptr<MetaContext>> dirty_bitmap_context(std::shared_ptr<Disk> disk, const std::string& bitmap) {
  DirtyBitmaps* b = disk && disk->depth() > 0 ? disk->image(0).bitmaps() : nullptr;
  if (!b) return Error(Errc::not_found, "Bitmap '" + bitmap + "' is not found");
  for (const BitmapInfo& info : b->list()) {
    if (info.name != bitmap) continue;
    if (info.inconsistent)
      return Error(Errc::invalid_argument, "Bitmap '" + bitmap + "' is inconsistent and cannot be used");
    return std::shared_ptr<MetaContext>(std::make_shared<BitmapContext>(bitmap, std::move(disk)));
  }
  return Error(Errc::not_found, "Bitmap '" + bitmap + "' is not found");
}

std::shared_ptr<MetaContext> base_allocation_context(std::shared_ptr<Disk> disk) {
  return std::make_shared<DiskContext>("base:allocation", std::move(disk), false);
}

std::shared_ptr<MetaContext> allocation_depth_context(std::shared_ptr<Disk> disk) {
  return std::make_shared<DiskContext>("qemu:allocation-depth", std::move(disk), true);
}

}  // namespace vd::nbd
