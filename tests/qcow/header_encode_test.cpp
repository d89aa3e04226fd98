// Encoding headers: a header built from scratch the way a creator would matches what
// `qemu-img create` writes; what we do not interpret (bitmaps extension, header fields
// past byte 112) survives a rewrite; overflowing the first cluster is an error. Plus a
// mutation sweep: no corrupted header may crash the reader.
#include <gtest/gtest.h>

#include <random>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/snapshot_table.h"
#include "qcow/header_fixtures.h"
#include "support/support.h"

namespace vdtest::qcowhdr {
namespace {

using vd::Errc;
using namespace vd::qcow;
using namespace vd;  // the big-endian helpers (backends/common/endian.h)

// The header `qemu-img create -f qcow2 IMG 64M` writes, built field by field.
Header fresh_v3_64m() {
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  h.size = 64ull << 20;
  h.l1_size = 1;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.refcount_order = 4;
  h.header_length = 112;
  h.feature_names = qemu_feature_names(3, 16);
  return h;
}

std::vector<std::byte> first_bytes(const std::string& path, size_t n) {
  auto f = read_file(path);
  f.resize(std::max(f.size(), n));
  return {f.begin(), f.begin() + n};
}

TEST(QcowHeaderEncode, FreshHeaderMatchesQemuImgCreate) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  auto path = qemu_create(dir, "a.qcow2", "");
  auto enc = encode_header(fresh_v3_64m());
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  ASSERT_EQ(enc->size(), 65536u);
  EXPECT_TRUE(first_bytes(path, enc->size()) == *enc);
}

TEST(QcowHeaderEncode, FreshHeaderWithBackingMatchesQemuImgCreate) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  qemu_create(dir, "base.qcow2", "", "1M");
  auto path = qemu_create(dir, "a.qcow2", "-b base.qcow2 -F qcow2");
  Header h = fresh_v3_64m();
  h.backing_file = "base.qcow2";
  h.backing_format = "qcow2";
  auto enc = encode_header(h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  EXPECT_TRUE(first_bytes(path, enc->size()) == *enc);
}

TEST(QcowHeaderEncode, RefusesHeaderThatDoesNotFitInFirstCluster) {
  Header h;
  h.version = 3;
  h.cluster_bits = 9;
  h.size = 1 << 20;
  h.backing_file = std::string(400, 'b');
  h.backing_format = "qcow2";
  auto enc = encode_header(h);
  ASSERT_FALSE(enc.ok());
  EXPECT_TRUE(enc.error().is(Errc::too_large)) << enc.error().message();
  h.backing_file = std::string(300, 'b');
  EXPECT_TRUE(encode_header(h).ok());
}

TEST(QcowHeaderEncode, RefusesBackingNameOver1023Bytes) {
  Header h = fresh_v3_64m();
  h.backing_file = std::string(1024, 'b');
  auto enc = encode_header(h);
  ASSERT_FALSE(enc.ok());
  EXPECT_NE(enc.error().message().find("Backing file name too long"), std::string::npos);
}

TEST(QcowHeaderEncode, EncodedHeaderReadsBack) {
  Header h = fresh_v3_64m();
  h.incompatible_features = kIncompatCompression | kIncompatExtendedL2;
  h.compression_type = kCompressionZstd;
  h.compatible_features = kCompatLazyRefcounts;
  h.refcount_order = 6;
  h.backing_file = "../base image.qcow2";
  h.backing_format = "raw";
  h.unknown_extensions.push_back({0xabcd0001, std::vector<std::byte>(13, std::byte{7})});
  auto enc = encode_header(h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  auto back = parse_qcow2_header(*enc, "enc.qcow2");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->compression_type, kCompressionZstd);
  EXPECT_EQ(back->refcount_order, 6u);
  EXPECT_EQ(back->l2_bits, 12u);
  EXPECT_EQ(back->backing_file, "../base image.qcow2");
  EXPECT_EQ(back->backing_format, "raw");
  ASSERT_EQ(back->unknown_extensions.size(), 1u);
  EXPECT_EQ(back->unknown_extensions[0].data.size(), 13u);
  EXPECT_EQ(back->feature_names.size(), 8u);
}

TEST(QcowHeaderEncode, KeepsBitmapsExtension) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  auto path = qemu_create(dir, "a.qcow2", "");
  sh("qemu-img bitmap --add '" + path + "' b0");
  auto h = read_path(path);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_TRUE(h->has_bitmaps_extension);
  EXPECT_EQ(h->autoclear_features, kAutoclearBitmaps);
  auto enc = encode_header(*h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  EXPECT_TRUE(first_bytes(path, enc->size()) == *enc);
}

TEST(QcowHeaderEncode, DropsStaleBitmapsExtension) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  auto path = qemu_create(dir, "a.qcow2", "");
  sh("qemu-img bitmap --add '" + path + "' b0");
  poke_be64(path, 88, 0);  // a program without bitmap support cleared the autoclear bit
  auto h = read_path(path);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_FALSE(h->has_bitmaps_extension);
  EXPECT_TRUE(h->unknown_extensions.empty());
}

TEST(QcowHeaderEncode, KeepsUnknownHeaderFieldsPastByte112) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  auto path = qemu_create(dir, "a.qcow2", "");
  poke_be32(path, 100, 120);
  poke_bytes(path, 112, "ABCDEFGH");
  poke_bytes(path, 120, std::string(500, '\0'));  // end marker; old feature table gone
  auto h = read_path(path);
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->header_length, 120u);
  ASSERT_EQ(h->unknown_header_fields.size(), 8u);
  EXPECT_EQ(h->unknown_header_fields[0], std::byte{'A'});
  auto enc = encode_header(*h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  EXPECT_TRUE(first_bytes(path, enc->size()) == *enc);
  EXPECT_TRUE(qemu_opens(path));
}

TEST(QcowHeaderEncode, ReaderRejectsBackingNameCutByEndOfFile) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  qemu_create(dir, "base.qcow2", "", "1M");
  auto path = qemu_create(dir, "a.qcow2", "-b base.qcow2 -F qcow2");
  auto bytes = read_file(path);
  uint64_t name_at = peek_be64(path, 8);
  bytes.resize(name_at + 4);  // a truncated copy: the name runs past the end
  VecFile f(path, bytes);
  EXPECT_TRUE(fails_with(read_header(f, path, {.check_layout = false}), Errc::corrupt,
                         "Invalid backing file offset", path));
}

// Random byte corruptions of the header cluster and the snapshot table of a real image:
// every outcome must be a clean success or a clean error naming the image.
TEST(QcowHeaderFuzz, MutatedHeadersNeverCrash) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  qemu_create(dir, "base.qcow2", "", "1M");
  auto path = qemu_create(dir, "a.qcow2", "-o cluster_size=4096 -b base.qcow2 -F qcow2", "1M");
  sh("qemu-img snapshot -c snap '" + path + "'");
  const auto original = read_file(path);
  const uint64_t table = peek_be64(path, 64);
  ASSERT_LT(table, original.size());
  std::mt19937 rng(1234);
  int opened = 0;
  for (int round = 0; round < 3000; ++round) {
    auto bytes = original;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i) {
      size_t at = rng() % 512;
      if (rng() % 2) at = table + at % (original.size() - table);  // half hit the snapshot table
      bytes[at] = std::byte(rng() & 0xff);
    }
    VecFile f("fuzz.qcow2", bytes);
    auto h = read_header(f, "fuzz.qcow2");
    if (!h) {
      ASSERT_NE(h.error().message().find("fuzz.qcow2"), std::string::npos) << h.error().message();
      continue;
    }
    ++opened;
    auto s = read_snapshot_table(f, *h, "fuzz.qcow2");
    if (s.ok())
      for (size_t i = 0; i < s->size(); ++i) (void)validate_snapshot((*s)[i], *h, i, bytes.size(), "fuzz.qcow2");
    (void)encode_header(*h);
  }
  EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace vdtest::qcowhdr
