// How vdimg finds the files an image names, against qemu-img 7.2, run from different working
// directories: an external data file's relative name is relative to the current directory
// (as QEMU opens it), and vd also looks next to the image when nothing is there; a missing
// image or backing file fails in qemu-img's (and qemu-io's) words and exit codes.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/support.h"

namespace {

using Argv = std::vector<std::string>;

std::string unprefixed(std::string err) {
  for (const std::string p : {"qemu-img: ", "qemu-io: ", "vdimg: "}) {
    for (size_t at = 0; (at = err.find(p, at)) != std::string::npos;) err.erase(at, p.size());
  }
  return err;
}

vdtest::CmdResult in_dir(const std::string& dir, const std::string& command) {
  return vdtest::run({"sh", "-c", "cd " + dir + " && " + command});
}

// `TOOL ARGS` run in `dir` by qemu-img (or qemu-io) and by vdimg (or vdimg io).
void expect_same(const std::string& dir, const std::string& args, const std::string& qemu = "qemu-img",
                 const std::string& ours_cmd = "") {
  auto theirs = in_dir(dir, qemu + " " + args);
  auto ours = in_dir(dir, vdtest::vdimg_path() + (ours_cmd.empty() ? "" : " " + ours_cmd) + " " + args);
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << args << "\nvdimg stderr: " << ours.err;
  EXPECT_EQ(ours.out, theirs.out) << args;
  EXPECT_EQ(unprefixed(ours.err), unprefixed(theirs.err)) << args;
}

TEST(VdimgOpenNames, DataFileRelativeToTheCurrentDirectoryAsQemu) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string img = dir.file("img");
  vdtest::sh("cd " + dir.path() + " && mkdir img && "
             "qemu-img create -q -f qcow2 -o data_file=img/x.data img/x 24M && "
             "qemu-io -c 'write -P 3 0 1M' -c 'write -P 4 20M 64k' img/x >/dev/null && "
             "qemu-img convert -O raw img/x expected.raw");
  // From the folder it was made in: both open it, and copy the same bytes.
  auto ours = in_dir(dir.path(), vdtest::vdimg_path() + " convert -O raw img/x ours.raw");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(vdtest::sha256_file(dir.file("ours.raw")), vdtest::sha256_file(dir.file("expected.raw")));
  expect_same(dir.path(), "map --output=json img/x");
  expect_same(dir.path(), "check img/x");
  // From the image's own folder neither finds img/x.data (not next to the image either).
  expect_same(img, "convert -O raw x out.raw");
  expect_same(img, "-c 'read 0 1' x", "qemu-io", "io");
}

// Made from its own folder with a bare name, then used from elsewhere: QEMU looks in the
// current directory only and fails; vd finds the data file next to the image.
TEST(VdimgOpenNames, DataFileNextToTheImageWhenQemusRuleFindsNothing) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  vdtest::sh("cd " + dir.path() + " && mkdir d && cd d && "
             "qemu-img create -q -f qcow2 -o data_file=y.data y.qcow2 4M && "
             "qemu-io -c 'write -P 9 0 1M' y.qcow2 >/dev/null && qemu-img convert -O raw y.qcow2 ../expected.raw");
  EXPECT_NE(in_dir(dir.path(), "qemu-img convert -O raw d/y.qcow2 q.raw").exit_code, 0);
  auto ours = in_dir(dir.path(), vdtest::vdimg_path() + " convert -O raw d/y.qcow2 ours.raw");
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(vdtest::sha256_file(dir.file("ours.raw")), vdtest::sha256_file(dir.file("expected.raw")));
  auto io = in_dir(dir.path(), vdtest::vdimg_path() + " io -c 'read -P 9 0 1M' -c 'write -P 8 1M 4k' d/y.qcow2");
  EXPECT_EQ(io.exit_code, 0) << io.err;
  EXPECT_EQ(in_dir(dir.path() + "/d", "qemu-io -c 'read -P 8 1M 4k' y.qcow2").exit_code, 0);
  EXPECT_EQ(in_dir(dir.path() + "/d", "qemu-img check -q y.qcow2").exit_code, 0);
}

// vdimg create puts a relative data file where qemu-img does: at the name as given, from the
// current directory; the result checks clean and describes itself as qemu-img's does.
TEST(VdimgOpenNames, CreateMakesTheDataFileWhereQemuImgDoes) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  vdtest::sh("mkdir " + dir.file("img"));
  auto r = in_dir(dir.path(), vdtest::vdimg_path() + " create -q -f qcow2 -o data_file=img/z.data img/z 4M");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(in_dir(dir.path(), "test -f img/z.data").exit_code, 0);
  EXPECT_EQ(in_dir(dir.path(), "qemu-img check -q img/z").exit_code, 0);
  vdtest::sh("cd " + dir.path() + " && qemu-img create -q -f qcow2 -o data_file=img/q.data img/q 4M");
  auto ours = in_dir(dir.path(), "qemu-img info --output=json img/z").out;
  auto theirs = in_dir(dir.path(), "qemu-img info --output=json img/q").out;
  EXPECT_NE(ours.find("\"data-file\": \"img/z.data\""), std::string::npos) << ours;
  EXPECT_NE(theirs.find("\"data-file\": \"img/q.data\""), std::string::npos) << theirs;
}

TEST(VdimgOpenNames, MissingImageAndBackingFileInQemuWords) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  vdtest::sh("cd " + dir.path() + " && mkdir sub && "
             "qemu-img create -q -f qcow2 base.qcow2 1M && "
             "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
             "qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 top2.qcow2 && rm base.qcow2 && "
             "qemu-img create -q -f qcow2 sub/b.qcow2 1M && "
             "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 sub/t.qcow2 && rm sub/b.qcow2 && "
             "qemu-img create -q -f qcow2 -u -b /nonexistent/b.qcow2 -F qcow2 abs.qcow2 1M");
  for (const char* args : {"info nosuch", "convert nosuch out.raw", "check nosuch", "map nosuch",
                           "measure nosuch", "compare top.qcow2 nosuch", "dd if=nosuch of=out.raw",
                           "convert top.qcow2 out.raw", "convert top2.qcow2 out.raw", "check top.qcow2",
                           "map top.qcow2", "compare top.qcow2 top.qcow2", "measure top.qcow2",
                           "rebase -b x top.qcow2", "convert sub/t.qcow2 out.raw", "convert abs.qcow2 out.raw",
                           "snapshot -l top.qcow2", "snapshot -c s1 top2.qcow2", "info --backing-chain top2.qcow2",
                           "info --backing-chain --output=json sub/t.qcow2"})
    expect_same(dir.path(), args);
  expect_same(dir.path() + "/sub", "convert t.qcow2 out.raw");
  for (const char* image : {"nosuch", "top2.qcow2", "sub/t.qcow2"})
    expect_same(dir.path(), std::string("-c 'read 0 1' ") + image, "qemu-io", "io");
}

}  // namespace
