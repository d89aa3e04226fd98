// Disks are whole 512-byte sectors, as in QEMU: a raw file whose length is not a multiple of
// 512 is a disk rounded up (its tail reads as zeros); create rounds the size up; QCOW2 resize
// refuses a size that is not a multiple of 512; a QCOW2 header with such a size is read as
// QEMU reads it (rounded down). Each case is checked against qemu-img on the same files.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

using vdtest::vdimg;

std::string virtual_size(const std::string& tool, const std::string& image, const char* fmt) {
  CmdResult r = vdtest::run({tool, "info", "-f", fmt, "--output=json", image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto at = r.out.find("\"virtual-size\": ");
  if (at == std::string::npos) return "none";
  at += 16;
  return r.out.substr(at, r.out.find_first_of(",\n", at) - at);
}

// 5000 bytes: nine full sectors and 392 bytes of a tenth.
std::string odd_raw(const TempDir& dir) {
  std::string path = dir.file("odd.raw");
  vdtest::write_file(path, vdtest::pattern(5000, 3));
  return path;
}

TEST(SectorSize, UnalignedRawFileIsRoundedUpLikeQemu) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string raw = odd_raw(dir);
  EXPECT_EQ(virtual_size(vdtest::vdimg_path(), raw, "raw"), "5120");
  EXPECT_EQ(virtual_size("qemu-img", raw, "raw"), "5120");
  // The tail past the end of the file is a zero hole in map, as qemu-img shows it.
  CmdResult ours = vdimg({"map", "-f", "raw", "--output=json", raw});
  CmdResult theirs = vdtest::run({"qemu-img", "map", "-f", "raw", "--output=json", raw});
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
}

TEST(SectorSize, ConvertKeepsTheLastPartialSector) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string raw = odd_raw(dir);
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"-c"}}) {
    std::string out = dir.file("out.qcow2");
    std::vector<std::string> args{"convert", "-f", "raw", "-O", "qcow2"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.insert(args.end(), {raw, out});
    CmdResult r = vdimg(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(virtual_size("qemu-img", out, "qcow2"), "5120");
    CmdResult cmp = vdtest::run({"qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, out});
    EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
    std::string back = dir.file("back.raw");
    r = vdimg({"convert", "-f", "qcow2", "-O", "raw", out, back});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto bytes = vdtest::read_file(back);
    ASSERT_EQ(bytes.size(), 5120u);
    auto want = vdtest::pattern(5000, 3);
    want.resize(5120, std::byte{0});
    EXPECT_EQ(bytes, want);
  }
}

TEST(SectorSize, CreateRoundsTheSizeUp) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  for (const char* fmt : {"qcow2", "qcow", "raw"}) {
    std::string path = dir.file(std::string("c.") + fmt);
    CmdResult r = vdimg({"create", "-f", fmt, path, "1000"});
    ASSERT_EQ(r.exit_code, 0) << fmt << ": " << r.err;
    EXPECT_EQ(virtual_size("qemu-img", path, fmt), "1024") << fmt;
    EXPECT_EQ(virtual_size(vdtest::vdimg_path(), path, fmt), "1024") << fmt;
  }
  EXPECT_EQ(vdtest::file_size(dir.file("c.raw")), 1024u);
}

TEST(SectorSize, Qcow2ResizeRefusesAPartialSectorAndRawKeepsTheExactLength) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string q = dir.file("r.qcow2");
  ASSERT_EQ(vdimg({"create", "-f", "qcow2", q, "1M"}).exit_code, 0);
  CmdResult r = vdimg({"resize", "-f", "qcow2", q, "3000000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("The new size must be a multiple of 512"), std::string::npos) << r.err;
  EXPECT_EQ(virtual_size("qemu-img", q, "qcow2"), "1048576");

  std::string raw = dir.file("r.raw");
  ASSERT_EQ(vdimg({"create", "-f", "raw", raw, "1024"}).exit_code, 0);
  r = vdimg({"resize", "-f", "raw", raw, "3001"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::file_size(raw), 3001u);  // as qemu-img resize leaves it
  EXPECT_EQ(virtual_size(vdtest::vdimg_path(), raw, "raw"), "3072");
}

TEST(SectorSize, Qcow2HeaderSizeIsRoundedDownAsQemuReadsIt) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string q = dir.file("h.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + q + " 4096");
  vdtest::sh("qemu-io -f qcow2 -c 'write -P 0x5a 0 4096' " + q + " >/dev/null");
  vdtest::poke_be64(q, 24, 4000);  // the header's size field
  EXPECT_EQ(virtual_size("qemu-img", q, "qcow2"), "3584");
  EXPECT_EQ(virtual_size(vdtest::vdimg_path(), q, "qcow2"), "3584");
  std::string ours = dir.file("ours.raw"), theirs = dir.file("theirs.raw");
  ASSERT_EQ(vdimg({"convert", "-f", "qcow2", "-O", "raw", q, ours}).exit_code, 0);
  vdtest::sh("qemu-img convert -f qcow2 -O raw " + q + " " + theirs);
  EXPECT_EQ(vdtest::read_file(ours), vdtest::read_file(theirs));
}

}  // namespace
