// The six valid qcow2 files of QEMU's tree (tests/data/qemu-samples/valid-qcow2): 512-byte
// clusters, every data cluster compressed, header_length 104 and 112. Their whole-disk
// sha256 values were taken from qemu-img 7.2 (SOURCES.md); vd must read the same bytes.
#include <gtest/gtest.h>

#include "support/qemu_fixtures.h"
#include "support/support.h"

namespace {

struct Sample {
  const char* arch;
  const char* sha256;
};

const Sample kSamples[] = {
    {"aarch64", "c70140378e53cf54d2d7994b62b0e805ec09eb7633e7426a6da09c6f99ff5e69"},
    {"arm", "31ef43ed839ff40d93664e269d943153d95d1d7ea59eb0c723b94c1d9a89f9fa"},
    {"i386", "2ff87057643e41ae1b8775495c0d333a390018db39efc05f084ec72712f48c16"},
    {"loongarch64", "2654bb466348b5ac95d6374d1e6e0eafedeedc336399bb3bcd1788ca5b927a8a"},
    {"riscv64", "2fd0f3ce4ce58848e19b04d8d52fee90a0050276e26d56bcaade40d9caefe104"},
    {"x86_64", "274cc137b85be86273c4dd027f8ee15e9e7f4a62c97ed9d60d0f56fd2c6c3015"},
};

std::string sample_path(const Sample& s) {
  return vdtest::data_dir() + "/qemu-samples/valid-qcow2/bios-tables-test." + s.arch + ".iso.qcow2";
}

class QemuSample : public ::testing::TestWithParam<Sample> {};

TEST_P(QemuSample, DiskReadsTheDigestQemuImgReads) {
  vdtest::TempDir dir;
  auto bytes = vdtest::vd_read_all(sample_path(GetParam()));
  ASSERT_EQ(bytes.size(), 425984u);
  vdtest::write_file(dir.file("disk.raw"), bytes);
  EXPECT_EQ(vdtest::sha256_file(dir.file("disk.raw")), GetParam().sha256);
}

TEST_P(QemuSample, VdimgConvertWritesTheDigestQemuImgReads) {
  vdtest::TempDir dir;
  auto res = vdtest::run({vdtest::vdimg_path(), "convert", "-O", "raw", sample_path(GetParam()),
                          dir.file("disk.raw")});
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_EQ(vdtest::sha256_file(dir.file("disk.raw")), GetParam().sha256);
}

INSTANTIATE_TEST_SUITE_P(ValidQcow2, QemuSample, ::testing::ValuesIn(kSamples),
                         [](const auto& info) { return std::string(info.param.arch); });

}  // namespace
