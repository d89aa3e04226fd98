// Internal snapshots read as qemu-img reads them: each snapshot's content (by name and by
// id) through DiskOpenOptions::snapshot and `vdimg convert -l` equals `qemu-img convert -l`,
// and the snapshot list agrees. The active state is covered by read_interop_test.
#include <gtest/gtest.h>

#include "support/qemu_fixtures.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

struct SnapshotCase {
  const char* recipe;
  const char* snapshot;  // name or id
};

class SnapshotRead : public ::testing::TestWithParam<SnapshotCase> {};

TEST_P(SnapshotRead, DiskReadsSnapshotAsQemuImgConvertDoes) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image(GetParam().recipe);
  auto want = vdtest::qemu_read_all(img.image, "qcow2", false, GetParam().snapshot);
  vd::DiskOpenOptions opts;
  opts.snapshot = GetParam().snapshot;
  auto got = vdtest::vd_read_all(img.image, opts);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);
  EXPECT_FALSE(got == img.qemu_bytes) << "the snapshot reads like the active state";
}

TEST_P(SnapshotRead, VdimgConvertOfSnapshotMatchesQemuImgConvert) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image(GetParam().recipe);
  auto want = vdtest::qemu_read_all(img.image, "qcow2", false, GetParam().snapshot);
  vdtest::TempDir out;
  auto res = vdtest::run({vdtest::vdimg_path(), "convert", "-l", GetParam().snapshot, "-O", "raw",
                          img.image, out.file("snap.raw")});
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_TRUE(vdtest::read_file(out.file("snap.raw")) == want);
}

INSTANTIATE_TEST_SUITE_P(Snapshots, SnapshotRead,
                         ::testing::Values(SnapshotCase{"snapshots", "first"},
                                           SnapshotCase{"snapshots", "second"},
                                           SnapshotCase{"snapshots", "1"},
                                           SnapshotCase{"snapshots_v2", "a"},
                                           SnapshotCase{"snapshots_v2", "2"}),
                         [](const auto& info) {
                           return std::string(info.param.recipe) + "_" + info.param.snapshot;
                         });

TEST(SnapshotList, VdimgSnapshotListEqualsQemuImgs) {
  VD_REQUIRE_QEMU();
  for (const char* name : {"snapshots", "snapshots_v2"}) {
    const auto& img = vdtest::shared_image(name);
    auto ours = vdtest::run({vdtest::vdimg_path(), "snapshot", "-l", img.image});
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, vdtest::sh("qemu-img snapshot -l " + img.image)) << name;
  }
}

TEST(SnapshotList, ImageListsEachSnapshotWithItsOwnDiskSize) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image("snapshots");
  vd::Runtime rt(1);
  auto registry = vd::Registry::builtin();
  vd::OpenOptions opts;
  opts.flags = vd::open_read_only;
  auto image = registry.find("qcow2")->open(img.image, opts, rt.files());
  ASSERT_TRUE(image) << image.error().message();
  auto snaps = (*image)->snapshots();
  ASSERT_EQ(snaps.size(), 2u);
  EXPECT_EQ(snaps[0].id, "1");
  EXPECT_EQ(snaps[0].name, "first");
  EXPECT_EQ(snaps[0].disk_size, 1u << 20);
  EXPECT_EQ(snaps[1].id, "2");
  EXPECT_EQ(snaps[1].name, "second");
  EXPECT_EQ(snaps[1].disk_size, 4u << 20);
  EXPECT_EQ(snaps[1].vm_state_size, 0u);
  EXPECT_NE(snaps[1].date_sec, 0u);
}

TEST(SnapshotList, OpeningAnUnknownSnapshotFailsNamingTheImage) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image("snapshots");
  vd::DiskOpenOptions opts;
  opts.snapshot = "no-such-snapshot";
  vd::Error e = vdtest::vd_try_read_all(img.image, opts);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::not_found)) << e.message();
  EXPECT_NE(e.message().find(img.image), std::string::npos) << e.message();
  EXPECT_NE(e.message().find("no-such-snapshot"), std::string::npos) << e.message();
}

}  // namespace
