// vdimg resize against qemu-img 7.2 where the layout matters: --preallocation=metadata,
// growing a data_file_raw image, growing over a longer parent with extended L2, and the
// file end after --shrink with small clusters or narrow refcounts. One image is built with
// qemu-img/qemu-io and copied exactly (holes included); qemu-img resizes one copy, vdimg the
// other; then `qemu-img map --output=json` (host offsets included), `info` (without the
// file name), `check` and the file size must be equal and `qemu-img compare` identical.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <vector>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// Copies `from` to `to` keeping its holes where they are (cp may turn zeros into holes).
void exact_copy(const std::string& from, const std::string& to) {
  const int in = ::open(from.c_str(), O_RDONLY);
  ASSERT_GE(in, 0) << from;
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(out, 0) << to;
  const off_t size = ::lseek(in, 0, SEEK_END);
  std::vector<char> buf(1 << 20);
  for (off_t at = 0; at < size;) {
    const off_t data = ::lseek(in, at, SEEK_DATA);
    if (data < 0) break;
    const off_t hole = ::lseek(in, data, SEEK_HOLE);
    for (off_t p = data; p < hole;) {
      const ssize_t n = ::pread(in, buf.data(), std::min<off_t>(hole - p, off_t(buf.size())), p);
      ASSERT_GT(n, 0);
      ASSERT_EQ(::pwrite(out, buf.data(), size_t(n), p), n);
      p += n;
    }
    at = hole;
  }
  ASSERT_EQ(::ftruncate(out, size), 0);
  ::close(in);
  ::close(out);
}

std::string q(const std::string& s) { return "'" + s + "'"; }

// What must be equal between the image qemu-img resized and the one vdimg resized.
// `disk_size`: compare the file's allocated size too (after a shrink qemu's discards of the
// freed clusters leave partial file-system blocks allocated that vd's hole punching frees:
// left out there).
void expect_same(const std::string& ours, const std::string& theirs, const std::string& what,
                 bool disk_size = true) {
  EXPECT_EQ(vdtest::sh("qemu-img map --output=json " + q(ours)), vdtest::sh("qemu-img map --output=json " + q(theirs)))
      << what;
  const std::string info = std::string(" | grep -v '^image:'") + (disk_size ? "" : " | grep -v '^disk size:'");
  EXPECT_EQ(vdtest::sh("qemu-img info " + q(ours) + info), vdtest::sh("qemu-img info " + q(theirs) + info)) << what;
  CmdResult a = vdtest::run({"qemu-img", "check", ours}), b = vdtest::run({"qemu-img", "check", theirs});
  EXPECT_EQ(a.exit_code, 0) << what << a.out << a.err;
  EXPECT_EQ(a.out + a.err, b.out + b.err) << what;
  EXPECT_EQ(vdtest::file_size(ours), vdtest::file_size(theirs)) << what;
  EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", ours, theirs}).exit_code, 0) << what;
}

// Resizes a.qcow2 with qemu-img and b.qcow2 with vdimg (both in `dir`), same arguments.
void resize_both(const std::string& dir, std::vector<std::string> args, const std::string& what) {
  std::vector<std::string> qa{"qemu-img", "resize"}, va{"resize"};
  const std::string size = args.back();
  args.pop_back();
  qa.insert(qa.end(), args.begin(), args.end());
  va.insert(va.end(), args.begin(), args.end());
  qa.insert(qa.end(), {dir + "/a.qcow2", size});
  va.insert(va.end(), {dir + "/b.qcow2", size});
  CmdResult a = vdtest::vdimg(va), b = vdtest::run(qa);
  EXPECT_EQ(a.exit_code, b.exit_code) << what << a.err << b.err;
  EXPECT_EQ(a.out, b.out) << what;
}

struct Case {
  std::string opts, old_size, new_size;
};

TEST(VdimgResizeGrow, MetadataPreallocationMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  const std::vector<std::pair<std::string, std::string>> sizes = {
      {"1M", "3M"},          // aligned, within one L2 table
      {"1000k", "3001k"},    // unaligned at both ends: copy-on-write of the partial clusters
      {"1000k", "1010k"},    // both ends in one cluster
  };
  for (std::string opts : {"", "compat=0.10", "cluster_size=512", "cluster_size=1k", "cluster_size=2M",
                           "extended_l2=on", "extended_l2=on,cluster_size=16k", "refcount_bits=1",
                           "lazy_refcounts=on"}) {
    for (const auto& [from, to] : sizes) {
      const std::string what = opts + " " + from + " -> " + to;
      TempDir dir;
      vdtest::sh("cd " + q(dir.path()) + " && qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts) +
                 " o.qcow2 " + from + " && qemu-io -c 'write -P 1 0 100k' -c 'write -P 2 900k 100k' o.qcow2 >/dev/null");
      exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
      exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
      resize_both(dir.path(), {"--preallocation=metadata", to}, what);
      expect_same(dir.file("b.qcow2"), dir.file("a.qcow2"), what);
    }
  }
}

// A snapshot shares the L2 table and the partial cluster at the old end: the table is copied
// before it changes and the cluster's data moves to a new one, as qemu does.
TEST(VdimgResizeGrow, MetadataPreallocationWithASnapshotMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string opts : {"", "extended_l2=on", "cluster_size=4k"}) {
    TempDir dir;
    vdtest::sh("cd " + q(dir.path()) + " && qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts) +
               " o.qcow2 1000k && qemu-io -c 'write -P 1 0 100k' -c 'write -P 2 900k 100k' o.qcow2 >/dev/null && "
               "qemu-img snapshot -c s1 o.qcow2");
    exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
    exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
    resize_both(dir.path(), {"--preallocation=metadata", "3001k"}, opts);
    expect_same(dir.file("b.qcow2"), dir.file("a.qcow2"), opts);
    for (const char* f : {"a.qcow2", "b.qcow2"})
      vdtest::sh("qemu-img convert -l s1 -O raw " + q(dir.file(f)) + " " + q(dir.file(std::string(f) + ".snap")));
    EXPECT_EQ(vdtest::sha256_file(dir.file("a.qcow2.snap")), vdtest::sha256_file(dir.file("b.qcow2.snap"))) << opts;
  }
}

// An encrypted image: the copy-on-write parts of the partial clusters are written encrypted
// (vdimg takes the key with --passphrase-file, qemu-img with --object and --image-opts).
TEST(VdimgResizeGrow, MetadataPreallocationOfAnEncryptedImageMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  const std::string secret = "--object secret,id=s0,data=pw ";
  auto opts = [&](const std::string& f) { return "driver=qcow2,file.filename=" + q(dir.file(f)) + ",encrypt.key-secret=s0"; };
  vdtest::sh("cd " + q(dir.path()) + " && printf pw > pw && qemu-img create -q -f qcow2 " + secret +
             "-o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10,cluster_size=4k o.qcow2 1000k && qemu-io " + secret +
             "--image-opts " + opts("o.qcow2") + " -c 'write -P 1 0 100k' -c 'write -P 2 990k 10k' >/dev/null");
  exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
  exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
  CmdResult a = vdtest::vdimg({"resize", "--passphrase-file", dir.file("pw"), "--preallocation=metadata",
                               dir.file("b.qcow2"), "3001k"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  vdtest::sh("qemu-img resize -q " + secret + "--image-opts --preallocation=metadata " + opts("a.qcow2") + " 3001k");
  for (const char* cmd : {"map --output=json ", "check "}) {
    const std::string b = vdtest::sh("qemu-img " + std::string(cmd) + secret + "--image-opts " + opts("b.qcow2"));
    EXPECT_EQ(b, vdtest::sh("qemu-img " + std::string(cmd) + secret + "--image-opts " + opts("a.qcow2"))) << cmd;
    EXPECT_FALSE(b.empty()) << cmd;
  }
  EXPECT_EQ(vdtest::file_size(dir.file("b.qcow2")), vdtest::file_size(dir.file("a.qcow2")));
  EXPECT_EQ(vdtest::run({"/bin/sh", "-c", "qemu-img compare -q " + secret + "--image-opts " + opts("a.qcow2") + " " +
                                              opts("b.qcow2")})
                .exit_code,
            0);
}

// The L1 table grows past one cluster and new L2 tables follow (512-byte clusters: 32 KiB
// per table): the old L1 table's cluster is reused as qemu reuses it.
TEST(VdimgResizeGrow, MetadataPreallocationAcrossL2TablesMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  for (const Case& c : {Case{"cluster_size=512", "1M", "1100k"}, Case{"cluster_size=1k", "1M", "3M"},
                        Case{"", "1M", "600M"}, Case{"extended_l2=on", "1M", "600M"}}) {
    const std::string what = c.opts + " " + c.old_size + " -> " + c.new_size;
    TempDir dir;
    vdtest::sh("cd " + q(dir.path()) + " && qemu-img create -q -f qcow2 " + (c.opts.empty() ? "" : "-o " + c.opts) +
               " o.qcow2 " + c.old_size + " && qemu-io -c 'write -P 1 0 100k' o.qcow2 >/dev/null");
    exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
    exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
    resize_both(dir.path(), {"--preallocation=metadata", c.new_size}, what);
    expect_same(dir.file("b.qcow2"), dir.file("a.qcow2"), what);
  }
}

// An external data file: its tables map the guest 1:1; a raw one is grown with
// preallocation=metadata even when none is asked for (qemu maps all of the data file).
TEST(VdimgResizeGrow, DataFileImagesMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string raw : {"off", "on"}) {
    for (std::string prealloc : {"off", "metadata"}) {
      const std::string what = "data_file_raw=" + raw + " --preallocation=" + prealloc;
      TempDir ours, theirs;
      for (const TempDir* d : {&ours, &theirs})
        vdtest::sh("cd " + q(d->path()) + " && qemu-img create -q -f qcow2 -o data_file=" + q(d->file("s.data")) +
                   ",data_file_raw=" + raw + " s.qcow2 1000k && qemu-io -c 'write -P 5 0 100k' s.qcow2 >/dev/null");
      CmdResult a = vdtest::vdimg({"resize", "--preallocation=" + prealloc, ours.file("s.qcow2"), "3001k"});
      CmdResult b = vdtest::run({"qemu-img", "resize", "--preallocation=" + prealloc, theirs.file("s.qcow2"), "3001k"});
      EXPECT_EQ(a.exit_code, b.exit_code) << what << a.err;
      EXPECT_EQ(a.out, b.out) << what;
      EXPECT_EQ(vdtest::file_size(ours.file("s.data")), vdtest::file_size(theirs.file("s.data"))) << what;
      EXPECT_EQ(vdtest::sh("qemu-img map --output=json " + q(ours.file("s.qcow2"))),
                vdtest::sh("qemu-img map --output=json " + q(theirs.file("s.qcow2"))))
          << what;
      const std::string info = " | grep -v '^image:' | grep -v 'data file:'";
      EXPECT_EQ(vdtest::sh("qemu-img info " + q(ours.file("s.qcow2")) + info),
                vdtest::sh("qemu-img info " + q(theirs.file("s.qcow2")) + info))
          << what;
      CmdResult c = vdtest::run({"qemu-img", "check", ours.file("s.qcow2")});
      EXPECT_EQ(c.exit_code, 0) << what << c.out << c.err;
      EXPECT_EQ(c.out, vdtest::run({"qemu-img", "check", theirs.file("s.qcow2")}).out) << what;
      EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", ours.file("s.qcow2"), theirs.file("s.qcow2")}).exit_code, 0)
          << what;
    }
  }
}

// Growing over a longer parent: the new area is zeroed in the L2 tables (qemu's
// qcow2_subcluster_zeroize): with extended L2 and an old size inside an allocated cluster,
// the cluster's subclusters past the old size become zero, the cluster stays where it is.
TEST(VdimgResizeGrow, OverALongerParentMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  for (const Case& c : {Case{"extended_l2=on", "1000k", "3M"}, Case{"extended_l2=on", "999k", "3M"},
                        Case{"extended_l2=on", "1000k", "1010k"}, Case{"", "1000k", "3M"},
                        Case{"cluster_size=4k", "1001k", "2M"}}) {
    for (std::string prealloc : {"off", "metadata"}) {
      const std::string what = c.opts + " " + c.old_size + " -> " + c.new_size + " " + prealloc;
      TempDir dir;
      vdtest::sh("cd " + q(dir.path()) + " && qemu-img create -q -f qcow2 base.qcow2 4M && "
                 "qemu-io -c 'write -P 9 0 4M' base.qcow2 >/dev/null && "
                 "qemu-img create -q -f qcow2 " + (c.opts.empty() ? "" : "-o " + c.opts + " ") +
                 "-b base.qcow2 -F qcow2 o.qcow2 " + c.old_size + " && "
                 "qemu-io -c 'write -P 1 0 " + c.old_size + "' o.qcow2 >/dev/null");
      exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
      exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
      resize_both(dir.path(), {"--preallocation=" + prealloc, c.new_size}, what);
      expect_same(dir.file("b.qcow2"), dir.file("a.qcow2"), what);
    }
  }
}

// After --shrink the refcount blocks that count nothing any more are unlinked and the file
// ends where qemu-img ends it (512-byte clusters: a block per 128 KiB; refcount_bits=1).
TEST(VdimgResizeShrink, FileEndMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string opts : {"cluster_size=512", "cluster_size=512,refcount_bits=1", "cluster_size=512,refcount_bits=64",
                           "refcount_bits=1", "cluster_size=1k,refcount_bits=2"}) {
    for (std::string size : {"3500k", "1M", "100k"}) {
      const std::string what = opts + " " + size;
      TempDir dir;
      vdtest::sh("cd " + q(dir.path()) + " && qemu-img create -q -f qcow2 -o " + opts + " o.qcow2 8M && "
                 "qemu-io -c 'write -P 5 0 3M' -c 'write -P 6 3M 1M' -c 'write -z 4M 1M' -c 'write -P 7 6M 1M' "
                 "o.qcow2 >/dev/null");
      exact_copy(dir.file("o.qcow2"), dir.file("a.qcow2"));
      exact_copy(dir.file("o.qcow2"), dir.file("b.qcow2"));
      resize_both(dir.path(), {"--shrink", size}, what);
      expect_same(dir.file("b.qcow2"), dir.file("a.qcow2"), what, false);
    }
  }
}

}  // namespace
