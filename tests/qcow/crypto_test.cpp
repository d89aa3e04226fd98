// Sector ciphers: legacy QCOW AES checked against images qemu-io wrote, and the generic
// OpenSSL cipher (modes, IV generators, errors, thread safety).
#include <gtest/gtest.h>

#include <thread>

#include "backends/crypto/crypto.h"
#include "crypto_fixtures.h"

namespace {

using namespace vd::qcow;
using namespace vdtest::crypto;
using vd::Errc;

std::vector<std::byte> key_of(size_t n, uint32_t seed) { return vdtest::pattern(n, seed); }

std::unique_ptr<SectorCipher> cipher_for(const CipherSpec& spec) {
  auto key = key_of(spec.key_bytes, 7);
  auto c = make_sector_cipher(spec, key, "test");
  EXPECT_TRUE(c.ok()) << c.error().message();
  return c.ok() ? std::move(*c) : nullptr;
}

CipherSpec spec(const std::string& mode, uint32_t key_bytes) {
  CipherSpec s;
  s.key_bytes = key_bytes;
  EXPECT_FALSE(parse_cipher_mode(mode, s, "test"));
  return s;
}

// ---- legacy AES against qemu-io ----

// Writes 0x5a at guest `g` of an image qemu-img creates with encrypt.format=aes, and
// returns the image bytes.
std::vector<std::byte> legacy_image(const vdtest::TempDir& dir, const std::string& fmt,
                                    uint64_t g, const std::string& extra = "") {
  std::string img = dir.file("legacy." + fmt);
  auto r = vdtest::run({"qemu-img", "create", "-q", "-f", fmt, "--object", secret_object("abc"),
                        "-o", "encrypt.format=aes,encrypt.key-secret=sec0" + extra, img, "4M"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(qemu_io("driver=" + fmt + ",encrypt.key-secret=sec0,file.filename=" + img,
                      "write -P 0x5a " + std::to_string(g) + " 4k"));
  return vdtest::read_file(img);
}

void expect_legacy_guest_iv(const std::vector<std::byte>& file, uint64_t host, uint64_t g) {
  ASSERT_NE(host, 0u);
  ASSERT_NE(host, g) << "fixture must place the data away from its guest offset";
  auto aes = make_legacy_aes("abc");
  ASSERT_TRUE(aes.ok()) << aes.error().message();
  std::vector<std::byte> buf(file.begin() + host, file.begin() + host + 4096);
  auto guest_iv = buf, host_iv = buf;
  ASSERT_FALSE((*aes)->decrypt(g / 512, guest_iv));
  EXPECT_TRUE(all_bytes(guest_iv, 0x5a)) << "IV from the guest sector must decrypt";
  ASSERT_FALSE((*aes)->decrypt(host / 512, host_iv));
  EXPECT_FALSE(all_bytes(host_iv, 0x5a)) << "IV from the host sector must not";
  // And encrypting the plaintext reproduces qemu's ciphertext exactly.
  ASSERT_FALSE((*aes)->encrypt(g / 512, guest_iv));
  EXPECT_EQ(guest_iv, buf);
}

TEST(LegacyAes, DecryptsQcowV1ClusterWithGuestSectorIv) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const uint64_t g = 0x210000;  // deep into the disk; the data cluster lands near the start
  auto file = legacy_image(dir, "qcow", g);
  ASSERT_EQ(be32_at(file, 36), kCryptAes);
  uint64_t host = qcow1_host_cluster(file, g);
  uint64_t in_cluster = g & ((1u << std::to_integer<unsigned>(file.at(32))) - 1);
  expect_legacy_guest_iv(file, host + in_cluster, g);
}

TEST(LegacyAes, DecryptsQcow2Method1ClusterWithGuestSectorIv) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const uint64_t g = 0x210000;
  auto file = legacy_image(dir, "qcow2", g, ",compat=0.10");
  ASSERT_EQ(be32_at(file, 32), kCryptAes);
  uint64_t host = qcow2_host_cluster(file, g);
  uint64_t in_cluster = g & ((1ull << be32_at(file, 20)) - 1);
  expect_legacy_guest_iv(file, host + in_cluster, g);
}

TEST(LegacyAes, WrongPassphraseReadsGarbage) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  auto file = legacy_image(dir, "qcow", 0);
  uint64_t host = qcow1_host_cluster(file, 0);
  ASSERT_NE(host, 0u);
  auto aes = make_legacy_aes("abd");
  ASSERT_TRUE(aes.ok());
  std::vector<std::byte> buf(file.begin() + host, file.begin() + host + 512);
  ASSERT_FALSE((*aes)->decrypt(0, buf));
  EXPECT_FALSE(all_bytes(buf, 0x5a));
}

TEST(LegacyAes, PassphraseIsTruncatedTo16Bytes) {
  auto a = make_legacy_aes("0123456789abcdefIGNORED");
  auto b = make_legacy_aes("0123456789abcdef");
  ASSERT_TRUE(a.ok() && b.ok());
  auto x = vdtest::pattern(1024, 1), y = x;
  ASSERT_FALSE((*a)->encrypt(5, x));
  ASSERT_FALSE((*b)->encrypt(5, y));
  EXPECT_EQ(x, y);
  EXPECT_EQ((*a)->key_bytes(), 16u);
}

// ---- generic cipher ----

class CipherRoundTrip : public ::testing::TestWithParam<std::pair<const char*, uint32_t>> {};

TEST_P(CipherRoundTrip, EncryptThenDecryptRestoresPlaintext) {
  auto c = cipher_for(spec(GetParam().first, GetParam().second));
  ASSERT_TRUE(c);
  auto plain = vdtest::pattern(8 * 512, 3), buf = plain;
  ASSERT_FALSE(c->encrypt(1000, buf));
  EXPECT_NE(buf, plain);
  ASSERT_FALSE(c->decrypt(1000, buf));
  EXPECT_EQ(buf, plain);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, CipherRoundTrip,
    ::testing::Values(std::pair{"xts-plain64", 32u}, std::pair{"xts-plain64", 48u},
                      std::pair{"xts-plain64", 64u}, std::pair{"xts-essiv:sha256", 64u},
                      std::pair{"cbc-plain", 16u}, std::pair{"cbc-plain64", 24u},
                      std::pair{"cbc-essiv:sha256", 32u}, std::pair{"cbc-essiv:md5", 16u},
                      std::pair{"ctr-plain64", 32u}, std::pair{"ecb", 16u},
                      std::pair{"ecb-plain64", 32u}));

TEST(SectorCipher, EachSectorUsesItsOwnIv) {
  // Encrypting sectors 10..11 at once equals encrypting sector 10 and 11 separately.
  auto c = cipher_for(spec("xts-plain64", 64));
  ASSERT_TRUE(c);
  auto whole = vdtest::pattern(1024, 4);
  std::vector<std::byte> a(whole.begin(), whole.begin() + 512), b(whole.begin() + 512, whole.end());
  ASSERT_FALSE(c->encrypt(10, whole));
  ASSERT_FALSE(c->encrypt(10, a));
  ASSERT_FALSE(c->encrypt(11, b));
  EXPECT_TRUE(std::equal(a.begin(), a.end(), whole.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), whole.begin() + 512));
}

TEST(SectorCipher, PlainIvWrapsAt32BitsPlain64DoesNot) {
  auto plain = cipher_for(spec("cbc-plain", 32));
  auto plain64 = cipher_for(spec("cbc-plain64", 32));
  ASSERT_TRUE(plain && plain64);
  auto x = vdtest::pattern(512, 5), y = x, z = x, w = x;
  ASSERT_FALSE(plain->encrypt(7, x));
  ASSERT_FALSE(plain->encrypt((1ull << 32) + 7, y));
  EXPECT_EQ(x, y);
  ASSERT_FALSE(plain64->encrypt(7, z));
  ASSERT_FALSE(plain64->encrypt((1ull << 32) + 7, w));
  EXPECT_NE(z, w);
  EXPECT_EQ(x, z);  // below 2^32 both IVs are the same bytes
}

TEST(SectorCipher, RejectsPartialSector) {
  auto c = cipher_for(spec("xts-plain64", 64));
  ASSERT_TRUE(c);
  std::vector<std::byte> buf(700);
  EXPECT_TRUE(c->encrypt(0, buf).is(Errc::invalid_argument));
  EXPECT_TRUE(c->decrypt(0, buf).is(Errc::invalid_argument));
}

TEST(SectorCipher, RefusesCiphersOpenSslLacks) {
  CipherSpec s = spec("xts-plain64", 64);
  s.alg = "twofish";
  EXPECT_TRUE(check_cipher_supported(s, "x").is(Errc::not_supported));
  s.alg = "aes";
  s.key_bytes = 40;
  EXPECT_TRUE(check_cipher_supported(s, "x").is(Errc::not_supported));
  CipherSpec e = spec("cbc-essiv:sha1", 32);  // a 20-byte hash keys no AES
  auto key = key_of(32, 1);
  EXPECT_TRUE(make_sector_cipher(e, key, "x").error().is(Errc::not_supported));
  CipherSpec m = spec("ofb-plain64", 32);
  EXPECT_TRUE(check_cipher_supported(m, "x").is(Errc::not_supported));
}

TEST(SectorCipher, RejectsKeyOfWrongLength) {
  auto key = key_of(16, 1);
  auto c = make_sector_cipher(spec("xts-plain64", 64), key, "x");
  EXPECT_TRUE(c.error().is(Errc::invalid_argument));
}

TEST(SectorCipher, ParsesLuksModeStrings) {
  CipherSpec s;
  ASSERT_FALSE(parse_cipher_mode("cbc-essiv:sha256", s, "x"));
  EXPECT_EQ(s.mode, "cbc");
  EXPECT_EQ(s.ivgen, IvGen::essiv);
  EXPECT_EQ(s.ivgen_hash, "sha256");
  EXPECT_EQ(format_cipher_mode(s), "cbc-essiv:sha256");
  ASSERT_FALSE(parse_cipher_mode("ecb", s, "x"));
  EXPECT_EQ(s.ivgen, IvGen::none);
  EXPECT_TRUE(parse_cipher_mode("cbc-benbi", s, "x").is(Errc::not_supported));
  EXPECT_TRUE(parse_cipher_mode("", s, "x").is(Errc::corrupt));
  EXPECT_TRUE(parse_cipher_mode("cbc-essiv:", s, "x").is(Errc::not_supported));
}

TEST(SectorCipher, ConcurrentCallsGiveTheSameResult) {
  auto c = cipher_for(spec("cbc-essiv:sha256", 32));
  ASSERT_TRUE(c);
  auto expect = vdtest::pattern(64 * 512, 9);
  ASSERT_FALSE(c->encrypt(123, expect));
  std::vector<std::thread> threads;
  std::vector<int> good(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        auto buf = vdtest::pattern(64 * 512, 9);
        good[t] += !c->encrypt(123, buf) && buf == expect;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int g : good) EXPECT_EQ(g, 50);
}

TEST(Hashing, Pbkdf2MatchesRfc6070Vector) {
  // RFC 6070: P="password", S="salt", c=2, dkLen=20, PBKDF2-HMAC-SHA1.
  std::string p = "password", s = "salt";
  std::array<std::byte, 20> out;
  ASSERT_FALSE(pbkdf2("sha1", std::as_bytes(std::span(p)), std::as_bytes(std::span(s)), 2, out));
  const uint8_t want[20] = {0xea, 0x6c, 0x01, 0x4d, 0xc7, 0x2d, 0x6f, 0x8c, 0xcd, 0x1e,
                            0xd9, 0x2a, 0xce, 0x1d, 0x41, 0xf0, 0xd8, 0xde, 0x89, 0x57};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(std::to_integer<uint8_t>(out[i]), want[i]);
  EXPECT_EQ(hash_size("sha256"), 32u);
  EXPECT_EQ(hash_size("whirlpool"), 0u);
  EXPECT_TRUE(pbkdf2("nohash", {}, {}, 1, out).is(Errc::not_supported));
}

}  // namespace
