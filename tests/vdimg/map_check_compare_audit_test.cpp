// vdimg map, check, compare and info against qemu-img 7.2 on the same images: the cases the
// CLI audit found (encrypted and compressed maps, zero-length maps, external data files,
// check's JSON key order and exit codes, strict compare, the size warning, the dirty flag).
// Every test runs both tools and asserts the same stdout, stderr text and exit status.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support/support.h"

namespace {

using Argv = std::vector<std::string>;

// stderr with the program prefix taken off, so qemu-img's and vdimg's lines compare.
std::string unprefixed(std::string err) {
  for (const std::string p : {"qemu-img: ", "vdimg: "}) {
    for (size_t at = 0; (at = err.find(p, at)) != std::string::npos;) err.erase(at, p.size());
  }
  return err;
}

// Runs `qemu-img ARGS` and `vdimg VARGS` and expects the same outcome.
void expect_same(const Argv& qemu_args, const Argv& vdimg_args) {
  Argv q{"qemu-img"};
  q.insert(q.end(), qemu_args.begin(), qemu_args.end());
  Argv v{vdtest::vdimg_path()};
  v.insert(v.end(), vdimg_args.begin(), vdimg_args.end());
  auto theirs = vdtest::run(q);
  auto ours = vdtest::run(v);
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << "vdimg stderr: " << ours.err;
  EXPECT_EQ(ours.out, theirs.out);
  EXPECT_EQ(unprefixed(ours.err), unprefixed(theirs.err));
}
void expect_same(const Argv& args) { expect_same(args, args); }

const char kSecret[] = "secret,id=sec0,data=abc";

// qemu-img's way to name an encrypted image: --image-opts with the secret.
Argv qemu_enc(const std::string& cmd, const Argv& opts, const std::string& driver,
              const std::string& path) {
  Argv a{cmd};
  a.insert(a.end(), opts.begin(), opts.end());
  a.insert(a.end(), {"--object", kSecret, "--image-opts",
                     "driver=" + driver + ",file.filename=" + path + ",encrypt.key-secret=sec0"});
  return a;
}

// Writes through qemu-io on an encrypted qcow/qcow2 image.
void qemu_io_enc(const std::string& driver, const std::string& path, const std::string& cmds) {
  vdtest::sh("qemu-io --object " + std::string(kSecret) + " --image-opts driver=" + driver +
             ",file.filename=" + path + ",encrypt.key-secret=sec0 " + cmds + " >/dev/null");
}

const char kWrites[] = "-c 'write -P 1 0 192k' -c 'write -z 1088k 64k' -c 'write -P 2 1152k 128k'";

class Audit : public ::testing::Test {
 protected:
  void SetUp() override { VD_REQUIRE_QEMU(); }
  // qemu-img create OPTS NAME SIZE, then qemu-io IO on it.
  std::string make(const std::string& name, const std::string& opts, const std::string& size,
                   const std::string& io = "") {
    std::string path = dir.file(name);
    vdtest::sh("qemu-img create -q " + opts + " " + path + " " + size + " >/dev/null");
    if (!io.empty()) vdtest::sh("qemu-io " + io + " " + path + " >/dev/null");
    return path;
  }
  std::string pass_file() {
    vdtest::sh("printf abc > " + dir.file("pass"));
    return dir.file("pass");
  }
  // A fresh 2 MiB LUKS qcow2 image (passphrase "abc") at `name`: copied from one made once
  // per run, since qemu-img takes seconds to make one.
  std::string luks_image(const std::string& name) {
    static vdtest::TempDir shared;
    static std::string made_once;
    if (made_once.empty()) {
      auto made = vdtest::qemu_img_create_luks(
          "qcow2", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
          shared.file("luks.qcow2"), "2M");
      if (made.exit_code != 0) ADD_FAILURE() << made.err;
      else made_once = shared.file("luks.qcow2");
    }
    std::string path = dir.file(name);
    vdtest::sh("cp " + made_once + " " + path);
    return path;
  }
  vdtest::TempDir dir;
};

// ---- map -------------------------------------------------------------------------------

TEST_F(Audit, MapOfAesQcow2OmitsOffsetsAndHumanMapRefusesIt) {
  std::string img = make("aes.qcow2", "-f qcow2 --object " + std::string(kSecret) +
                                          " -o compat=0.10,encrypt.format=aes,encrypt.key-secret=sec0",
                         "2M");
  qemu_io_enc("qcow2", img, kWrites);
  expect_same(qemu_enc("map", {"--output=json"}, "qcow2", img), {"map", "--output=json", img});
  expect_same(qemu_enc("map", {}, "qcow2", img), {"map", img});
}

TEST_F(Audit, MapOfAesQcowV1OmitsOffsetsAndHumanMapRefusesIt) {
  std::string img = dir.file("aes.qcow");
  vdtest::sh("qemu-img create -q -f qcow --object " + std::string(kSecret) +
             " -o encrypt.format=aes,encrypt.key-secret=sec0 " + img + " 2M");
  qemu_io_enc("qcow", img, "-c 'write -P 1 0 8k' -c 'write -P 2 60k 76k'");
  expect_same(qemu_enc("map", {"--output=json"}, "qcow", img), {"map", "--output=json", img});
  expect_same(qemu_enc("map", {}, "qcow", img), {"map", img});
}

TEST_F(Audit, MapOfLuksQcow2MergesEncryptedExtentsAsQemuDoes) {
  std::string img = luks_image("luks.qcow2");
  qemu_io_enc("qcow2", img, kWrites);
  expect_same(qemu_enc("map", {"--output=json"}, "qcow2", img), {"map", "--output=json", img});
  expect_same(qemu_enc("map", {}, "qcow2", img), {"map", img});
}

TEST_F(Audit, HumanMapOfCompressedImagePrintsHeaderThenFails) {
  std::string src = make("src.qcow2", "-f qcow2", "2M", "-c 'write -P 1 64k 128k' -c 'write -P 2 1M 64k'");
  std::string img = dir.file("comp.qcow2");
  vdtest::sh("qemu-img convert -c -O qcow2 " + src + " " + img);
  expect_same({"map", img});
  expect_same({"map", "--output=json", img});
}

TEST_F(Audit, HumanMapFailsOnlyWhenItReachesTheCompressedCluster) {
  std::string img = make("mixed.qcow2", "-f qcow2 -o cluster_size=4096", "2M",
                         "-c 'write -P 1 0 12k' -c 'write -c -P 2 64k 4k' -c 'write -P 3 1M 4k'");
  expect_same({"map", img});
}

TEST_F(Audit, JsonMapOfZeroLengthImageHasOneEmptyEntry) {
  std::string q = make("zero.qcow2", "-f qcow2 -o compat=0.10", "0");
  std::string r = make("zero.raw", "-f raw", "0");
  for (const auto& img : {q, r}) {
    expect_same({"map", "--output=json", img});
    expect_same({"map", img});
  }
}

TEST_F(Audit, HumanMapNamesTheExternalDataFile) {
  std::string data = dir.file("ext.data");
  for (const char* raw : {"off", "on"}) {
    std::string img = make(std::string("ext-") + raw + ".qcow2",
                           "-f qcow2 -o data_file=" + data + ",data_file_raw=" + raw, "4M",
                           "-c 'write -P 1 0 192k' -c 'write -P 2 1M 64k'");
    expect_same({"map", img});
    expect_same({"map", "--output=json", img});
  }
}

TEST_F(Audit, HumanMapShowsOnlyDataAndMergesZerosAsQemuDoes) {
  std::string base = make("base.qcow2", "-f qcow2", "4M",
                          "-c 'write -P 1 0 256k' -c 'write -z 512k 128k' -c 'write -P 2 3M 64k'");
  std::string top = make("top.qcow2", "-f qcow2 -b " + base + " -F qcow2", "",
                         "-c 'write -P 3 64k 64k' -c 'write -z 192k 64k' -c 'write -P 4 1M 128k'");
  expect_same({"map", top});
  expect_same({"map", "--output=json", top});
  expect_same({"map", "--start-offset=64k", "--max-length=1M", top});
}

// ---- check -----------------------------------------------------------------------------

TEST_F(Audit, CheckJsonKeysComeInQemuOrder) {
  std::string leak = make("leak.qcow2", "-f qcow2", "4M", "-c 'write -P 1 0 64k'");
  // Leak the cluster past the end: refcount 1, referenced by nobody.
  const uint64_t block = vdtest::peek_be64(leak, vdtest::peek_be64(leak, 48));
  const uint64_t end = vdtest::file_size(leak);
  vdtest::poke_be16(leak, block + 2 * (end / 65536), 1);
  vdtest::sh("truncate -s " + std::to_string(end + 65536) + " " + leak);
  std::string src = make("src.qcow2", "-f qcow2", "1M", "-c 'write -P 1 0 192k'");
  std::string comp = dir.file("comp.qcow2");
  vdtest::sh("qemu-img convert -c -O qcow2 " + src + " " + comp);
  for (const auto& img : {leak, src, comp}) expect_same({"check", "--output=json", img});
}

TEST_F(Audit, CheckOfFormatWithoutChecksExits63) {
  std::string raw = make("d.raw", "-f raw", "1M");
  std::string v1 = make("d.qcow", "-f qcow", "1M", "-c 'write -P 1 0 4k'");
  for (const auto& img : {raw, v1}) {
    expect_same({"check", img});
    expect_same({"check", "--output=json", img});
  }
}

TEST_F(Audit, CheckFailsToOpenImageWithMissingBackingFile) {
  std::string base = make("gone.qcow2", "-f qcow2", "1M");
  std::string top = make("top.qcow2", "-f qcow2 -b " + base + " -F qcow2", "");
  vdtest::sh("rm " + base);
  auto ours = vdtest::run({vdtest::vdimg_path(), "check", top});
  auto theirs = vdtest::run({"qemu-img", "check", top});
  EXPECT_EQ(theirs.exit_code, 1);
  EXPECT_EQ(ours.exit_code, 1);
  EXPECT_EQ(ours.out, "");
  EXPECT_NE(ours.err.find("gone.qcow2"), std::string::npos) << ours.err;
}

TEST_F(Audit, CheckOfEncryptedImagesNeedsNoPassphrase) {
  std::string img = make("aes.qcow2", "-f qcow2 --object " + std::string(kSecret) +
                                          " -o encrypt.format=aes,encrypt.key-secret=sec0", "1M");
  qemu_io_enc("qcow2", img, "-c 'write -P 1 0 192k'");
  expect_same(qemu_enc("check", {}, "qcow2", img), {"check", img});
  expect_same(qemu_enc("check", {}, "qcow2", img), {"check", "--passphrase-file", pass_file(), img});
  std::string v1 = dir.file("aes.qcow");
  vdtest::sh("qemu-img create -q -f qcow --object " + std::string(kSecret) +
             " -o encrypt.format=aes,encrypt.key-secret=sec0 " + v1 + " 1M");
  expect_same(qemu_enc("check", {}, "qcow", v1), {"check", v1});
}

TEST_F(Audit, CheckWithWrongPassphraseFailsToOpenLikeQemu) {
  std::string img = luks_image("luks.qcow2");
  vdtest::sh("printf wrong > " + dir.file("bad"));
  auto theirs = vdtest::run({"qemu-img", "check", "--object", "secret,id=sec0,data=wrong", "--image-opts",
                             "driver=qcow2,file.filename=" + img + ",encrypt.key-secret=sec0"});
  auto ours = vdtest::run({vdtest::vdimg_path(), "check", "--passphrase-file", dir.file("bad"), img});
  EXPECT_EQ(ours.exit_code, theirs.exit_code);
  EXPECT_EQ(ours.exit_code, 1);
  EXPECT_NE(ours.err.find("Invalid password"), std::string::npos) << ours.err;
  EXPECT_NE(theirs.err.find("Invalid password"), std::string::npos) << theirs.err;
}

// ---- info ------------------------------------------------------------------------------

TEST_F(Audit, InfoOfDirtyImageSaysNotCleanlyShutDown) {
  std::string img = make("dirty.qcow2", "-f qcow2 -o lazy_refcounts=on", "1M");
  vdtest::run({"qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", "-c", "sigraise 9", img});
  expect_same({"info", img});
  expect_same({"info", "--output=json", img});
}

// ---- compare ---------------------------------------------------------------------------

TEST_F(Audit, StrictCompareReportsBlockStatusMismatchAsQemu) {
  std::string src = make("src.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 8k' -c 'write -z 64k 64k' -c 'write -P 2 1M 64k'");
  std::string comp = dir.file("comp.qcow2");
  vdtest::sh("qemu-img convert -c -O qcow2 " + src + " " + comp);
  std::string raw = dir.file("src.raw");
  vdtest::sh("qemu-img convert -O raw " + src + " " + raw);
  std::string small = make("cs512.qcow2", "-f qcow2 -o cluster_size=512", "2M", "-c 'write -P 1 0 8k' -c 'write -P 2 1M 64k'");
  std::string v1 = make("v1.qcow", "-f qcow", "2M", "-c 'write -P 1 0 8k' -c 'write -P 2 1M 64k'");
  const std::vector<std::pair<std::string, std::string>> pairs{
      {src, comp}, {src, raw}, {raw, src}, {src, small}, {small, v1}, {comp, v1}, {src, src}};
  for (const auto& [a, b] : pairs) {
    SCOPED_TRACE(a + " vs " + b);
    expect_same({"compare", "-s", a, b});
    expect_same({"compare", a, b});
  }
}

TEST_F(Audit, StrictCompareOfEmptyImagesWithDifferentClusterSizes) {
  // qemu's end-of-file status bit differs where one image's last extent starts earlier.
  std::string a = make("a.qcow2", "-f qcow2 -o cluster_size=512", "1M");
  std::string b = make("b.qcow2", "-f qcow2", "1M");
  std::string r = make("r.raw", "-f raw", "1M");
  expect_same({"compare", "-s", a, b});
  expect_same({"compare", "-s", a, r});
  expect_same({"compare", "-s", b, r});
}

TEST_F(Audit, StrictCompareOfChainLargerThanItsBacking) {
  std::string base = make("base.qcow2", "-f qcow2", "512k", "-c 'write -P 2 0 64k'");
  std::string top = make("top.qcow2", "-f qcow2 -b " + base + " -F qcow2", "1M", "-c 'write -P 3 128k 64k'");
  std::string flat = make("flat.qcow2", "-f qcow2", "1M", "-c 'write -P 2 0 64k' -c 'write -P 3 128k 64k'");
  expect_same({"compare", "-s", top, flat});
  expect_same({"compare", "-s", flat, top});
  expect_same({"compare", top, flat});
}

TEST_F(Audit, CompareWarnsOfSizeOnlyWhenTheCommonPartIsEqual) {
  std::string a = make("a.qcow2", "-f qcow2", "1M", "-c 'write -P 1 0 64k'");
  std::string b_same = make("b.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 64k'");
  std::string b_diff = make("c.qcow2", "-f qcow2", "2M", "-c 'write -P 9 0 64k'");
  std::string b_tail = make("d.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 64k' -c 'write -P 5 1536k 4k'");
  std::string b_ztail = make("e.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 64k' -c 'write -z 1536k 64k'");
  for (const auto& b : {b_same, b_diff, b_tail, b_ztail}) {
    SCOPED_TRACE(b);
    expect_same({"compare", a, b});
    expect_same({"compare", b, a});
    expect_same({"compare", "-s", a, b});
    expect_same({"compare", "-q", a, b});
  }
}

TEST_F(Audit, CompareReadsEncryptedImagesWithPassphraseFile) {
  std::string enc = luks_image("luks.qcow2");
  qemu_io_enc("qcow2", enc, "-c 'write -P 1 0 128k'");
  std::string same = make("same.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 128k'");
  std::string other = make("other.qcow2", "-f qcow2", "2M", "-c 'write -P 1 0 64k'");
  const std::string opts = "driver=qcow2,file.filename=";
  for (const auto& b : {same, other}) {
    for (const std::string s : {"", "-s"}) {
      Argv q{"compare"};
      if (!s.empty()) q.push_back(s);
      q.insert(q.end(), {"--object", kSecret, "--image-opts", opts + enc + ",encrypt.key-secret=sec0", opts + b});
      Argv v{"compare"};
      if (!s.empty()) v.push_back(s);
      v.insert(v.end(), {"--passphrase-file", pass_file(), enc, b});
      expect_same(q, v);
    }
  }
  auto no_pass = vdtest::run({vdtest::vdimg_path(), "compare", enc, same});
  EXPECT_EQ(no_pass.exit_code, 2);
  // qemu-img's words for the missing key.
  EXPECT_NE(no_pass.err.find("': Parameter 'encrypt.key-secret' is required for cipher"), std::string::npos)
      << no_pass.err;
}

}  // namespace
