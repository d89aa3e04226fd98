// create_overlay (vd/disk.h): a VM snapshot's new top over the disk it ran on.
#include <gtest/gtest.h>

#include <filesystem>

#include "support/support.h"
#include "vd/disk.h"
#include "vd/runtime.h"

namespace {

TEST(CreateOverlay, SizeAndFormatComeFromTheBackingImage) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  vdtest::sh("qemu-img create -q -f qcow2 " + dir.file("base.qcow2") + " 10M && qemu-io -c 'write -P 0x42 1M 64k' " +
             dir.file("base.qcow2") + " >/dev/null");
  vd::Runtime rt(1);
  const vd::Registry reg = vd::Registry::builtin();
  auto top = vd::create_overlay(reg, rt.files(), dir.file("top.qcow2"), "base.qcow2");
  ASSERT_TRUE(top) << top.error().message();
  EXPECT_EQ((*top)->size(), 10u << 20);
  EXPECT_EQ((*top)->parent_filename(), std::optional<std::string>("base.qcow2"));
  EXPECT_EQ((*top)->parent_format(), std::optional<std::string>("qcow2"));
  ASSERT_FALSE((*top)->close(false));
  auto disk = vd::Disk::open(dir.file("top.qcow2"), {}, reg, rt.files());
  ASSERT_TRUE(disk) << disk.error().message();
  EXPECT_EQ((*disk)->depth(), 2u);
  std::vector<std::byte> buf(4096);
  ASSERT_FALSE(rt.wait([&](vd::Completion c) { (*disk)->read(1u << 20, buf, std::move(c)); }));
  EXPECT_EQ(buf[0], std::byte{0x42});
  ASSERT_FALSE((*disk)->close());
  EXPECT_EQ(vdtest::run({"qemu-img", "check", dir.file("top.qcow2")}).exit_code, 0);
}

TEST(CreateOverlay, MissingBackingFileIsNamed) {
  vdtest::TempDir dir;
  vd::Runtime rt(1);
  const vd::Registry reg = vd::Registry::builtin();
  auto top = vd::create_overlay(reg, rt.files(), dir.file("top.qcow2"), "nowhere.qcow2");
  ASSERT_FALSE(top);
  EXPECT_NE(top.error().message().find("nowhere.qcow2"), std::string::npos) << top.error().message();
  EXPECT_FALSE(std::filesystem::exists(dir.file("top.qcow2")));
}

}  // namespace
