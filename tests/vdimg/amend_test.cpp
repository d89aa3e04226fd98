// vdimg amend against qemu-img 7.2: the same image is built twice, one copy is amended by
// qemu-img, the other by vdimg, with the same -o; messages and exit codes must match, the
// images must read the same, check clean, and qemu-img info must describe them alike.
#include <gtest/gtest.h>

#include <regex>

#include "support/support.h"
#include "vd/registry.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// qemu-img info without what differs between two copies (disk size, paths, snapshot dates).
std::string info(const std::string& dir) {
  return vdtest::sh("cd '" + dir + "' && qemu-img info s.qcow2 | "
                    "grep -v 'disk size\\|image:\\|actual path\\|^[0-9] \\|data file:'");
}

// s.qcow2 (over b.qcow2 when `backing`): data, zero clusters (plain and over data),
// compressed data, and optionally a snapshot followed by more writes.
void make_image(const std::string& dir, std::string opts, bool backing, bool snapshot) {
  // A data file is named absolutely (qemu-img resolves a relative one from the working
  // folder); it cannot take compressed clusters.
  const bool data_file = opts.find("data_file=") != std::string::npos;
  if (data_file) opts.replace(opts.find("data_file=") + 10, 0, dir + "/");
  const std::string compressed = data_file ? "" : "-c ";
  std::string cmd = "cd '" + dir + "' && qemu-img create -q -f qcow2 b.qcow2 8M && "
                    "qemu-io -c 'write -P 1 0 8M' b.qcow2 >/dev/null && "
                    "qemu-img create -q -f qcow2 " + opts + (backing ? " -b b.qcow2 -F qcow2" : "") +
                    " s.qcow2 8M && qemu-io -c 'write -P 5 0 1M' -c 'write -z 1M 1M' "
                    "-c 'write -P 6 2M 64k' -c 'write -z 2M 32k' -c 'write " + compressed + "-P 7 3M 64k' s.qcow2 >/dev/null";
  if (snapshot) cmd += " && qemu-img snapshot -c a s.qcow2 && qemu-io -c 'write -z 0 64k' -c 'write -P 8 5M 64k' s.qcow2 >/dev/null";
  vdtest::sh(cmd);
}

void expect_same_amend(const std::string& base, bool backing, bool snapshot, const std::string& o) {
  const std::string what = base + (backing ? " backed" : "") + (snapshot ? " snapshot" : "") + " -o " + o;
  TempDir ours, theirs;
  make_image(ours.path(), base, backing, snapshot);
  make_image(theirs.path(), base, backing, snapshot);
  CmdResult b = vdtest::run({"/bin/sh", "-c", "cd '" + theirs.path() + "' && qemu-img amend -o '" + o + "' s.qcow2"});
  CmdResult a = vdtest::run({"/bin/sh", "-c", "cd '" + ours.path() + "' && '" + vdtest::vdimg_path() +
                                                  "' amend -o '" + o + "' s.qcow2"});
  EXPECT_EQ(a.exit_code, b.exit_code) << what << "\n" << a.err;
  EXPECT_EQ(vdtest::without_tool_prefix(a.err), vdtest::without_tool_prefix(b.err)) << what;
  EXPECT_EQ(a.out, b.out) << what;
  CmdResult cmp = vdtest::run({"qemu-img", "compare", "-q", ours.file("s.qcow2"), theirs.file("s.qcow2")});
  EXPECT_EQ(cmp.exit_code, 0) << what << cmp.err;
  CmdResult check = vdtest::run({"qemu-img", "check", ours.file("s.qcow2")});
  EXPECT_EQ(check.exit_code, 0) << what << "\n" << check.out << check.err;
  EXPECT_EQ(info(ours.path()), info(theirs.path())) << what;
}

TEST(VdimgAmend, CompatAndLazyRefcountsMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  // (base options, backing file, snapshot): zero clusters over a backing file are written
  // out, without one they become unallocated; snapshots' tables too.
  struct Kind {
    const char* base;
    bool backing, snapshot;
  };
  for (Kind k : {Kind{"", false, false}, Kind{"", true, false}, Kind{"", true, true}, Kind{"", false, true},
                 Kind{"-o compat=0.10", true, true}, Kind{"-o lazy_refcounts=on", false, false},
                 Kind{"-o extended_l2=on", false, false}, Kind{"-o refcount_bits=8", false, false},
                 Kind{"-o compression_type=zstd", false, false}, Kind{"-o cluster_size=4k", true, false}}) {
    for (std::string o : {"compat=0.10", "compat=1.1", "lazy_refcounts=on", "lazy_refcounts=off",
                          "compat=0.10,lazy_refcounts=on"})
      expect_same_amend(k.base, k.backing, k.snapshot, o);
  }
}

TEST(VdimgAmend, RefusalsAndOtherOptionsMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string o : {"size=16M", "size=4M", "cluster_size=4k", "preallocation=full", "encryption=on",
                        "extended_l2=off", "compression_type=zstd", "compat=2", "foo=bar", "backing_file=x",
                        "backing_fmt=qcow2", "data_file=y", "data_file_raw=on", "data_file_raw=off",
                        "refcount_bits=3", "refcount_bits=x", "lazy_refcounts=maybe", "size=1x",
                        "encrypt.keyslot=1", "refcount_bits=-16", "refcount_bits=99999999999999999999",
                        "compat=v2"})
    expect_same_amend("", false, false, o);
  for (std::string o : {"backing_file=b.qcow2,backing_fmt=qcow2", "backing_file=b.qcow2", "size=16M"})
    expect_same_amend("", true, false, o);
  expect_same_amend("-o compat=0.10", false, true, "size=16M");  // a v2 image with snapshots
}

// New refcount structures of every width, up and down, with and without snapshots (a
// snapshot takes refcounts to 2: refcount_bits=1 is refused with qemu-img's message), with
// a compat change in the same amend; the image must take writes afterwards.
TEST(VdimgAmend, RefcountWidthsMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  struct Kind {
    const char* base;
    bool snapshot;
  };
  for (Kind k : {Kind{"", true}, Kind{"-o refcount_bits=8", false}, Kind{"-o cluster_size=4k", false},
                 Kind{"-o compat=0.10", true}}) {
    for (std::string o : {"refcount_bits=1", "refcount_bits=16,compat=0.10", "refcount_bits=2,compat=1.1"})
      expect_same_amend(k.base, false, k.snapshot, o);
  }
  TempDir dir;
  make_image(dir.path(), "", false, false);
  ASSERT_EQ(vdtest::vdimg({"amend", "-o", "refcount_bits=2", dir.file("s.qcow2")}).exit_code, 0);
  vdtest::sh("qemu-io -c 'write -P 9 6M 1M' '" + dir.file("s.qcow2") + "' >/dev/null");
  ASSERT_EQ(vdtest::vdimg({"io", "-c", "write -P 10 7M 512k", dir.file("s.qcow2")}).exit_code, 0);
  vdtest::sh("qemu-img check -q '" + dir.file("s.qcow2") + "'");
  vdtest::sh("qemu-io -c 'read -P 9 6M 1M' -c 'read -P 10 7M 512k' '" + dir.file("s.qcow2") + "' | grep -q 'read 524288'");
}

TEST(VdimgAmend, DataFileOptionsMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string base : {"-o data_file=s.data", "-o data_file=s.data,data_file_raw=on"})
    for (std::string o : {"compat=0.10", "data_file_raw=on", "data_file_raw=off", "lazy_refcounts=on"})
      expect_same_amend(base, false, false, o);
}

TEST(VdimgAmend, CommandLineAsQemuImg) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  make_image(dir.path(), "", false, false);
  const std::string img = dir.file("s.qcow2");
  CmdResult none = vdtest::vdimg({"amend", img});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.err.find("Must specify options (-o)"), std::string::npos) << none.err;
  CmdResult help = vdtest::vdimg({"amend", "-o", "help", img});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_EQ(help.out, vdtest::sh("qemu-img amend -o help '" + img + "'"));
  vdtest::sh("qemu-img create -q -f raw '" + dir.file("r.raw") + "' 1M");
  CmdResult raw = vdtest::vdimg({"amend", "-f", "raw", "-o", "size=2M", dir.file("r.raw")});
  EXPECT_EQ(raw.exit_code, 1);
  EXPECT_EQ(vdtest::without_tool_prefix(raw.err), "Format driver 'raw' does not support option amendment\n");
  // -p: the progress line, ended with a newline; -q silences it.
  CmdResult p = vdtest::vdimg({"amend", "-p", "-o", "compat=0.10", img});
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(p.out.rfind("    (100.00/100%)\r\n"), p.out.size() - 19) << p.out;
  EXPECT_EQ(p.out.find("    (0.00/100%)\r"), 0u) << p.out;
  CmdResult q = vdtest::vdimg({"amend", "-p", "-q", "-o", "compat=1.1", img});
  EXPECT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(q.out, "");
  EXPECT_NE(vdtest::sh("qemu-img info '" + img + "'").find("compat: 1.1"), std::string::npos);
}

}  // namespace

namespace {

// lazy_refcounts=off on an image left dirty by a crash: the refcounts are rebuilt (the
// read-write open repairs it) and the image checks clean with the feature off.
TEST(VdimgAmend, LazyRefcountsOffOnADirtyImage) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  const std::string img = dir.file("d.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on '" + img + "' 8M");
  vdtest::run({"qemu-io", "-c", "write -P 1 0 1M", "-c", "abort", img});  // dies: the image stays dirty
  ASSERT_NE(vdtest::run({"qemu-img", "check", img}).exit_code, 0);
  vdtest::sh("cp '" + img + "' '" + dir.file("q.qcow2") + "'");
  CmdResult r = vdtest::vdimg({"amend", "-o", "lazy_refcounts=off", img});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::run({"qemu-img", "amend", "-o", "lazy_refcounts=off", dir.file("q.qcow2")}).exit_code, 0);
  vdtest::sh("qemu-img check -q '" + img + "'");
  vdtest::sh("qemu-img compare -q '" + img + "' '" + dir.file("q.qcow2") + "'");
  EXPECT_NE(vdtest::sh("qemu-img info '" + img + "'").find("lazy refcounts: false"), std::string::npos);
}

}  // namespace
