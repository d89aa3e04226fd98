// LUKS1: unlocking volumes qemu-img made (raw and inside QCOW2), refusing hostile headers,
// and creating volumes qemu-io opens.
#include <gtest/gtest.h>

#include "backends/crypto/luks.h"
#include "crypto_fixtures.h"

namespace {

using namespace vd::qcow;
using namespace vd;  // the big-endian helpers (backends/common/endian.h)
using namespace vdtest::crypto;
using vd::Errc;

constexpr uint64_t kDataOff = 0x10000;  // guest offset qemu-io writes at
constexpr uint64_t kDataLen = 0x10000;

std::string luks_opts(const std::string& path) {
  return "driver=luks,key-secret=sec0,file.filename=" + path;
}

// A raw LUKS volume by qemu-img with `opts`, 0x5a written at kDataOff by qemu-io.
std::vector<std::byte> qemu_luks(const vdtest::TempDir& dir, const std::string& opts) {
  std::string img = dir.file("v.luks");
  std::string o = "key-secret=sec0" + (opts.empty() ? "" : "," + opts);
  if (!qemu_create_encrypted("luks", o, img, "1M")) return {};
  EXPECT_TRUE(qemu_io(luks_opts(img), "write -P 0x5a " + std::to_string(kDataOff) + " " +
                                          std::to_string(kDataLen)));
  return vdtest::read_file(img);
}

vd::Result<LuksVolume> unlock(VecFile& f, std::string_view pass, LuksLimits limits = {}) {
  return luks_unlock(f, 0, f.data().size(), pass, f.path(), limits);
}

class QemuLuksVolume : public ::testing::TestWithParam<std::string> {};

TEST_P(QemuLuksVolume, UnlocksAndDecryptsPayloadWithPayloadRelativeSectors) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  VecFile f(qemu_luks(dir, GetParam()));
  ASSERT_FALSE(f.data().empty());
  auto vol = unlock(f, "abc");
  ASSERT_TRUE(vol.ok()) << vol.error().message();
  EXPECT_EQ(vol->slot, 0u);
  uint64_t at = vol->info.payload_offset + kDataOff;
  ASSERT_LE(at + kDataLen, f.data().size());
  std::vector<std::byte> buf(f.data().begin() + at, f.data().begin() + at + kDataLen);
  auto cipher_text = buf;
  ASSERT_FALSE(vol->cipher->decrypt(kDataOff / 512, buf));
  EXPECT_TRUE(all_bytes(buf, 0x5a)) << GetParam();
  ASSERT_FALSE(vol->cipher->encrypt(kDataOff / 512, buf));
  EXPECT_EQ(buf, cipher_text);
}

INSTANTIATE_TEST_SUITE_P(
    CipherSpecs, QemuLuksVolume,
    // Each qemu-img create spends about a second calibrating PBKDF2, so the list covers
    // every mode, IV generator, key size and hash with as few volumes as possible.
    ::testing::Values("",  // aes-256-xts-plain64, sha256
                      "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1",
                      "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5,hash-alg=sha512",
                      "cipher-alg=aes-256,cipher-mode=ecb,hash-alg=sha224",
                      "cipher-alg=aes-256,cipher-mode=ctr,ivgen-alg=plain,hash-alg=ripemd160",
                      "cipher-alg=aes-192,cipher-mode=xts,hash-alg=sha384"));

TEST(Luks, Qcow2DataUsesHostOffsetSectorsForIv) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  std::string img = dir.file("e.qcow2");
  ASSERT_TRUE(qemu_create_encrypted("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0", img, "4M"));
  ASSERT_TRUE(qemu_io("driver=qcow2,encrypt.key-secret=sec0,file.filename=" + img,
                      "write -P 0x5a " + std::to_string(kDataOff) + " 64k"));
  VecFile f(vdtest::read_file(img), img);
  ASSERT_EQ(be32_at(f.data(), 32), kCryptLuks);
  auto [off, len] = qcow2_crypto_ext(f.data());
  ASSERT_NE(off, 0u);
  auto vol = luks_unlock(f, off, len, "abc", img);
  ASSERT_TRUE(vol.ok()) << vol.error().message();
  uint64_t host = qcow2_host_cluster(f.data(), kDataOff);
  ASSERT_NE(host, 0u);
  ASSERT_NE(host, kDataOff);
  std::vector<std::byte> by_host(f.data().begin() + host, f.data().begin() + host + 0x10000);
  auto by_guest = by_host;
  ASSERT_FALSE(vol->cipher->decrypt(host / 512, by_host));
  EXPECT_TRUE(all_bytes(by_host, 0x5a));
  ASSERT_FALSE(vol->cipher->decrypt(kDataOff / 512, by_guest));
  EXPECT_FALSE(all_bytes(by_guest, 0x5a));
}

TEST(Luks, WrongPassphraseIsRefused) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  VecFile f(qemu_luks(dir, ""));
  auto vol = unlock(f, "abd");
  ASSERT_FALSE(vol.ok());
  EXPECT_TRUE(vol.error().is(Errc::wrong_passphrase));
  EXPECT_NE(vol.error().message().find("Invalid password, cannot unlock any keyslot"),
            std::string::npos);
}

TEST(Luks, UnknownCipherIsNotSupported) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  std::string img = dir.file("t.luks");
  ASSERT_TRUE(qemu_create_encrypted("luks", "key-secret=sec0,cipher-alg=twofish-128", img, "1M"));
  VecFile f(vdtest::read_file(img));
  auto info = luks_parse(f.data(), "t.luks");
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ(info->cipher_name, "twofish");
  auto vol = unlock(f, "abc");
  EXPECT_TRUE(vol.error().is(Errc::not_supported)) << vol.error().message();
  EXPECT_NE(vol.error().message().find("twofish"), std::string::npos);
}

// ---- hostile headers (poked into a volume we create quickly) ----

class LuksCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    LuksCreateOptions o;
    o.iterations = 1000;
    o.cipher.key_bytes = 32;  // aes-128-xts: small key material
    auto v = luks_create(f, 0, "abc", o, f.path());
    ASSERT_TRUE(v.ok()) << v.error().message();
    f.data().resize(v->info.payload_offset + 0x10000);
  }
  void poke32(size_t off, uint32_t v) { store_be32(&f.data()[off], v); }
  vd::Error open(LuksLimits limits = {}) { return unlock(f, "abc", limits).error(); }

  VecFile f{{}};
};

TEST_F(LuksCorrupt, PristineVolumeOpens) { EXPECT_FALSE(open()); }

TEST_F(LuksCorrupt, BadMagicIsWrongFormat) {
  f.data()[0] = std::byte{'X'};
  EXPECT_TRUE(open().is(Errc::wrong_format));
}

TEST_F(LuksCorrupt, Version2IsNotSupported) {
  store_be16(&f.data()[6], 2);
  EXPECT_TRUE(open().is(Errc::not_supported));
}

TEST_F(LuksCorrupt, KeyBytesZeroIsCorrupt) {
  poke32(108, 0);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, KeyBytes1000IsCorrupt) {
  poke32(108, 1000);
  auto e = open();
  EXPECT_TRUE(e.is(Errc::corrupt));
  EXPECT_NE(e.message().find("0x6c"), std::string::npos) << e.message();
}

TEST_F(LuksCorrupt, HugeStripesAreCorrupt) {
  poke32(208 + 44, 0xffffffff);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, KeySlotOffsetPastEndOfFileIsCorrupt) {
  poke32(104, 0);  // payload 0 (as in QCOW2) so only the file bounds the slot
  poke32(208 + 40, 0x00ffffff);
  auto e = open();
  EXPECT_TRUE(e.is(Errc::corrupt)) << e.message();
}

TEST_F(LuksCorrupt, KeySlotOverlappingHeaderIsCorrupt) {
  poke32(208 + 40, 1);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, KeySlotsOverlappingEachOtherAreCorrupt) {
  poke32(208 + 48, kLuksSlotActive);
  poke32(208 + 48 + 4, 1000);
  poke32(208 + 48 + 40, be32_at(f.data(), 208 + 40) + 1);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, BadSlotStateIsCorrupt) {
  poke32(208 + 48 * 3, 0x12345678);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, UnterminatedCipherNameIsCorrupt) {
  std::memset(&f.data()[8], 'a', 32);
  EXPECT_TRUE(open().is(Errc::corrupt));
}

TEST_F(LuksCorrupt, UnknownHashIsNotSupported) {
  std::memcpy(&f.data()[72], "whirlpool\0", 10);
  auto e = open();
  EXPECT_TRUE(e.is(Errc::not_supported));
  EXPECT_NE(e.message().find("whirlpool"), std::string::npos);
}

TEST_F(LuksCorrupt, UnknownIvGeneratorIsNotSupported) {
  std::memcpy(&f.data()[40], "xts-benbi\0\0\0", 12);
  EXPECT_TRUE(open().is(Errc::not_supported));
}

TEST_F(LuksCorrupt, IterationsAboveLimitAreRefusedWithoutRunning) {
  poke32(208 + 4, 0xffffffff);
  LuksLimits limits;
  limits.max_iterations = 5000;
  auto e = open(limits);
  EXPECT_TRUE(e.is(Errc::not_supported)) << e.message();
  EXPECT_TRUE(open(LuksLimits{}).is(Errc::not_supported));  // 2^32-1 > default cap too
}

TEST_F(LuksCorrupt, UnlockStopsAtTotalIterationBudget) {
  LuksLimits limits;
  limits.max_total_iterations = 1500;  // slot 1000 + digest 1000 do not fit
  auto e = open(limits);
  EXPECT_TRUE(e.is(Errc::not_supported)) << e.message();
  EXPECT_NE(e.message().find("budget"), std::string::npos);
  limits.max_total_iterations = 2000;
  EXPECT_FALSE(open(limits));
}

TEST_F(LuksCorrupt, HeaderAreaTooShortIsCorrupt) {
  EXPECT_TRUE(luks_unlock(f, 0, 100, "abc", "x").error().is(Errc::corrupt));
  EXPECT_TRUE(luks_unlock(f, 0, 4096, "abc", "x").error().is(Errc::corrupt));  // slot beyond
}

TEST_F(LuksCorrupt, DamagedKeyMaterialFailsTheDigestCheck) {
  uint64_t km = uint64_t{be32_at(f.data(), 208 + 40)} * 512;
  f.data()[km + 100] ^= std::byte{1};
  EXPECT_TRUE(open().is(Errc::wrong_passphrase));
}

// ---- creation ----

TEST(LuksCreate, HeaderSizeMatchesQemuLayout) {
  LuksCreateOptions o;
  EXPECT_EQ(*luks_header_size(o), 0xfc8u * 512);
  o.cipher.key_bytes = 48;
  EXPECT_EQ(*luks_header_size(o), 0xbc8u * 512);
  o.cipher = CipherSpec{"aes", "cbc", IvGen::essiv, "sha256", 16};
  EXPECT_EQ(*luks_header_size(o), 0x408u * 512);
  o.hash = "nohash";
  EXPECT_TRUE(luks_header_size(o).error().is(Errc::not_supported));
}

TEST(LuksCreate, AfSplitThenMergeRestoresKey) {
  auto key = vdtest::pattern(64, 11);
  std::vector<std::byte> material(64 * kLuksStripes), back(64);
  ASSERT_FALSE(luks_af_split("sha256", key, kLuksStripes, material));
  ASSERT_FALSE(luks_af_merge("sha256", material, kLuksStripes, back));
  EXPECT_EQ(back, key);
  EXPECT_TRUE(luks_af_merge("sha256", material, kLuksMaxStripes + 1, back).is(Errc::invalid_argument));
}

TEST(LuksCreate, HeaderAtAnOffsetUnlocksThere) {
  // As inside QCOW2: the header sits in a cluster run after the image's own metadata.
  VecFile f(std::vector<std::byte>(0x40000, std::byte{0xee}));
  LuksCreateOptions o;
  o.iterations = 1000;
  auto size = luks_header_size(o);
  ASSERT_TRUE(size.ok());
  auto made = luks_create(f, 0x40000, "pw", o, "img.qcow2");
  ASSERT_TRUE(made.ok()) << made.error().message();
  EXPECT_EQ(f.data().size(), 0x40000 + *size);
  EXPECT_EQ(made->info.payload_offset, *size);
  auto vol = luks_unlock(f, 0x40000, *size, "pw", "img.qcow2");
  ASSERT_TRUE(vol.ok()) << vol.error().message();
  auto data = vdtest::pattern(4096, 2), buf = data;
  ASSERT_FALSE(made->cipher->encrypt(99, buf));
  ASSERT_FALSE(vol->cipher->decrypt(99, buf));
  EXPECT_EQ(buf, data);
  EXPECT_EQ(vol->info.uuid, made->info.uuid);
  EXPECT_EQ(vol->info.uuid.size(), 36u);
}

class CreatedVolume : public ::testing::TestWithParam<CipherSpec> {};

TEST_P(CreatedVolume, OpensInQemuIoAndReadsBack) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  std::string img = dir.file("c.luks");
  VecFile f({}, img);
  LuksCreateOptions o;
  o.cipher = GetParam();
  o.iterations = 1000;
  auto vol = luks_create(f, 0, "abc", o, img);
  ASSERT_TRUE(vol.ok()) << vol.error().message();
  EXPECT_EQ(f.data().size(), vol->info.payload_offset);
  std::vector<std::byte> data(0x20000, std::byte{0x5a});
  ASSERT_FALSE(vol->cipher->encrypt(0, data));
  f.data().insert(f.data().end(), data.begin(), data.end());
  vdtest::write_file(img, f.data());
  EXPECT_TRUE(qemu_io(luks_opts(img), "read -P 0x5a 0 128k"));
  EXPECT_TRUE(qemu_io(luks_opts(img), "write -P 0x33 64k 4k"));
  VecFile back(vdtest::read_file(img), img);
  auto reopened = unlock(back, "abc");
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  std::vector<std::byte> got(back.data().begin() + reopened->info.payload_offset + 0x10000,
                             back.data().begin() + reopened->info.payload_offset + 0x11000);
  ASSERT_FALSE(reopened->cipher->decrypt(0x10000 / 512, got));
  EXPECT_TRUE(all_bytes(got, 0x33));
  EXPECT_TRUE(unlock(back, "wrong").error().is(Errc::wrong_passphrase));
}

INSTANTIATE_TEST_SUITE_P(
    Specs, CreatedVolume,
    ::testing::Values(CipherSpec{}, CipherSpec{"aes", "xts", IvGen::plain64, "", 48},
                      CipherSpec{"aes", "cbc", IvGen::essiv, "sha256", 16},
                      CipherSpec{"aes", "ctr", IvGen::plain, "", 32}));

}  // namespace
