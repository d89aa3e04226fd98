// The built-in metadata contexts: base:allocation and qemu:allocation-depth, both answered
// from Disk::block_status (one call describes a prefix of the range down the chain).
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

}  // namespace

std::shared_ptr<MetaContext> base_allocation_context(std::shared_ptr<Disk> disk) {
  return std::make_shared<DiskContext>("base:allocation", std::move(disk), false);
}

std::shared_ptr<MetaContext> allocation_depth_context(std::shared_ptr<Disk> disk) {
  return std::make_shared<DiskContext>("qemu:allocation-depth", std::move(disk), true);
}

}  // namespace vd::nbd
