// Sizes as typed on the command line and as qemu-img prints them.
#include <gtest/gtest.h>

#include "backends/common/sizes.h"

namespace {

uint64_t parsed(const char* s) {
  auto r = vd::parse_size(s);
  EXPECT_TRUE(r.ok()) << s << ": " << r.error().message();
  return r.ok() ? *r : 0;
}

TEST(ParseSize, PlainNumberIsBytes) {
  EXPECT_EQ(parsed("0"), 0u);
  EXPECT_EQ(parsed("4096"), 4096u);
  EXPECT_EQ(parsed("18446744073709551615"), UINT64_MAX);
}

// qemu_strtosz (qemu-io's offsets and lengths, qemu-img's sizes) takes hexadecimal too:
// "write -P 23 0x5800 1536". Whole bytes only: no fraction, no unit after it.
TEST(ParseSize, HexadecimalAsQemuTakesIt) {
  EXPECT_EQ(parsed("0x5800"), 0x5800u);
  EXPECT_EQ(parsed("0X1fF"), 0x1ffu);
  EXPECT_EQ(parsed("0xffffffffffffffff"), UINT64_MAX);
  for (const char* bad : {"0x", "0x10k", "0x1.5", "0x10000000000000000", "0xg"})
    EXPECT_FALSE(vd::parse_size(bad).ok()) << bad;
}

TEST(ParseSize, SuffixesArePowersOf1024) {
  EXPECT_EQ(parsed("1k"), 1024u);
  EXPECT_EQ(parsed("1K"), 1024u);
  EXPECT_EQ(parsed("64M"), 64ull << 20);
  EXPECT_EQ(parsed("2G"), 2ull << 30);
  EXPECT_EQ(parsed("3T"), 3ull << 40);
  EXPECT_EQ(parsed("1P"), 1ull << 50);
  EXPECT_EQ(parsed("1E"), 1ull << 60);
  EXPECT_EQ(parsed("512B"), 512u);
  EXPECT_EQ(parsed("1MiB"), 1ull << 20);
  EXPECT_EQ(parsed("1g"), 1ull << 30);
}

TEST(ParseSize, FractionWithUnit) {
  EXPECT_EQ(parsed("1.5G"), 3ull << 29);
  EXPECT_EQ(parsed("0.5k"), 512u);
}

TEST(ParseSize, RejectsGarbage) {
  for (const char* bad : {"", "abc", "12x", "-1", "+5", "1.5", "1..5k", "1 k", "k", "1kk", " 1"})
    EXPECT_FALSE(vd::parse_size(bad).ok()) << bad;
}

TEST(ParseSize, RejectsOverflow) {
  EXPECT_FALSE(vd::parse_size("18446744073709551616").ok());
  EXPECT_FALSE(vd::parse_size("16E").ok());
  EXPECT_FALSE(vd::parse_size("99999999999999999999999").ok());
  EXPECT_TRUE(vd::parse_size("15E").ok());
}

TEST(ParseSize, ErrorNamesTheInput) {
  auto r = vd::parse_size("12q");
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().is(vd::Errc::invalid_argument));
  EXPECT_NE(r.error().message().find("12q"), std::string::npos);
}

TEST(FormatSize, MatchesQemuImg) {
  EXPECT_EQ(vd::format_size(0), "0 B");
  EXPECT_EQ(vd::format_size(512), "512 B");
  EXPECT_EQ(vd::format_size(1000), "0.977 KiB");
  EXPECT_EQ(vd::format_size(196 * 1024), "196 KiB");
  EXPECT_EQ(vd::format_size(64ull << 20), "64 MiB");
  EXPECT_EQ(vd::format_size(3ull << 29), "1.5 GiB");
  EXPECT_EQ(vd::format_size(2297856), "2.19 MiB");
  EXPECT_EQ(vd::format_size(1ull << 40), "1 TiB");
  EXPECT_EQ(vd::format_size(UINT64_MAX), "16 EiB");
}

}  // namespace
