// vdimg convert -O qcow2 of a raw file with patterns and zero ranges, plain and compressed
// (zlib, zstd): qemu-img must read the result as the source, and check it clean.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::TempDir;

// A raw source: patterns, a run of real zeros inside data, a hole, and an unaligned tail.
std::string make_source(const TempDir& dir) {
  const std::string src = dir.file("src.raw");
  vdtest::sh("qemu-img create -q -f raw " + src + " 6000k");
  vdtest::sh("qemu-io -f raw -c 'write -P 0x41 0 1M' -c 'write -z 256k 300k' -c 'write -P 0x42 2M 777k'"
             " -c 'write -P 0x43 5000k 1000k' -c 'write -z 5500k 4k' " + src + " >/dev/null");
  auto noise = vdtest::pattern(300000, 7);  // incompressible: stored uncompressed under -c
  auto bytes = vdtest::read_file(src);
  std::copy(noise.begin(), noise.end(), bytes.begin() + 3500000);
  vdtest::write_file(src, bytes);
  return src;
}

class ConvertToQcow2 : public ::testing::TestWithParam<std::vector<std::string>> {};

std::string convert_name(const ::testing::TestParamInfo<std::vector<std::string>>& info) {
  static const char* names[] = {"Plain", "Zlib", "Zstd", "Cluster4kCompat010", "ZlibCluster512"};
  return names[info.index];
}

TEST_P(ConvertToQcow2, ReadsBackIdenticalAndChecksClean) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string src = make_source(dir), dst = dir.file("dst.qcow2");
  std::vector<std::string> argv{vdtest::vdimg_path(), "convert", "-f", "raw", "-O", "qcow2"};
  for (const auto& a : GetParam()) argv.push_back(a);
  argv.push_back(src);
  argv.push_back(dst);
  auto r = vdtest::run(argv);
  if (r.exit_code != 0 && (r.err.find("not supported") != std::string::npos ||
                           r.err.find("not implemented") != std::string::npos))
    GTEST_SKIP() << "QCOW2 create is not in this tree yet: " << r.err;
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto cmp = vdtest::run({"qemu-img", "compare", "-f", "raw", "-F", "qcow2", src, dst});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  auto chk = vdtest::run({"qemu-img", "check", "-f", "qcow2", dst});
  EXPECT_EQ(chk.exit_code, 0) << chk.out << chk.err;
  const bool compressed = std::find(argv.begin(), argv.end(), "-c") != argv.end();
  // qemu-img check reports the share of compressed clusters ("... 0.00% compressed clusters").
  if (compressed) {
    EXPECT_EQ(chk.out.find(" 0.00% compressed"), std::string::npos) << chk.out;
    EXPECT_NE(chk.out.find("% compressed clusters"), std::string::npos) << chk.out;
  }
}

INSTANTIATE_TEST_SUITE_P(Options, ConvertToQcow2,
                         ::testing::Values(std::vector<std::string>{},
                                           std::vector<std::string>{"-c"},
                                           std::vector<std::string>{"-c", "-o", "compression_type=zstd"},
                                           std::vector<std::string>{"-o", "cluster_size=4096,compat=0.10"},
                                           std::vector<std::string>{"-c", "-o", "cluster_size=512"}),
                         convert_name);

}  // namespace
