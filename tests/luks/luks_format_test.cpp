// The luks format (QEMU's raw LUKS1 volume): create and open, the data path, interop with
// qemu-img and qemu-io both ways, qemu-img info's fields, and hostile headers.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>

#include "backends/builtin.h"
#include "backends/luks/luks.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using vd::Errc;
using vd::Error;

constexpr uint64_t kPayloadOffsetField = 104;  // header field: payload offset in sectors
constexpr uint64_t kSlot0 = 208;               // first key slot (48 bytes each)

std::string image_opts(const std::string& path, const std::string& secret = "sec0") {
  return "driver=luks,key-secret=" + secret + ",file.filename=" + path;
}

// qemu-io with the passphrase "abc" on a luks image; every -c in order.
vdtest::CmdResult qemu_io(const std::string& path, const std::vector<std::string>& cmds) {
  std::vector<std::string> argv = {"qemu-io", "--object", "secret,id=sec0,data=abc",
                                   "--image-opts", image_opts(path)};
  for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
  return vdtest::run(argv);
}

bool verified(const vdtest::CmdResult& r) {
  return r.exit_code == 0 && r.out.find("Pattern verification failed") == std::string::npos &&
         r.out.find("failed") == std::string::npos;
}

vdtest::CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

// qemu-img convert -O raw of a luks image (the decrypted guest disk).
std::vector<std::byte> qemu_plain(const vdtest::TempDir& dir, const std::string& path) {
  const std::string out = dir.file("plain-" + std::to_string(std::hash<std::string>()(path)) + ".raw");
  auto r = vdtest::run({"qemu-img", "convert", "--object", "secret,id=sec0,data=abc",
                        "--image-opts", image_opts(path), "-O", "raw", out});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return vdtest::read_file(out);
}

class LuksFormat : public ::testing::Test {
 protected:
  const vd::Backend& luks() { return vd::backends::luks(); }
  std::string file(const std::string& name = "disk.luks") const { return dir_.file(name); }

  void SetUp() override {
    pass_ = dir_.file("pass");
    std::ofstream(pass_) << "abc\n";
  }

  vd::Result<std::unique_ptr<vd::Image>> try_create(const std::string& path, uint64_t size,
                                                    std::map<std::string, std::string> o = {}) {
    vd::CreateOptions opts;
    opts.size = size;
    opts.options = std::move(o);
    opts.options.emplace("iter-time", "10");
    opts.passphrase = "abc";
    return luks().create(path, opts, rt_.files());
  }

  // A volume made by vd and closed again.
  void create(const std::string& path, uint64_t size, std::map<std::string, std::string> o = {}) {
    auto img = try_create(path, size, std::move(o));
    ASSERT_TRUE(img.ok()) << img.error().message();
    ASSERT_FALSE((*img)->close(false));
  }

  void qemu_create(const std::string& path, const std::string& size, const std::string& opts = "") {
    auto r = vdtest::qemu_img_create_luks("luks", "key-secret=sec0" + (opts.empty() ? "" : "," + opts),
                                          path, size);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  vd::Result<std::unique_ptr<vd::Image>> open(const std::string& path, unsigned flags = 0,
                                              std::optional<std::string> pass = "abc") {
    vd::OpenOptions o;
    o.flags = flags | vd::open_format_given;
    o.passphrase = std::move(pass);
    return luks().open(path, o, rt_.files());
  }

  Error write(vd::Image& img, uint64_t off, std::span<const std::byte> data) {
    return vd::sync_image_write(rt_, img, off, data);
  }
  std::vector<std::byte> read(vd::Image& img, uint64_t off, size_t len) {
    std::vector<std::byte> buf(len);
    EXPECT_FALSE(vd::sync_image_read(rt_, img, off, buf));
    return buf;
  }

  vdtest::TempDir dir_;
  vd::Runtime rt_{2};
  std::string pass_;
};

std::vector<std::byte> filled(size_t n, uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

// ---- probe and create -----------------------------------------------------------------------

TEST_F(LuksFormat, ProbeTakesLuksVersion1AndLeavesOtherVersionsToRaw) {
  create(file(), 64 << 10);
  auto reg = vd::Registry::builtin();
  auto probed = reg.probe(file(), rt_.files());
  ASSERT_TRUE(probed.ok());
  EXPECT_EQ((*probed)->name(), "luks");
  vdtest::poke_be16(file(), 6, 2);
  probed = reg.probe(file(), rt_.files());
  ASSERT_TRUE(probed.ok());
  EXPECT_EQ((*probed)->name(), "raw");
}

TEST_F(LuksFormat, CreateSizesFileAsQemuAndRoundsVirtualSizeToSectors) {
  auto img = try_create(file(), 1000000);
  ASSERT_TRUE(img.ok()) << img.error().message();
  EXPECT_EQ((*img)->size(), 1000448u);
  EXPECT_TRUE((*img)->encrypted());
  ASSERT_FALSE((*img)->close(false));
  // aes-256-xts: 4096 bytes of header, 8 slots of 256000 bytes rounded up to 4 KiB.
  const uint64_t payload = 4096 + 8 * 258048;
  EXPECT_EQ(vdtest::peek_be32(file(), kPayloadOffsetField), payload / 512);
  EXPECT_EQ(vdtest::file_size(file()), payload + 1000000);
  auto reopened = open(file());
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  EXPECT_EQ((*reopened)->size(), 1000448u);
}

TEST_F(LuksFormat, CreateRefusesBadOptionsWithQemuImgMessages) {
  auto r = try_create(file(), 1 << 20, {{"cipher-alg", "foo"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("Parameter 'cipher-alg' does not accept value 'foo'"), std::string::npos);
  r = try_create(file(), 1 << 20, {{"bogus", "1"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("Invalid parameter 'bogus'"), std::string::npos);
  r = try_create(file(), 1 << 20, {{"preallocation", "foo"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("invalid parameter value: foo"), std::string::npos);
  vd::CreateOptions no_secret;
  no_secret.size = 1 << 20;
  r = luks().create(file(), no_secret, rt_.files());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("Parameter 'key-secret' is required for cipher"), std::string::npos);
  EXPECT_FALSE(vdtest::run({"test", "-e", file()}).exit_code == 0) << "no half-made image left";
}

TEST_F(LuksFormat, PreallocationFullAndFallocAllocateThePayload) {
  for (const char* mode : {"falloc", "full"}) {
    const std::string path = file(std::string(mode) + ".luks");
    create(path, 4 << 20, {{"preallocation", mode}});
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 4u << 20) << mode;
    auto img = open(path);
    ASSERT_TRUE(img.ok()) << img.error().message();
    EXPECT_EQ((*img)->size(), 4u << 20);
  }
}

// ---- interop with qemu ----------------------------------------------------------------------

TEST_F(LuksFormat, QemuIoReadsWhatVdWrote) {
  VD_REQUIRE_QEMU();
  create(file(), 1 << 20);
  {
    auto img = open(file());
    ASSERT_TRUE(img.ok()) << img.error().message();
    ASSERT_FALSE(write(**img, 0, filled(64 << 10, 0x11)));
    ASSERT_FALSE(write(**img, 100000, filled(3333, 0x22)));  // partial sectors both ends
    ASSERT_FALSE(write(**img, (1 << 20) - 512, filled(512, 0x33)));
    ASSERT_FALSE((*img)->close(false));
  }
  auto r = qemu_io(file(), {"read -P 0x11 0 64k", "read -P 0x22 100000 3333",
                            "read -P 0x33 1048064 512"});
  EXPECT_TRUE(verified(r)) << r.out << r.err;
}

TEST_F(LuksFormat, VdReadsWhatQemuIoWrote) {
  VD_REQUIRE_QEMU();
  qemu_create(file(), "1M");
  auto w = qemu_io(file(), {"write -P 0x44 4096 65536", "write -P 0x55 70001 999", "write -z 8192 1000"});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  auto img = open(file(), vd::open_read_only);
  ASSERT_TRUE(img.ok()) << img.error().message();
  EXPECT_EQ((*img)->size(), 1u << 20);
  EXPECT_EQ(read(**img, 4096, 4096), filled(4096, 0x44));
  EXPECT_EQ(read(**img, 8192, 1000), filled(1000, 0));
  EXPECT_EQ(read(**img, 70001, 999), filled(999, 0x55));
  auto v = vdimg({"io", "-r", "-f", "luks", "--passphrase-file", pass_, "-c", "read -P 0x44 9192 60440",
                  "-c", "read -P 0x55 70001 999", file()});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
}

// The same random qemu-io command list on a qemu-made and a vd-made volume (qemu-io on one,
// vdimg io on the other): both decrypt to the same disk, and vdimg convert agrees with
// qemu-img convert. The list starts by zeroing the disk: a sector never written decrypts to
// noise that depends on the volume's key.
TEST_F(LuksFormat, RandomWorkloadMatchesQemuIo) {
  VD_REQUIRE_QEMU();
  const uint64_t size = 2 << 20;
  qemu_create(file("q.luks"), "2M");
  create(file("v.luks"), size);
  std::mt19937 rng(1234);
  std::vector<std::string> cmds = {"write -z 0 2M"};
  for (int i = 0; i < 40; ++i) {
    uint64_t len = 1 + rng() % 70000;
    uint64_t off = rng() % (size - len);
    switch (rng() % 4) {
      case 0: cmds.push_back("write -z " + std::to_string(off) + " " + std::to_string(len)); break;
      case 1: cmds.push_back("discard " + std::to_string(off) + " " + std::to_string(len)); break;
      default:
        cmds.push_back("write -P " + std::to_string(rng() % 256) + " " + std::to_string(off) + " " +
                       std::to_string(len));
    }
  }
  auto q = qemu_io(file("q.luks"), cmds);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  std::vector<std::string> args = {"io", "--passphrase-file", pass_};
  for (const auto& c : cmds) args.insert(args.end(), {"-c", c});
  args.push_back(file("v.luks"));
  auto v = vdimg(args);
  ASSERT_EQ(v.exit_code, 0) << v.out << v.err;
  auto expected = qemu_plain(dir_, file("q.luks"));
  ASSERT_EQ(expected.size(), size);
  EXPECT_TRUE(expected == qemu_plain(dir_, file("v.luks")));
  auto c = vdimg({"convert", "--passphrase-file", pass_, "-O", "raw", file("v.luks"), file("v.raw")});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(expected == vdtest::read_file(file("v.raw")));
}

// A size that is not whole sectors: the last sector lies partly past the end of the file,
// which reads as zeros ciphertext and grows when the sector is written.
TEST_F(LuksFormat, LastPartialSectorInteroperatesWithQemuIo) {
  VD_REQUIRE_QEMU();
  create(file(), 1000000);
  {
    auto img = open(file());
    ASSERT_TRUE(img.ok()) << img.error().message();
    ASSERT_FALSE(write(**img, 999000, filled(1448, 0x3e)));
    ASSERT_FALSE((*img)->close(false));
  }
  auto r = qemu_io(file(), {"read -P 0x3e 999000 1448", "write -P 0x4f 1000300 148"});
  ASSERT_TRUE(verified(r)) << r.out << r.err;
  auto img = open(file(), vd::open_read_only);
  ASSERT_TRUE(img.ok()) << img.error().message();
  auto back = read(**img, 999000, 1448);
  EXPECT_EQ(std::vector(back.begin(), back.begin() + 1300), filled(1300, 0x3e));
  EXPECT_EQ(std::vector(back.begin() + 1300, back.end()), filled(148, 0x4f));
}

TEST_F(LuksFormat, RefusesWritesWhenReadOnlyAndAccessBeyondTheDisk) {
  create(file(), 64 << 10);
  auto ro = open(file(), vd::open_read_only);
  ASSERT_TRUE(ro.ok()) << ro.error().message();
  Error e = write(**ro, 0, filled(512, 1));
  EXPECT_TRUE(e.is(Errc::read_only)) << e.message();
  EXPECT_TRUE((*ro)->resize(1 << 20).is(Errc::read_only));
  std::vector<std::byte> buf(1024);
  e = vd::sync_image_read(rt_, **ro, (64 << 10) - 512, buf);
  EXPECT_TRUE(e.is(Errc::out_of_range)) << e.message();
}

TEST_F(LuksFormat, DiscardKeepsDataAndWriteZeroesReadsZeros) {
  create(file(), 1 << 20);
  auto img = open(file());
  ASSERT_TRUE(img.ok()) << img.error().message();
  ASSERT_FALSE(write(**img, 0, filled(16384, 0x77)));
  ASSERT_FALSE(rt_.wait([&](vd::Completion d) { (*img)->discard(0, 4096, d); }));
  EXPECT_EQ(read(**img, 0, 4096), filled(4096, 0x77)) << "qemu's luks driver ignores discard";
  ASSERT_FALSE(rt_.wait([&](vd::Completion d) { (*img)->write_zeroes(5000, 7000, vd::zero_may_unmap, d); }));
  auto back = read(**img, 0, 16384);
  EXPECT_EQ(std::vector(back.begin() + 5000, back.begin() + 12000), filled(7000, 0));
  EXPECT_EQ(std::vector(back.begin() + 12000, back.end()), filled(4384, 0x77));
}

// Writes issued together whose partial sectors overlap land as if issued one by one.
TEST_F(LuksFormat, ConcurrentOverlappingPartialWritesApplyInOrder) {
  create(file(), 256 << 10);
  auto img = open(file());
  ASSERT_TRUE(img.ok()) << img.error().message();
  std::vector<std::byte> expected(256 << 10);
  ASSERT_FALSE(write(**img, 0, expected));  // fresh sectors decrypt to noise
  std::vector<std::vector<std::byte>> bufs;
  std::vector<uint64_t> offs;
  std::mt19937 rng(7);
  for (int i = 0; i < 64; ++i) {
    uint64_t len = 1 + rng() % 3000, off = rng() % 20000;
    bufs.push_back(filled(len, static_cast<uint8_t>(i + 1)));
    offs.push_back(off);
    std::memcpy(expected.data() + off, bufs.back().data(), len);
  }
  int left = static_cast<int>(bufs.size());
  Error first;
  ASSERT_FALSE(rt_.wait([&](vd::Completion all) {
    for (size_t i = 0; i < bufs.size(); ++i)
      (*img)->write(offs[i], bufs[i], 0, [&, all](Error e) {
        if (e && !first) first = e;
        if (--left == 0) all(first);
      });
  }));
  EXPECT_TRUE(read(**img, 0, expected.size()) == expected);
}

TEST_F(LuksFormat, ResizeSetsFileSizeAsQemuAndKeepsData) {
  VD_REQUIRE_QEMU();
  create(file(), 1 << 20);
  auto img = open(file());
  ASSERT_TRUE(img.ok()) << img.error().message();
  ASSERT_FALSE(write(**img, 1000, filled(5000, 0x5c)));
  ASSERT_FALSE((*img)->resize(2000000));
  EXPECT_EQ((*img)->size(), 2000384u);
  ASSERT_FALSE(write(**img, 1999872, filled(512, 0x6d)));
  ASSERT_FALSE((*img)->close(false));
  const uint64_t payload = uint64_t{vdtest::peek_be32(file(), kPayloadOffsetField)} * 512;
  EXPECT_EQ(vdtest::file_size(file()), payload + 2000384) << "the last sector write extends the file";
  auto r = qemu_io(file(), {"read -P 0x5c 1000 5000", "read -P 0x6d 1999872 512"});
  EXPECT_TRUE(verified(r)) << r.out << r.err;
}

// ---- info, map -----------------------------------------------------------------------------

class LuksInfo : public LuksFormat, public ::testing::WithParamInterface<std::string> {};

TEST_P(LuksInfo, InfoEqualsQemuImg) {
  VD_REQUIRE_QEMU();
  qemu_create(file(), "1000000", GetParam());
  for (const char* output : {"json", "human"}) {
    auto q = vdtest::run({"qemu-img", "info", "--output", output, file()});
    ASSERT_EQ(q.exit_code, 0) << q.err;
    auto v = vdimg({"info", "--output", output, file()});
    ASSERT_EQ(v.exit_code, 0) << v.err;
    EXPECT_EQ(v.out, q.out) << output;
  }
}

INSTANTIATE_TEST_SUITE_P(Ciphers, LuksInfo,
                         ::testing::Values("", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,"
                                               "ivgen-hash-alg=sha256,hash-alg=sha1"));

TEST_F(LuksFormat, InfoOfVdCreatedImageEqualsQemuImg) {
  VD_REQUIRE_QEMU();
  create(file(), 3 << 20, {{"cipher-alg", "aes-192"}, {"cipher-mode", "cbc"}, {"ivgen-alg", "plain"}});
  auto q = vdtest::run({"qemu-img", "info", "--output", "json", file()});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  auto v = vdimg({"info", "--output", "json", file()});
  EXPECT_EQ(v.out, q.out);
}

TEST_F(LuksFormat, MapJsonEqualsQemuImg) {
  VD_REQUIRE_QEMU();
  create(file(), 1 << 20);
  auto q = vdtest::run({"qemu-img", "map", "--output=json", "--object", "secret,id=sec0,data=abc",
                        "--image-opts", image_opts(file())});
  ASSERT_EQ(q.exit_code, 0) << q.err;
  auto v = vdimg({"map", "--output=json", file()});
  EXPECT_EQ(v.out, q.out);
}

// ---- passphrase ----------------------------------------------------------------------------

TEST_F(LuksFormat, WrongPassphraseIsRefusedWithClearError) {
  create(file(), 64 << 10);
  auto img = open(file(), 0, "abd");
  ASSERT_FALSE(img.ok());
  EXPECT_TRUE(img.error().is(Errc::wrong_passphrase));
  EXPECT_NE(img.error().message().find("Invalid password, cannot unlock any keyslot"), std::string::npos);
  EXPECT_NE(img.error().message().find(file()), std::string::npos);
  std::ofstream(dir_.file("bad")) << "abd";
  auto v = vdimg({"io", "--passphrase-file", dir_.file("bad"), "-c", "read 0 512", file()});
  EXPECT_NE(v.exit_code, 0);
  EXPECT_NE(v.err.find("Invalid password"), std::string::npos) << v.err;
}

TEST_F(LuksFormat, MissingPassphraseRefusesDataPathButInfoOpens) {
  create(file(), 64 << 10);
  auto img = open(file(), 0, std::nullopt);
  ASSERT_FALSE(img.ok());
  EXPECT_TRUE(img.error().is(Errc::wrong_passphrase));
  auto info = open(file(), vd::open_read_only | vd::open_info_only, std::nullopt);
  ASSERT_TRUE(info.ok()) << info.error().message();
  EXPECT_EQ((*info)->size(), 64u << 10);
  std::vector<std::byte> buf(512);
  Error e = vd::sync_image_read(rt_, **info, 0, buf);
  EXPECT_TRUE(e.is(Errc::wrong_passphrase)) << e.message();
}

// ---- hostile headers -----------------------------------------------------------------------

class LuksCorrupt : public LuksFormat {
 protected:
  // Opens with and without the passphrase: both must fail with `kind`, naming the file.
  void expect_refused(Errc kind, const std::string& words) {
    for (unsigned flags : {0u, unsigned{vd::open_read_only | vd::open_info_only}}) {
      auto img = open(file(), flags);
      ASSERT_FALSE(img.ok()) << "flags " << flags;
      EXPECT_TRUE(img.error().is(kind)) << img.error().message();
      EXPECT_NE(img.error().message().find(words), std::string::npos) << img.error().message();
      EXPECT_NE(img.error().message().find(file()), std::string::npos) << img.error().message();
    }
    auto v = vdimg({"info", "-f", "luks", file()});
    EXPECT_EQ(v.exit_code, 1) << v.out << v.err;
  }
  void SetUp() override {
    LuksFormat::SetUp();
    create(file(), 64 << 10);
  }
};

TEST_F(LuksCorrupt, OpenRejectsPayloadOffsetBeyondEndOfFile) {
  vdtest::poke_be32(file(), kPayloadOffsetField, 0x00ffffff);
  expect_refused(Errc::corrupt, "beyond the end of the file");
}

TEST_F(LuksCorrupt, OpenRejectsPayloadOffsetInsideHeader) {
  vdtest::poke_be32(file(), kPayloadOffsetField, 1);
  expect_refused(Errc::corrupt, "LUKS header");
}

TEST_F(LuksCorrupt, OpenRejectsKeyMaterialBeyondEndOfFile) {
  vdtest::poke_be32(file(), kSlot0 + 40, 0x7fffffff);
  expect_refused(Errc::corrupt, "key slot 0");
}

TEST_F(LuksCorrupt, OpenRejectsBadVersion) {
  vdtest::poke_be16(file(), 6, 2);
  expect_refused(Errc::not_supported, "LUKS version 2");
}

TEST_F(LuksCorrupt, OpenRejectsBadMagic) {
  vdtest::poke_u8(file(), 0, 'X');
  expect_refused(Errc::wrong_format, "not a LUKS header");
}

TEST_F(LuksCorrupt, OpenRejectsFileShorterThanHeader) {
  ASSERT_EQ(::truncate(file().c_str(), 300), 0);
  expect_refused(Errc::corrupt, "shorter than a LUKS header");
}

TEST_F(LuksCorrupt, OpenRejectsAbsurdStripes) {
  vdtest::poke_be32(file(), kSlot0 + 44, 0xffffffff);
  expect_refused(Errc::corrupt, "stripes");
}

}  // namespace
