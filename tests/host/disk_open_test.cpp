// Disk::open: following parent names, recorded formats, and refusing bad chains.
#include <filesystem>

#include "host/disk_fixture.h"

namespace vdtest {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

using DiskOpenTest = DiskFixture;

TEST_F(DiskOpenTest, OpensThreeLevelChainByProbing) {
  make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_EQ((*d)->depth(), 3u);
  EXPECT_EQ((*d)->image(0).path(), "/c/top.fake");
  EXPECT_EQ((*d)->image(1).path(), "/c/mid.fake");
  EXPECT_EQ((*d)->image(2).path(), "/c/base.fake");
  EXPECT_FALSE((*d)->read_only());
}

TEST_F(DiskOpenTest, ParentsAreOpenedReadOnlyAndTopKeepsItsFlags) {
  make_chain(mem, "/c");
  vd::DiskOpenOptions o;
  o.format = "fake";
  auto d = open("/c/top.fake", o);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_FALSE((*d)->image(0).open_flags() & vd::open_read_only);
  EXPECT_TRUE((*d)->image(0).open_flags() & vd::open_format_given);
  EXPECT_TRUE((*d)->image(1).open_flags() & vd::open_read_only);
  EXPECT_TRUE((*d)->image(2).open_flags() & vd::open_read_only);
  // mid records no format for base: it was probed, so the format was not "given".
  EXPECT_FALSE((*d)->image(2).open_flags() & vd::open_format_given);
}

TEST_F(DiskOpenTest, NoBackingOpensTopAlone) {
  auto want = make_chain(mem, "/c");
  vd::DiskOpenOptions o;
  o.no_backing = true;
  auto d = open("/c/top.fake", o);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ((*d)->depth(), 1u);
  EXPECT_EQ(read_all(**d, 0, kCluster), std::vector<std::byte>(kCluster));
  EXPECT_EQ(read_all(**d, 2 * kCluster, kCluster), slice(want, 2 * kCluster, kCluster));
}

TEST_F(DiskOpenTest, RelativeParentNameIsRelativeToChildFolder) {
  TempDir dir;
  auto& io = rt.files();
  std::filesystem::create_directory(dir.file("sub"));
  make(io, dir.file("base.fake"), 64 * 1024);
  fill(io, dir.file("base.fake"), 0, pattern(kCluster, 9));
  make(io, dir.file("sub/top.fake"), 64 * 1024, "../base.fake");
  auto d = vd::Disk::open(dir.file("sub/top.fake"), {}, registry, io);
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_EQ((*d)->depth(), 2u);
  EXPECT_EQ((*d)->image(1).path(), dir.file("sub/../base.fake"));
  EXPECT_EQ(read_all(**d, 0, kCluster), pattern(kCluster, 9));
}

TEST_F(DiskOpenTest, AbsoluteParentNameIsUsedAsIs) {
  TempDir dir, other;
  auto& io = rt.files();
  make(io, other.file("base.fake"), 64 * 1024);
  fill(io, other.file("base.fake"), kCluster, pattern(kCluster, 8));
  make(io, dir.file("top.fake"), 64 * 1024, other.file("base.fake"));
  auto d = vd::Disk::open(dir.file("top.fake"), {}, registry, io);
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_EQ((*d)->depth(), 2u);
  EXPECT_EQ((*d)->image(1).path(), other.file("base.fake"));
  EXPECT_EQ(read_all(**d, kCluster, kCluster), pattern(kCluster, 8));
}

TEST_F(DiskOpenTest, LoopIsRefusedWithChainInMessage) {
  make(mem, "/l/a.fake", 64 * 1024, "b.fake");
  make(mem, "/l/b.fake", 64 * 1024, "../l/a.fake");
  auto d = open("/l/a.fake");
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::invalid_argument)) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "(chain: /l/a.fake -> /l/b.fake)"))
      << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "loop")) << d.error().message();
}

TEST_F(DiskOpenTest, ImageThatIsItsOwnParentIsRefused) {
  make(mem, "/l/self.fake", 64 * 1024, "self.fake");
  auto d = open("/l/self.fake");
  ASSERT_FALSE(d);
  EXPECT_TRUE(contains(d.error().message(), "loop")) << d.error().message();
}

TEST_F(DiskOpenTest, MissingParentNamesFileChildAndChain) {
  make(mem, "/m/mid.fake", 64 * 1024, "base.img");
  make(mem, "/m/top.fake", 64 * 1024, "mid.fake");
  auto d = open("/m/top.fake");
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::not_found));
  EXPECT_EQ(d.error().message(),
            "'/m/mid.fake': Could not open backing file 'base.img' "
            "(chain: /m/top.fake -> /m/mid.fake): No such file or directory");
  EXPECT_EQ(d.error().path(), "/m/mid.fake");
}

TEST_F(DiskOpenTest, MissingTopIsNotFound) {
  auto d = open("/nowhere/top.fake");
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::not_found)) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "/nowhere/top.fake"));
}

TEST_F(DiskOpenTest, ChainDeeperThanMaxDepthIsRefused) {
  make(mem, "/d/i0.fake", 64 * 1024);
  for (int i = 1; i < 5; ++i) {
    std::string name = "i" + std::to_string(i);
    make(mem, "/d/" + name + ".fake", 64 * 1024, "i" + std::to_string(i - 1) + ".fake");
  }
  vd::DiskOpenOptions o;
  o.max_depth = 4;
  auto d = open("/d/i4.fake", o);
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::too_large)) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "deeper than 4")) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(),
                       "chain: /d/i4.fake -> /d/i3.fake -> /d/i2.fake -> /d/i1.fake"))
      << d.error().message();
  o.max_depth = 5;
  auto ok = open("/d/i4.fake", o);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ((*ok)->depth(), 5u);
}

TEST_F(DiskOpenTest, RecordedBackingFormatIsHonoured) {
  // This registry's "fake" never probes: the base would probe as raw.
  FakeBackend unprobed(false);
  vd::Registry reg = vd::Registry::builtin();
  ASSERT_FALSE(reg.add(&unprobed));
  make(mem, "/f/base.fake", 64 * 1024);
  fill(mem, "/f/base.fake", 0, pattern(kCluster, 3));
  make(mem, "/f/top.fake", 64 * 1024, "base.fake", "fake");
  vd::DiskOpenOptions o;
  o.format = "fake";
  auto d = vd::Disk::open("/f/top.fake", o, reg, mem);
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_EQ((*d)->depth(), 2u);
  EXPECT_EQ((*d)->image(1).backend().name(), "fake");
  EXPECT_TRUE((*d)->image(1).open_flags() & vd::open_format_given);
  EXPECT_EQ(read_all(**d, 0, kCluster), pattern(kCluster, 3));
}

TEST_F(DiskOpenTest, UnrecordedBackingFormatIsProbed) {
  FakeBackend unprobed(false);
  vd::Registry reg = vd::Registry::builtin();
  ASSERT_FALSE(reg.add(&unprobed));
  make(mem, "/f/base.fake", 64 * 1024);
  make(mem, "/f/top.fake", 64 * 1024, "base.fake");
  vd::DiskOpenOptions o;
  o.format = "fake";
  auto d = vd::Disk::open("/f/top.fake", o, reg, mem);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ((*d)->image(1).backend().name(), "raw");
}

TEST_F(DiskOpenTest, UnknownRecordedBackingFormatIsRefused) {
  make(mem, "/u/base.fake", 64 * 1024);
  make(mem, "/u/top.fake", 64 * 1024, "base.fake", "nosuchfmt");
  auto d = open("/u/top.fake");
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::not_found)) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "'nosuchfmt'")) << d.error().message();
  EXPECT_TRUE(contains(d.error().message(), "(chain: /u/top.fake)")) << d.error().message();
}

TEST_F(DiskOpenTest, UnknownTopFormatIsRefused) {
  make(mem, "/u/top.fake", 64 * 1024);
  vd::DiskOpenOptions o;
  o.format = "nosuchfmt";
  auto d = open("/u/top.fake", o);
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::not_found));
  EXPECT_TRUE(contains(d.error().message(), "'nosuchfmt'")) << d.error().message();
}

TEST_F(DiskOpenTest, AssembleRejectsEmptyChain) {
  auto d = vd::Disk::assemble({});
  ASSERT_FALSE(d);
  EXPECT_TRUE(d.error().is(vd::Errc::invalid_argument));
}

TEST_F(DiskOpenTest, AssembleStacksOpenImages) {
  auto want = make_chain(mem, "/c");
  std::vector<std::unique_ptr<vd::Image>> chain;
  for (const char* p : {"/c/top.fake", "/c/mid.fake", "/c/base.fake"}) {
    vd::OpenOptions ro;
    ro.flags = vd::open_read_only;
    auto img = fake_backend().open(p, ro, mem);
    ASSERT_TRUE(img) << img.error().message();
    chain.push_back(std::move(*img));
  }
  auto d = vd::Disk::assemble(std::move(chain));
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE((*d)->read_only());
  EXPECT_EQ(read_all(**d, 0, 64 * 1024), want);
}

}  // namespace
}  // namespace vdtest
