// The read side against qemu-img (issue 3, item 5): every kind of image qemu-img makes is
// read whole through vd (the library's Disk, `vdimg convert -O raw`, `vdimg compare`) and
// must equal qemu-img's own reading of it byte for byte.
#include <gtest/gtest.h>

#include "support/qemu_fixtures.h"
#include "support/support.h"

namespace {

using vdtest::ImageRecipe;
using vdtest::TempDir;

// Where two readings part, for a failure message that can be acted on.
std::string first_difference(const std::vector<std::byte>& got, const std::vector<std::byte>& want) {
  if (got.size() != want.size())
    return "sizes differ: " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i])
      return "first difference at byte " + std::to_string(i) + ": vd " +
             std::to_string(int(got[i])) + ", qemu " + std::to_string(int(want[i]));
  return "identical";
}

class ReadInterop : public ::testing::TestWithParam<std::string> {
 protected:
  const ImageRecipe& r() const { return vdtest::recipe(GetParam()); }
};

TEST_P(ReadInterop, DiskReadsWholeImageAsQemuImgDoes) {
  VD_REQUIRE_QEMU();
  const auto& b = vdtest::shared_image(GetParam());
  ASSERT_FALSE(b.qemu_bytes.empty());
  vd::DiskOpenOptions opts;
  if (r().encrypted) opts.passphrase = vdtest::kFixturePassphrase;
  auto got = vdtest::vd_read_all(b.image, opts);
  EXPECT_TRUE(got == b.qemu_bytes) << first_difference(got, b.qemu_bytes);
}

TEST_P(ReadInterop, VdimgConvertToRawMatchesQemuImgConvert) {
  VD_REQUIRE_QEMU();
  const auto& b = vdtest::shared_image(GetParam());
  TempDir out;
  std::vector<std::string> args{vdtest::vdimg_path(), "convert", "-O", "raw"};
  if (r().encrypted) {
    args.push_back("--passphrase-file");
    args.push_back(vdtest::passphrase_file(out));
  }
  args.push_back(b.image);
  args.push_back(out.file("vd.raw"));
  auto res = vdtest::run(args);
  ASSERT_EQ(res.exit_code, 0) << res.err;
  auto got = vdtest::read_file(out.file("vd.raw"));
  EXPECT_TRUE(got == b.qemu_bytes) << first_difference(got, b.qemu_bytes);
}

TEST_P(ReadInterop, VdimgCompareFindsImageEqualToQemuImgsRawCopy) {
  VD_REQUIRE_QEMU();
  if (r().encrypted) GTEST_SKIP() << "compare takes no passphrase";
  const auto& b = vdtest::shared_image(GetParam());
  TempDir out;
  vdtest::write_file(out.file("qemu.raw"), b.qemu_bytes);
  auto res = vdtest::run({vdtest::vdimg_path(), "compare", b.image, out.file("qemu.raw")});
  EXPECT_EQ(res.exit_code, 0) << res.out << res.err;
}

std::vector<std::string> recipe_names() {
  std::vector<std::string> names;
  for (const auto& r : vdtest::read_recipes()) names.push_back(r.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Kinds, ReadInterop, ::testing::ValuesIn(recipe_names()),
                         [](const auto& info) { return info.param; });

// The recipes that must not come out as something simpler than they claim.
TEST(ReadInteropFixtures, LazyDirtyImageReallyHasTheDirtyBitSet) {
  VD_REQUIRE_QEMU();
  const auto& b = vdtest::shared_image("lazy_dirty");
  EXPECT_EQ(vdtest::peek_be64(b.image, 72) & 1, 1u);
}

TEST(ReadInteropFixtures, ChainWithoutBackingFormatRecordsNone) {
  VD_REQUIRE_QEMU();
  const auto& b = vdtest::shared_image("chain_no_backing_fmt");
  auto info = vdtest::sh("qemu-img info --output=json " + b.image);
  EXPECT_EQ(info.find("backing-filename-format"), std::string::npos) << info;
  EXPECT_NE(info.find("\"backing-filename\": \"mid.qcow\""), std::string::npos) << info;
}

TEST(ReadInteropFixtures, CompressedImageHoldsCompressedClusters) {
  VD_REQUIRE_QEMU();
  for (const char* name : {"zlib_v3", "zstd_v3", "qcow_v1_compressed"}) {
    const auto& b = vdtest::shared_image(name);
    auto check = vdtest::run({"qemu-img", "check", b.image});
    if (std::string(name) == "qcow_v1_compressed") {
      EXPECT_LT(vdtest::file_size(b.image), 4u << 20) << name;
    } else {
      EXPECT_NE(check.out.find("compressed clusters"), std::string::npos) << check.out;
      EXPECT_EQ(check.out.find(" 0.00% compressed"), std::string::npos) << name << check.out;
    }
  }
}

}  // namespace
