// run_io_commands in process, on a raw image opened as a Disk.
#include <gtest/gtest.h>

#include <sstream>

#include "host/vdimg/io_script.h"
#include "support/support.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

class IoRun : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("a.img");
    vdtest::write_file(path_, std::vector<std::byte>(64 * 1024));
    vd::DiskOpenOptions o;
    o.format = "raw";
    o.flags = vd::open_format_given;
    auto d = vd::Disk::open(path_, o, registry_, rt_.files());
    ASSERT_TRUE(d.ok()) << d.error().message();
    disk_ = std::move(*d);
  }
  void TearDown() override {
    if (disk_) {
      EXPECT_FALSE(disk_->close());
    }
  }
  std::vector<vd::IoCommand> commands(std::initializer_list<const char*> texts) {
    std::vector<vd::IoCommand> out;
    for (const char* t : texts) {
      auto c = vd::parse_io_command(t);
      EXPECT_TRUE(c.ok()) << t;
      if (c.ok()) out.push_back(*c);
    }
    return out;
  }

  vdtest::TempDir dir_;
  std::string path_;
  vd::Runtime rt_{2};
  vd::Registry registry_ = vd::Registry::builtin();
  std::unique_ptr<vd::Disk> disk_;
};

TEST_F(IoRun, PrintsQemuIoReportLines) {
  std::ostringstream out;
  auto err = vd::run_io_commands(rt_, *disk_, commands({"write -P 1 0 4k", "read 0 512",
                                                        "discard 4k 4k", "flush"}), out);
  ASSERT_FALSE(err) << err.message();
  std::string s = out.str();
  EXPECT_NE(s.find("wrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; "), std::string::npos) << s;
  EXPECT_NE(s.find("read 512/512 bytes at offset 0\n512 bytes, 1 ops; "), std::string::npos) << s;
  EXPECT_NE(s.find("discard 4096/4096 bytes at offset 4096\n"), std::string::npos) << s;
}

TEST_F(IoRun, QuietPrintsNothing) {
  std::ostringstream out;
  ASSERT_FALSE(vd::run_io_commands(rt_, *disk_, commands({"write 0 1", "read -P 0xcd 0 1"}), out, true));
  EXPECT_EQ(out.str(), "");
}

TEST_F(IoRun, PatternMismatchFailsAndStops) {
  std::ostringstream out;
  auto err = vd::run_io_commands(
      rt_, *disk_, commands({"read -P 7 100 10", "write -P 9 0 1"}), out, true);
  ASSERT_TRUE(err);
  EXPECT_NE(out.str().find("Pattern verification failed at offset 100, 10 bytes"), std::string::npos);
  EXPECT_EQ(vdtest::read_file(path_)[0], std::byte{0});  // the write after it never ran
}

TEST_F(IoRun, RequestBeyondTheDiskFailsWithItsOffset) {
  std::ostringstream out;
  auto err = vd::run_io_commands(rt_, *disk_, commands({"write 60k 8k"}), out);
  ASSERT_TRUE(err);
  EXPECT_TRUE(err.is(vd::Errc::out_of_range));
  EXPECT_NE(err.message().find("0xf000"), std::string::npos) << err.message();
}

TEST_F(IoRun, WriteZeroesReadsBackAsZeros) {
  std::ostringstream out;
  auto err = vd::run_io_commands(
      rt_, *disk_, commands({"write -P 0xff 0 64k", "write -z 10 20", "read -P 0 10 20",
                             "read -P 0xff 0 10", "read -P 0xff 30 100"}), out, true);
  EXPECT_FALSE(err) << err.message() << out.str();
}

}  // namespace
