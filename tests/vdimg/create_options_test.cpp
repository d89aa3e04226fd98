// vdimg create (and convert's target) against qemu-img 7.2: the "Formatting ..." line with
// qemu's order and defaults, the -o values refused before anything is made (unknown names,
// wrong types) and after (the format's own refusals), the file options nocow and
// extent_size_hint, qcow's preallocation, and qemu's words when a file or backing file is
// missing; and the words of other commands' refusals (resize, rebase, snapshot, the raw
// probing warning). Same stdout, same stderr (tool name aside), same exit code, same file.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "support/support.h"

namespace {

using Argv = std::vector<std::string>;

struct Outcome {
  vdtest::CmdResult result;
  bool made = false;
};

Outcome run_in(const std::string& dir, const std::string& tool, const Argv& args, const std::string& made,
               const std::string& setup) {
  std::filesystem::remove_all(dir + "/out");
  std::filesystem::create_directories(dir + "/out");
  if (!setup.empty()) vdtest::sh("cd " + dir + " && " + setup);
  std::string line = "cd " + dir + " && " + tool;
  for (const auto& a : args) line += " '" + a + "'";
  Outcome o;
  o.result = vdtest::run({"sh", "-c", line});
  o.made = std::filesystem::exists(dir + "/" + made);
  return o;
}

class CreateOptions : public ::testing::Test {
 protected:
  void SetUp() override {
    VD_REQUIRE_QEMU();
    vdtest::sh("cd " + dir_.path() + " && qemu-img create -q -f qcow2 base.qcow2 8M && mkdir -p sub");
  }
  // `made`: the file the command creates (relative to the folder), compared too.
  // `setup` runs before each tool (a fresh copy of what the command changes).
  void expect_same(const Argv& args, const std::string& made = "out/x", const std::string& setup = "") {
    std::string shown;
    for (const auto& a : args) shown += " " + a;
    auto theirs = run_in(dir_.path(), "qemu-img", args, made, setup);
    auto ours = run_in(dir_.path(), vdtest::vdimg_path(), args, made, setup);
    EXPECT_EQ(ours.result.exit_code, theirs.result.exit_code) << shown << "\n" << ours.result.err;
    EXPECT_EQ(ours.result.out, theirs.result.out) << shown;
    EXPECT_EQ(vdtest::without_tool_prefix(ours.result.err), vdtest::without_tool_prefix(theirs.result.err))
        << shown;
    EXPECT_EQ(ours.made, theirs.made) << shown;
  }
  vdtest::TempDir dir_;
};

TEST_F(CreateOptions, FormattingLineAndRefusalsMatchQemuImg) {
  const std::vector<std::string> qcow2 = {
      "", "cluster_size=4k", "cluster_size=64k,refcount_bits=0x10", "refcount_bits=-1", "lazy_refcounts=on",
      "lazy_refcounts=y,extended_l2=on,cluster_size=32k", "compat=0.10", "compat=9", "compat=0.10,lazy_refcounts=on",
      "preallocation=metadata", "preallocation=bad", "compression_type=zstd", "cluster_size=4k,cluster_size=8k",
      "data_file=out/x.data,data_file_raw=on", "data_file=nodir/x.data", "data_file=out/a,,b", "foo=bar",
      "lazy_refcounts=maybe", "lazy_refcounts=x,foo=1", "extended_l2=1", "refcount_bits=abc", "cluster_size=abc",
      "cluster_size=3000", "encrypt.iter-time=abc", "size=2M", "size=abc", "nocow=on", "nocow=maybe",
      "extent_size_hint=1M", "extent_size_hint=0", "extent_size_hint=8G", "backing_file=base.qcow2",
      "backing_file=../base.qcow2,backing_fmt=qcow2"};
  for (const auto& o : qcow2) expect_same({"create", "-f", "qcow2", "-o", o, "out/x", "1M"});
  for (const std::string fmt : {"raw", "qcow"}) {
    for (const std::string o : {"", "nocow=on,extent_size_hint=0", "preallocation=off", "preallocation=falloc",
                                "preallocation=full", "preallocation=metadata", "preallocation=bad", "foo=1",
                                "size=3M"})
      expect_same({"create", "-f", fmt, "-o", o, "out/x", "1.5M"});
  }
  expect_same({"create", "-f", "qcow", "-b", "../base.qcow2", "-F", "qcow2", "out/x"});
}

TEST_F(CreateOptions, SizesBackingFilesAndMissingFoldersMatchQemuImg) {
  expect_same({"create", "-f", "qcow2", "out/x", "1X"});
  expect_same({"create", "-f", "qcow2", "out/x", "0x100000"});
  expect_same({"create", "-f", "qcow2", "-b", "../base.qcow2", "-F", "qcow2", "out/x"});
  expect_same({"create", "-f", "qcow2", "-u", "-b", "nothere", "-F", "qcow2", "out/x", "1M"});
  expect_same({"create", "-f", "qcow2", "-b", "nothere", "-F", "qcow2", "out/x"});
  expect_same({"create", "-f", "qcow2", "-o", "size=2M,backing_file=../base.qcow2,backing_fmt=qcow2", "out/x"});
  expect_same({"create", "-f", "qcow2", "nodir/x", "1M"}, "nodir/x");
  expect_same({"create", "-q", "-f", "raw", "out/x", "1M"});
}

TEST_F(CreateOptions, ConvertTargetOptionsMatchQemuImg) {
  for (const std::string o : {"nocow=on", "extent_size_hint=1M", "extent_size_hint=8G", "foo=bar", "lazy_refcounts=x",
                              "cluster_size=3000", "compat=0.10,lazy_refcounts=on", "data_file=nodir/x"}) {
    expect_same({"convert", "-O", "qcow2", "-o", o, "base.qcow2", "out/x"});
    expect_same({"convert", "-O", "raw", "-o", o, "base.qcow2", "out/x"});
  }
  expect_same({"convert", "-O", "qcow", "-o", "preallocation=full", "base.qcow2", "out/x"});
  expect_same({"convert", "-O", "qcow", "-o", "preallocation=metadata", "base.qcow2", "out/x"});
  expect_same({"convert", "-O", "qcow2", "base.qcow2", "nodir/x"}, "nodir/x");
}

TEST_F(CreateOptions, OtherCommandsRefuseInQemuImgsWords) {
  const std::string fresh =
      "rm -f w.qcow2 top.qcow2 r.raw && cp base.qcow2 w.qcow2 && "
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && qemu-img create -q -f raw r.raw 4M";
  // resize: the shrink refusal (error, then warning) and the size in qemu's option words.
  expect_same({"resize", "w.qcow2", "-1M"}, "w.qcow2", fresh);
  for (const std::string size : {"abc", "+abc", ""}) expect_same({"resize", "w.qcow2", size}, "w.qcow2", fresh);
  // rebase records no backing file without its format.
  expect_same({"rebase", "-u", "-b", "x", "top.qcow2"}, "top.qcow2", fresh);
  expect_same({"rebase", "-b", "w.qcow2", "top.qcow2"}, "top.qcow2", fresh);
  auto info = vdtest::run({"qemu-img", "info", dir_.file("top.qcow2")});
  EXPECT_NE(info.out.find("backing file format: qcow2"), std::string::npos) << info.out;
  // A raw image opened for writing without -f: qemu's warning (vd restricts sector 0 too).
  expect_same({"resize", "r.raw", "8M"}, "r.raw", fresh);
  expect_same({"resize", "-f", "raw", "r.raw", "8M"}, "r.raw", fresh);
  // Internal snapshots on formats without them.
  expect_same({"snapshot", "-c", "s", "r.raw"}, "r.raw", fresh);
  const std::string v1 = fresh + " && rm -f v1.qcow && qemu-img create -q -f qcow v1.qcow 1M";
  for (const std::string op : {"-c", "-a", "-d"}) expect_same({"snapshot", op, "s", "v1.qcow"}, "v1.qcow", v1);
}

}  // namespace
