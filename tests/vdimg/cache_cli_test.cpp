// -t/-T/-i on vdimg's commands as qemu-img and qemu-io take them: the messages for bad
// modes, O_DIRECT really used (bench -t none, seen with strace where it is installed), and
// random qemu-io workloads replayed by `vdimg io -t MODE` on QCOW2 and raw leaving the
// same guest data as qemu-io (qemu-img compare) and a clean image (qemu-img check). Images
// live under the build tree: O_DIRECT wants a real file system, and $TMPDIR may be tmpfs.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <sstream>

#include "support/support.h"

namespace {

namespace fs = std::filesystem;
constexpr uint64_t kImageSize = 8ull << 20;

struct Case {
  std::vector<std::string> argv;
  const char* message;
};

TEST(CacheCli, BadModesAreRefusedWithQemuImgsMessages) {
  vdtest::TempDir dir;
  const std::string img = dir.file("a.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 1M");
  const std::vector<Case> cases = {
      {{"check", "-T", "foo", img}, "Invalid source cache option: foo"},
      {{"compare", "-T", "foo", img, img}, "Invalid source cache option: foo"},
      {{"convert", "-t", "foo", img, dir.file("b")}, "Invalid cache option: foo"},
      {{"convert", "-T", "foo", img, dir.file("b")}, "Invalid source cache option: foo"},
      {{"commit", "-t", "foo", img}, "Invalid cache option: foo"},
      {{"rebase", "-t", "foo", "-b", "", img}, "Invalid cache option: foo"},
      {{"rebase", "-T", "foo", "-b", "", img}, "Invalid source cache option: foo"},
      {{"bench", "-t", "foo", img}, "Invalid cache mode"},
      {{"bench", "-i", "foo", img}, "Invalid aio option: foo"},
      {{"io", "-t", "foo", img}, "Invalid cache option: foo"},
      {{"io", "-i", "foo", img}, "Invalid aio option: foo"},
  };
  for (const auto& c : cases) {
    auto argv = c.argv;
    argv.insert(argv.begin(), vdtest::vdimg_path());
    auto r = vdtest::run(argv);
    EXPECT_EQ(r.exit_code, argv[1] == "compare" ? 2 : 1) << argv[1];  // qemu-img compare's error exit is 2
    EXPECT_EQ(r.err, std::string("vdimg: ") + c.message + "\n") << argv[1];
  }
  // qemu's native AIO (Linux AIO) is not implemented: said so, not silently replaced.
  for (auto argv : {std::vector<std::string>{"bench", "-i", "native", img}, {"bench", "-n", "-t", "none", img},
                    {"io", "-k", "-c", "read 0 512", img}}) {
    argv.insert(argv.begin(), vdtest::vdimg_path());
    auto r = vdtest::run(argv);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("aio=native (Linux AIO) is not implemented"), std::string::npos) << r.err;
  }
}

TEST(CacheCli, BenchWithCacheNoneOpensODirect) {
  VD_REQUIRE_QEMU();
  if (vdtest::run({"sh", "-c", "command -v strace"}).exit_code != 0) GTEST_SKIP() << "no strace";
  vdtest::TempDir dir(fs::absolute(".").string());
  const std::string img = dir.file("a.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 -o preallocation=metadata " + img + " 4M");
  for (const auto& [mode, flag] : {std::pair{"none", "O_DIRECT"}, {"directsync", "O_DIRECT"},
                                   {"writethrough", "O_DSYNC"}}) {
    for (const char* aio : {"threads", "io_uring"}) {
      // LeakSanitizer cannot stop the world under a tracer (it would fail the run): off here.
      auto r = vdtest::run({"env", "ASAN_OPTIONS=detect_leaks=0", "strace", "-f", "-e", "trace=openat",
                            vdtest::vdimg_path(), "bench", "-t", mode,
                            "-i", aio, "-c", "100", "-d", "4", img});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      bool found = false;
      std::istringstream lines(r.err);
      for (std::string line; std::getline(lines, line);) {
        if (line.find(img) == std::string::npos || line.find("openat") == std::string::npos) continue;
        found = true;
        EXPECT_NE(line.find(flag), std::string::npos) << mode << ": " << line;
      }
      EXPECT_TRUE(found) << r.err;
      auto plain = vdtest::run({"env", "ASAN_OPTIONS=detect_leaks=0", "strace", "-f", "-e", "trace=openat",
                                vdtest::vdimg_path(), "bench", "-c", "10", img});
      EXPECT_EQ(plain.err.find("O_DIRECT"), std::string::npos);
    }
  }
}

std::string random_command(std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  uint64_t len = pick(4) == 0 ? 1 + pick(1u << 20) : 1 + pick(70000);
  if (pick(3) == 0) len = (len + 4095) & ~uint64_t{4095};
  if (len > kImageSize) len = kImageSize;
  uint64_t off = pick(kImageSize - len + 1);
  if (pick(3) == 0) off &= ~uint64_t{511};
  std::ostringstream c;
  switch (pick(10)) {
    case 0: return "flush";
    case 1: c << "write -z " << off << " " << len; break;
    case 2: c << "discard " << off << " " << len; break;
    default: c << "write -P " << pick(256) << " " << off << " " << len;
  }
  return c.str();
}

// The workload through qemu-io (buffered) and through vdimg io with the cache mode and aio
// given; the two images must hold the same guest data.
void replay(const std::string& fmt, const std::string& mode, const std::string& aio, uint64_t seed) {
  vdtest::TempDir dir(fs::absolute(".").string());
  const std::string theirs = dir.file("qemu." + fmt), ours = dir.file("vd." + fmt);
  vdtest::sh("qemu-img create -q -f " + fmt + " " + theirs + " 8M && cp " + theirs + " " + ours);
  std::mt19937_64 rng(seed);
  std::vector<std::string> q = {"qemu-io", "-f", fmt}, v = {vdtest::vdimg_path(), "io", "-q", "-f", fmt, "-t",
                                                            mode, "-i", aio};
  std::string listing;
  for (int i = 0; i < 25; ++i) {
    auto c = random_command(rng);
    listing += c + "\n";
    for (auto* argv : {&q, &v}) {
      argv->push_back("-c");
      argv->push_back(c);
    }
  }
  q.push_back(theirs);
  v.push_back(ours);
  auto qr = vdtest::run(q);
  ASSERT_EQ(qr.exit_code, 0) << qr.err << listing;
  auto vr = vdtest::run(v);
  ASSERT_EQ(vr.exit_code, 0) << vr.err << listing;
  auto cmp = vdtest::run({"qemu-img", "compare", "-f", fmt, "-F", fmt, theirs, ours});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err << listing;
  if (fmt == "qcow2") {
    auto check = vdtest::run({"qemu-img", "check", ours});
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  } else {
    EXPECT_EQ(vdtest::file_size(ours), kImageSize);
  }
}

TEST(CacheCli, QemuIoWorkloadsReplayedWithEveryCacheModeMatchQemu) {
  VD_REQUIRE_QEMU();
  uint64_t seed = 7;
  for (const char* fmt : {"qcow2", "raw"}) {
    for (const char* mode : {"none", "directsync", "writethrough", "unsafe"}) {
      for (const char* aio : {"threads", "io_uring"}) {
        SCOPED_TRACE(std::string(fmt) + " -t " + mode + " -i " + aio + " seed " + std::to_string(seed));
        replay(fmt, mode, aio, seed++);
      }
    }
  }
}

}  // namespace
