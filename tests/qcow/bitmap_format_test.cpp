// Persistent bitmap structures in isolation: the in-memory bitmap (granule arithmetic,
// runs, QCOW2's serialised bit order) and the directory codec with QEMU's checks.
#include <gtest/gtest.h>

#include "backends/common/endian.h"
#include "backends/qcow/bitmap/bitmap_dir.h"
#include "backends/qcow/bitmap/dirty_bitmap.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using namespace vd::qcow;

TEST(DirtyBitmap, SetMarksEveryTouchedGranule) {
  DirtyBitmap b(1 << 20, 16);  // 16 granules of 64 KiB
  b.set(65535, 2);             // straddles granules 0 and 1
  EXPECT_TRUE(b.test(0));
  EXPECT_TRUE(b.test(1));
  EXPECT_FALSE(b.test(2));
  b.set((1 << 20) - 1, 100);  // clipped at the disk's end
  EXPECT_TRUE(b.test(15));
  EXPECT_EQ(b.count(), 3u);
  b.set(0, 0);
  EXPECT_EQ(b.count(), 3u);
}

TEST(DirtyBitmap, ExtentsAlternateAndStopAtTheEnd) {
  DirtyBitmap b(10 * 512 + 100, 9);  // 11 granules, the last partial
  b.set(512, 3 * 512);               // granules 1..3
  auto e = b.extent(0, UINT64_MAX);
  EXPECT_EQ(e, std::make_pair(false, uint64_t{512}));
  e = b.extent(600, UINT64_MAX);
  EXPECT_EQ(e, std::make_pair(true, uint64_t{4 * 512 - 600}));
  e = b.extent(2048, UINT64_MAX);
  EXPECT_EQ(e, std::make_pair(false, uint64_t{10 * 512 + 100 - 2048}));
  e = b.extent(2048, 10);
  EXPECT_EQ(e, std::make_pair(false, uint64_t{10}));
  EXPECT_EQ(b.extent(10 * 512 + 100, 1).second, 0u);
  b.set(10 * 512, 1);
  EXPECT_EQ(b.extent(9 * 512, UINT64_MAX), std::make_pair(false, uint64_t{512}));
  EXPECT_EQ(b.extent(10 * 512, UINT64_MAX), std::make_pair(true, uint64_t{100}));
}

TEST(DirtyBitmap, LongRunsCrossWords) {
  DirtyBitmap b(uint64_t{1} << 30, 16);  // 16384 granules
  b.set(uint64_t{100} << 16, uint64_t{1000} << 16);
  EXPECT_EQ(b.extent(0, UINT64_MAX), std::make_pair(false, uint64_t{100} << 16));
  EXPECT_EQ(b.extent(uint64_t{100} << 16, UINT64_MAX), std::make_pair(true, uint64_t{1000} << 16));
  EXPECT_EQ(b.count(), 1000u);
}

TEST(DirtyBitmap, SerialisedAsQcow2BitOrder) {
  DirtyBitmap b(uint64_t{64} << 20, 16);  // 1024 granules: 128 bytes
  b.set(0, 1);                            // bit 0 of byte 0
  b.set(uint64_t{9} << 16, 1);            // byte 1, bit 1
  b.set(uint64_t{1023} << 16, 1);         // byte 127, bit 7
  std::vector<std::byte> c(512);
  b.store_cluster(0, c);
  EXPECT_EQ(c[0], std::byte{0x01});
  EXPECT_EQ(c[1], std::byte{0x02});
  EXPECT_EQ(c[127], std::byte{0x80});
  EXPECT_EQ(c[128], std::byte{0});
  DirtyBitmap r(uint64_t{64} << 20, 16);
  r.load_cluster(0, c);
  EXPECT_EQ(r.count(), 3u);
  EXPECT_TRUE(r.test(9));
  EXPECT_FALSE(r.cluster_empty(0, 512));
  // Bits past the last granule in loaded data are ignored.
  std::vector<std::byte> ones(512, std::byte{0xff});
  DirtyBitmap t(uint64_t{10} << 16, 16);
  t.load_cluster(0, ones);
  EXPECT_EQ(t.count(), 10u);
  DirtyBitmap f(uint64_t{5000} << 9, 9);  // 5000 granules, 625 bytes: two 512-byte clusters
  f.fill_cluster(1, 512);
  EXPECT_EQ(f.count(), 5000u - 4096u);
  EXPECT_TRUE(f.cluster_empty(0, 512));
}

std::vector<BitmapEntry> two() {
  BitmapEntry a;
  a.table_offset = 0x30000;
  a.table_size = 1;
  a.flags = kBmeFlagAuto;
  a.granularity_bits = 16;
  a.name = "a";
  BitmapEntry b = a;
  b.name = "bitmap-b";
  b.flags = 0;
  b.granularity_bits = 9;
  b.table_offset = 0x40000;
  return {a, b};
}

TEST(BitmapDirectory, RoundTrips) {
  auto list = two();
  auto raw = encode_bitmap_directory(list);
  EXPECT_EQ(raw.size(), bitmap_directory_bytes(list));
  EXPECT_EQ(raw.size(), 32u + 32u);
  auto back = parse_bitmap_directory(raw, 2, 65536, 1 << 20, "x");
  ASSERT_TRUE(back) << back.error().message();
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[1].name, "bitmap-b");
  EXPECT_EQ((*back)[1].granularity_bits, 9);
  EXPECT_TRUE((*back)[0].enabled());
}

TEST(BitmapDirectory, RefusesWhatQemuRefuses) {
  auto expect = [](std::vector<std::byte> raw, uint32_t nb, const char* words, uint64_t disk = 1 << 20) {
    auto r = parse_bitmap_directory(raw, nb, 65536, disk, "x");
    ASSERT_FALSE(r.ok()) << words;
    EXPECT_NE(r.error().message().find(words), std::string::npos) << r.error().message();
  };
  auto raw = encode_bitmap_directory(two());
  expect(raw, 1, "More bitmaps found than specified in header extension");
  expect(raw, 3, "Less bitmaps found than specified in header extension");
  expect({raw.begin(), raw.begin() + 40}, 2, "Broken bitmap directory");
  expect({}, 0, "Requested bitmap directory size is zero");
  auto bad = raw;
  bad[24 + 8 + 17] = std::byte{32};  // second entry's granularity_bits
  expect(bad, 2, "Bitmap 'bitmap-b' doesn't satisfy the constraints");
  bad = raw;
  vd::store_be32(bad.data() + 12, 4);  // extra_data_compatible: reserved for QEMU 7.2
  expect(bad, 2, "Bitmap 'a' doesn't satisfy the constraints");
  bad = raw;
  vd::store_be32(bad.data() + 20, 8);
  expect(bad, 2, "Bitmap extra data is not supported");
  bad = raw;
  bad[16] = std::byte{2};
  expect(bad, 2, "doesn't satisfy the constraints");
  // A table too small for the disk: 1 cluster of 512-byte granules covers 256 MiB.
  auto small = two();
  small.resize(1);
  small[0].granularity_bits = 9;
  expect(encode_bitmap_directory(small), 1, "doesn't satisfy the constraints", uint64_t{1} << 29);
  small[0].flags |= kBmeFlagInUse;  // ...unless it is in use (stale after a resize)
  EXPECT_TRUE(parse_bitmap_directory(encode_bitmap_directory(small), 1, 65536, uint64_t{1} << 29, "x"));
  auto dup = two();
  dup[1].name = "a";
  expect(encode_bitmap_directory(dup), 2, "Bitmap already exists: a");
}

TEST(BitmapDirectory, TableEntriesAndSizes) {
  EXPECT_TRUE(bitmap_table_entry_valid(0, 65536));
  EXPECT_TRUE(bitmap_table_entry_valid(1, 65536));
  EXPECT_TRUE(bitmap_table_entry_valid(0x30000, 65536));
  EXPECT_FALSE(bitmap_table_entry_valid(0x30001, 65536));
  EXPECT_FALSE(bitmap_table_entry_valid(0x30200, 65536));
  EXPECT_FALSE(bitmap_table_entry_valid(2, 65536));
  EXPECT_FALSE(bitmap_table_entry_valid(uint64_t{1} << 63, 65536));
  EXPECT_EQ(bitmap_table_entries(uint64_t{1} << 30, 16, 65536), 1u);
  EXPECT_EQ(bitmap_table_entries(uint64_t{1} << 40, 16, 65536), 32u);
  EXPECT_EQ(bitmap_table_entries(uint64_t{4} << 20, 9, 512), 2u);
  EXPECT_TRUE(static_cast<bool>(check_new_bitmap("x", 256, 1 << 20, 65536)));
  EXPECT_FALSE(static_cast<bool>(check_new_bitmap("x", 512, 1 << 20, 65536)));
  EXPECT_NE(check_new_bitmap(std::string(1024, 'n'), 65536, 1 << 20, 65536).message().find("Name length"),
            std::string::npos);
}

// The API the NBD export uses (Image::bitmaps): on a read-only open, the runs extent()
// reports are the ones qemu-nbd -B exports for the same bitmap (nbdinfo --map).
TEST(BitmapApi, ExtentsMatchQemuNbd) {
  VD_REQUIRE_QEMU();
  if (vdtest::run({"sh", "-c", "command -v nbdinfo && command -v qemu-nbd"}).exit_code != 0)
    GTEST_SKIP() << "no nbdinfo/qemu-nbd";
  vdtest::TempDir dir;
  const std::string img = dir.file("a.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 5M && qemu-img bitmap --add -g 512 " + img +
             " fine && qemu-img bitmap --add --disable -g 1M " + img + " coarse && qemu-io -c 'write 1000 3000' -c "
             "'write -z 2M 70k' -c 'discard 4M 64k' -c 'write 5119k 1k' " + img + " >/dev/null && qemu-img bitmap --enable " +
             img + " coarse && qemu-io -c 'write 3M 1' " + img + " >/dev/null");
  vd::Runtime rt(1);
  vd::OpenOptions o;
  o.flags = vd::open_read_only;
  auto opened = vd::Registry::builtin().find("qcow2")->open(img, o, rt.files());
  ASSERT_TRUE(opened) << opened.error().message();
  vd::DirtyBitmaps* b = (*opened)->bitmaps();
  ASSERT_NE(b, nullptr);
  auto list = b->list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "fine");
  EXPECT_EQ(list[0].granularity, 512u);
  EXPECT_TRUE(list[0].enabled);
  EXPECT_FALSE(list[0].in_use);
  EXPECT_FALSE(list[0].inconsistent);
  EXPECT_EQ(list[1].granularity, 1u << 20);
  for (const auto& bm : list) {
    SCOPED_TRACE(bm.name);
    auto q = vdtest::run({"nbdinfo", "--map=qemu:dirty-bitmap:" + bm.name, "--", "[", "qemu-nbd", "-r", "-f", "qcow2",
                          "-B", bm.name, img, "]"});
    ASSERT_EQ(q.exit_code, 0) << q.err;
    std::string ours;
    const uint64_t size = (*opened)->size();
    for (uint64_t off = 0; off < size;) {
      auto run = b->extent(bm.name, off, size - off);
      ASSERT_TRUE(run) << run.error().message();
      ASSERT_GT(run->second, 0u);
      char line[128];
      std::snprintf(line, sizeof line, "%10llu  %10llu    %d  %s\n", static_cast<unsigned long long>(off),
                    static_cast<unsigned long long>(run->second), run->first ? 1 : 0, run->first ? "dirty" : "clean");
      ours += line;
      off += run->second;
    }
    EXPECT_EQ(ours, q.out);
  }
  EXPECT_FALSE(b->extent("nope", 0, 1).ok());
  EXPECT_TRUE(static_cast<bool>(b->clear("fine")));  // read-only: refused
  EXPECT_FALSE((*opened)->close(false));
}

}  // namespace
