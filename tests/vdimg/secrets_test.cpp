// Keys for new encrypted images, given as qemu-img takes them (--object secret + the
// key-secret option) or as a passphrase file; qemu reads what vdimg made with the same key.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

using vdtest::vdimg;

const char kSecret[] = "--object=secret,id=sec0,data=s3cr,,et";  // ",," is a comma

// qemu-io on an encrypted image with the key "s3cr,et".
CmdResult qemu_io(const std::string& driver, const std::string& image, const std::string& cmd) {
  const std::string key = driver == "luks" ? "key-secret=sec0" : "encrypt.key-secret=sec0";
  return vdtest::run({"qemu-io", "--object", "secret,id=sec0,data=s3cr,,et", "--image-opts", "-c", cmd,
                      "driver=" + driver + ",file.filename=" + image + "," + key});
}

TEST(Secrets, CreateQcow2LuksWithASecretObject) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("e.qcow2");
  CmdResult r = vdimg({"create", "-f", "qcow2", kSecret, "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", img, "2M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(vdtest::run({"sh", "-c", "printf 's3cr,et' > " + dir.file("pw")}).exit_code, 0);
  r = vdimg({"io", "--passphrase-file", dir.file("pw"), "-c", "write -P 7 4k 8k", img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  CmdResult q = qemu_io("qcow2", img, "read -P 7 4k 8k");
  EXPECT_NE(q.out.find("read 8192/8192"), std::string::npos) << q.out << q.err;
}

TEST(Secrets, CreateAndConvertPlainLuksWithASecretObject) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string src = dir.file("src.raw"), img = dir.file("e.luks");
  vdtest::write_file(src, vdtest::pattern(1 << 20, 5));
  CmdResult r = vdimg({"convert", "-O", "luks", kSecret, "-o", "key-secret=sec0,iter-time=10", src, img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  CmdResult cmp = vdtest::run({"qemu-img", "compare", "--object", "secret,id=sec0,data=s3cr,,et", "--image-opts",
                               "driver=luks,file.filename=" + img + ",key-secret=sec0",
                               "driver=raw,file.filename=" + src});
  EXPECT_EQ(cmp.exit_code, 0) << cmp.out << cmp.err;
  r = vdimg({"create", "-f", "luks", kSecret, "-o", "key-secret=sec0,iter-time=10", dir.file("new.luks"), "1M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  CmdResult q = qemu_io("luks", dir.file("new.luks"), "write -P 3 0 512");
  EXPECT_NE(q.out.find("wrote 512/512"), std::string::npos) << q.out << q.err;
}

TEST(Secrets, CreateWithAPassphraseFile) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("aes.qcow2");
  ASSERT_EQ(vdtest::run({"sh", "-c", "printf 's3cr,et\\n' > " + dir.file("pw")}).exit_code, 0);
  CmdResult r = vdimg({"create", "-f", "qcow2", "--passphrase-file", dir.file("pw"), "-o",
                       "encrypt.format=luks,encrypt.iter-time=10", img, "1M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  CmdResult q = qemu_io("qcow2", img, "write -P 3 0 4k");
  EXPECT_NE(q.out.find("wrote 4096/4096"), std::string::npos) << q.out << q.err;
}

TEST(Secrets, UndefinedSecretIsAClearError) {
  TempDir dir;
  CmdResult r = vdimg({"create", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=nope",
                       dir.file("x.qcow2"), "1M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("No secret with id 'nope'"), std::string::npos) << r.err;
  r = vdimg({"create", "-f", "luks", "--object", "secret,id=k", "-o", "key-secret=k", dir.file("y.luks"), "1M"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Either 'file' or 'data' must be provided"), std::string::npos) << r.err;
}

}  // namespace
