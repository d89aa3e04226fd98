// Header parsing of real images made by qemu-img, and the encode round trip: encoding
// what we read reproduces qemu-img's header bytes.
#include <gtest/gtest.h>

#include "backends/qcow/meta/header.h"
#include "qcow/header_fixtures.h"
#include "support/support.h"

namespace vdtest::qcowhdr {
namespace {

using vd::Errc;
using namespace vd::qcow;
using namespace vd;  // the big-endian helpers (backends/common/endian.h)

class QcowHeaderImages : public ::testing::Test {
 protected:
  void SetUp() override { VD_REQUIRE_QEMU(); }

  // Reads the image's header, asserting success.
  Header read_ok(const std::string& path) {
    auto h = read_path(path);
    EXPECT_TRUE(h.ok()) << h.error().message();
    return h.ok() ? *h : Header{};
  }

  TempDir dir;
};

// encode(read(x)) must equal the header region qemu-img wrote: the first cluster for
// v2/v3, the fixed header and backing name for v1.
void expect_round_trip(const std::string& path, const Header& h) {
  auto enc = encode_header(h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  auto file = read_file(path);
  ASSERT_GE(file.size(), enc->size());
  std::vector<std::byte> head(file.begin(), file.begin() + enc->size());
  EXPECT_TRUE(head == *enc) << "encoded header differs from " << path;
}

TEST_F(QcowHeaderImages, ParsesDefaultV3Image) {
  auto path = qemu_create(dir, "a.qcow2", "");
  Header h = read_ok(path);
  EXPECT_EQ(h.version, 3u);
  EXPECT_EQ(h.cluster_bits, 16u);
  EXPECT_EQ(h.l2_bits, 13u);
  EXPECT_EQ(h.size, 64u << 20);
  EXPECT_EQ(h.l1_size, 1u);
  EXPECT_EQ(h.l1_table_offset, 0x30000u);
  EXPECT_EQ(h.refcount_table_offset, 0x10000u);
  EXPECT_EQ(h.refcount_table_clusters, 1u);
  EXPECT_EQ(h.nb_snapshots, 0u);
  EXPECT_EQ(h.header_length, 112u);
  EXPECT_EQ(h.refcount_order, 4u);
  EXPECT_EQ(h.compression_type, kCompressionZlib);
  EXPECT_EQ(h.incompatible_features, 0u);
  EXPECT_FALSE(h.backing_file.has_value());
  EXPECT_TRUE(h.unknown_extensions.empty());
  ASSERT_EQ(h.feature_names.size(), 8u);
  EXPECT_EQ(h.feature_names[4].name, "extended L2 entries");
  EXPECT_EQ(h.feature_names[5].type, 1u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesV2Image) {
  auto path = qemu_create(dir, "a.qcow2", "-o compat=0.10");
  Header h = read_ok(path);
  EXPECT_EQ(h.version, 2u);
  EXPECT_EQ(h.header_length, 72u);
  EXPECT_EQ(h.refcount_order, 4u);
  EXPECT_TRUE(h.feature_names.empty());
  EXPECT_EQ(h.incompatible_features, 0u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, Parses512ByteClustersWithoutFeatureTable) {
  auto path = qemu_create(dir, "a.qcow2", "-o cluster_size=512", "1M");
  Header h = read_ok(path);
  EXPECT_EQ(h.cluster_bits, 9u);
  EXPECT_EQ(h.l2_bits, 6u);
  EXPECT_EQ(h.l1_size, 32u);  // 1 MiB / (64 entries * 512 bytes)
  EXPECT_TRUE(h.feature_names.empty());
  EXPECT_TRUE(qemu_feature_names(3, 9).empty());
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, Parses2MiBClusters) {
  auto path = qemu_create(dir, "a.qcow2", "-o cluster_size=2M");
  Header h = read_ok(path);
  EXPECT_EQ(h.cluster_bits, 21u);
  EXPECT_EQ(h.cluster_size(), 2u << 20);
  EXPECT_EQ(h.l1_table_offset, 0x600000u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesRefcountWidths1And64) {
  Header h1 = read_ok(qemu_create(dir, "r1.qcow2", "-o refcount_bits=1"));
  EXPECT_EQ(h1.refcount_order, 0u);
  auto p64 = qemu_create(dir, "r64.qcow2", "-o refcount_bits=64");
  Header h64 = read_ok(p64);
  EXPECT_EQ(h64.refcount_order, 6u);
  expect_round_trip(p64, h64);
}

TEST_F(QcowHeaderImages, ParsesLazyRefcountsAsCompatibleBit) {
  auto path = qemu_create(dir, "a.qcow2", "-o lazy_refcounts=on");
  Header h = read_ok(path);
  EXPECT_EQ(h.compatible_features, kCompatLazyRefcounts);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesZstdCompressionType) {
  auto path = qemu_create(dir, "a.qcow2", "-o compression_type=zstd");
  Header h = read_ok(path);
  EXPECT_EQ(h.compression_type, kCompressionZstd);
  EXPECT_EQ(h.incompatible_features, kIncompatCompression);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesExtendedL2) {
  auto path = qemu_create(dir, "a.qcow2", "-o extended_l2=on");
  Header h = read_ok(path);
  EXPECT_TRUE(h.extended_l2());
  EXPECT_EQ(h.l2_entry_size(), 16u);
  EXPECT_EQ(h.l2_bits, 12u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesExternalDataFile) {
  auto path = qemu_create(dir, "a.qcow2", "-o data_file=a.raw");
  Header h = read_ok(path);
  EXPECT_EQ(h.data_file, "a.raw");
  EXPECT_EQ(h.incompatible_features, kIncompatDataFile);
  EXPECT_EQ(h.autoclear_features, 0u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesRawExternalDataFile) {
  auto path = qemu_create(dir, "a.qcow2", "-o data_file=a.raw,data_file_raw=on");
  Header h = read_ok(path);
  EXPECT_EQ(h.data_file, "a.raw");
  EXPECT_EQ(h.autoclear_features, kAutoclearDataFileRaw);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesBackingFileWithFormat) {
  qemu_create(dir, "base.qcow2", "", "1M");
  for (const char* compat : {"0.10", "1.1"}) {
    auto path = qemu_create(dir, std::string("top") + compat + ".qcow2",
                            std::string("-o compat=") + compat + " -b base.qcow2 -F qcow2");
    Header h = read_ok(path);
    EXPECT_EQ(h.backing_file, "base.qcow2");
    EXPECT_EQ(h.backing_format, "qcow2");
    EXPECT_EQ(h.backing_file_size, 10u);
    expect_round_trip(path, h);
  }
}

TEST_F(QcowHeaderImages, ParsesBackingFileWithoutFormat) {
  qemu_create(dir, "base.qcow2", "", "1M");
  auto path = qemu_create(dir, "top.qcow2", "-o compat=0.10 -b base.qcow2 -F qcow2");
  poke_be32(path, 72, 0);  // the backing-format extension becomes the end marker
  Header h = read_ok(path);
  EXPECT_EQ(h.backing_file, "base.qcow2");
  EXPECT_FALSE(h.backing_format.has_value());
  EXPECT_TRUE(qemu_opens(path));
}

TEST_F(QcowHeaderImages, ParsesQcow1WithoutBackingFile) {
  auto path = qemu_create(dir, "a.qcow", "", "64M", "qcow");
  Header h = read_ok(path);
  EXPECT_EQ(h.version, 1u);
  EXPECT_EQ(h.cluster_bits, 12u);  // qemu-img: 4 KiB clusters without a backing file
  EXPECT_EQ(h.l2_bits, 9u);
  EXPECT_EQ(h.size, 64u << 20);
  EXPECT_EQ(h.l1_size, 32u);  // 64 MiB / 2 MiB per L2 table
  EXPECT_EQ(h.l1_table_offset, 48u);
  EXPECT_EQ(h.header_length, 48u);
  EXPECT_FALSE(h.backing_file.has_value());
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesQcow1WithBackingFile) {
  qemu_create(dir, "base.qcow2", "", "1M");
  auto path = qemu_create(dir, "a.qcow", "-b base.qcow2 -F qcow2", "64M", "qcow");
  Header h = read_ok(path);
  EXPECT_EQ(h.backing_file, "base.qcow2");
  EXPECT_EQ(h.cluster_bits, 9u);  // 512-byte clusters over a backing file
  EXPECT_EQ(h.l2_bits, 12u);
  EXPECT_EQ(h.backing_file_offset, 48u);
  EXPECT_EQ(h.l1_table_offset, 64u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, ParsesLuksEncryptedImage) {
  auto path = qemu_create_luks(dir, "a.qcow2");
  Header h = read_ok(path);
  EXPECT_EQ(h.crypt_method, kCryptLuks);
  EXPECT_NE(h.crypto_header_offset, 0u);
  EXPECT_EQ(h.crypto_header_offset % h.cluster_size(), 0u);
  EXPECT_GT(h.crypto_header_length, 0u);
  expect_round_trip(path, h);
}

TEST_F(QcowHeaderImages, KeepsDirtyBitOfACrashedImage) {
  auto path = qemu_create(dir, "a.qcow2", "");
  poke_be64(path, 72, kIncompatDirty);
  Header h = read_ok(path);
  EXPECT_EQ(h.incompatible_features, kIncompatDirty);
}

TEST_F(QcowHeaderImages, KeepsWellFormedUnknownExtension) {
  auto path = qemu_create(dir, "a.qcow2", "");
  poke_be32(path, 112, 0x12345678);  // replaces the feature table
  poke_be32(path, 116, 5);
  poke_bytes(path, 120, std::string("hello") + std::string(3, '\0'));  // with its padding
  poke_be64(path, 128, 0);  // end marker
  poke_bytes(path, 136, std::string(400, '\0'));  // the rest of the old feature table
  Header h = read_ok(path);
  ASSERT_EQ(h.unknown_extensions.size(), 1u);
  EXPECT_EQ(h.unknown_extensions[0].type, 0x12345678u);
  EXPECT_EQ(h.unknown_extensions[0].data.size(), 5u);
  EXPECT_TRUE(h.feature_names.empty());
  EXPECT_TRUE(qemu_opens(path));
  expect_round_trip(path, h);
}

TEST(QcowHeaderSamples, ParsesQemuValidSamples) {
  const char* names[] = {"aarch64", "arm", "i386", "loongarch64", "riscv64", "x86_64"};
  for (const char* n : names) {
    std::string path = data_dir() + "/qemu-samples/valid-qcow2/bios-tables-test." + n + ".iso.qcow2";
    auto h = read_path(path);
    ASSERT_TRUE(h.ok()) << h.error().message();
    EXPECT_EQ(h->version, 3u) << n;
    EXPECT_EQ(h->cluster_bits, 9u) << n;
    EXPECT_EQ(h->size, 425984u) << n;
    EXPECT_EQ(h->l1_size, 13u) << n;
    EXPECT_EQ(h->l1_table_offset, 0x600u) << n;
    EXPECT_EQ(h->refcount_table_offset, 0x200u) << n;
    EXPECT_EQ(h->refcount_table_clusters, 1u) << n;
    EXPECT_EQ(h->nb_snapshots, 0u) << n;
    EXPECT_EQ(h->incompatible_features | h->compatible_features | h->autoclear_features, 0u) << n;
    bool long_header = std::string(n) == "loongarch64" || std::string(n) == "riscv64";
    EXPECT_EQ(h->header_length, long_header ? 112u : 104u) << n;
    EXPECT_EQ(h->compression_type, kCompressionZlib) << n;
    expect_round_trip(path, *h);
  }
}

TEST(QcowHeaderSamples, Afl5VhdIsRefusedByProbesAndReader) {
  TempDir dir;
  std::string path = dir.file("afl5.img");
  sh("bzip2 -dc '" + data_dir() + "/qemu-samples/afl5.img.bz2' > '" + path + "'");
  VecFile f(path, read_file(path));
  EXPECT_FALSE(probe_qcow2(f));
  EXPECT_FALSE(probe_qcow1(f));
  EXPECT_TRUE(fails_with(read_header(f, path), Errc::wrong_format, "Image is not in qcow2 format", path));
}

TEST(QcowHeaderProbe, ProbesByMagicAndVersion) {
  auto make = [](uint32_t version, size_t size) {
    std::vector<std::byte> b(size);
    if (size >= 8) {
      store_be32(b.data(), kMagic);
      store_be32(b.data() + 4, version);
    }
    return VecFile("x", b);
  };
  auto v1 = make(1, 512), v2 = make(2, 512), v3 = make(3, 512), v4 = make(4, 512);
  EXPECT_TRUE(probe_qcow1(v1));
  EXPECT_FALSE(probe_qcow2(v1));
  EXPECT_TRUE(probe_qcow2(v2));
  EXPECT_TRUE(probe_qcow2(v3));
  EXPECT_FALSE(probe_qcow1(v3));
  // Like QEMU, an unknown version still probes as qcow2 so the open explains it.
  EXPECT_TRUE(probe_qcow2(v4));
  auto tiny = make(3, 100), empty = make(3, 0);
  EXPECT_FALSE(probe_qcow2(tiny));
  EXPECT_FALSE(probe_qcow2(empty));
  EXPECT_FALSE(probe_qcow1(empty));
}

TEST(QcowHeaderProbe, UnknownVersionIsRefusedByReader) {
  std::vector<std::byte> b(512);
  store_be32(b.data(), kMagic);
  store_be32(b.data() + 4, 4);
  VecFile f("v4.qcow2", b);
  EXPECT_TRUE(fails_with(read_header(f, "v4.qcow2"), Errc::not_supported, "Unsupported qcow2 version 4", "v4.qcow2"));
}

}  // namespace
}  // namespace vdtest::qcowhdr
