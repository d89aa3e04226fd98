// Issue 14: options vdimg parses must take effect. Each test runs vdimg and qemu-img 7.2 on
// copies of the same fixture and compares stdout and stderr (program name aside), exit codes
// and the resulting images.
#include <gtest/gtest.h>

#include <regex>

#include "host/vdimg/bench_schedule.h"
#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

CmdResult qemu_img(std::vector<std::string> args) {
  args.insert(args.begin(), "qemu-img");
  return vdtest::run(args);
}

void expect_same_output(const CmdResult& ours, const CmdResult& theirs, const std::string& what) {
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << what << "\n" << ours.err << "\n" << theirs.err;
  EXPECT_EQ(vdtest::without_tool_prefix(ours.out), vdtest::without_tool_prefix(theirs.out)) << what;
  EXPECT_EQ(vdtest::without_tool_prefix(ours.err), vdtest::without_tool_prefix(theirs.err)) << what;
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

// Draining (the default): after every 4th completed write nothing new is sent until the
// writes in flight have completed and a flush after them has too.
TEST(VdimgHonouredOptions, BenchDrainsBeforeEachFlush) {
  vdimg::BenchSchedule s(8, 4, 4, true);
  EXPECT_EQ(s.start().issue, 4u);
  for (int i = 0; i < 3; ++i) {
    auto step = s.request_done();
    EXPECT_FALSE(step.flush);
    EXPECT_EQ(step.issue, 0u);
  }
  auto step = s.request_done();
  EXPECT_TRUE(step.flush);  // the queue is empty: flush now
  EXPECT_EQ(step.issue, 0u);
  EXPECT_EQ(s.in_flight(), 0u);
  EXPECT_EQ(s.flush_done(true).issue, 4u);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.request_done().flush);
  EXPECT_TRUE(s.request_done().flush);
  EXPECT_FALSE(s.finished());
  EXPECT_EQ(s.flush_done(true).issue, 0u);
  EXPECT_TRUE(s.finished());
}

// --no-drain: the flush goes out at once among the writes in flight, and the queue stays full.
TEST(VdimgHonouredOptions, BenchNoDrainFlushesAmongWritesInFlight) {
  vdimg::BenchSchedule s(8, 4, 4, false);
  EXPECT_EQ(s.start().issue, 4u);
  auto step = s.request_done();
  EXPECT_TRUE(step.flush);
  EXPECT_EQ(step.issue, 1u);
  EXPECT_EQ(s.in_flight(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.request_done().flush);
  EXPECT_EQ(s.in_flight(), 4u);
  // Everything is sent: qemu-img's test (requests not yet sent, 0, a multiple of the
  // interval) then holds at each of the last completions, and each sends a flush.
  for (int i = 0; i < 4; ++i) {
    step = s.request_done();
    EXPECT_TRUE(step.flush);
    EXPECT_EQ(step.issue, 0u);
  }
  for (int i = 0; i < 5; ++i) {  // the first flush too
    EXPECT_FALSE(s.finished());
    EXPECT_EQ(s.flush_done(false).issue, 0u);
  }
  EXPECT_TRUE(s.finished());
}

// The output and refusals of bench with --flush-interval, drained or not, are qemu-img's.
TEST(VdimgHonouredOptions, BenchFlushIntervalMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("b.raw");
  vdtest::sh("qemu-img create -q -f raw '" + img + "' 1M");
  static const std::regex timing("completed in [0-9.]+ seconds");
  for (std::vector<std::string> extra :
       {std::vector<std::string>{"-w", "--flush-interval=64"}, {"-w", "--flush-interval=64", "--no-drain"},
        {"-w", "-d", "8", "--flush-interval=16", "--no-drain"}, {"--flush-interval=64"},
        {"-w", "--flush-interval=32"}, {"-w", "--no-drain"}}) {
    std::vector<std::string> args = {"bench", "-f", "raw", "-c", "300"};
    args.insert(args.end(), extra.begin(), extra.end());
    args.push_back(img);
    CmdResult q = qemu_img(args);
    CmdResult v = vdtest::vdimg(args);
    q.out = std::regex_replace(q.out, timing, "completed");
    v.out = std::regex_replace(v.out, timing, "completed");
    std::string what = "bench";
    for (const auto& a : extra) what += " " + a;
    expect_same_output(v, q, what);
  }
}

// compare -p prints qemu-img's progress lines (a 2-point step, the share of the larger disk
// each range is) and the newline it ends with, on every outcome.
TEST(VdimgHonouredOptions, CompareProgressMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  vdtest::sh("cd '" + dir.path() + "' && qemu-img create -q -f qcow2 a.qcow2 4M && "
             "qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 3M 64k' a.qcow2 >/dev/null && "
             "cp a.qcow2 same.qcow2 && cp a.qcow2 other.qcow2 && "
             "qemu-io -c 'write -P 3 2M 64k' other.qcow2 >/dev/null && "
             "qemu-img create -q -f qcow2 big.qcow2 6M && qemu-img create -q -f raw big.raw 6M");
  auto f = [&](const char* name) { return dir.file(name); };
  const std::vector<std::vector<std::string>> cases = {
      {f("a.qcow2"), f("same.qcow2")},          {"-s", f("a.qcow2"), f("same.qcow2")},
      {f("a.qcow2"), f("other.qcow2")},         {f("a.qcow2"), f("big.qcow2")},
      {f("big.qcow2"), f("big.raw")},           {"-s", f("big.qcow2"), f("a.qcow2")},
      {f("a.qcow2"), f("missing.qcow2")},       {"-T", "bogus", f("a.qcow2"), f("same.qcow2")},
      {"-q", f("a.qcow2"), f("other.qcow2")},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = {"compare", "-p"};
    args.insert(args.end(), c.begin(), c.end());
    std::string what;
    for (const auto& a : args) what += " " + a;
    CmdResult q = qemu_img(args);
    CmdResult v = vdtest::vdimg(args);
    if (q.exit_code > 1) q.exit_code = 2;  // vdimg's documented exit for errors (docs/cli.md)
    expect_same_output(v, q, what);
  }
}

// rebase -p prints qemu-img's progress: 0%, a step for each range of at most 2 MiB the top
// does not hold (cut at the ends of the old and new backing disks), 100% once the backing
// file is changed, and the closing newline on every outcome; the images end up the same.
TEST(VdimgHonouredOptions, RebaseProgressMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  // The same fixture in q/ (for qemu-img) and v/ (for vdimg): an 8 MiB top over a 6 MiB old
  // backing, new backing files of 8 and 5 MiB.
  const std::string fixture =
      "qemu-img create -q -f qcow2 old.qcow2 6M && "
      "qemu-io -c 'write -P 1 0 3M' -c 'write -P 2 5M 1M' old.qcow2 >/dev/null && "
      "qemu-img create -q -f qcow2 new.qcow2 8M && qemu-io -c 'write -P 1 0 1M' new.qcow2 >/dev/null && "
      "qemu-img create -q -f qcow2 small.qcow2 5M && "
      "qemu-img create -q -f qcow2 -b old.qcow2 -F qcow2 top.qcow2 8M && "
      "qemu-io -c 'write -P 5 2M 1536k' -c 'write -z 7M 64k' top.qcow2 >/dev/null && cp top.qcow2 top0.qcow2";
  for (const char* side : {"q", "v"})
    vdtest::sh("mkdir '" + dir.file(side) + "' && cd '" + dir.file(side) + "' && " + fixture);
  const std::vector<std::vector<std::string>> cases = {
      {"-b", "new.qcow2", "-F", "qcow2"}, {"-b", "small.qcow2", "-F", "qcow2"}, {"-b", ""},
      {"-u", "-b", "new.qcow2", "-F", "qcow2"}, {"-b", "missing.qcow2", "-F", "qcow2"},
      {"-q", "-b", "new.qcow2", "-F", "qcow2"}, {"-t", "bogus", "-b", "new.qcow2", "-F", "qcow2"},
  };
  for (const auto& c : cases) {
    std::string what = "rebase -p";
    for (const auto& a : c) what += " '" + a + "'";
    CmdResult results[2];
    for (int i = 0; i < 2; ++i) {
      const std::string top = dir.file(i ? "v/top.qcow2" : "q/top.qcow2");
      vdtest::sh("cp '" + dir.file(i ? "v/top0.qcow2" : "q/top0.qcow2") + "' '" + top + "'");
      std::vector<std::string> args = {"rebase", "-p"};
      args.insert(args.end(), c.begin(), c.end());
      args.push_back(top);
      results[i] = i ? vdtest::vdimg(args) : qemu_img(args);
    }
    results[0].err = std::regex_replace(results[0].err, std::regex("/q/"), "/v/");
    expect_same_output(results[1], results[0], what);
    if (results[0].exit_code != 0) continue;
    CmdResult same = qemu_img({"compare", dir.file("q/top.qcow2"), dir.file("v/top.qcow2")});
    EXPECT_EQ(same.exit_code, 0) << what << "\n" << same.out;
    EXPECT_EQ(qemu_img({"check", dir.file("v/top.qcow2")}).exit_code, 0) << what;
  }
}

// A QCOW2 image with lazy refcounts left dirty by a killed writer: qemu-img amend's open
// repairs it and prints the repair's lines on stderr before amending, and check -r all
// prints what it found and did; vdimg prints the same.
TEST(VdimgHonouredOptions, AmendAndCheckOfADirtyImagePrintTheRepairAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  vdtest::sh("cd '" + dir.path() + "' && qemu-img create -q -f qcow2 -o lazy_refcounts=on d.qcow2 4M && "
             "(ulimit -c 0; qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 2M 64k' -c abort d.qcow2 "
             ">/dev/null 2>&1; true) && for f in qa va qc vc; do cp d.qcow2 $f.qcow2; done");
  ASSERT_NE(vdtest::run({"qemu-img", "check", dir.file("d.qcow2")}).exit_code, 0) << "the fixture is not dirty";
  for (const std::string cmd : {"amend", "check"}) {
    const std::vector<std::string> opts =
        cmd == "amend" ? std::vector<std::string>{"-o", "lazy_refcounts=off"} : std::vector<std::string>{"-r", "all"};
    const std::string theirs = dir.file(std::string("q") + cmd[0] + ".qcow2");
    const std::string ours = dir.file(std::string("v") + cmd[0] + ".qcow2");
    std::vector<std::string> args = {cmd};
    args.insert(args.end(), opts.begin(), opts.end());
    std::vector<std::string> qargs = args, vargs = args;
    qargs.push_back(theirs);
    vargs.push_back(ours);
    CmdResult q = qemu_img(qargs);
    CmdResult v = vdtest::vdimg(vargs);
    EXPECT_FALSE(q.err.empty()) << cmd;
    expect_same_output(v, q, cmd + " of a dirty image");
    EXPECT_EQ(qemu_img({"compare", ours, theirs}).exit_code, 0) << cmd;
    CmdResult check = qemu_img({"check", ours});
    EXPECT_EQ(check.exit_code, 0) << cmd << "\n" << check.out << check.err;
    EXPECT_EQ(check.out, qemu_img({"check", theirs}).out) << cmd;
  }
}

// resize --preallocation when growing: raw and QCOW2 end as qemu-img leaves them (output,
// exit code, file size, map with host offsets, check), except QCOW2's metadata mode, which
// vdimg refuses in qemu's words for a mode a format lacks (docs/cli.md), leaving the image.
TEST(VdimgHonouredOptions, ResizePreallocationMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  struct Case {
    std::string fmt, create_opts, old_size, new_size;
  };
  for (const Case& c : {Case{"raw", "", "1M", "3M"}, Case{"qcow2", "", "1M", "3M"},
                        Case{"qcow2", "-o cluster_size=4k", "1000k", "2M"}, Case{"raw", "", "1000k", "+1M"}}) {
    for (const std::string mode : {"off", "metadata", "falloc", "full", "bogus"}) {
      const std::string what = c.fmt + " " + c.create_opts + " " + c.old_size + " -> " + c.new_size + " " + mode;
      std::string img[2];
      CmdResult r[2];
      for (int i = 0; i < 2; ++i) {
        img[i] = dir.file(i ? "ours" : "theirs");
        vdtest::sh("rm -f '" + img[i] + "' && qemu-img create -q -f " + c.fmt + " " + c.create_opts + " '" +
                   img[i] + "' " + c.old_size);
        std::vector<std::string> args = {"resize", "-f", c.fmt, "--preallocation=" + mode, img[i], c.new_size};
        r[i] = i ? vdtest::vdimg(args) : qemu_img(args);
      }
      const std::string map_theirs = vdtest::sh("qemu-img map -f " + c.fmt + " --output=json '" + img[0] + "'");
      const std::string map_ours = vdtest::sh("qemu-img map -f " + c.fmt + " --output=json '" + img[1] + "'");
      expect_same_output(r[1], r[0], what);
      EXPECT_EQ(vdtest::file_size(img[1]), vdtest::file_size(img[0])) << what;
      EXPECT_EQ(map_ours, map_theirs) << what;
      if (c.fmt == "qcow2") {
        CmdResult check = qemu_img({"check", img[1]});
        EXPECT_EQ(check.exit_code, 0) << what << "\n" << check.out << check.err;
        EXPECT_EQ(check.out, qemu_img({"check", img[0]}).out) << what;
      }
    }
  }
}

// Growing a QCOW2 image whose backing file is longer than its old size: the new area reads
// as zeros, not as the backing file's data (qemu's bdrv_co_truncate zeroes it; v2, which
// has no zero clusters, fails in qemu's words and keeps its size). The map too is qemu's,
// except with extended L2 entries, where vd's zeroing of a partial cluster allocates it.
TEST(VdimgHonouredOptions, ResizeOverALongerBackingZeroesTheNewAreaAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  vdtest::sh("cd '" + dir.path() + "' && qemu-img create -q -f qcow2 b.qcow2 4M && "
             "qemu-io -c 'write -P 7 0 4M' b.qcow2 >/dev/null");
  for (const std::string opts : {"", "-o compat=0.10", "-o cluster_size=4k", "-o extended_l2=on"}) {
    std::string img[2];
    CmdResult r[2];
    for (int i = 0; i < 2; ++i) {
      img[i] = dir.file(i ? "ours.qcow2" : "theirs.qcow2");
      vdtest::sh("cd '" + dir.path() + "' && rm -f '" + img[i] + "' && qemu-img create -q -f qcow2 " + opts +
                 " -b b.qcow2 -F qcow2 '" + img[i] + "' 1000k");
      std::vector<std::string> args = {"resize", img[i], "3M"};
      r[i] = i ? vdtest::vdimg(args) : qemu_img(args);
    }
    expect_same_output(r[1], r[0], "resize over a longer backing " + opts);
    EXPECT_EQ(qemu_img({"compare", img[1], img[0]}).exit_code, 0) << opts;
    EXPECT_EQ(vdtest::sh("qemu-img info '" + img[1] + "' | grep 'virtual size'"),
              vdtest::sh("qemu-img info '" + img[0] + "' | grep 'virtual size'")) << opts;
    CmdResult check = qemu_img({"check", img[1]});
    EXPECT_EQ(check.exit_code, 0) << opts << "\n" << check.out << check.err;
    if (opts != "-o extended_l2=on") {
      EXPECT_EQ(vdtest::sh("qemu-img map --output=json '" + img[1] + "'"),
                vdtest::sh("qemu-img map --output=json '" + img[0] + "'")) << opts;
      EXPECT_EQ(check.out, qemu_img({"check", img[0]}).out) << opts;
    }
  }
}

}  // namespace
