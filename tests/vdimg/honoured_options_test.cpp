// Issue 14: options vdimg parses must take effect. Each test runs vdimg and qemu-img 7.2 on
// copies of the same fixture and compares stdout and stderr (program name aside), exit codes
// and the resulting images.
#include <gtest/gtest.h>

#include <regex>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// "qemu-img: X" and "vdimg: X" compare as "X".
std::string unprefixed(const std::string& text) {
  static const std::regex prefix("(^|\n)(qemu-img|vdimg): ");
  return std::regex_replace(text, prefix, "$1");
}

CmdResult qemu_img(std::vector<std::string> args) {
  args.insert(args.begin(), "qemu-img");
  return vdtest::run(args);
}

void expect_same_output(const CmdResult& ours, const CmdResult& theirs, const std::string& what) {
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << what << "\n" << ours.err << "\n" << theirs.err;
  EXPECT_EQ(unprefixed(ours.out), unprefixed(theirs.out)) << what;
  EXPECT_EQ(unprefixed(ours.err), unprefixed(theirs.err)) << what;
}

// qemu-img's help lists the cache and aio options of these commands; so does vdimg's.
TEST(VdimgHonouredOptions, HelpListsCacheAndAioOptions) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
      {"check", {"[-T SRC_CACHE]", "  -T SRC_CACHE"}},
      {"compare", {"[-T SRC_CACHE]", "  -T SRC_CACHE", "  -p "}},
      {"convert", {"[-t CACHE]", "[-T SRC_CACHE]", "  -t CACHE", "  -T SRC_CACHE"}},
      {"commit", {"[-t CACHE]", "  -t CACHE"}},
      {"rebase", {"[-t CACHE]", "[-T SRC_CACHE]", "[-p]", "  -t CACHE", "  -T SRC_CACHE", "  -p "}},
      {"amend", {"[-t CACHE]", "  -t CACHE"}},
      {"bench", {"[-t CACHE]", "[-i AIO]", "  -t CACHE", "  -i AIO"}},
      {"io", {"[-t CACHE]", "[-n]", "[-i AIO]", "  -t CACHE", "  -n, --nocache", "  -i AIO"}},
  };
  for (const auto& [cmd, needles] : expected) {
    CmdResult r = vdtest::vdimg({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd;
    for (const auto& needle : needles)
      EXPECT_NE(r.out.find(needle), std::string::npos) << cmd << " --help lacks " << needle << "\n" << r.out;
  }
}

// resize opens the backing chain as qemu-img does: a missing backing file fails in its words.
TEST(VdimgHonouredOptions, ResizeWithMissingBackingFailsAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  vdtest::sh("cd '" + dir.path() + "' && qemu-img create -q -f qcow2 b.qcow2 1M && "
             "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 ours.qcow2 && rm b.qcow2 && "
             "cp ours.qcow2 theirs.qcow2");
  const std::string ours = dir.file("ours.qcow2"), theirs = dir.file("theirs.qcow2");
  CmdResult q = qemu_img({"resize", theirs, "2M"});
  CmdResult v = vdtest::vdimg({"resize", ours, "2M"});
  EXPECT_EQ(v.exit_code, 1);
  expect_same_output(v, CmdResult{q.exit_code, q.out, std::regex_replace(q.err, std::regex("theirs"), "ours")},
                     "resize, backing file missing");
  EXPECT_EQ(vdtest::sha256_file(ours), vdtest::sha256_file(theirs));
}

}  // namespace
