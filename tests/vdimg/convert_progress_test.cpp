// convert -p prints qemu-img 7.2's sequence of percentages: the counted chunks of its copy
// loop (data by 2 MiB buffers cut at extents and cluster alignment, zeros only with -S 0,
// one cluster at a time with -c, nothing left to a -B backing file), then 100% and the
// newline. The sequence depends on the source's extents only (never on timing), so the
// whole output is compared.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

void qemu_io(const std::string& img, const std::vector<std::string>& cmds) {
  std::vector<std::string> argv = {"qemu-io"};
  for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
  argv.push_back(img);
  ASSERT_EQ(vdtest::run(argv).exit_code, 0);
}

void create(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"qemu-img", "create", "-q"};
  argv.insert(argv.end(), args.begin(), args.end());
  ASSERT_EQ(vdtest::run(argv).exit_code, 0);
}

TEST(ConvertProgress, SameStepsAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string s = dir.file("s.qcow2"), frag = dir.file("frag.qcow2"), base = dir.file("base.qcow2"),
                    top = dir.file("top.qcow2"), raw = dir.file("holes.raw");
  create({"-f", "qcow2", s, "20M"});
  qemu_io(s, {"write 0 3M", "write 5M 64k", "write 7M 5M", "write -z 13M 1M", "write 19M 512k"});
  create({"-f", "qcow2", frag, "8M"});  // clusters out of guest order in the file
  for (const char* at : {"7M", "5M", "3M", "1M", "6M", "0"}) qemu_io(frag, {std::string("write ") + at + " 1M"});
  create({"-f", "qcow2", base, "12M"});
  qemu_io(base, {"write 0 4M", "write 8M 1M"});
  create({"-f", "qcow2", "-b", base, "-F", "qcow2", top, "16M"});
  qemu_io(top, {"write 1M 3M", "write 14M 64k", "write -z 9M 64k"});
  const std::string v1 = dir.file("v1.qcow");  // qemu's qcow driver answers cluster by cluster
  ASSERT_EQ(vdtest::run({"qemu-img", "convert", "-O", "qcow", s, v1}).exit_code, 0);
  create({"-f", "raw", raw, "10M"});
  qemu_io(raw, {"write 1000000 3000", "write 6400k 1280k"});

  const std::vector<std::vector<std::string>> sources = {{s}, {frag}, {top}, {raw}, {v1}, {s, raw, frag}};
  const std::vector<std::vector<std::string>> modes = {
      {"-O", "qcow2"}, {"-S", "0", "-O", "raw"}, {"-c", "-O", "qcow2"}, {"-O", "qcow2", "-B", base, "-F", "qcow2"}};
  int n = 0;
  for (const auto& src : sources) {
    for (const auto& mode : modes) {
      if (src.size() > 1 && mode.size() > 4) continue;  // -B with several sources is refused
      std::string out[2];
      for (int t = 0; t < 2; ++t) {
        std::vector<std::string> args = {"convert", "-p"};
        args.insert(args.end(), mode.begin(), mode.end());
        args.insert(args.end(), src.begin(), src.end());
        args.push_back(dir.file("out" + std::to_string(n++)));
        CmdResult r;
        if (t == 0) {
          args.insert(args.begin(), "qemu-img");
          r = vdtest::run(args);
        } else {
          r = vdtest::vdimg(args);
        }
        ASSERT_EQ(r.exit_code, 0) << r.err;
        out[t] = r.out;
      }
      std::string line;
      for (const auto& a : mode) line += a + " ";
      for (const auto& a : src) line += a + " ";
      EXPECT_EQ(out[1], out[0]) << line;
      EXPECT_EQ(out[1].rfind("    (0.00/100%)\r", 0), 0u) << line;
      EXPECT_NE(out[1].find("    (100.00/100%)\r\n"), std::string::npos) << line;
    }
  }
}

TEST(ConvertProgress, FailureEndsTheLineAsQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  for (int t = 0; t < 2; ++t) {
    std::vector<std::string> args = {"convert", "-p", "-O", "raw", dir.file("missing"), dir.file("o")};
    CmdResult r = t ? vdtest::vdimg(args) : vdtest::run([&] {
      args.insert(args.begin(), "qemu-img");
      return args;
    }());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "    (0.00/100%)\r\n");
  }
}

}  // namespace
