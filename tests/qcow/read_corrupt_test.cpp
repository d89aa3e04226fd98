// Read-time corruption (SOURCES.md section 4: iotests 060, 214, 220, 271, plus entries that
// leave the file or hit metadata): each bad entry gives an error naming the image and the
// offsets involved, never a crash, and the rest of the image still reads.
#include <gtest/gtest.h>

#include "backends/qcow/meta/format.h"
#include "support/qemu_fixtures.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using vdtest::TempDir;
constexpr uint64_t kCopied = 1ull << 63;

// One open disk over a (corrupted) image, for range reads.
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    vd::DiskOpenOptions opts;
    opts.flags = vd::open_read_only;
    auto d = vd::Disk::open(path, opts, registry_, rt_.files());
    if (!d) open_error_ = d.error();
    else disk_ = std::move(*d);
  }
  const vd::Error& open_error() const { return open_error_; }
  vd::Error read(uint64_t offset, std::vector<std::byte>& out) {
    return rt_.wait([&](vd::Completion done) { disk_->read(offset, out, std::move(done)); });
  }
  // Fails the test unless [offset, offset + len) reads and every byte is `byte`.
  void expect_reads(uint64_t offset, uint64_t len, uint8_t byte) {
    std::vector<std::byte> buf(len);
    vd::Error e = read(offset, buf);
    ASSERT_FALSE(e) << e.message();
    EXPECT_EQ(std::count(buf.begin(), buf.end(), std::byte{byte}), static_cast<ptrdiff_t>(len));
  }
  // The error of reading [offset, offset + len); fails the test if the read succeeds.
  vd::Error expect_error(uint64_t offset, uint64_t len) {
    std::vector<std::byte> buf(len);
    vd::Error e = read(offset, buf);
    EXPECT_TRUE(e) << "read at " << offset << " of " << path_ << " succeeded";
    return e;
  }

 private:
  std::string path_;
  vd::Runtime rt_{1};
  vd::Registry registry_ = vd::Registry::builtin();
  std::unique_ptr<vd::Disk> disk_;
  vd::Error open_error_;
};

void expect_names(const vd::Error& e, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(e.message().find(p), std::string::npos) << e.message();
}

// 8 MiB, 4 KiB clusters: each L2 table maps 2 MiB, so L1[0] and L1[2] are separate tables.
// Guest [0, 8k) holds 0x01, [4M, 4M + 8k) holds 0x02.
struct Plain {
  TempDir dir;
  std::string path = dir.file("c.qcow2");
  uint64_t l1 = 0, l2_first = 0, data0 = 0;
  Plain() {
    vdtest::sh("qemu-img create -q -f qcow2 -o cluster_size=4k " + path + " 8M && qemu-io -c "
               "'write -P 1 0 8k' -c 'write -P 2 4M 8k' " + path + " >/dev/null");
    l1 = vdtest::peek_be64(path, 40);
    l2_first = vdtest::peek_be64(path, l1) & vd::qcow::kL1OffsetMask;
    data0 = vdtest::peek_be64(path, l2_first) & vd::qcow::kL2OffsetMask;
  }
};

TEST(ReadCorrupt, UnalignedL2TableOffsetInL1FailsNamingIt) {
  VD_REQUIRE_QEMU();
  Plain img;
  const uint64_t bad = img.l2_first + 0xa00;
  vdtest::poke_be64(img.path, img.l1, kCopied | bad);
  Reader r(img.path);
  ASSERT_FALSE(r.open_error()) << r.open_error().message();
  vd::Error e = r.expect_error(0, 4096);
  EXPECT_TRUE(e.is(vd::Errc::corrupt)) << e.message();
  expect_names(e, {img.path, vd::hex(bad)});
  r.expect_reads(4 << 20, 8192, 2);
}

TEST(ReadCorrupt, UnalignedDataClusterOffsetFailsNamingL2OffsetAndIndex) {
  VD_REQUIRE_QEMU();
  Plain img;
  const uint64_t bad = img.data0 + 0x200;
  vdtest::poke_be64(img.path, img.l2_first, kCopied | bad);
  Reader r(img.path);
  vd::Error e = r.expect_error(0, 512);
  EXPECT_TRUE(e.is(vd::Errc::corrupt)) << e.message();
  expect_names(e, {img.path, vd::hex(bad), vd::hex(img.l2_first)});
  r.expect_reads(4096, 4096, 1);  // the next entry of the same table is fine
  r.expect_reads(4 << 20, 8192, 2);
}

// Where a data cluster lies is not judged on reads, as in QEMU: past the end of the file
// reads zeros, and a cluster on metadata reads the metadata (writes there are refused:
// tests/vdimg/overlap_cli_test.cpp).
TEST(ReadCorrupt, DataClusterBeyondEndOfFileReadsZerosAsQemuDoes) {
  VD_REQUIRE_QEMU();
  Plain img;
  vdtest::poke_be64(img.path, img.l2_first, kCopied | (1ull << 40));
  Reader r(img.path);
  r.expect_reads(0, 4096, 0);
  r.expect_reads(4096, 4096, 1);
}

TEST(ReadCorrupt, DataClusterOnTheL1TableReadsTheTableAsQemuDoes) {
  VD_REQUIRE_QEMU();
  Plain img;
  vdtest::poke_be64(img.path, img.l2_first, kCopied | img.l1);
  const auto file = vdtest::read_file(img.path);
  Reader r(img.path);
  std::vector<std::byte> got(4096);
  ASSERT_FALSE(r.read(0, got));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), file.begin() + static_cast<std::ptrdiff_t>(img.l1)));
  r.expect_reads(4 << 20, 8192, 2);
}

TEST(ReadCorrupt, DataClusterOnTheRefcountTableReadsTheTableAsQemuDoes) {
  VD_REQUIRE_QEMU();
  Plain img;
  const uint64_t reftable = vdtest::peek_be64(img.path, 48);
  vdtest::poke_be64(img.path, img.l2_first + 8, kCopied | reftable);
  const auto file = vdtest::read_file(img.path);
  Reader r(img.path);
  std::vector<std::byte> got(4096);
  ASSERT_FALSE(r.read(4096, got));
  EXPECT_TRUE(std::equal(got.begin(), got.end(), file.begin() + static_cast<std::ptrdiff_t>(reftable)));
  r.expect_reads(0, 4096, 1);
}

// An aligned data cluster offset cannot lie in the header cluster (offset 0 means "not
// allocated"), but a compressed descriptor can.
TEST(ReadCorrupt, CompressedClusterOnTheHeaderFailsNamingIt) {
  VD_REQUIRE_QEMU();
  Plain img;
  vdtest::poke_be64(img.path, img.l2_first, vd::qcow::kOflagCompressed | 0x10);
  Reader r(img.path);
  vd::Error e = r.expect_error(0, 4096);
  expect_names(e, {img.path, "0x10"});
  r.expect_reads(4096, 4096, 1);
}

TEST(ReadCorrupt, L2TableBeyondEndOfFileFailsNamingIt) {
  VD_REQUIRE_QEMU();
  Plain img;
  const uint64_t bad = 1ull << 36;
  vdtest::poke_be64(img.path, img.l1, kCopied | bad);
  Reader r(img.path);
  vd::Error e = r.expect_error(0, 4096);
  EXPECT_TRUE(e.is(vd::Errc::corrupt)) << e.message();
  expect_names(e, {img.path, vd::hex(bad)});
  r.expect_reads(4 << 20, 8192, 2);
}

// Extended L2 (271): 64 KiB clusters, 2 KiB subclusters; guest [0, 64k) and [64k, 128k)
// are allocated.
struct Extended {
  TempDir dir;
  std::string path = dir.file("x.qcow2");
  uint64_t l2 = 0;
  Extended() {
    vdtest::sh("qemu-img create -q -f qcow2 -o extended_l2=on " + path + " 4M && qemu-io -c "
               "'write -P 1 0 128k' " + path + " >/dev/null");
    l2 = vdtest::peek_be64(path, vdtest::peek_be64(path, 40)) & vd::qcow::kL1OffsetMask;
  }
};

TEST(ReadCorrupt, SubclusterBothAllocatedAndZeroIsInvalidEntry) {
  VD_REQUIRE_QEMU();
  Extended img;
  vdtest::poke_be64(img.path, img.l2 + 8, 0x00000001ffffffffull);  // subcluster 0: both bits
  Reader r(img.path);
  vd::Error e = r.expect_error(0, 2048);
  EXPECT_TRUE(e.is(vd::Errc::corrupt)) << e.message();
  expect_names(e, {img.path, "Invalid cluster entry", vd::hex(img.l2)});
  r.expect_reads(64 << 10, 64 << 10, 1);
}

TEST(ReadCorrupt, AllocationBitmapWithoutClusterIsInvalidEntry) {
  VD_REQUIRE_QEMU();
  Extended img;
  vdtest::poke_be64(img.path, img.l2 + 32, 0);            // entry 2: no host cluster...
  vdtest::poke_be64(img.path, img.l2 + 40, 0x0000000fu);  // ...but subclusters 0-3 allocated
  Reader r(img.path);
  vd::Error e = r.expect_error(128 << 10, 2048);
  EXPECT_TRUE(e.is(vd::Errc::corrupt)) << e.message();
  expect_names(e, {img.path, "Invalid cluster entry", vd::hex(img.l2)});
  r.expect_reads(0, 128 << 10, 1);
}

// 214/220: the sector count of a compressed descriptor. 64 KiB clusters: the count sits in
// bits 54..61 (sectors minus one).
struct Compressed {
  TempDir dir;
  std::string path = dir.file("z.qcow2");
  uint64_t l2 = 0;
  Compressed() {
    vdtest::sh("cd " + dir.path() + " && qemu-img create -q -f raw s.raw 1M && "
               "seq 1 40000 | dd of=s.raw conv=notrunc status=none && "
               "qemu-img convert -c -O qcow2 s.raw z.qcow2");
    l2 = vdtest::peek_be64(path, vdtest::peek_be64(path, 40)) & vd::qcow::kL1OffsetMask;
  }
  void set_sectors(uint64_t index, uint64_t count) {
    const uint64_t e = vdtest::peek_be64(path, l2 + index * 8);
    ASSERT_TRUE(e & vd::qcow::kOflagCompressed);
    vdtest::poke_be64(path, l2 + index * 8, (e & ~(0xffull << 54)) | ((count - 1) << 54));
  }
};

TEST(ReadCorrupt, ShrunkCompressedSectorCountFailsTheRead) {
  VD_REQUIRE_QEMU();
  Compressed img;
  img.set_sectors(0, 1);
  EXPECT_NE(vdtest::run({"qemu-io", "-r", "-c", "read 0 64k", img.path}).out.find("error"), std::string::npos);
  Reader r(img.path);
  vd::Error e = r.expect_error(0, 4096);
  expect_names(e, {img.path});
  std::vector<std::byte> next(64 << 10);
  EXPECT_FALSE(r.read(64 << 10, next)) << "cluster 1 is intact";
}

TEST(ReadCorrupt, GrownCompressedSectorCountStillReadsRight) {
  VD_REQUIRE_QEMU();
  Compressed img;
  img.set_sectors(0, 256);
  img.set_sectors(1, 256);  // the run of cluster 1 may now pass the end of the file
  auto want = vdtest::qemu_read_all(img.path, "qcow2");
  EXPECT_TRUE(vdtest::vd_read_all(img.path) == want);
}

}  // namespace
