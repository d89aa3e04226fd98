// "fake": a tiny in-memory-friendly image format for chain tests. It stores everything
// through the IoProvider, so it works over MemIoProvider and over real files alike.
//
// Layout (little-endian):
//   0     8  magic "VDFAKE\0\1"
//   8     8  virtual size
//   16    4  cluster size (power of two, 512 B .. 1 MiB)
//   20    2  parent filename length (0: no parent)
//   22    2  parent format length (0: not recorded)
//   24    .. parent filename, then parent format
//   4096  .. allocation map, one byte per cluster (1 = allocated)
//   data: cluster i lives at data_offset + i * cluster_size, where data_offset is the map's
//         end rounded up to 4096
//
// Reads of unallocated clusters answer allocated=false; a partial write to an unallocated
// cluster reads the whole cluster from the ParentReader first (copy-on-write).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "vd/backend.h"

namespace vdtest {

class FakeBackend final : public vd::Backend {
 public:
  // With probe_enabled false, probe() always answers false: a "fake" parent then opens as
  // fake only when its format is recorded.
  explicit FakeBackend(bool probe_enabled = true) : probe_enabled_(probe_enabled) {}

  std::string_view name() const override { return "fake"; }
  unsigned capabilities() const override;
  std::vector<std::string_view> extensions() const override { return {"fake"}; }
  std::vector<vd::OptionHelp> create_options() const override;
  bool probe(vd::File& file) const override;
  vd::Result<std::unique_ptr<vd::Image>> open(const std::string& path,
                                              const vd::OpenOptions& opts,
                                              vd::IoProvider& io) const override;
  // Options: "cluster_size" (default 4096). Honours backing_file and backing_format.
  vd::Result<std::unique_ptr<vd::Image>> create(const std::string& path,
                                                const vd::CreateOptions& opts,
                                                vd::IoProvider& io) const override;

 private:
  bool probe_enabled_;
};

// A shared instance that probes by magic.
const FakeBackend& fake_backend();

// Creates a fake image and closes it again; returns the error text, empty on success.
std::string create_fake(vd::IoProvider& io, const std::string& path, uint64_t size,
                        uint32_t cluster_size = 4096,
                        std::optional<std::string> parent = std::nullopt,
                        std::optional<std::string> parent_format = std::nullopt);

}  // namespace vdtest
