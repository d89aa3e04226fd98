// Encrypted images made by qemu-img (LUKS, legacy AES in qcow2 and qcow): the passphrase
// goes through DiskOpenOptions and `--passphrase-file` (whole reads are compared with
// qemu's in read_interop_test); a wrong or missing passphrase gives a clear error.
#include <gtest/gtest.h>

#include <fstream>

#include "support/qemu_fixtures.h"
#include "support/support.h"

namespace {

vd::Error read_with(const std::string& recipe, std::optional<std::string> passphrase) {
  vd::DiskOpenOptions opts;
  opts.passphrase = std::move(passphrase);
  return vdtest::vd_try_read_all(vdtest::shared_image(recipe).image, opts);
}

TEST(ReadCrypto, LuksWithWrongPassphraseIsRefusedNamingTheImage) {
  VD_REQUIRE_QEMU();
  vd::Error e = read_with("luks", "not-the-passphrase");
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::wrong_passphrase)) << e.message();
  EXPECT_NE(e.message().find(vdtest::shared_image("luks").image), std::string::npos) << e.message();
}

TEST(ReadCrypto, EncryptedImagesWithoutPassphraseAreRefused) {
  VD_REQUIRE_QEMU();
  for (const char* name : {"luks", "aes_qcow2", "aes_qcow"}) {
    vd::Error e = read_with(name, std::nullopt);
    ASSERT_TRUE(e) << name;
    EXPECT_TRUE(e.is(vd::Errc::wrong_passphrase)) << e.message();
    EXPECT_NE(e.message().find(vdtest::shared_image(name).image), std::string::npos) << e.message();
  }
}

// Legacy AES stores no key check: no reader (qemu included) can tell a wrong passphrase;
// the data simply decrypts to other bytes.
TEST(ReadCrypto, LegacyAesWithWrongPassphraseReadsOtherBytes) {
  VD_REQUIRE_QEMU();
  for (const char* name : {"aes_qcow2", "aes_qcow"}) {
    const auto& img = vdtest::shared_image(name);
    vd::DiskOpenOptions opts;
    opts.passphrase = "not-the-passphrase";
    auto got = vdtest::vd_read_all(img.image, opts);
    ASSERT_EQ(got.size(), img.qemu_bytes.size()) << name;
    EXPECT_FALSE(got == img.qemu_bytes) << name;
  }
}

TEST(ReadCrypto, VdimgConvertWithWrongPassphraseFileFailsNamingTheImage) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image("luks");
  vdtest::TempDir dir;
  std::ofstream(dir.file("wrong.txt")) << "not-the-passphrase";
  auto res = vdtest::run({vdtest::vdimg_path(), "convert", "-O", "raw", "--passphrase-file",
                          dir.file("wrong.txt"), img.image, dir.file("out.raw")});
  EXPECT_NE(res.exit_code, 0);
  EXPECT_NE(res.err.find(img.image), std::string::npos) << res.err;
}

TEST(ReadCrypto, VdimgConvertWithoutPassphraseFailsNamingTheImage) {
  VD_REQUIRE_QEMU();
  const auto& img = vdtest::shared_image("aes_qcow2");
  vdtest::TempDir dir;
  auto res = vdtest::run({vdtest::vdimg_path(), "convert", "-O", "raw", img.image, dir.file("out.raw")});
  EXPECT_NE(res.exit_code, 0);
  EXPECT_NE(res.err.find(img.image), std::string::npos) << res.err;
}

}  // namespace
