// The same random qemu-io workloads through qemu-io and through vdimg io on raw images must
// leave byte-identical files. Each workload runs as a few separate invocations, so what one
// invocation leaves must survive closing and reopening.
#include <gtest/gtest.h>

#include <random>
#include <sstream>

#include "support/support.h"

namespace {

constexpr uint64_t kImageSize = 8ull << 20;

// One random command: offsets and lengths of any alignment, sometimes large.
std::string random_command(std::mt19937_64& rng) {
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  uint64_t len = pick(4) == 0 ? 1 + pick(1u << 20) : 1 + pick(70000);
  if (pick(3) == 0) len = (len + 4095) & ~uint64_t{4095};  // some aligned requests
  if (len > kImageSize) len = kImageSize;
  uint64_t off = pick(kImageSize - len + 1);
  if (pick(3) == 0) off &= ~uint64_t{511};
  std::ostringstream c;
  switch (pick(10)) {
    case 0: return "flush";
    case 1: case 2: c << "write -z" << (pick(2) ? " -u " : " ") << off << " " << len; break;
    case 3: case 4: c << "discard " << off << " " << len; break;
    default: c << "write -P " << (pick(2) ? std::to_string(pick(256)) : "0x" + std::to_string(10 + pick(89)))
               << " " << off << " " << len;
  }
  return c.str();
}

std::vector<std::string> with_commands(std::vector<std::string> argv,
                                       const std::vector<std::string>& cmds, size_t from, size_t to) {
  for (size_t i = from; i < to; ++i) {
    argv.push_back("-c");
    argv.push_back(cmds[i]);
  }
  return argv;
}

void run_workload(uint64_t seed) {
  vdtest::TempDir dir;
  std::string theirs = dir.file("qemu.img"), ours = dir.file("vd.img");
  vdtest::sh("qemu-img create -q -f raw " + theirs + " 8M && cp " + theirs + " " + ours);
  std::mt19937_64 rng(seed);
  std::vector<std::string> cmds;
  for (int i = 0; i < 30; ++i) cmds.push_back(random_command(rng));
  std::string listing;
  for (const auto& c : cmds) listing += c + "\n";

  const size_t cuts[] = {0, 7, 18, 30};  // three invocations
  for (size_t k = 0; k + 1 < std::size(cuts); ++k) {
    auto qargs = with_commands({"qemu-io", "-f", "raw"}, cmds, cuts[k], cuts[k + 1]);
    qargs.push_back(theirs);
    auto q = vdtest::run(qargs);
    ASSERT_EQ(q.exit_code, 0) << "qemu-io failed, seed " << seed << "\n" << q.err << listing;
    auto vargs = with_commands({vdtest::vdimg_path(), "io", "-f", "raw", "-q"}, cmds, cuts[k],
                               cuts[k + 1]);
    vargs.push_back(ours);
    auto v = vdtest::run(vargs);
    ASSERT_EQ(v.exit_code, 0) << "vdimg io failed, seed " << seed << "\n" << v.err << listing;
  }
  EXPECT_EQ(vdtest::file_size(ours), kImageSize);
  auto cmp = vdtest::run({"cmp", theirs, ours});
  EXPECT_EQ(cmp.exit_code, 0) << "seed " << seed << ": " << cmp.out << "\n" << listing;
}

TEST(InteropRaw, RandomWorkloadsLeaveIdenticalFiles) {
  VD_REQUIRE_QEMU();
  for (uint64_t seed : {1u, 2u, 3u, 42u, 1234u, 99991u}) {
    SCOPED_TRACE(seed);
    run_workload(seed);
  }
}

}  // namespace
