// vdimg snapshot -c/-a/-d against qemu-img snapshot: the same sequence of snapshot
// operations and writes on two copies of an image (qemu-img + qemu-io on one, vdimg on the
// other) must leave the same active disk, the same snapshots with the same content, and an
// image qemu-img check finds clean after every step; a refcount that would overflow fails the
// operation and leaves the image as it was.
#include <gtest/gtest.h>

#include <sstream>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

struct Kind {
  const char* name;
  const char* create_opts;
  const char* fill;  // qemu-io commands writing the initial content
};

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

void expect_clean(const std::string& image, const std::string& step) {
  CmdResult chk = vdtest::run({"qemu-img", "check", image});
  EXPECT_EQ(chk.exit_code, 0) << step << "\n" << chk.out << chk.err;
}

std::vector<std::byte> content(const TempDir& dir, const std::string& image, const std::string& snap = "") {
  const std::string out = dir.file("content.raw");
  std::string cmd = "qemu-img convert -f qcow2 -O raw ";
  if (!snap.empty()) cmd += "-l snapshot.name=" + snap + " ";
  vdtest::sh(cmd + image + " " + out);
  return vdtest::read_file(out);
}

std::string snapshot_names(const std::string& image) {
  std::string out = vdtest::sh("qemu-img snapshot -l " + image);
  std::string names;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::string id, tag;
    if (words >> id >> tag && id != "Snapshot" && id != "ID") names += id + ":" + tag + " ";
  }
  return names;
}

class SnapshotOps : public ::testing::TestWithParam<Kind> {};

TEST_P(SnapshotOps, SameSequenceAsQemuImgLeavesTheSameDisksAndSnapshots) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string a = dir.file("a.qcow2"), b = dir.file("b.qcow2");
  vdtest::sh(std::string("qemu-img create -q -f qcow2 -o ") + GetParam().create_opts + " " + a + " 6M");
  vdtest::sh(std::string("qemu-io -f qcow2 ") + GetParam().fill + " " + a + " >/dev/null");
  vdtest::sh("cp " + a + " " + b);
  // Each step: (snapshot op, its argument) or ("io", qemu-io commands).
  const std::vector<std::pair<std::string, std::string>> steps{
      {"-c", "s1"},
      {"io", "-c 'write -P 2 100k 300k' -c 'write -z 1M 64k' -c 'discard 2M 128k' -c 'write -P 5 5M 4k'"},
      {"-c", "s2"},
      {"io", "-c 'write -P 3 0 64k' -c 'write -P 3 3M 1M'"},
      {"-a", "s1"},
      {"io", "-c 'write -P 4 200k 8k' -c 'discard 0 64k'"},
      {"-a", "2"},  // s2, by id
      {"-d", "s2"},
      {"-c", "s3"},
      {"-c", "s3"},  // a second snapshot with the same name (qemu allows it)
      {"-d", "s1"},
      {"-a", "s3"},  // the first s3
  };
  for (const auto& [op, arg] : steps) {
    const std::string step = op + " " + arg;
    if (op == "io") {
      vdtest::sh("qemu-io -f qcow2 " + arg + " " + a + " >/dev/null");
      std::vector<std::string> argv{"io", "-f", "qcow2"};
      std::istringstream in(arg);
      for (std::string flag, cmd; in >> flag && std::getline(in >> std::ws, cmd, '\'') && std::getline(in, cmd, '\'');)
        argv.insert(argv.end(), {"-c", cmd});
      argv.push_back(b);
      CmdResult r = vdimg(argv);
      ASSERT_EQ(r.exit_code, 0) << step << ": " << r.err;
    } else {
      vdtest::sh("qemu-img snapshot " + op + " " + arg + " " + a);
      CmdResult r = vdimg({"snapshot", op, arg, b});
      ASSERT_EQ(r.exit_code, 0) << step << ": " << r.err;
    }
    expect_clean(b, step);
  }
  EXPECT_EQ(snapshot_names(b), snapshot_names(a));
  EXPECT_TRUE(content(dir, b) == content(dir, a)) << "active state differs";
  EXPECT_TRUE(content(dir, b, "s3") == content(dir, a, "s3")) << "snapshot s3 differs";
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, SnapshotOps,
    ::testing::Values(Kind{"V3", "compat=1.1", "-c 'write -P 1 0 4M'"},
                      Kind{"V2", "compat=0.10", "-c 'write -P 1 0 4M'"},
                      Kind{"Cluster512", "cluster_size=512", "-c 'write -P 1 0 1M' -c 'write -P 6 2M 1M'"},
                      Kind{"ExtendedL2", "extended_l2=on,cluster_size=64k", "-c 'write -P 1 4k 100k' -c 'write -P 6 2M 1M'"},
                      Kind{"LazyRefcounts", "lazy_refcounts=on", "-c 'write -P 1 0 4M'"},
                      Kind{"Compressed", "compat=1.1", "-c 'write -c -P 1 0 64k' -c 'write -c -P 7 128k 64k' -c 'write -P 1 1M 1M'"},
                      Kind{"Refcount4", "refcount_bits=4", "-c 'write -P 1 0 4M'"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(SnapshotOpsLimits, RefcountOverflowFailsAndLeavesTheImageAsItWas) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string b = dir.file("b.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 -o refcount_bits=2 " + b + " 4M");
  vdtest::sh("qemu-io -f qcow2 -c 'write -P 1 0 1M' " + b + " >/dev/null");
  ASSERT_EQ(vdimg({"snapshot", "-c", "a", b}).exit_code, 0);
  ASSERT_EQ(vdimg({"snapshot", "-c", "b", b}).exit_code, 0);
  const auto before = vdtest::read_file(b);
  CmdResult r = vdimg({"snapshot", "-c", "c", b});  // refcount 3 is the maximum
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Could not create snapshot 'c'"), std::string::npos) << r.err;
  CmdResult chk = vdtest::run({"qemu-img", "check", b});
  EXPECT_EQ(chk.exit_code, 0) << chk.out;
  EXPECT_EQ(chk.out.find("leaked"), std::string::npos) << chk.out;
  EXPECT_EQ(snapshot_names(b), "1:a 2:b ");
}

TEST(SnapshotOpsLimits, ApplyRestoresTheSizeTheSnapshotHad) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string a = dir.file("a.qcow2"), b = dir.file("b.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + a + " 4M");
  vdtest::sh("qemu-io -f qcow2 -c 'write -P 1 0 4M' " + a + " >/dev/null");
  vdtest::sh("cp " + a + " " + b);
  vdtest::sh("qemu-img snapshot -c small " + a + " && qemu-img resize -q " + a + " 300M");
  vdtest::sh("qemu-io -f qcow2 -c 'write -P 2 200M 1M' " + a + " >/dev/null && qemu-img snapshot -a small " + a);
  ASSERT_EQ(vdimg({"snapshot", "-c", "small", b}).exit_code, 0);
  ASSERT_EQ(vdimg({"resize", b, "300M"}).exit_code, 0);
  ASSERT_EQ(vdimg({"io", "-c", "write -P 2 200M 1M", b}).exit_code, 0);
  CmdResult r = vdimg({"snapshot", "-a", "small", b});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_clean(b, "apply");
  EXPECT_TRUE(content(dir, b) == content(dir, a));
  EXPECT_EQ(vdtest::file_size(dir.file("content.raw")), 4u << 20);
}

TEST(SnapshotOpsLimits, FormatsWithoutSnapshotsSaySo) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string v1 = dir.file("v1.qcow"), ext = dir.file("ext.qcow2");
  vdtest::sh("qemu-img create -q -f qcow " + v1 + " 1M");
  vdtest::sh("qemu-img create -q -f qcow2 -o data_file=" + dir.file("ext.raw") + " " + ext + " 1M");
  for (const auto& img : {v1, ext}) {
    CmdResult r = vdimg({"snapshot", "-c", "a", img});
    EXPECT_EQ(r.exit_code, 1) << img;
    EXPECT_NE(r.err.find("Could not create snapshot 'a'"), std::string::npos) << r.err;
  }
}

}  // namespace
