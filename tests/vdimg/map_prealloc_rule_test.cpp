// map consults the file's holes only when QEMU's metadata-preallocation test says so
// (clusters with a reference, counted up to max(real * 10 / 9, real + 2) where real is the
// clusters the file occupies). The cases the audit found where a looser rule disagreed with
// qemu-img both ways: compressed writes and snapshots (qemu splits at holes), and a discard
// (qemu does not).
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

struct Case {
  const char* name;
  const char* io;        // qemu-io commands after create
  bool snapshot = false;
};

class MapPreallocRule : public ::testing::TestWithParam<Case> {};

TEST_P(MapPreallocRule, JsonMapEqualsQemuImgs) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string img = dir.file("m.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 8M");
  vdtest::sh(std::string("qemu-io -f qcow2 ") + GetParam().io + " " + img + " >/dev/null");
  if (GetParam().snapshot) vdtest::sh("qemu-img snapshot -c s1 " + img);
  auto theirs = vdtest::run({"qemu-img", "map", "-f", "qcow2", "--output=json", img});
  auto ours = vdtest::run({vdtest::vdimg_path(), "map", "-f", "qcow2", "--output=json", img});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
}

INSTANTIATE_TEST_SUITE_P(
    Audit, MapPreallocRule,
    ::testing::Values(Case{"CompressedThenPlain", "-c 'write -c -P 1 0 64k' -c 'write -P 2 70000 100'"},
                      Case{"Snapshot", "-c 'write -P 0x11 5000 3000'", true},
                      Case{"Discard", "-c 'write -P 1 0 1M' -c 'discard 0 512k' -c 'write -P 2 2102152 100'"},
                      Case{"Plain", "-c 'write -P 3 1M 300k'"}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
