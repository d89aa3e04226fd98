// vdimg end to end on raw images: each test runs the built vdimg (and qemu-img as the
// oracle where output must match) on small files in a TempDir.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

uint64_t allocated_bytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(VdimgCli, HelpForEverySubcommandExitsZero) {
  for (const char* cmd : {"info", "create", "convert", "check", "compare", "map", "io", "resize",
                          "bench", "commit", "rebase", "snapshot"}) {
    auto r = vdimg({cmd, "--help"});
    EXPECT_EQ(r.exit_code, 0) << cmd << r.err;
    EXPECT_TRUE(contains(r.out, std::string("usage: vdimg ") + cmd)) << r.out;
  }
  EXPECT_EQ(vdimg({"--help"}).exit_code, 0);
  auto v = vdimg({"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_TRUE(contains(v.out, "vdimg version"));
}

TEST(VdimgCli, UnknownCommandAndOptionFail) {
  auto r = vdimg({"frob"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "vdimg: ")) << r.err;
  EXPECT_NE(vdimg({"info", "--bogus", "x"}).exit_code, 0);
}

TEST(VdimgCli, CreateRawTakesSuffixedSizeAndOptionsAfterPositionals) {
  TempDir dir;
  auto r = vdimg({"create", dir.file("a.img"), "-f", "raw", "1.5M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::file_size(dir.file("a.img")), 3u << 19);
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", dir.file("b.img"), "64k"}).exit_code, 0);
  EXPECT_EQ(vdtest::file_size(dir.file("b.img")), 65536u);
}

TEST(VdimgCli, CreateRejectsBadSizeAndMissingSize) {
  TempDir dir;
  auto r = vdimg({"create", "-f", "raw", dir.file("a.img"), "12q"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "Invalid image size")) << r.err;
  r = vdimg({"create", "-f", "raw", dir.file("b.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, dir.file("b.img"))) << r.err;
  EXPECT_NE(vdimg({"create", "-f", "nosuchfmt", dir.file("c.img"), "1M"}).exit_code, 0);
}

TEST(VdimgCli, CreatePreallocationFullAllocatesTheFile) {
  TempDir dir;
  auto r = vdimg({"create", "-f", "raw", "-o", "preallocation=full", dir.file("a.img"), "4M"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::file_size(dir.file("a.img")), 4u << 20);
  EXPECT_GE(allocated_bytes(dir.file("a.img")), 4u << 20);
}

TEST(VdimgCli, CreateOptionsHelpListsBackendOptions) {
  auto r = vdimg({"create", "-f", "raw", "-o", "help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Supported raw options:")) << r.out;  // qemu-img's layout
}

TEST(VdimgCli, CreateBackingWithoutFormatIsRefusedLikeQemuImg) {
  TempDir dir;
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", dir.file("base.img"), "1M"}).exit_code, 0);
  auto r = vdimg({"create", "-f", "qcow2", "-b", "base.img", dir.file("top.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "Backing file specified without backing format\nDetected format of raw.")) << r.err;
  // raw has no backing file at all (qemu-img's words).
  r = vdimg({"create", "-f", "raw", "-b", "base.img", "-F", "raw", dir.file("top.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "Backing file not supported for file format 'raw'")) << r.err;
}

TEST(VdimgCli, InfoMatchesQemuImgOnRaw) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "64M"}).exit_code, 0);
  vdtest::sh("qemu-io -f raw -c 'write -P 7 1M 196k' " + img + " >/dev/null");
  auto human = vdimg({"info", "-f", "raw", img});
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_EQ(human.out, vdtest::sh("qemu-img info -f raw " + img));
  EXPECT_TRUE(contains(human.out, "virtual size: 64 MiB (67108864 bytes)")) << human.out;
  auto json = vdimg({"info", "--output=json", img});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(json.out, vdtest::sh("qemu-img info -f raw --output=json " + img));
  EXPECT_TRUE(contains(json.out, "\"virtual-size\": 67108864")) << json.out;
  EXPECT_TRUE(contains(json.out, "\"format\": \"raw\"")) << json.out;
}

TEST(VdimgCli, InfoBackingChainOnRawIsOneImage) {
  TempDir dir;
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", dir.file("a.img"), "1M"}).exit_code, 0);
  auto r = vdimg({"info", "--backing-chain", "--output", "json", dir.file("a.img")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("[\n    {", 0), 0u) << r.out;
}

TEST(VdimgCli, InfoOfMissingImageNamesIt) {
  TempDir dir;
  auto r = vdimg({"info", dir.file("nope.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.rfind("vdimg: ", 0), 0u) << r.err;
  EXPECT_TRUE(contains(r.err, "nope.img")) << r.err;
}

TEST(VdimgCli, IoWritesAndVerifiesPatterns) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  auto w = vdimg({"io", "-f", "raw", "-c", "write -P 0x5a 4k 8k", "-c", "write 64k 512", img});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_TRUE(contains(w.out, "wrote 8192/8192 bytes at offset 4096")) << w.out;
  auto r = vdimg({"io", "-f", "raw", "-c", "read -P 0x5a 4k 8k", "-c", "read -P 0xcd 64k 512", img});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "read 8192/8192 bytes at offset 4096")) << r.out;
  auto bad = vdimg({"io", "-f", "raw", "-c", "read -P 0x5a 0 8k", img});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(contains(bad.out, "Pattern verification failed at offset 0, 8192 bytes")) << bad.out;
}

TEST(VdimgCli, IoStopsAtFirstFailingCommand) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "64k"}).exit_code, 0);
  auto r = vdimg({"io", "-f", "raw", "-c", "write 60k 8k", "-c", "write -P 1 0 4k", img});
  EXPECT_NE(r.exit_code, 0);
  // qemu-io's words for a request past the end, on the output.
  EXPECT_TRUE(contains(r.out, "write failed: Input/output error")) << r.out << r.err;
  // The second write never ran.
  EXPECT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "read -P 0 0 4k", img}).exit_code, 0);
  EXPECT_NE(vdimg({"io", "-f", "raw", "-c", "bogus", img}).exit_code, 0);
}

TEST(VdimgCli, IoReadOnlyRefusesWrites) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "64k"}).exit_code, 0);
  EXPECT_NE(vdimg({"io", "-r", "-f", "raw", "-c", "write 0 1", img}).exit_code, 0);
  EXPECT_EQ(vdimg({"io", "-r", "-f", "raw", "-c", "read -P 0 0 1", img}).exit_code, 0);
}

TEST(VdimgCli, IoWriteZeroesAndDiscardReadAsZeros) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "256k"}).exit_code, 0);
  auto r = vdimg({"io", "-f", "raw", "-q", "-c", "write -P 9 0 256k", "-c", "write -z 1000 5000",
                  "-c", "write -z -u 64k 64k", "-c", "discard 128k 64k", "-c", "flush",
                  "-c", "read -P 0 1000 5000", "-c", "read -P 0 64k 64k",
                  "-c", "read -P 9 6000 59536", img});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

TEST(VdimgCli, ConvertRawToRawIsSparseAndIdentical) {
  TempDir dir;
  std::string src = dir.file("src.img"), dst = dir.file("dst.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", src, "64M"}).exit_code, 0);
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 3 1M 64k", "-c", "write -P 4 40M 4k",
                   src}).exit_code, 0);
  auto r = vdimg({"convert", "-f", "raw", "-O", "raw", src, dst});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::file_size(dst), 64u << 20);
  EXPECT_EQ(vdtest::sha256_file(src), vdtest::sha256_file(dst));
  EXPECT_LT(allocated_bytes(dst), 4u << 20);
}

TEST(VdimgCli, ConvertProgressPrintsQemuLines) {
  TempDir dir;
  std::string src = dir.file("src.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", src, "4M"}).exit_code, 0);
  auto r = vdimg({"convert", "-p", "-O", "raw", "-f", "raw", src, dir.file("dst.img")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "    (0.00/100%)\r")) << r.out;
  EXPECT_TRUE(contains(r.out, "    (100.00/100%)\r\n")) << r.out;
}

TEST(VdimgCli, CompareExitCodes) {
  TempDir dir;
  std::string a = dir.file("a.img"), b = dir.file("b.img"), c = dir.file("c.img");
  for (const auto& p : {a, b}) ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", p, "1M"}).exit_code, 0);
  auto same = vdimg({"compare", "-f", "raw", "-F", "raw", a, b});
  EXPECT_EQ(same.exit_code, 0) << same.err;
  EXPECT_EQ(same.out, "Images are identical.\n");
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 1 100001 1", b}).exit_code, 0);
  auto diff = vdimg({"compare", "-f", "raw", "-F", "raw", a, b});
  EXPECT_EQ(diff.exit_code, 1);
  EXPECT_EQ(diff.out, "Content mismatch at offset 99840!\n");  // sector granularity, as qemu-img
  auto missing = vdimg({"compare", a, dir.file("nope.img")});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_TRUE(contains(missing.err, "nope.img")) << missing.err;
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", c, "2M"}).exit_code, 0);
  auto resized = vdimg({"compare", "-f", "raw", "-F", "raw", a, c});
  EXPECT_EQ(resized.exit_code, 0);
  EXPECT_EQ(resized.out, "Warning: Image size mismatch!\nImages are identical.\n");
  EXPECT_EQ(vdimg({"compare", "-s", "-f", "raw", "-F", "raw", a, c}).exit_code, 1);
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 1 1536k 1", c}).exit_code, 0);
  auto tail = vdimg({"compare", "-f", "raw", "-F", "raw", a, c});
  EXPECT_EQ(tail.exit_code, 1);
  EXPECT_TRUE(contains(tail.out, "Content mismatch at offset 1572864!")) << tail.out;
}

TEST(VdimgCli, CompareAgreesWithQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string a = dir.file("a.img"), b = dir.file("b.img");
  vdtest::sh("qemu-img create -q -f raw " + a + " 2M && qemu-img create -q -f raw " + b + " 2M");
  vdtest::sh("qemu-io -f raw -c 'write -P 5 777777 3' " + b + " >/dev/null");
  auto ours = vdimg({"compare", "-f", "raw", "-F", "raw", a, b});
  auto theirs = vdtest::run({"qemu-img", "compare", "-f", "raw", "-F", "raw", a, b});
  EXPECT_EQ(ours.exit_code, theirs.exit_code);
  EXPECT_EQ(ours.out, theirs.out);
}

TEST(VdimgCli, MapMatchesQemuImgOnFullyWrittenRaw) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 1 0 1M", img}).exit_code, 0);
  for (const char* fmt : {"human", "json"}) {
    auto ours = vdimg({"map", "-f", "raw", std::string("--output=") + fmt, img});
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    EXPECT_EQ(ours.out, vdtest::sh(std::string("qemu-img map -f raw --output=") + fmt + " " + img));
  }
}

TEST(VdimgCli, MapJsonCoversTheWholeDisk) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  auto r = vdimg({"map", "--output=json", img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("[{ \"start\": 0, ", 0), 0u) << r.out;
  EXPECT_EQ(r.out.substr(r.out.size() - 3), "}]\n") << r.out;
}

TEST(VdimgCli, ResizeGrowsAndShrinksOnlyWithShrink) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  auto grow = vdimg({"resize", "-f", "raw", img, "+1M"});
  ASSERT_EQ(grow.exit_code, 0) << grow.err;
  EXPECT_EQ(grow.out, "Image resized.\n");
  EXPECT_EQ(vdtest::file_size(img), 2u << 20);
  auto refused = vdimg({"resize", "-f", "raw", img, "-512k"});
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_TRUE(contains(refused.err, "Use the --shrink option to perform a shrink operation."));
  EXPECT_EQ(vdtest::file_size(img), 2u << 20);
  ASSERT_EQ(vdimg({"resize", "--shrink", "-f", "raw", img, "-512k"}).exit_code, 0);
  EXPECT_EQ(vdtest::file_size(img), 1536u << 10);
  ASSERT_EQ(vdimg({"resize", "-f", "raw", img, "3M"}).exit_code, 0);
  EXPECT_EQ(vdtest::file_size(img), 3u << 20);
  EXPECT_NE(vdimg({"resize", "-f", "raw", img, "junk"}).exit_code, 0);
}

// qemu-img check exits 63 on a format without checks, with a message naming no image.
TEST(VdimgCli, CheckOnRawCannotCheckAndExits63) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  auto r = vdimg({"check", "-f", "raw", img});
  EXPECT_EQ(r.exit_code, 63);
  EXPECT_EQ(r.err, "vdimg: This image format does not support checks\n");
  EXPECT_NE(vdimg({"check", "-r", "bogus", img}).exit_code, 0);
}

TEST(VdimgCli, BenchPrintsQemuImgLines) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", img, "1M"}).exit_code, 0);
  auto r = vdimg({"bench", "-f", "raw", "-c", "500", "-d", "8", "-s", "8k", img});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "Sending 500 read requests, 8192 bytes each, 8 in parallel "
                              "(starting at offset 0, step size 8192)\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "Run completed in ")) << r.out;
  auto w = vdimg({"bench", "-w", "--pattern=0x42", "-c", "300", "-f", "raw", img});
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_TRUE(contains(w.out, "300 write requests")) << w.out;
  EXPECT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "read -P 0x42 0 1M", img}).exit_code, 0);
}

TEST(VdimgCli, OptionsGroupTakeLongFormsAndFollowPositionals) {
  TempDir dir;
  std::string img = dir.file("a.img");
  ASSERT_EQ(vdimg({"create", img, "--format=raw", "64k", "-q"}).exit_code, 0);
  auto r = vdimg({"io", img, "-qc", "write -P 2 0 512", "--format", "raw"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(vdimg({"io", "-f", "raw", "-c", "read -P 2 0 512", "--", img}).exit_code, 0);
  auto missing = vdimg({"io", "-f", "raw", img, "-c"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(contains(missing.err, "requires an argument")) << missing.err;
}

TEST(VdimgCli, ConvertCompressedToRawIsRefused) {
  TempDir dir;
  std::string src = dir.file("src.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", src, "64k"}).exit_code, 0);
  auto r = vdimg({"convert", "-c", "-O", "raw", src, dir.file("dst.img")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "Compression not supported")) << r.err;
}

TEST(VdimgCli, ConvertOntoExistingTargetWithNWritesZerosToo) {
  TempDir dir;
  std::string src = dir.file("src.img"), dst = dir.file("dst.img");
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", src, "1M"}).exit_code, 0);
  ASSERT_EQ(vdimg({"create", "-q", "-f", "raw", dst, "1M"}).exit_code, 0);
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 1 0 1M", dst}).exit_code, 0);
  ASSERT_EQ(vdimg({"io", "-f", "raw", "-q", "-c", "write -P 3 4k 4k", src}).exit_code, 0);
  auto r = vdimg({"convert", "-n", "-f", "raw", "-O", "raw", src, dst});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(vdtest::sha256_file(src), vdtest::sha256_file(dst));
}

}  // namespace
