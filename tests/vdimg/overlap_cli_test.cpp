// The overlap check: a write that would land on metadata because the image's tables point
// there is refused, the image is marked corrupt (as QEMU does) and the metadata is left
// intact. Fixtures: a fresh qemu-img image with 64 KiB clusters, whose layout is fixed:
//   0x00000 header, 0x10000 refcount table, 0x20000 refcount block, 0x30000 L1 table,
//   0x40000 L2 table (after the first write), 0x50000 the first data cluster.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

constexpr uint64_t kCopied = 1ull << 63;

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

std::string make_image(const TempDir& dir) {
  const std::string img = dir.file("o.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 4M && qemu-io -c 'write -P 7 0 64k' " + img + " >/dev/null");
  EXPECT_EQ(vdtest::peek_be64(img, 0x30000) & ~kCopied, 0x40000u) << "unexpected layout";
  EXPECT_EQ(vdtest::peek_be64(img, 0x40000) & ~kCopied, 0x50000u) << "unexpected layout";
  return img;
}

bool marked_corrupt(const std::string& img) {
  return vdtest::run({"qemu-img", "info", img}).out.find("corrupt: true") != std::string::npos;
}

struct Case {
  const char* name;
  uint64_t at, value;       // the poke that corrupts the tables
  const char* io;           // the vdimg io command that would write over metadata
  const char* structure;    // what the error names
  uint64_t guarded;         // a metadata offset whose bytes must survive
};

class OverlapRefused : public ::testing::TestWithParam<Case> {};

TEST_P(OverlapRefused, WriteIsRefusedImageMarkedCorruptMetadataIntact) {
  VD_REQUIRE_QEMU();
  const Case& c = GetParam();
  TempDir dir;
  const std::string img = make_image(dir);
  vdtest::poke_be64(img, c.at, c.value);
  const auto before = vdtest::read_file(img);
  auto r = vdimg({"io", "-c", c.io, img});
  EXPECT_NE(r.exit_code, 0) << r.out;
  EXPECT_NE(r.err.find(c.structure), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("o.qcow2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Marking image as corrupt"), std::string::npos) << r.err;
  EXPECT_TRUE(marked_corrupt(img));
  const auto after = vdtest::read_file(img);
  ASSERT_GE(after.size(), c.guarded + 65536);
  EXPECT_TRUE(std::equal(before.begin() + c.guarded, before.begin() + c.guarded + 65536, after.begin() + c.guarded))
      << "the metadata at " << c.guarded << " was overwritten";
  // Opening it read-write again is refused while it is marked corrupt; reading still works.
  EXPECT_NE(vdimg({"io", "-c", "write -P 1 1M 4k", img}).exit_code, 0);
  EXPECT_EQ(vdimg({"io", "-r", "-c", "read -P 0 1M 4k", img}).exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, OverlapRefused,
    ::testing::Values(
        // A data cluster entry pointing at the refcount block, the L2 table itself, the
        // refcount table or the L1 table: the in-place write is refused.
        Case{"DataOnRefcountBlock", 0x40000, 0x20000 | kCopied, "write -P 1 512 4k", "refcount block", 0x20000},
        Case{"DataOnActiveL2", 0x40000, 0x40000 | kCopied, "write -P 1 0 4k", "active L2 table", 0x40000},
        Case{"DataOnRefcountTable", 0x40000, 0x10000 | kCopied, "write -P 1 0 4k", "refcount table", 0x10000},
        Case{"DataOnActiveL1", 0x40008, 0x30000 | kCopied, "write -P 1 64k 4k", "active L1 table", 0x30000},
        // An L1 entry pointing at the refcount block: the block and the "L2 table" are one
        // cluster, and writing either back is refused.
        Case{"L2TableOnRefcountBlock", 0x30000, 0x20000 | kCopied, "write -P 1 128k 4k", "overlaps with", 0x20000}),
    [](const auto& info) { return std::string(info.param.name); });

// Reads follow QEMU: a data cluster pointing at metadata reads that metadata, and one past
// the end of the file reads zeros; nothing is refused and nothing marked.
TEST(OverlapReads, DataClustersOnMetadataOrPastTheEndReadAsQemuReadsThem) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = make_image(dir);
  vdtest::poke_be64(img, 0x40008, 0x30000 | kCopied);   // guest 64k -> the L1 table
  vdtest::poke_be64(img, 0x40010, 0x900000 | kCopied);  // guest 128k -> past the end
  vdtest::poke_be64(img, 0x40018, 0x10000);             // guest 192k -> the refcount table
  auto ours = vdimg({"convert", "-f", "qcow2", "-O", "raw", img, dir.file("ours.raw")});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  vdtest::sh("qemu-img convert -f qcow2 -O raw " + img + " " + dir.file("qemu.raw"));
  EXPECT_TRUE(vdtest::read_file(dir.file("ours.raw")) == vdtest::read_file(dir.file("qemu.raw")));
  EXPECT_FALSE(marked_corrupt(img));
}

}  // namespace
