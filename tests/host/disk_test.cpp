// Disk data path: reading through the chain, writing to the top with copy-on-write,
// range and read-only checks, concurrency, block status.
#include <random>

#include "host/disk_fixture.h"

namespace vdtest {
namespace {

using DiskTest = DiskFixture;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(DiskTest, ThreeLevelChainReadsEachLevelAndZerosElsewhere) {
  auto want = make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ((*d)->size(), 64u * 1024);
  EXPECT_EQ(read_all(**d, 0, 64 * 1024), want);
  // Unaligned, crossing every level boundary.
  EXPECT_EQ(read_all(**d, 100, 5 * kCluster), slice(want, 100, 5 * kCluster));
}

TEST_F(DiskTest, ThreeLevelChainOfRealFilesReads) {
  TempDir dir;
  auto want = make_chain(rt.files(), dir.path());
  auto d = vd::Disk::open(dir.file("top.fake"), {}, registry, rt.files());
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ(read_all(**d, 0, 64 * 1024), want);
  EXPECT_FALSE((*d)->close());
}

TEST_F(DiskTest, RawBaseWrittenByQemuReadsThroughFakeTop) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  sh("qemu-img create -q -f raw " + dir.file("base.raw") + " 64k");
  sh("qemu-io -f raw -c 'write -q -P 0x5a 4k 4k' " + dir.file("base.raw"));
  make(rt.files(), dir.file("top.fake"), 64 * 1024, "base.raw", "raw");
  auto d = vd::Disk::open(dir.file("top.fake"), {}, registry, rt.files());
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_EQ((*d)->image(1).backend().name(), "raw");
  auto got = read_all(**d, 0, 3 * kCluster);
  EXPECT_EQ(slice(got, 0, kCluster), std::vector<std::byte>(kCluster));
  EXPECT_EQ(slice(got, kCluster, kCluster), std::vector<std::byte>(kCluster, std::byte{0x5a}));
  // Copy-on-write from the raw base into the top.
  ASSERT_FALSE(write(**d, kCluster + 8, std::vector<std::byte>(8, std::byte{1})));
  got = read_all(**d, kCluster, kCluster);
  std::vector<std::byte> want(kCluster, std::byte{0x5a});
  std::fill(want.begin() + 8, want.begin() + 16, std::byte{1});
  EXPECT_EQ(got, want);
}

TEST_F(DiskTest, ParentShorterThanChildReadsZerosPastItsEnd) {
  // base is 6 KiB (its second cluster only half inside), full of 0x77 bytes.
  make(mem, "/s/base.fake", 6 * 1024);
  fill(mem, "/s/base.fake", 0, std::vector<std::byte>(6 * 1024, std::byte{0x77}));
  make(mem, "/s/top.fake", 32 * 1024, "base.fake");
  auto d = open("/s/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  auto got = read_all(**d, 4 * 1024, 8 * 1024);
  EXPECT_EQ(slice(got, 0, 2048), std::vector<std::byte>(2048, std::byte{0x77}));
  EXPECT_EQ(slice(got, 2048, 6 * 1024), std::vector<std::byte>(6 * 1024));
}

TEST_F(DiskTest, PartialWriteBeyondShorterParentCopiesZeros) {
  make(mem, "/s/base.fake", 6 * 1024);
  fill(mem, "/s/base.fake", 0, std::vector<std::byte>(6 * 1024, std::byte{0x77}));
  make(mem, "/s/top.fake", 32 * 1024, "base.fake");
  auto d = open("/s/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  // Cluster 1 straddles the parent's end: its copy-on-write reads 0x77 then zeros.
  ASSERT_FALSE(write(**d, 5 * 1024, std::vector<std::byte>(16, std::byte{0x11})));
  auto got = read_all(**d, 4 * 1024, kCluster);
  std::vector<std::byte> want(kCluster);
  std::fill(want.begin(), want.begin() + 2048, std::byte{0x77});
  std::fill(want.begin() + 1024, want.begin() + 1040, std::byte{0x11});
  EXPECT_EQ(got, want);
}

TEST_F(DiskTest, WritesGoToTopAndPartialClusterCopiesParent) {
  auto want = make_chain(mem, "/c");
  {
    auto d = open("/c/top.fake");
    ASSERT_TRUE(d) << d.error().message();
    auto data = pattern(100, 42);
    ASSERT_FALSE(write(**d, 1000, data));  // cluster 0: held by base only
    put(want, 1000, data);
    EXPECT_EQ(read_all(**d, 0, 64 * 1024), want);
    ASSERT_FALSE((*d)->close());
  }
  // The base is untouched; the top alone now holds the whole merged cluster.
  vd::DiskOpenOptions alone;
  alone.no_backing = true;
  auto base = open("/c/base.fake", alone);
  ASSERT_TRUE(base);
  EXPECT_EQ(read_all(**base, 0, kCluster), pattern(kCluster, 1));
  auto top = open("/c/top.fake", alone);
  ASSERT_TRUE(top);
  EXPECT_EQ(read_all(**top, 0, kCluster), slice(want, 0, kCluster));
}

TEST_F(DiskTest, WriteZeroesReadsZerosThroughChain) {
  auto want = make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_FALSE(rt.wait([&](vd::Completion done) {
    (*d)->write_zeroes(512, 2 * kCluster, 0, std::move(done));
  }));
  std::fill(want.begin() + 512, want.begin() + 512 + 2 * kCluster, std::byte{0});
  EXPECT_EQ(read_all(**d, 0, 64 * 1024), want);
}

TEST_F(DiskTest, ReadOnlyDiskRefusesWritesNamingTheImage) {
  make_chain(mem, "/c");
  vd::DiskOpenOptions o;
  o.flags = vd::open_read_only;
  auto d = open("/c/top.fake", o);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE((*d)->read_only());
  vd::Error e = write(**d, 0, pattern(512, 1));
  EXPECT_TRUE(e.is(vd::Errc::read_only));
  EXPECT_TRUE(contains(e.message(), "/c/top.fake")) << e.message();
  e = rt.wait([&](vd::Completion done) { (*d)->write_zeroes(0, 512, 0, std::move(done)); });
  EXPECT_TRUE(e.is(vd::Errc::read_only));
  e = rt.wait([&](vd::Completion done) { (*d)->discard(0, 512, std::move(done)); });
  EXPECT_TRUE(e.is(vd::Errc::read_only));
  EXPECT_EQ(read_all(**d, 0, kCluster), pattern(kCluster, 1));
}

TEST_F(DiskTest, AccessBeyondTheEndIsOutOfRange) {
  make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  std::vector<std::byte> two(2);
  vd::Error e = read(**d, 64 * 1024 - 1, two);
  EXPECT_TRUE(e.is(vd::Errc::out_of_range)) << e.message();
  EXPECT_TRUE(contains(e.message(), "/c/top.fake")) << e.message();
  // offset + length wraps around: must still be refused.
  e = read(**d, UINT64_MAX, two);
  EXPECT_TRUE(e.is(vd::Errc::out_of_range));
  EXPECT_TRUE(write(**d, UINT64_MAX - 1, two).is(vd::Errc::out_of_range));
  e = rt.wait([&](vd::Completion done) {
    (*d)->write_zeroes(4096, UINT64_MAX, 0, std::move(done));
  });
  EXPECT_TRUE(e.is(vd::Errc::out_of_range));
  std::vector<std::byte> last(1);
  EXPECT_FALSE(read(**d, 64 * 1024 - 1, last));
}

TEST_F(DiskTest, CompletionIsPostedEvenWhenNoIoIsNeeded) {
  make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  int calls = 0;
  std::vector<std::byte> none;
  vd::Error got;
  rt.context().restart();
  (*d)->read(0, none, [&](vd::Error) { ++calls; });
  (*d)->read(UINT64_MAX, none, [&](vd::Error e) { ++calls; got = e; });
  EXPECT_EQ(calls, 0);  // not inline
  rt.context().run();
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(got.is(vd::Errc::out_of_range));
}

// Issues 100 random overlapping reads at once, runs them all, and checks each completed
// exactly once with the right bytes.
void hundred_reads(vd::Runtime& rt, vd::Disk& d, const std::vector<std::byte>& want) {
  struct Req {
    uint64_t offset, length;
    std::vector<std::byte> buf;
    int calls = 0;
    vd::Error error;
  };
  std::mt19937 rng(1234);
  std::vector<Req> reqs(100);
  for (auto& r : reqs) {
    r.offset = rng() % (48 * 1024);
    r.length = 1 + rng() % (16 * 1024);
    r.buf.assign(r.length, std::byte{0xee});
  }
  rt.context().restart();
  for (auto& r : reqs) {
    d.read(r.offset, r.buf, [&r](vd::Error e) {
      ++r.calls;
      r.error = e;
    });
  }
  rt.context().run();
  for (const auto& r : reqs) {
    ASSERT_EQ(r.calls, 1) << "read at " << r.offset;
    EXPECT_FALSE(r.error) << r.error.message();
    EXPECT_EQ(r.buf, DiskFixture::slice(want, r.offset, r.length)) << "read at " << r.offset;
  }
}

TEST_F(DiskTest, HundredConcurrentOverlappingReadsCompleteOnce) {
  auto want = make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  hundred_reads(rt, **d, want);
}

TEST_F(DiskTest, HundredConcurrentReadsOfRealFilesCompleteOnce) {
  vd::Runtime pool(2);  // real thread pool under the files
  TempDir dir;
  auto want = make_chain(pool.files(), dir.path(), &pool);
  auto d = vd::Disk::open(dir.file("top.fake"), {}, registry, pool.files());
  ASSERT_TRUE(d) << d.error().message();
  hundred_reads(pool, **d, want);
}

TEST_F(DiskTest, AssembledDiskPostsCompletionsToo) {
  auto want = make_chain(mem, "/c");
  std::vector<std::unique_ptr<vd::Image>> chain;
  for (const char* p : {"/c/top.fake", "/c/mid.fake", "/c/base.fake"}) {
    auto img = fake_backend().open(p, vd::OpenOptions{}, mem);
    ASSERT_TRUE(img) << img.error().message();
    chain.push_back(std::move(*img));
  }
  auto d = vd::Disk::assemble(std::move(chain));
  ASSERT_TRUE(d) << d.error().message();
  int calls = 0;
  std::vector<std::byte> none;
  rt.context().restart();
  (*d)->read(0, none, [&](vd::Error) { ++calls; });
  EXPECT_EQ(calls, 0);
  rt.context().run();
  EXPECT_EQ(calls, 1);
  hundred_reads(rt, **d, want);
}

TEST_F(DiskTest, BlockStatusReportsTheLevelHoldingEachRange) {
  make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  auto status = [&](uint64_t off, uint64_t len) {
    vd::DiskExtent x;
    vd::Error e = rt.wait([&](vd::Completion done) {
      (*d)->block_status(off, len, [&x, done](vd::Error err, vd::DiskExtent got) {
        x = got;
        done(std::move(err));
      });
    });
    EXPECT_FALSE(e) << e.message();
    return x;
  };
  auto x = status(0, 64 * 1024);
  EXPECT_EQ(x.level, 2);
  EXPECT_EQ(x.extent.kind, vd::Extent::Kind::data);
  EXPECT_EQ(x.extent.length, kCluster);
  x = status(kCluster, 64 * 1024 - kCluster);
  EXPECT_EQ(x.level, 1);
  EXPECT_EQ(x.extent.length, kCluster);
  x = status(2 * kCluster + 10, 100);
  EXPECT_EQ(x.level, 0);
  EXPECT_EQ(x.extent.length, 100u);
  x = status(3 * kCluster, kCluster);
  EXPECT_EQ(x.level, 1);  // mid hides base
  x = status(4 * kCluster, 60 * 1024);  // runs past the end: clipped; nobody holds it
  EXPECT_EQ(x.level, 2);                // the deepest image covering it answers (qemu-img map's depth)
  EXPECT_EQ(x.extent.kind, vd::Extent::Kind::unallocated);
  EXPECT_EQ(x.extent.length, 48u * 1024);
}

TEST_F(DiskTest, BlockStatusPastShorterParentIsUnallocatedInTheTop) {
  make(mem, "/s/base.fake", 8 * 1024);
  fill(mem, "/s/base.fake", 0, pattern(8 * 1024, 3));
  make(mem, "/s/top.fake", 32 * 1024, "base.fake");
  auto d = open("/s/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  vd::DiskExtent x;
  ASSERT_FALSE(rt.wait([&](vd::Completion done) {
    (*d)->block_status(8 * 1024, 24 * 1024, [&x, done](vd::Error e, vd::DiskExtent got) {
      x = got;
      done(std::move(e));
    });
  }));
  EXPECT_EQ(x.level, 0);  // the parent does not reach this far: the top answers
  EXPECT_EQ(x.extent.kind, vd::Extent::Kind::unallocated);
  EXPECT_EQ(x.extent.length, 24u * 1024);
}

TEST_F(DiskTest, CloseIsIdempotentAndFlushWorks) {
  make_chain(mem, "/c");
  auto d = open("/c/top.fake");
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_FALSE(write(**d, 0, pattern(kCluster, 6)));
  EXPECT_FALSE(rt.wait([&](vd::Completion done) { (*d)->flush(std::move(done)); }));
  EXPECT_FALSE((*d)->close());
  EXPECT_FALSE((*d)->close());
}

}  // namespace
}  // namespace vdtest
