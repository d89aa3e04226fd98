// `check -r leaks` on images whose refcounts only a rebuild can fix ends as qemu-img's does:
// the findings, "Check failed: Input/output error" and exit 1, with no report. Differential
// against qemu-img 7.2 on a dirty lazy-refcounts image and on a corrupted refcount table.
#include <gtest/gtest.h>

#include <regex>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// A QCOW2 image with lazy refcounts, killed after a write: dirty, refcounts of the new
// clusters missing.
void make_dirty(const std::string& path) {
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", path, "4M"}).exit_code, 0);
  vdtest::run({"qemu-io", "-c", "write -P 1 0 128k", "-c", "sigraise 9", path});
  CmdResult info = vdtest::run({"qemu-img", "info", path});
  ASSERT_NE(info.out.find("lazy refcounts: true"), std::string::npos) << info.out;
}

// A refcount table whose first block lies past the end of the file.
void make_outside(const std::string& path) {
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", path, "4M"}).exit_code, 0);
  ASSERT_EQ(vdtest::run({"qemu-io", "-c", "write 0 64k", path}).exit_code, 0);
  vdtest::poke_be64(path, vdtest::peek_be64(path, 48), 0x1000000);
}

// Each tool on its own copy of `fixture`; outputs equal, tool name aside.
void same(const std::string& fixture, const std::vector<std::string>& opts) {
  CmdResult res[2];
  const char* tools[2] = {"qemu-img", "vdimg"};
  for (int t = 0; t < 2; ++t) {
    const std::string copy = fixture + "." + tools[t];
    vdtest::write_file(copy, vdtest::read_file(fixture));
    std::vector<std::string> args = {"check"};
    args.insert(args.end(), opts.begin(), opts.end());
    args.push_back(copy);
    if (t == 1) {
      res[t] = vdtest::vdimg(args);
    } else {
      args.insert(args.begin(), "qemu-img");
      res[t] = vdtest::run(args);
    }
    // The copies differ in name only: the JSON report names the file.
    res[t].out = std::regex_replace(res[t].out, std::regex("\\.(qemu-img|vdimg)\""), "\"");
  }
  std::string line;
  for (const auto& o : opts) line += o + " ";
  EXPECT_EQ(res[1].exit_code, res[0].exit_code) << line << res[1].err;
  EXPECT_EQ(res[1].out, res[0].out) << line;
  EXPECT_EQ(vdtest::without_tool_prefix(res[1].err), vdtest::without_tool_prefix(res[0].err)) << line;
}

TEST(CheckFailed, RepairOfLeaksThatNeedsARebuildFailsAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("dirty.qcow2");
  make_dirty(img);
  same(img, {"-r", "leaks"});
  same(img, {"-r", "leaks", "--output=json"});
  same(img, {});
  same(img, {"-r", "all"});
  CmdResult v = vdtest::vdimg({"check", "-r", "leaks", img});
  EXPECT_EQ(v.exit_code, 1);
  EXPECT_NE(v.err.find("vdimg: Check failed: Input/output error"), std::string::npos) << v.err;
  EXPECT_EQ(v.out, "");
}

TEST(CheckFailed, RefcountBlockOutsideTheImage) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("outside.qcow2");
  make_outside(img);
  same(img, {});
  same(img, {"--output=json"});
  same(img, {"-r", "leaks"});
  same(img, {"-r", "leaks", "--output=json"});
}

}  // namespace
