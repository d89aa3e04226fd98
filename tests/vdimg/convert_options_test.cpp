// vdimg convert's -S, -n, --target-is-zero, -m, -W, -r and --salvage against qemu-img 7.2
// convert: the same messages and exit codes, targets that read the same (`qemu-img compare`),
// have the same allocation (`qemu-img map --output=json`, host offsets aside) and check clean.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "support/support.h"

namespace {

using Argv = std::vector<std::string>;

std::string unprefixed(std::string err, const std::string& out_name) {
  for (const std::string& p : {std::string("qemu-img: "), std::string("vdimg: "), out_name}) {
    for (size_t at = 0; (at = err.find(p, at)) != std::string::npos;) err.erase(at, p.size());
  }
  return err;
}

// qemu-img map's JSON without host offsets (each tool lays out its file its own way).
std::string allocation(const std::string& path) {
  std::string map = vdtest::run({"qemu-img", "map", "--output=json", path}).out;
  for (size_t at = 0; (at = map.find(", \"offset\": ", at)) != std::string::npos;)
    map.erase(at, map.find('}', at) - at);
  return map;
}

// Runs `qemu-img convert` and `vdimg convert` in `dir` with `args`, where OUT names each
// tool's own target; `prepare` (a shell line, OUT replaced) makes the target first (-n).
void expect_same(const vdtest::TempDir& dir, const Argv& args, const std::string& prepare = "") {
  std::string line;
  std::string q = "cd " + dir.path() + " && rm -f q.out v.out";
  std::string v = q;
  auto named = [](std::string s, const std::string& name) {
    for (size_t at = 0; (at = s.find("OUT", at)) != std::string::npos;) s.replace(at, 3, name);
    return s;
  };
  if (!prepare.empty()) {
    q += " && " + named(prepare, "q.out");
    v += " && " + named(prepare, "v.out");
  }
  q += " && qemu-img convert";
  v += " && " + vdtest::vdimg_path() + " convert";
  for (const auto& a : args) {
    line += " " + a;
    q += " '" + named(a, "q.out") + "'";
    v += " '" + named(a, "v.out") + "'";
  }
  auto theirs = vdtest::run({"sh", "-c", q});
  auto ours = vdtest::run({"sh", "-c", v});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << line << "\nvdimg stderr: " << ours.err;
  EXPECT_EQ(ours.out, theirs.out) << line;
  EXPECT_EQ(unprefixed(ours.err, "v.out"), unprefixed(theirs.err, "q.out")) << line;
  const std::string qo = dir.file("q.out"), vo = dir.file("v.out");
  if (theirs.exit_code != 0 || !std::ifstream(qo)) return;
  EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", qo, vo}).exit_code, 0) << line;
  EXPECT_EQ(allocation(vo), allocation(qo)) << line;
  if (vdtest::run({"qemu-img", "info", qo}).out.find("format: qcow2") != std::string::npos) {
    EXPECT_EQ(vdtest::run({"qemu-img", "check", "-q", vo}).exit_code, 0) << line;
  }
}

// sparse.raw: data, short and long zero runs written as data, holes; top.qcow2 over
// base.qcow2 with zero clusters and a discard.
void make_images(const vdtest::TempDir& dir) {
  vdtest::sh("cd " + dir.path() + " && "
             "qemu-img create -q -f raw sparse.raw 4M && "
             "qemu-io -f raw -c 'write -P 1 0 1k' -c 'write -P 2 6k 1k' -c 'write -P 0 64k 64k' "
             "  -c 'write -P 3 200k 1k' -c 'write -P 4 210k 512' -c 'write -P 0 1M 1M' -c 'write -P 5 3M 3k' "
             "  sparse.raw >/dev/null && "
             "qemu-img create -q -f qcow2 base.qcow2 6M && "
             "qemu-io -c 'write -P 1 0 100k' -c 'write -z 1M 1M' -c 'write -P 7 5M 1' base.qcow2 >/dev/null && "
             "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
             "qemu-io -c 'write -P 5 3M 64k' -c 'write -P 0 3200k 8k' -c 'discard 0 64k' top.qcow2 >/dev/null");
}

TEST(VdimgConvertOptions, SparseSizeMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  for (const char* s : {"", "0", "512", "3k", "4k", "64k", "1M", "16M"}) {
    for (const char* fmt : {"raw", "qcow2"}) {
      for (const char* src : {"sparse.raw", "top.qcow2"}) {
        Argv args{"-O", fmt, src, "OUT"};
        if (*s) args.insert(args.begin(), {"-S", s});
        expect_same(dir, args);
      }
    }
  }
  expect_same(dir, {"-S", "0", "-c", "-O", "qcow2", "top.qcow2", "OUT"});
}

TEST(VdimgConvertOptions, ExistingTargetMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  const std::vector<std::pair<std::string, std::string>> targets = {
      {"qcow2", "qemu-img create -q -f qcow2 OUT 6M"},
      {"raw", "qemu-img create -q -f raw OUT 6M"},
      {"qcow2", "qemu-img create -q -f qcow2 OUT 6M && qemu-io -c 'write -P 7 0 6M' OUT >/dev/null"},
      {"raw", "qemu-img create -q -f raw OUT 6M && qemu-io -f raw -c 'write -P 7 0 6M' OUT >/dev/null"},
  };
  for (const auto& [fmt, prepare] : targets) {
    for (const char* s : {"4k", "0", "64k"}) {
      expect_same(dir, {"-n", "-S", s, "-O", fmt, "top.qcow2", "OUT"}, prepare);
      expect_same(dir, {"-n", "-S", s, "-O", fmt, "sparse.raw", "OUT"}, prepare);
    }
  }
  // The user's word that the target reads as zeros: zeros are not written.
  expect_same(dir, {"-n", "--target-is-zero", "-O", "qcow2", "top.qcow2", "OUT"}, targets[0].second);
  expect_same(dir, {"-n", "--target-is-zero", "-O", "raw", "sparse.raw", "OUT"}, targets[1].second);
  expect_same(dir, {"-n", "top.qcow2", "OUT"}, "qemu-img create -q -f raw OUT 1M");
  expect_same(dir, {"-n", "--target-is-zero", "-B", "base.qcow2", "top.qcow2", "OUT"}, targets[1].second);
}

TEST(VdimgConvertOptions, WorkersOrderAndRefusalsMatchQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  for (const Argv& args : std::vector<Argv>{
           {"-m", "1", "-O", "qcow2", "top.qcow2", "OUT"},
           {"-m", "16", "-W", "-O", "qcow2", "top.qcow2", "OUT"},
           {"-m", "0x8", "-W", "sparse.raw", "OUT"},
           {"-m", "0", "top.qcow2", "OUT"},
           {"-m", "17", "top.qcow2", "OUT"},
           {"-m", "abc", "top.qcow2", "OUT"},
           {"-r", "abc", "top.qcow2", "OUT"},
           {"-r", "0", "top.qcow2", "OUT"},
           {"-S", "abc", "top.qcow2", "OUT"},
           {"-S", "100", "top.qcow2", "OUT"},
           {"-S", "1G", "top.qcow2", "OUT"},
           {"--target-is-zero", "top.qcow2", "OUT"},
           {"-n", "-o", "cluster_size=4k", "top.qcow2", "OUT"},
           {"top.qcow2"},
           {"-O", "qcow2", "-o", "help"},
           {"-O", "qcow2", "-o", "help", "top.qcow2", "OUT"},
           {"-O", "luks", "-o", "help", "top.qcow2"},
           {"-O", "qcow2", "-o", "foo=bar", "top.qcow2", "OUT"},
           {"-O", "qcow2", "-o", "cluster_size=abc", "top.qcow2", "OUT"},
           {"-c", "-O", "qcow2", "-o", "preallocation=full", "top.qcow2", "OUT"},
           {"-c", "-O", "qcow2", "-o", "encrypt.format=aes", "top.qcow2", "OUT"},
           {"-c", "-O", "raw", "top.qcow2", "OUT"},
           {"-B", "base.qcow2", "-O", "qcow2", "top.qcow2", "OUT"},
           {"-O", "qcow2", "-o", "backing_file=base.qcow2", "top.qcow2", "OUT"},
       })
    expect_same(dir, args);
}

// A compressed cluster whose deflate stream is garbage cannot be read: the copy fails where
// qemu-img's does, and --salvage copies it as zeros with one warning per sector, as qemu-img.
TEST(VdimgConvertOptions, SalvageMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string img = dir.file("broken.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 1M && qemu-io -c 'write -P 1 0 64k' "
             "-c 'write -c -P 2 64k 64k' -c 'write -P 3 128k 64k' " + img + " >/dev/null");
  const uint64_t l1 = vdtest::peek_be64(img, 40);
  const uint64_t l2 = vdtest::peek_be64(img, l1) & 0x00fffffffffffe00ull;
  const uint64_t compressed = vdtest::peek_be64(img, l2 + 8) & ((1ull << 54) - 1);  // 64k clusters
  vdtest::poke_bytes(img, compressed + 2, std::string(200, '\xff'));
  for (const Argv& args : std::vector<Argv>{
           {"broken.qcow2", "OUT"},
           {"-O", "qcow2", "-W", "broken.qcow2", "OUT"},
           {"--salvage", "broken.qcow2", "OUT"},
           {"--salvage", "-q", "-O", "qcow2", "broken.qcow2", "OUT"},
       })
    expect_same(dir, args);
}

// -r spreads the writes over time: 4 MiB at 2 MiB/s cannot take less than a second or so
// (a lower bound only; a slow machine just takes longer).
TEST(VdimgConvertOptions, RateLimitSlowsTheCopy) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  vdtest::sh("cd " + dir.path() + " && qemu-img create -q -f qcow2 d.qcow2 4M && "
             "qemu-io -c 'write -P 1 0 4M' d.qcow2 >/dev/null");
  const auto start = std::chrono::steady_clock::now();
  auto r = vdtest::vdimg({"convert", "-r", "2M", "-O", "qcow2", dir.file("d.qcow2"), dir.file("o.qcow2")});
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(took, std::chrono::milliseconds(800));
  EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", dir.file("d.qcow2"), dir.file("o.qcow2")}).exit_code, 0);
}

}  // namespace

namespace {

// -B: the target is an overlay of BACKING holding what the source's top image holds (its
// data and its zeros), whatever BACKING reads; -C copies data whole; several sources are
// concatenated. Each against qemu-img.
TEST(VdimgConvertOptions, BackingFileOffloadAndConcatenationMatchQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  vdtest::sh("cd " + dir.path() + " && qemu-img create -q -f qcow2 -o compat=0.10 other.qcow2 3M && "
             "qemu-io -c 'write -P 9 0 3M' other.qcow2 >/dev/null");
  for (const Argv& backing : std::vector<Argv>{{"-B", "base.qcow2", "-F", "qcow2"},
                                               {"-B", "sparse.raw", "-F", "raw"},
                                               {"-B", "other.qcow2", "-F", "qcow2"}}) {
    for (const char* extra : {"", "-S0", "-c"}) {
      for (const char* src : {"top.qcow2", "sparse.raw"}) {
        Argv args = backing;
        if (*extra) args.push_back(extra);
        args.insert(args.end(), {"-O", "qcow2", src, "OUT"});
        expect_same(dir, args);
      }
    }
  }
  for (const char* fmt : {"raw", "qcow2"}) {
    expect_same(dir, {"-C", "-O", fmt, "sparse.raw", "OUT"});
    expect_same(dir, {"-C", "-O", fmt, "top.qcow2", "OUT"});
    expect_same(dir, {"-O", fmt, "top.qcow2", "sparse.raw", "OUT"});
    expect_same(dir, {"-S", "0", "-O", fmt, "sparse.raw", "base.qcow2", "top.qcow2", "OUT"});
  }
  for (const Argv& args : std::vector<Argv>{
           {"-C", "-c", "-O", "qcow2", "top.qcow2", "OUT"},
           {"-C", "-S", "4k", "top.qcow2", "OUT"},
           {"-C", "--salvage", "top.qcow2", "OUT"},
           {"-l", "snap", "top.qcow2", "top.qcow2", "OUT"},
           {"-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "sparse.raw", "OUT"},
       })
    expect_same(dir, args);
}

}  // namespace

namespace {

// `create -o help` in qemu-img's layout, with and without a file name.
TEST(VdimgConvertOptions, CreateOptionHelpMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  for (const char* fmt : {"raw", "qcow", "qcow2", "luks"}) {
    for (bool file : {false, true}) {
      Argv args{"create", "-f", fmt, "-o", "help"};
      if (file) args.push_back("x.img");
      Argv q = args;
      q.insert(q.begin(), "qemu-img");
      auto theirs = vdtest::run(q);
      auto ours = vdtest::vdimg(args);
      EXPECT_EQ(ours.exit_code, theirs.exit_code) << fmt;
      EXPECT_EQ(ours.out, theirs.out) << fmt << (file ? " with a file" : "");
    }
  }
}

}  // namespace
