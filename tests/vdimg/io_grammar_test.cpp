// The `vdimg io` command grammar (qemu-io's subset).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "host/vdimg/io_script.h"
#include "support/support.h"

namespace {

using Op = vd::IoCommand::Op;

vd::IoCommand parsed(const char* s) {
  auto r = vd::parse_io_command(s);
  EXPECT_TRUE(r.ok()) << s << ": " << r.error().message();
  return r.ok() ? *r : vd::IoCommand{};
}

TEST(IoGrammar, WriteDefaultsToPatternCd) {
  auto c = parsed("write 0 4k");
  EXPECT_EQ(c.op, Op::write);
  EXPECT_EQ(c.offset, 0u);
  EXPECT_EQ(c.length, 4096u);
  EXPECT_EQ(c.pattern, 0xcd);
}

// qemu-io's numbers are qemu_strtosz's: hexadecimal offsets and lengths too.
TEST(IoGrammar, HexadecimalOffsetAndLength) {
  auto c = parsed("write -P 23 0x5800 1536");
  EXPECT_EQ(c.offset, 0x5800u);
  EXPECT_EQ(c.length, 1536u);
  EXPECT_EQ(parsed("read 0x10000 0x600").length, 0x600u);
}

TEST(IoGrammar, WritePatternHexAndDecimal) {
  EXPECT_EQ(parsed("write -P 0x11 1M 512").pattern, 0x11);
  EXPECT_EQ(parsed("write -P 17 1M 512").pattern, 17);
  EXPECT_EQ(parsed("write -P0xff 0 1").pattern, 0xff);
  EXPECT_EQ(parsed("write 0 1 -P 3").pattern, 3);  // options after positionals, getopt style
  EXPECT_EQ(parsed("write -P 1 1M 512").offset, 1u << 20);
}

TEST(IoGrammar, ReadWithPatternVerifies) {
  auto c = parsed("read -P 0xab -q 100 3");
  EXPECT_EQ(c.op, Op::read);
  EXPECT_TRUE(c.verify);
  EXPECT_TRUE(c.quiet);
  EXPECT_EQ(c.pattern, 0xab);
  EXPECT_FALSE(parsed("read 0 1").verify);
}

TEST(IoGrammar, WriteZeroesAndUnmap) {
  auto c = parsed("write -z -u 4k 8k");
  EXPECT_EQ(c.op, Op::write_zeroes);
  EXPECT_EQ(c.flags, unsigned{vd::zero_may_unmap});
  EXPECT_EQ(parsed("write -zu 0 1").op, Op::write_zeroes);
  EXPECT_EQ(parsed("write -z 0 1").flags, 0u);
}

TEST(IoGrammar, DiscardAndFlush) {
  auto d = parsed("discard 1000 3000");
  EXPECT_EQ(d.op, Op::discard);
  EXPECT_EQ(d.offset, 1000u);
  EXPECT_EQ(d.length, 3000u);
  EXPECT_EQ(parsed("flush").op, Op::flush);
  EXPECT_EQ(parsed("  flush  ").op, Op::flush);
}

TEST(IoGrammar, RejectsBadNumbers) {
  for (const char* bad : {"write 0 12q", "write x 1", "read -1 5", "discard 0 1.5",
                          "write 18446744073709551615 2", "write 0 2G"})
    EXPECT_FALSE(vd::parse_io_command(bad).ok()) << bad;
}

TEST(IoGrammar, RejectsMissingArguments) {
  for (const char* bad : {"write", "write 0", "read 4k", "discard", "write -P", "flush 0"})
    EXPECT_FALSE(vd::parse_io_command(bad).ok()) << bad;
}

TEST(IoGrammar, RejectsUnknownCommandAndOption) {
  auto r = vd::parse_io_command("frobnicate 0 1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("frobnicate"), std::string::npos);
  EXPECT_FALSE(vd::parse_io_command("").ok());
  EXPECT_FALSE(vd::parse_io_command("read -z 0 1").ok());
  EXPECT_FALSE(vd::parse_io_command("discard -P 1 0 1").ok());
}

TEST(IoGrammar, RejectsBadPatterns) {
  for (const char* bad : {"write -P 256 0 1", "write -P -1 0 1", "write -P 0xzz 0 1",
                          "write -P abc 0 1", "read -P 1000 0 1"})
    EXPECT_FALSE(vd::parse_io_command(bad).ok()) << bad;
}

TEST(IoGrammar, RejectsConflictingFlags) {
  EXPECT_FALSE(vd::parse_io_command("write -z -P 1 0 1").ok());
  EXPECT_FALSE(vd::parse_io_command("write -u 0 1").ok());
}

TEST(IoGrammar, PatternByteParsing) {
  EXPECT_EQ(*vd::parse_pattern_byte("0"), 0);
  EXPECT_EQ(*vd::parse_pattern_byte("255"), 255);
  EXPECT_EQ(*vd::parse_pattern_byte("0xcd"), 0xcd);
  EXPECT_EQ(*vd::parse_pattern_byte("010"), 8);  // octal, as strtol base 0
  EXPECT_FALSE(vd::parse_pattern_byte("").ok());
}

TEST(IoGrammar, OnlyReadsDoNotNeedWriteAccess) {
  std::vector<vd::IoCommand> reads{parsed("read 0 1"), parsed("flush")};
  EXPECT_FALSE(vd::io_commands_write(reads));
  reads.push_back(parsed("discard 0 1"));
  EXPECT_TRUE(vd::io_commands_write(reads));
}

}  // namespace

// qemu-io 7.2's number grammar (qemu_strtosz): '+' allowed, decimal (a leading 0 is not
// octal), 0x hex (with a deprecated unit after it), a fraction only before a unit other
// than B, truncated to bytes; one unit letter and nothing after it; at most INT64_MAX.
TEST(IoGrammar, NumbersAsQemuIoReadsThem) {
  const std::vector<std::pair<const char*, uint64_t>> good = {
      {"010", 10},       {"08", 8},       {"+512", 512},     {"+0x10", 16},  {"0X200", 512},
      {"0x1k", 1024},    {"1.k", 1024},   {"1.25k", 1280},   {"0.0001k", 0}, {"1.0", 1},
      {"512b", 512},     {"63.5M", 66584576}};
  for (const auto& [text, value] : good)
    EXPECT_EQ(parsed((std::string("read ") + text + " 1").c_str()).offset, value) << text;
  for (const char* bad : {"4KiB", "4KB", "1e3", "1.5e3k", "0x1.8", "0x", "0xk", "00x10", "1.5", "1.5B",
                          ".5k", "k", "8E", "16E", "99999999999999999999"}) {
    auto r = vd::parse_io_command(std::string("read ") + bad + " 1");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().message().rfind("Parsing error: ", 0), 0u) << r.error().message();
  }
}

// The same words and outcome as qemu-io for each number, run by both on one image.
TEST(IoGrammar, NumbersMatchQemuIo) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string img = dir.file("n.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 64M");
  for (const char* n : {"010", "0x10", "0X200", "+512", "1.k", "1.25k", "0.0001k", "512b", "4KiB", "1e3",
                        "0x1.8", "00x10", "1.5", "8E", "99999999999999999999", ".5k", "63.5M"}) {
    const std::string cmd = std::string("read ") + n + " 512";
    auto theirs = vdtest::run({"qemu-io", "-c", cmd, img});
    auto ours = vdtest::vdimg({"io", "-c", cmd, img});
    auto first_line = [](const std::string& s) { return s.substr(0, s.find('\n')); };
    std::string q = first_line(theirs.out.empty() ? theirs.err : theirs.out);
    std::string v = first_line(ours.out.empty() ? ours.err : ours.out);
    if (v.rfind("vdimg: ", 0) == 0) v.erase(0, 7);
    EXPECT_EQ(v, q) << cmd;
  }
}
