// The overlap map: large structures sealed in a sorted list, L2 tables and refcount blocks
// added and removed one at a time as allocations link them. After a run of allocating writes
// (new L2 tables, new refcount blocks), the map kept up incrementally
// must refuse exactly what a map rebuilt from the file refuses.
#include <gtest/gtest.h>

#include "backends/qcow/image.h"
#include "backends/qcow/meta/overlap.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using vd::qcow::MetaKind;
using vd::qcow::OverlapMap;

TEST(OverlapMap, FindsLargeStructuresAndTablesAddedAfterSealing) {
  OverlapMap m;
  m.add(0, 512, MetaKind::header);
  m.add(0x10000, 0x20000, MetaKind::active_l1);
  m.seal();
  m.add_table(0x40000, 0x1000, MetaKind::active_l2);
  m.add_table(0x50000, 0x1000, MetaKind::refcount_block);
  EXPECT_EQ(m.find(100, 10), MetaKind::header);
  EXPECT_EQ(m.find(0x2ffff, 1), MetaKind::active_l1);
  EXPECT_EQ(m.find(0x3f000, 0x1001), MetaKind::active_l2);   // reaches the table's first byte
  EXPECT_EQ(m.find(0x40fff, 0x10), MetaKind::active_l2);     // starts in its last byte
  EXPECT_EQ(m.find(0x50800, 0x10), MetaKind::refcount_block);
  EXPECT_FALSE(m.find(0x41000, 0xf000));                     // the gap between them
  EXPECT_FALSE(m.find(0x30000, 0x10000));
  EXPECT_FALSE(m.find(0x40000, 0));
}

TEST(OverlapMap, ExceptSkipsOnlyATableOfThatKindHoldingTheWholeWrite) {
  OverlapMap m;
  m.seal();
  m.add_table(0x40000, 0x1000, MetaKind::active_l2);
  EXPECT_FALSE(m.find(0x40000, 0x1000, MetaKind::active_l2));
  EXPECT_FALSE(m.find(0x40200, 0x200, MetaKind::active_l2));
  EXPECT_EQ(m.find(0x40200, 0x2000, MetaKind::active_l2), MetaKind::active_l2);  // runs past it
  EXPECT_EQ(m.find(0x40000, 0x1000, MetaKind::refcount_block), MetaKind::active_l2);
}

TEST(OverlapMap, RemovedTableNoLongerHitsAndDuplicatesGoOneAtATime) {
  OverlapMap m;
  m.seal();
  m.add_table(0x8000, 0x200, MetaKind::active_l2);
  m.add_table(0x8000, 0x200, MetaKind::active_l2);  // two L1 entries naming one table
  m.remove_table(0x8000, MetaKind::refcount_block);  // wrong kind: nothing removed
  m.remove_table(0x8000, MetaKind::active_l2);
  EXPECT_EQ(m.find(0x8000, 1), MetaKind::active_l2);
  m.remove_table(0x8000, MetaKind::active_l2);
  EXPECT_FALSE(m.find(0x8000, 1));
}

TEST(OverlapMap, TableAtOffsetZeroAndAWriteEndingAtTheTopOfTheRange) {
  OverlapMap m;
  m.seal();
  m.add_table(0, 0x200, MetaKind::refcount_block);
  m.add_table(UINT64_MAX - 0x1ff, 0x200, MetaKind::active_l2);
  EXPECT_EQ(m.find(0x100, 1), MetaKind::refcount_block);
  EXPECT_EQ(m.find(UINT64_MAX - 0x10, 0x100), MetaKind::active_l2);  // end saturates
  EXPECT_FALSE(m.find(0x200, 0x200));
}

// Which 512-byte pieces of the file the image's overlap check refuses, and as what.
std::vector<std::string> refusals(vd::qcow::QcowImage& img, uint64_t file_size) {
  std::vector<std::string> out;
  for (uint64_t off = 0; off < file_size; off += 512) {
    vd::Error e = img.check_allocation(off, 512);
    if (e) out.push_back(std::to_string(off) + ": " + e.message().substr(e.message().find("(overlaps")));
  }
  return out;
}

TEST(OverlapMapImage, IncrementalMapMatchesOneRebuiltFromTheFileAfterAllocations) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string path = dir.file("small.qcow2"), copy = dir.file("copy.qcow2");
  // 512-byte clusters: an L2 table maps 32 KiB and a refcount block 256 clusters, so the
  // writes below link many L2 tables and place several refcount blocks.
  vdtest::sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + path + " 64M");
  vd::Runtime rt(2);
  vd::Registry reg = vd::Registry::builtin();
  const vd::Backend* qcow2 = reg.find("qcow2");
  ASSERT_NE(qcow2, nullptr);
  std::vector<std::string> incremental;
  {
    auto img = qcow2->open(path, vd::OpenOptions{}, rt.files());
    ASSERT_TRUE(img.ok()) << img.error().message();
    auto& q = dynamic_cast<vd::qcow::QcowImage&>(**img);
    const auto data = vdtest::pattern(512, 1);
    for (uint64_t guest = 0; guest < (48ull << 20); guest += 96 * 1024) {
      ASSERT_FALSE(vd::sync_image_write(rt, q, guest, data)) << guest;
      // Between writes, so the map is consulted (and kept up) as allocations go on.
      if (guest % (3ull << 20) == 0) {
        EXPECT_FALSE(q.check_allocation(1ull << 40, 512));
      }
    }
    ASSERT_FALSE(rt.wait([&](vd::Completion done) { q.flush(std::move(done)); }));
    // The first refusal marks the image corrupt: compare against a copy made before.
    vdtest::sh("cp " + path + " " + copy);
    incremental = refusals(q, vdtest::file_size(path));
    (void)(*img)->close(false);
  }
  auto again = qcow2->open(copy, vd::OpenOptions{}, rt.files());
  ASSERT_TRUE(again.ok()) << again.error().message();
  auto rebuilt = refusals(dynamic_cast<vd::qcow::QcowImage&>(**again), vdtest::file_size(copy));
  (void)(*again)->close(false);
  EXPECT_GT(rebuilt.size(), 500u);  // header, L1, refcount table, ~500 L2 tables, blocks
  EXPECT_EQ(incremental, rebuilt);
}

}  // namespace
