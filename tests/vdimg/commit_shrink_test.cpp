// vdimg commit and resize --shrink against qemu-img 7.2: the same chain (or image) is built
// twice with qemu-img/qemu-io, one copy goes through qemu-img, the other through vdimg; the
// outputs, exit codes and guest contents must match, every image must check clean, and the
// map (host offsets aside) must be the same.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "support/support.h"
#include "vd/registry.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// qemu-img map --output=json without host offsets, neighbours with the same answer merged:
// what the guest and the chain see, whatever order the clusters were allocated in.
std::string guest_map(const std::string& image) {
  std::string json = vdtest::sh("qemu-img map --output=json '" + image + "'");
  static const std::regex entry(
      R"re("start": (\d+), "length": (\d+), "depth": (\d+), "present": (\w+), "zero": (\w+), "data": (\w+))re");
  std::ostringstream out;
  std::string last_key;
  uint64_t start = 0, end = 0;
  auto flush = [&] {
    if (!last_key.empty()) out << start << "+" << (end - start) << " " << last_key << "\n";
  };
  for (auto it = std::sregex_iterator(json.begin(), json.end(), entry); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    const uint64_t s = std::stoull(m[1]), l = std::stoull(m[2]);
    const std::string key = m[3].str() + m[4].str() + m[5].str() + m[6].str();
    if (key == last_key && s == end) {
      end += l;
      continue;
    }
    flush();
    last_key = key;
    start = s;
    end = s + l;
  }
  flush();
  return out.str();
}

void expect_same_images(const std::string& ours, const std::string& theirs, const std::string& what) {
  EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", ours, theirs}).exit_code, 0) << what;
  CmdResult check = vdtest::run({"qemu-img", "check", ours});
  EXPECT_EQ(check.exit_code, 0) << what << "\n" << check.out << check.err;
  EXPECT_EQ(guest_map(ours), guest_map(theirs)) << what;
}

// base <- mid <- top, each with data, zeros and (in top) a compressed cluster.
void make_chain(const std::string& dir, const std::string& opts) {
  vdtest::sh("cd '" + dir + "' && qemu-img create -q -f qcow2 " + opts + " base.qcow2 8M && "
             "qemu-img create -q -f qcow2 " + opts + " -b base.qcow2 -F qcow2 mid.qcow2 && "
             "qemu-img create -q -f qcow2 " + opts + " -b mid.qcow2 -F qcow2 top.qcow2 && "
             "qemu-io -c 'write -P 1 0 64k' -c 'write -P 9 5M 1M' base.qcow2 >/dev/null && "
             "qemu-io -c 'write -P 2 1M 64k' -c 'write -z 0 32k' mid.qcow2 >/dev/null && "
             "qemu-io -c 'write -P 3 2M 64k' -c 'write -z 3M 64k' -c 'write -P 4 5000k 4k' "
             "-c 'write -c -P 5 7M 64k' top.qcow2 >/dev/null");
}

TEST(VdimgCommit, MatchesQemuImgOnEveryKindOfChain) {
  VD_REQUIRE_QCOW2();
  for (std::string opts : {"", "-o compat=0.10", "-o cluster_size=4k", "-o extended_l2=on",
                           "-o refcount_bits=1", "-o lazy_refcounts=on"}) {
    for (std::vector<std::string> variant : std::vector<std::vector<std::string>>{
             {}, {"-d"}, {"-b", "base.qcow2"}, {"-b", "mid.qcow2"}, {"-p", "-q"}}) {
      TempDir ours, theirs;
      make_chain(ours.path(), opts);
      make_chain(theirs.path(), opts);
      std::vector<std::string> q{"qemu-img", "commit"}, v{"commit"};
      std::string what = opts;
      for (const auto& a : variant) {
        q.push_back(a);
        v.push_back(a);
        what += " " + a;
      }
      q.push_back(theirs.file("top.qcow2"));
      v.push_back(ours.file("top.qcow2"));
      CmdResult a = vdtest::vdimg(v), b = vdtest::run(q);
      EXPECT_EQ(a.exit_code, b.exit_code) << what << a.err;
      EXPECT_EQ(a.out, b.out) << what;
      for (const char* f : {"base.qcow2", "mid.qcow2", "top.qcow2"})
        expect_same_images(ours.file(f), theirs.file(f), what + " " + f);
    }
  }
}

TEST(VdimgCommit, RefusalsAsQemuImg) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir.path(), "");
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"-b", "nonexist", "top.qcow2"}, {"-b", "top.qcow2", "top.qcow2"}, {"base.qcow2"},
           {"-r", "xx", "top.qcow2"}}) {
    std::vector<std::string> q{"qemu-img", "commit"}, v{vdtest::vdimg_path(), "commit"};
    q.insert(q.end(), args.begin(), args.end());
    v.insert(v.end(), args.begin(), args.end());
    std::string cmd = "cd '" + dir.path() + "' && ";
    auto quote = [](const std::vector<std::string>& w) {
      std::string s;
      for (const auto& x : w) s += "'" + x + "' ";
      return s;
    };
    CmdResult a = vdtest::run({"/bin/sh", "-c", cmd + quote(v)});
    CmdResult b = vdtest::run({"/bin/sh", "-c", cmd + quote(q)});
    EXPECT_EQ(a.exit_code, b.exit_code) << args[0];
    EXPECT_EQ(vdtest::without_tool_prefix(a.err), vdtest::without_tool_prefix(b.err)) << args[0];
  }
  // Nothing was written by the refusals: the chain still reads as built.
  EXPECT_NE(guest_map(dir.file("top.qcow2")).find(" 0true"), std::string::npos);
}

// The top after a plain commit reads through to the base everywhere (qemu-img map: no
// extent at depth 0), and the base alone reads as the whole chain did.
TEST(VdimgCommit, EmptiedTopReadsThroughToTheBase) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  make_chain(dir.path(), "");
  vdtest::sh("qemu-img convert -O raw '" + dir.file("top.qcow2") + "' '" + dir.file("before.raw") + "'");
  CmdResult r = vdtest::vdimg({"commit", dir.file("top.qcow2")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Image committed.\n");
  const std::string map = guest_map(dir.file("top.qcow2"));
  EXPECT_EQ(map.find(" 0"), std::string::npos) << map;  // nothing at depth 0
  vdtest::sh("qemu-img compare -q '" + dir.file("before.raw") + "' '" + dir.file("mid.qcow2") + "'");
  vdtest::sh("qemu-img compare -q '" + dir.file("before.raw") + "' '" + dir.file("top.qcow2") + "'");
}

// A top with an internal snapshot: emptying it drops the active state only (the snapshot
// keeps its clusters), and zeros committed over base data unmap it there, as qemu-img does.
TEST(VdimgCommit, TopWithASnapshotMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  auto build = [](const std::string& dir) {
    vdtest::sh("cd '" + dir + "' && qemu-img create -q -f qcow2 base.qcow2 4M && "
               "qemu-io -c 'write -P 1 0 4M' base.qcow2 >/dev/null && "
               "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
               "qemu-io -c 'write -P 2 1M 1M' top.qcow2 >/dev/null && qemu-img snapshot -c s top.qcow2 && "
               "qemu-io -c 'write -P 3 1536k 1M' -c 'write -z 0 64k' top.qcow2 >/dev/null");
  };
  TempDir ours, theirs;
  build(ours.path());
  build(theirs.path());
  CmdResult a = vdtest::vdimg({"commit", ours.file("top.qcow2")});
  CmdResult b = vdtest::run({"qemu-img", "commit", theirs.file("top.qcow2")});
  EXPECT_EQ(a.exit_code, b.exit_code) << a.err;
  EXPECT_EQ(a.out, b.out);
  for (const char* f : {"base.qcow2", "top.qcow2"}) {
    expect_same_images(ours.file(f), theirs.file(f), f);
    EXPECT_EQ(vdtest::sh("qemu-img map --output=json '" + ours.file(f) + "' | sed 's/, \"offset\": [0-9]*//'"),
              vdtest::sh("qemu-img map --output=json '" + theirs.file(f) + "' | sed 's/, \"offset\": [0-9]*//'"))
        << f;
  }
  for (const TempDir* d : {&ours, &theirs})
    vdtest::sh("qemu-img convert -l s -O raw '" + d->file("top.qcow2") + "' '" + d->file("snap.raw") + "'");
  EXPECT_EQ(vdtest::sha256_file(ours.file("snap.raw")), vdtest::sha256_file(theirs.file("snap.raw")));
}

// One image, data of every kind, optionally a snapshot taken before more writes.
void make_image(const std::string& dir, const std::string& opts, bool snapshot) {
  // Preallocated clusters cannot take compressed data: plain data there.
  const std::string compressed = opts.find("preallocation") == std::string::npos ? "-c " : "";
  std::string cmd = "cd '" + dir + "' && qemu-img create -q -f qcow2 " + opts + " s.qcow2 8M && "
                    "qemu-io -c 'write -P 5 0 3M' -c 'write " + compressed + "-P 6 3M 1M' "
                    "-c 'write -z 4M 1M' -c 'write -P 7 6M 1M' s.qcow2 >/dev/null";
  if (snapshot) cmd += " && qemu-img snapshot -c a s.qcow2 && qemu-io -c 'write -P 8 3400k 100k' s.qcow2 >/dev/null";
  vdtest::sh(cmd);
}

TEST(VdimgResize, ShrinkMatchesQemuImg) {
  VD_REQUIRE_QCOW2();
  for (std::string opts : {"", "-o compat=0.10", "-o cluster_size=4k", "-o extended_l2=on",
                           "-o refcount_bits=1", "-o preallocation=metadata", "-o preallocation=full",
                           "-o cluster_size=512"}) {
    for (bool snap : {false, true}) {
      // qemu-img cannot snapshot with refcount_bits=1; the others add nothing new there.
      if (snap && opts != "" && opts != "-o compat=0.10" && opts != "-o extended_l2=on") continue;
      for (std::string size : {"3500k", "-1k"}) {
        TempDir ours, theirs;
        make_image(ours.path(), opts, snap);
        make_image(theirs.path(), opts, snap);
        const std::string what = opts + (snap ? " snapshot " : " ") + size;
        CmdResult a = vdtest::vdimg({"resize", "--shrink", ours.file("s.qcow2"), "--", size});
        CmdResult b = vdtest::run({"qemu-img", "resize", "--shrink", theirs.file("s.qcow2"), "--", size});
        EXPECT_EQ(a.exit_code, b.exit_code) << what << a.err;
        EXPECT_EQ(a.out, b.out) << what;
        if (b.exit_code != 0) {
          const std::string want = vdtest::without_tool_prefix(b.err);
          EXPECT_NE(a.err.find(want.substr(0, want.size() - 1)), std::string::npos) << what << a.err;
        }
        expect_same_images(ours.file("s.qcow2"), theirs.file("s.qcow2"), what);
        if (snap && b.exit_code == 0) {
          vdtest::sh("qemu-img convert -l a -O raw '" + ours.file("s.qcow2") + "' '" + ours.file("snap.raw") + "'");
          vdtest::sh("qemu-img convert -l a -O raw '" + theirs.file("s.qcow2") + "' '" + theirs.file("snap.raw") + "'");
          EXPECT_EQ(vdtest::sha256_file(ours.file("snap.raw")), vdtest::sha256_file(theirs.file("snap.raw"))) << what;
        }
      }
    }
  }
}

// An external data file takes the new size, shrinking and growing, as in qemu-img.
TEST(VdimgResize, DataFileFollowsTheNewSize) {
  VD_REQUIRE_QCOW2();
  for (std::string raw : {"", ",data_file_raw=on"}) {
    TempDir ours, theirs;
    for (const TempDir* d : {&ours, &theirs})
      vdtest::sh("cd '" + d->path() + "' && qemu-img create -q -f qcow2 -o data_file='" + d->file("s.data") + "'" +
                 raw + " s.qcow2 8M && qemu-io -c 'write -P 5 0 6M' s.qcow2 >/dev/null");
    for (std::vector<std::string> step : {std::vector<std::string>{"--shrink", "2500k"}, {"5M"}}) {
      std::vector<std::string> v{"resize", ours.file("s.qcow2")}, q{"qemu-img", "resize", theirs.file("s.qcow2")};
      v.insert(v.end(), step.begin(), step.end());
      q.insert(q.end(), step.begin(), step.end());
      CmdResult a = vdtest::vdimg(v);
      CmdResult b = vdtest::run(q);
      EXPECT_EQ(a.exit_code, b.exit_code) << a.err;
      EXPECT_EQ(a.out, b.out);
      EXPECT_EQ(vdtest::file_size(ours.file("s.data")), vdtest::file_size(theirs.file("s.data"))) << raw << step[0];
      expect_same_images(ours.file("s.qcow2"), theirs.file("s.qcow2"), raw + " " + step[0]);
    }
  }
}

TEST(VdimgResize, ShrinkRefusalsAsQemuImg) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  make_image(dir.path(), "", false);
  const std::string img = dir.file("s.qcow2");
  for (std::vector<std::string> args : std::vector<std::vector<std::string>>{
           {"--preallocation=full", "--shrink", img, "4M"}, {"--preallocation=metadata", img, "4M"},
           {img, "4M"}, {"--shrink", img, "0"}}) {
    std::vector<std::string> q{"qemu-img", "resize"}, v{"resize"};
    q.insert(q.end(), args.begin(), args.end());
    v.insert(v.end(), args.begin(), args.end());
    CmdResult a = vdtest::vdimg(v), b = vdtest::run(q);
    EXPECT_EQ(a.exit_code, b.exit_code) << args[0];
    EXPECT_NE(vdtest::without_tool_prefix(a.err).find(vdtest::without_tool_prefix(b.err).substr(vdtest::without_tool_prefix(b.err).rfind('\n', vdtest::without_tool_prefix(b.err).size() - 2) + 1)),
              std::string::npos)
        << a.err << "\nqemu-img: " << b.err;
  }
  EXPECT_EQ(vdtest::sh("qemu-img info --output=json '" + img + "' | grep '\"virtual-size\"'"),
            "    \"virtual-size\": 8388608,\n");
}

}  // namespace
