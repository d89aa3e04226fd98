// `vdimg info` and `vdimg map` against qemu-img on images qemu-img made: the JSON they print
// (virtual size, format, cluster size, backing file, format-specific data, encryption,
// snapshots; extents with depth, present, zero, data, offset) must be qemu-img's.
#include <gtest/gtest.h>

#include "support/qemu_fixtures.h"
#include "support/support.h"

namespace {

vdtest::CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

// Both tools print the file name as given; run them from the image's folder with the same
// relative name so paths in the output (filename, backing names) agree.
std::pair<vdtest::CmdResult, vdtest::CmdResult> both(const std::string& image,
                                                     std::vector<std::string> args) {
  args.push_back(image);
  auto ours = vdimg(args);
  args.insert(args.begin(), "qemu-img");
  auto theirs = vdtest::run(args);
  return {ours, theirs};
}

class InfoInterop : public ::testing::TestWithParam<std::string> {};

TEST_P(InfoInterop, JsonInfoEqualsQemuImgs) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image(GetParam());
  auto [ours, theirs] = both(img.image, {"info", "--output=json"});
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
}

TEST_P(InfoInterop, JsonBackingChainInfoEqualsQemuImgs) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image(GetParam());
  auto [ours, theirs] = both(img.image, {"info", "--output=json", "--backing-chain"});
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
}

std::vector<std::string> all_recipes() {
  std::vector<std::string> names;
  for (const auto& r : vdtest::read_recipes()) names.push_back(r.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Kinds, InfoInterop, ::testing::ValuesIn(all_recipes()),
                         [](const auto& info) { return info.param; });

class MapInterop : public ::testing::TestWithParam<std::string> {};

TEST_P(MapInterop, JsonMapEqualsQemuImgs) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image(GetParam());
  auto [ours, theirs] = both(img.image, {"map", "--output=json"});
  ASSERT_EQ(theirs.exit_code, 0) << theirs.err;
  ASSERT_EQ(ours.exit_code, 0) << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
}

// Kinds whose maps differ in shape: cluster sizes, zero (also preallocated) and discarded
// clusters, compressed, subclusters over a backing file, external data files, chains.
INSTANTIATE_TEST_SUITE_P(Kinds, MapInterop,
                         ::testing::Values("v2_c512", "v3_c64k", "v3_c2M", "qcow_v1", "zlib_v3",
                                           "extended_l2_backing", "data_file", "data_file_raw",
                                           "chain_qcow2_same_size"),
                         [](const auto& info) { return std::string(info.param); });

// Where qemu-img's map still differs (see the report of issue 3): an unallocated subcluster
// of an allocated cluster in an image without a parent keeps its offset in qemu's map
// (the Disk drops extents nobody holds); the depth qemu reports past the end of a shorter
// parent is the last image that covers the offset; preallocation=metadata clusters are
// reported zero by qemu's file layer (SEEK_HOLE).
INSTANTIATE_TEST_SUITE_P(HostGaps, MapInterop,
                         ::testing::Values("extended_l2", "chain_raw_qcow_qcow2",
                                           "chain_qcow2_v2_v3", "v3_prealloc_metadata"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
