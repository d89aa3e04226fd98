// convert's copier: writes land in guest order (qemu-img's default), -W allows any order,
// compressed chunks write their clusters concurrently, the source's extent map is asked once
// per extent and must still find data that starts or ends inside a chunk, a failure in the
// middle of the copy ends it cleanly; and the raw backend's extent cache of read-only images.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "backends/builtin.h"
#include "support/support.h"
#include "vd/runtime.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

// Overwrites [offset, offset + bytes.size()) of `path` (a sparse file stays sparse elsewhere).
void put(const std::string& path, uint64_t offset, const std::vector<std::byte>& bytes) {
  std::string tmp = path + ".part";
  vdtest::write_file(tmp, bytes);
  vdtest::sh("dd if=" + tmp + " of=" + path + " bs=4k seek=" + std::to_string(offset / 4096) +
             " conv=notrunc status=none && rm " + tmp);
}

// Compressible bytes: a short text repeated.
std::vector<std::byte> text(size_t n) {
  const std::string line = "static inline int vd_example(int x) { return x * 3 + 1; }\n";
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(line[i % line.size()]);
  return out;
}

// The data extents of `qemu-img map --output=json`: (guest start, length, host offset).
struct MapExtent { uint64_t start, length, offset; };
std::vector<MapExtent> data_extents(const std::string& image) {
  std::string json = vdtest::sh("qemu-img map --output=json " + image);
  std::regex re(R"re("start": (\d+), "length": (\d+),[^}]*"data": true, "offset": (\d+))re");
  std::vector<MapExtent> out;
  for (std::sregex_iterator it(json.begin(), json.end(), re), end; it != end; ++it)
    out.push_back({std::stoull((*it)[1]), std::stoull((*it)[2]), std::stoull((*it)[3])});
  return out;
}

// 12 MiB of data crossing six 2 MiB chunks, with zero ranges written as zeros: 64 KiB every
// MiB and 3 MiB from 5 MiB (a whole chunk, and parts of two others).
std::string mixed_raw(const TempDir& dir) {
  std::string path = dir.file("mixed.raw");
  std::vector<std::byte> bytes = vdtest::pattern(12 * kMiB, 7);
  for (uint64_t m = 0; m < 12; ++m) std::fill_n(bytes.begin() + m * kMiB + 256 * kKiB, 64 * kKiB, std::byte{0});
  std::fill_n(bytes.begin() + 5 * kMiB, 3 * kMiB, std::byte{0});
  vdtest::write_file(path, bytes);
  return path;
}

void expect_same_and_clean(const std::string& src, const std::string& out) {
  vdtest::sh("qemu-img check -q " + out);
  vdtest::sh("qemu-img compare -q -f raw " + src + " " + out);
}

TEST(VdimgConvertOrder, ConvertRawToQcow2AllocatesClustersInGuestOrder) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string src = mixed_raw(dir), out = dir.file("out.qcow2");
  auto r = vdimg({"convert", "-f", "raw", "-O", "qcow2", src, out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_and_clean(src, out);
  auto map = data_extents(out);
  ASSERT_GT(map.size(), 6u);
  for (size_t i = 1; i < map.size(); ++i) {
    EXPECT_GT(map[i].start, map[i - 1].start);
    // Each run of clusters lies right after the previous one in the file: the file grew in
    // guest order.
    EXPECT_EQ(map[i].offset, map[i - 1].offset + map[i - 1].length) << "extent " << i;
  }
}

TEST(VdimgConvertOrder, ConvertWithOutOfOrderWritesReadsTheSame) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string src = mixed_raw(dir), out = dir.file("out.qcow2");
  auto r = vdimg({"convert", "-W", "-f", "raw", "-O", "qcow2", src, out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_same_and_clean(src, out);
  auto raw = vdimg({"convert", "-W", "-f", "raw", "-O", "raw", src, dir.file("out.raw")});
  ASSERT_EQ(raw.exit_code, 0) << raw.err;
  EXPECT_EQ(vdtest::sha256_file(src), vdtest::sha256_file(dir.file("out.raw")));
}

// Data starting and ending inside chunks, between holes of a sparse file: the extent
// answered for one chunk must not hide data in the next, nor data in a hole's chunk.
TEST(VdimgConvertOrder, ConvertSparseRawCopiesTheDataRangesQemuImgCopies) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string src = dir.file("sparse.raw");
  vdtest::sh("truncate -s 10M " + src);
  put(src, 100 * kKiB, vdtest::pattern(200 * kKiB, 1));
  put(src, 2 * kMiB - 4 * kKiB, vdtest::pattern(12 * kKiB, 2));  // across a chunk boundary
  put(src, 6 * kMiB + 64 * kKiB, vdtest::pattern(3 * kMiB - 64 * kKiB, 3));
  put(src, 10 * kMiB - 4 * kKiB, vdtest::pattern(4 * kKiB, 4));  // the last block
  std::string ours = dir.file("ours.qcow2"), theirs = dir.file("theirs.qcow2");
  auto r = vdimg({"convert", "-f", "raw", "-O", "qcow2", src, ours});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  vdtest::sh("qemu-img convert -f raw -O qcow2 " + src + " " + theirs);
  expect_same_and_clean(src, ours);
  auto a = data_extents(ours), b = data_extents(theirs);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].start, b[i].start) << "extent " << i;
    EXPECT_EQ(a[i].length, b[i].length) << "extent " << i;
  }
}

TEST(VdimgConvertOrder, ConvertCompressedOfManyChunksReadsTheSame) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string src = dir.file("src.raw");
  std::vector<std::byte> bytes = text(9 * kMiB + 12 * kKiB);  // an unaligned last cluster
  auto noise = vdtest::pattern(2 * kMiB, 9);  // incompressible clusters: stored plain
  std::copy(noise.begin(), noise.end(), bytes.begin() + 3 * kMiB + 64 * kKiB);
  std::fill_n(bytes.begin() + 6 * kMiB, kMiB, std::byte{0});
  vdtest::write_file(src, bytes);
  for (std::string opts : {"cluster_size=64k", "cluster_size=4k", "compat=0.10"}) {
    std::string out = dir.file("out.qcow2");
    auto r = vdimg({"convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, src, out});
    ASSERT_EQ(r.exit_code, 0) << opts << r.err;
    expect_same_and_clean(src, out);
    std::string check = vdtest::sh("qemu-img check " + out);
    EXPECT_EQ(check.find("0.00% compressed"), std::string::npos) << opts << check;
    vdtest::sh("rm " + out);
  }
}

// A cluster that cannot be read in the fourth chunk: chunks after it may be parked waiting
// for their turn to write. The copy must end with the error, neither hanging nor leaking.
TEST(VdimgConvertOrder, ConvertStopsAtAnUnreadableSourceClusterMidway) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string raw = dir.file("src.raw"), src = dir.file("src.qcow2");
  vdtest::write_file(raw, vdtest::pattern(16 * kMiB, 5));
  vdtest::sh("qemu-img convert -f raw -O qcow2 -o cluster_size=64k " + raw + " " + src);
  const uint64_t l1 = vdtest::peek_be64(src, 40);
  const uint64_t l2 = vdtest::peek_be64(src, l1) & 0x00fffffffffffe00ull;
  const uint64_t cluster = (7 * kMiB) / (64 * kKiB);
  // Compressed, with a size field running past the end of the file.
  vdtest::poke_be64(src, l2 + 8 * cluster, 0x4000000000000000ull | 0x3fffffffffff0000ull);
  for (const char* order : {"-W", "-q"}) {
    auto r = vdimg({"convert", order, "-f", "qcow2", "-O", "qcow2", src, dir.file("out.qcow2")});
    EXPECT_NE(r.exit_code, 0) << order;
    // qemu-img's words for it, which name the offset of the extent that failed.
    EXPECT_NE(r.err.find("error while reading at byte 7340032: Input/output error"), std::string::npos)
        << order << r.err;
    EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << order << r.err;
  }
}

// ---- the raw backend's extent cache (read-only images) ---------------------------------------

class RawExtentCache : public ::testing::Test {
 protected:
  vd::Extent status(vd::Image& img, uint64_t off, uint64_t len) {
    vd::Extent ext;
    vd::Error e = rt_.wait([&](vd::Completion d) {
      img.block_status(off, len, [&ext, d](vd::Error err, vd::Extent x) {
        ext = x;
        d(err);
      });
    });
    EXPECT_FALSE(e) << e.message();
    return ext;
  }
  TempDir dir_;
  vd::Runtime rt_{2};
};

TEST_F(RawExtentCache, ReadOnlyImageAnswersFromInsideAKnownExtent) {
  std::string path = dir_.file("disk.raw");
  vdtest::sh("truncate -s 4M " + path);
  put(path, kMiB, vdtest::pattern(kMiB, 3));  // data [1M, 2M), holes around it
  vd::OpenOptions opts;
  opts.flags = vd::open_read_only | vd::open_format_given;
  auto img = vd::backends::raw().open(path, opts, rt_.files());
  ASSERT_TRUE(img.ok()) << img.error().message();
  // Each asks up to the end of the disk, or for `len` bytes when given.
  struct Case { uint64_t off; vd::Extent::Kind kind; uint64_t answer, len = 0; };
  const Case cases[] = {
      {kMiB + kMiB / 2, vd::Extent::Kind::data, kMiB / 2},           // asks the file
      {kMiB + 4096, vd::Extent::Kind::data, kMiB - 4096},            // before it: asks again
      {kMiB + 3 * kMiB / 4, vd::Extent::Kind::data, kMiB / 4},       // inside: cached
      {kMiB + 3 * kMiB / 4, vd::Extent::Kind::data, 4096, 4096},     // clipped to the ask
      {2 * kMiB + kMiB / 2, vd::Extent::Kind::zero, kMiB + kMiB / 2},  // hole to the end
      {3 * kMiB, vd::Extent::Kind::zero, kMiB},                      // inside it: cached
      {0, vd::Extent::Kind::zero, kMiB},                             // the first hole
      {kMiB - 1, vd::Extent::Kind::zero, 1, 2},                      // its last byte
  };
  for (const Case& c : cases) {
    vd::Extent x = status(**img, c.off, c.len ? c.len : 4 * kMiB - c.off);
    EXPECT_EQ(x.kind, c.kind) << "at " << c.off;
    EXPECT_EQ(x.length, c.answer) << "at " << c.off;
    EXPECT_EQ(x.host_offset, std::optional<uint64_t>(c.off)) << "at " << c.off;
  }
  EXPECT_FALSE((*img)->close(false));
}

}  // namespace
