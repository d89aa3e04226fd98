// vdimg on qcow2 chains made by qemu-img, with qemu-img as the oracle. Skipped until the
// qcow2 backend is in the built-in registry.
#include <gtest/gtest.h>

#include "support/support.h"
#include "vd/registry.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

#define REQUIRE_QCOW2()                                                      \
  do {                                                                       \
    VD_REQUIRE_QEMU();                                                       \
    if (!vd::Registry::builtin().find("qcow2")) GTEST_SKIP() << "no qcow2 backend"; \
  } while (0)

// base.qcow2 <- top.qcow2 (relative backing name), data in both, a snapshot in top.
void make_chain(const TempDir& dir) {
  vdtest::sh("cd " + dir.path() + " && qemu-img create -q -f qcow2 base.qcow2 8M && "
             "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
             "qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 3M 128k' base.qcow2 >/dev/null && "
             "qemu-io -c 'write -P 3 1M 64k' -c 'write -z 3M 64k' top.qcow2 >/dev/null && "
             "qemu-img snapshot -c snap1 top.qcow2");
}

TEST(VdimgQcow2, InfoMatchesQemuImg) {
  REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir);
  std::string top = dir.file("top.qcow2");
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"--output=json"},
                                         {"--backing-chain"}, {"--backing-chain", "--output=json"}}) {
    std::vector<std::string> ours{"info"}, theirs{"qemu-img", "info"};
    ours.insert(ours.end(), extra.begin(), extra.end());
    theirs.insert(theirs.end(), extra.begin(), extra.end());
    ours.push_back(top);
    theirs.push_back(top);
    auto a = vdimg(ours);
    auto b = vdtest::run(theirs);
    ASSERT_EQ(a.exit_code, 0) << a.err;
    EXPECT_EQ(a.out, b.out) << (extra.empty() ? "" : extra.back());
  }
}

TEST(VdimgQcow2, MapMatchesQemuImg) {
  REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir);
  for (const char* fmt : {"human", "json"}) {
    auto ours = vdimg({"map", std::string("--output=") + fmt, dir.file("top.qcow2")});
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, vdtest::sh(std::string("qemu-img map --output=") + fmt + " " +
                                   dir.file("top.qcow2")));
  }
}

TEST(VdimgQcow2, CheckMatchesQemuImgOnCleanImage) {
  REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir);
  for (const char* fmt : {"human", "json"}) {
    auto ours = vdimg({"check", std::string("--output=") + fmt, dir.file("top.qcow2")});
    EXPECT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, vdtest::sh(std::string("qemu-img check --output=") + fmt + " " +
                                   dir.file("top.qcow2")));
  }
}

TEST(VdimgQcow2, CreateWithRelativeBackingTakesItsSize) {
  REQUIRE_QCOW2();
  TempDir dir;
  vdtest::sh("qemu-img create -q -f qcow2 " + dir.file("base.qcow2") + " 3M");
  auto r = vdimg({"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                  dir.file("top.qcow2")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string info = vdtest::sh("qemu-img info --output=json " + dir.file("top.qcow2"));
  EXPECT_NE(info.find("\"virtual-size\": 3145728"), std::string::npos) << info;
  EXPECT_NE(info.find("\"backing-filename\": \"base.qcow2\""), std::string::npos) << info;
  vdtest::sh("qemu-img check -q " + dir.file("top.qcow2"));
  auto refused = vdimg({"create", "-f", "qcow2", "-b", "base.qcow2", dir.file("t2.qcow2")});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("Detected format of qcow2."), std::string::npos) << refused.err;
}

TEST(VdimgQcow2, ConvertChainToQcow2AndCompressedReadsTheSame) {
  REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir);
  std::string top = dir.file("top.qcow2");
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"-c"},
                                         {"-o", "cluster_size=4k,compat=0.10"}}) {
    std::string out = dir.file("out.qcow2");
    std::vector<std::string> args{"convert", "-O", "qcow2"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(top);
    args.push_back(out);
    auto r = vdimg(args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    vdtest::sh("qemu-img check -q " + out);
    vdtest::sh("qemu-img compare -q " + top + " " + out);
    EXPECT_EQ(vdimg({"compare", top, out}).exit_code, 0);
  }
}

TEST(VdimgQcow2, IoOnChainMatchesQemuIo) {
  REQUIRE_QCOW2();
  TempDir a, b;
  make_chain(a);
  make_chain(b);
  std::vector<std::string> cmds{"write -P 7 1000 70000", "write -z 2M 100k", "discard 0 64k",
                                "write -P 9 3M 5000", "flush"};
  std::vector<std::string> q{"qemu-io"}, v{vdtest::vdimg_path(), "io", "-q"};
  for (const auto& c : cmds) {
    q.insert(q.end(), {"-c", c});
    v.insert(v.end(), {"-c", c});
  }
  q.push_back(a.file("top.qcow2"));
  v.push_back(b.file("top.qcow2"));
  ASSERT_EQ(vdtest::run(q).exit_code, 0);
  auto r = vdtest::run(v);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  vdtest::sh("qemu-img check -q " + b.file("top.qcow2"));
  vdtest::sh("qemu-img compare -q " + a.file("top.qcow2") + " " + b.file("top.qcow2"));
}

TEST(VdimgQcow2, CommitAndRebaseKeepTheContent) {
  REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir);
  std::string top = dir.file("top.qcow2"), flat = dir.file("flat.raw");
  vdtest::sh("qemu-img convert -O raw " + top + " " + flat);
  vdtest::sh("qemu-img create -q -f qcow2 " + dir.file("other.qcow2") + " 8M");
  auto rebased = vdimg({"rebase", "-b", "other.qcow2", "-F", "qcow2", top});
  ASSERT_EQ(rebased.exit_code, 0) << rebased.err;
  vdtest::sh("qemu-img check -q " + top);
  vdtest::sh("qemu-img compare -q -F raw " + top + " " + flat);
  auto committed = vdimg({"commit", top});
  ASSERT_EQ(committed.exit_code, 0) << committed.err;
  vdtest::sh("qemu-img check -q " + dir.file("other.qcow2"));
  vdtest::sh("qemu-img compare -q -F raw " + dir.file("other.qcow2") + " " + flat);
}

}  // namespace
