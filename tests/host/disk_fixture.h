// Shared fixture for the Disk tests: a runtime, an in-memory provider, a registry that
// knows the fake format, and helpers that build fake chains and read/write synchronously.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "support/fake_backend.h"
#include "support/support.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace vdtest {

constexpr uint64_t kCluster = 4096;

class DiskFixture : public ::testing::Test {
 public:
  DiskFixture() { EXPECT_FALSE(registry.add(&fake_backend())); }

  // Writes `data` at `offset` straight into one fake image (no chain behind it).
  // `on` is the runtime whose executor receives io's completions (default: rt).
  void fill(vd::IoProvider& io, const std::string& path, uint64_t offset,
            const std::vector<std::byte>& data, vd::Runtime* on = nullptr) {
    auto img = fake_backend().open(path, vd::OpenOptions{}, io);
    ASSERT_TRUE(img) << img.error().message();
    ASSERT_FALSE(vd::sync_image_write(on ? *on : rt, **img, offset, data));
    ASSERT_FALSE((*img)->close(false));
  }

  void make(vd::IoProvider& io, const std::string& path, uint64_t size,
            std::optional<std::string> parent = std::nullopt,
            std::optional<std::string> format = std::nullopt) {
    ASSERT_EQ(create_fake(io, path, size, kCluster, std::move(parent), std::move(format)), "");
  }

  // base <- mid <- top in `dir` (parents recorded by relative name), 64 KiB each:
  //   cluster 0: base (seed 1); 1: mid (seed 2); 2: top (seed 3);
  //   cluster 3: base (seed 4) hidden by mid (seed 5); the rest: nobody (zeros).
  // Returns what the whole disk must read as.
  std::vector<std::byte> make_chain(vd::IoProvider& io, const std::string& dir,
                                    vd::Runtime* on = nullptr) {
    make(io, dir + "/base.fake", 64 * 1024);
    make(io, dir + "/mid.fake", 64 * 1024, "base.fake");
    make(io, dir + "/top.fake", 64 * 1024, "mid.fake");
    fill(io, dir + "/base.fake", 0, pattern(kCluster, 1), on);
    fill(io, dir + "/base.fake", 3 * kCluster, pattern(kCluster, 4), on);
    fill(io, dir + "/mid.fake", kCluster, pattern(kCluster, 2), on);
    fill(io, dir + "/mid.fake", 3 * kCluster, pattern(kCluster, 5), on);
    fill(io, dir + "/top.fake", 2 * kCluster, pattern(kCluster, 3), on);
    std::vector<std::byte> want(64 * 1024);
    put(want, 0, pattern(kCluster, 1));
    put(want, kCluster, pattern(kCluster, 2));
    put(want, 2 * kCluster, pattern(kCluster, 3));
    put(want, 3 * kCluster, pattern(kCluster, 5));
    return want;
  }

  static void put(std::vector<std::byte>& v, uint64_t at, const std::vector<std::byte>& d) {
    std::copy(d.begin(), d.end(), v.begin() + static_cast<ptrdiff_t>(at));
  }
  static std::vector<std::byte> slice(const std::vector<std::byte>& v, uint64_t at, uint64_t n) {
    return {v.begin() + static_cast<ptrdiff_t>(at), v.begin() + static_cast<ptrdiff_t>(at + n)};
  }

  vd::Result<std::unique_ptr<vd::Disk>> open(const std::string& path,
                                             vd::DiskOpenOptions opts = {}) {
    return vd::Disk::open(path, opts, registry, mem);
  }

  vd::Error read(vd::Disk& d, uint64_t offset, std::vector<std::byte>& out) {
    return rt.wait([&](vd::Completion done) { d.read(offset, out, std::move(done)); });
  }
  std::vector<std::byte> read_all(vd::Disk& d, uint64_t offset, uint64_t length) {
    std::vector<std::byte> out(length, std::byte{0xee});
    vd::Error e = read(d, offset, out);
    EXPECT_FALSE(e) << e.message();
    return out;
  }
  vd::Error write(vd::Disk& d, uint64_t offset, const std::vector<std::byte>& data) {
    return rt.wait([&](vd::Completion done) { d.write(offset, data, 0, std::move(done)); });
  }

  vd::Runtime rt{1};
  vd::MemIoProvider mem{rt.executor()};
  vd::Registry registry = vd::Registry::builtin();
};

}  // namespace vdtest
