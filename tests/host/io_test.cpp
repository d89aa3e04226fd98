// The I/O providers (PosixIoProvider on the runtime's pool, MemIoProvider): both must give a
// backend the same file semantics, so every case runs against both.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <cstdlib>
#include <cstring>

#include "support/support.h"
#include "vd/cache.h"
#include "vd/runtime.h"

namespace {

using vd::Errc;
using vd::Error;
using vd::IoKind;

// posix_direct: the pool with cache=none (O_DIRECT, on the build tree's file system, not
// $TMPDIR, which may be tmpfs); uring: the io_uring provider, buffered and O_DIRECT.
enum class Provider { posix, mem, posix_direct, uring, uring_direct };

bool direct(Provider p) { return p == Provider::posix_direct || p == Provider::uring_direct; }

class IoTest : public ::testing::TestWithParam<Provider> {
 protected:
  IoTest()
      : dir_(direct(GetParam()) ? "." : (std::getenv("TMPDIR") && *std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp")),
        rt_(4, GetParam() == Provider::uring || GetParam() == Provider::uring_direct ? vd::Aio::io_uring
                                                                                        : vd::Aio::threads),
        mem_(rt_.executor()),
        direct_io_(rt_.files(), vd::file_direct) {}

  vd::IoProvider& io() {
    if (GetParam() == Provider::mem) return mem_;
    return direct(GetParam()) ? static_cast<vd::IoProvider&>(direct_io_) : rt_.files();
  }
  std::string path(const std::string& name) { return dir_.file(name); }
  void TearDown() override {
    // Every transfer an O_DIRECT file made was aligned.
    EXPECT_EQ(vd::io_counters().unaligned_direct.load(), 0u);
  }

  std::unique_ptr<vd::File> create(const std::string& name) {
    auto f = io().open(path(name), vd::file_read | vd::file_write | vd::file_create);
    EXPECT_TRUE(f.ok()) << f.error().message();
    return f.ok() ? std::move(*f) : nullptr;
  }

  std::vector<std::byte> read_back(vd::File& f, uint64_t offset, size_t len) {
    std::vector<std::byte> buf(len, std::byte{0x5a});
    EXPECT_FALSE(f.read(IoKind::data, offset, buf));
    return buf;
  }

  vdtest::TempDir dir_;
  vd::Runtime rt_;
  vd::MemIoProvider mem_;
  vd::CacheIoProvider direct_io_;
};

bool all_zero(const std::vector<std::byte>& b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

TEST_P(IoTest, WriteThenReadBack) {
  auto f = create("a");
  auto data = vdtest::pattern(10000, 1);
  ASSERT_FALSE(f->write(IoKind::data, 123, data));
  EXPECT_EQ(read_back(*f, 123, data.size()), data);
  EXPECT_EQ(*f->size(), 123u + data.size());
}

TEST_P(IoTest, ReadPastEndFillsZeros) {
  auto f = create("a");
  auto data = vdtest::pattern(100, 2);
  ASSERT_FALSE(f->write(IoKind::data, 0, data));
  auto got = read_back(*f, 50, 200);
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 50, data.begin() + 50));
  EXPECT_TRUE(all_zero({got.begin() + 50, got.end()}));
  EXPECT_TRUE(all_zero(read_back(*f, 1 << 20, 64)));
}

TEST_P(IoTest, SetSizeGrowsWithZerosAndShrinks) {
  auto f = create("a");
  ASSERT_FALSE(f->write(IoKind::data, 0, vdtest::pattern(4096, 3)));
  ASSERT_FALSE(f->set_size(1 << 16));
  EXPECT_EQ(*f->size(), 1u << 16);
  EXPECT_TRUE(all_zero(read_back(*f, 4096, 4096)));
  ASSERT_FALSE(f->set_size(100));
  EXPECT_EQ(*f->size(), 100u);
}

TEST_P(IoTest, DiscardedRangeReadsZerosAndKeepsSize) {
  auto f = create("a");
  auto data = vdtest::pattern(65536, 4);
  ASSERT_FALSE(f->write(IoKind::data, 0, data));
  ASSERT_FALSE(f->discard(1000, 10000));
  auto got = read_back(*f, 0, data.size());
  EXPECT_TRUE(std::equal(got.begin(), got.begin() + 1000, data.begin()));
  EXPECT_TRUE(all_zero({got.begin() + 1000, got.begin() + 11000}));
  EXPECT_TRUE(std::equal(got.begin() + 11000, got.end(), data.begin() + 11000));
  EXPECT_EQ(*f->size(), data.size());
  ASSERT_FALSE(f->discard(1 << 20, 4096));  // beyond the end: nothing to do, no growth
  EXPECT_EQ(*f->size(), data.size());
}

TEST_P(IoTest, AllocateExtendsFileWithZeros) {
  auto f = create("a");
  ASSERT_FALSE(f->allocate(0, 1 << 16));
  EXPECT_EQ(*f->size(), 1u << 16);
  EXPECT_TRUE(all_zero(read_back(*f, 0, 1 << 16)));
}

TEST_P(IoTest, OpenMissingFileIsNotFound) {
  auto f = io().open(path("missing"), vd::file_read);
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(f.error().is(Errc::not_found)) << f.error().message();
  EXPECT_NE(f.error().message().find("missing"), std::string::npos);
}

TEST_P(IoTest, OpenExclusiveOnExistingFileIsExists) {
  create("a");
  auto f = io().open(path("a"), vd::file_read | vd::file_write | vd::file_create |
                                    vd::file_exclusive);
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(f.error().is(Errc::exists)) << f.error().message();
}

TEST_P(IoTest, OpenTruncateEmptiesFile) {
  auto f = create("a");
  ASSERT_FALSE(f->write(IoKind::data, 0, vdtest::pattern(512, 5)));
  f.reset();
  auto g = io().open(path("a"), vd::file_read | vd::file_write | vd::file_create |
                                    vd::file_truncate);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*(*g)->size(), 0u);
}

TEST_P(IoTest, ReadOnlyFileRefusesWrite) {
  create("a");
  auto f = io().open(path("a"), vd::file_read);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE((*f)->write(IoKind::data, 0, vdtest::pattern(16, 6)));
}

TEST_P(IoTest, RemoveDeletesFile) {
  create("a");
  EXPECT_TRUE(io().exists(path("a")));
  EXPECT_FALSE(io().remove(path("a")));
  EXPECT_FALSE(io().exists(path("a")));
  EXPECT_TRUE(io().remove(path("a")).is(Errc::not_found));
}

TEST_P(IoTest, SixtyFourAsyncRequestsInFlightCompleteOnceWithCorrectData) {
  auto f = create("a");
  constexpr int n = 64;
  constexpr size_t chunk = 4096;
  auto data = vdtest::pattern(n * chunk, 7);
  std::vector<int> writes(n), reads(n);
  auto fan_out = [&](std::vector<int>& counts, auto submit) {
    return rt_.wait([&](vd::Completion all) {
      auto left = std::make_shared<int>(n);
      auto first = std::make_shared<Error>();
      for (int i = 0; i < n; ++i) {
        submit(i, [&counts, i, left, first, all](Error e) {
          ++counts[i];
          if (e && !*first) *first = e;
          if (--*left == 0) all(*first);
        });
      }
    });
  };
  ASSERT_FALSE(fan_out(writes, [&](int i, vd::Completion c) {
    f->async_write(IoKind::data, i * chunk, std::span(data).subspan(i * chunk, chunk), c);
  }));
  std::vector<std::byte> got(data.size());
  ASSERT_FALSE(fan_out(reads, [&](int i, vd::Completion c) {
    f->async_read(IoKind::data, i * chunk, std::span(got).subspan(i * chunk, chunk), c);
  }));
  rt_.context().restart();
  rt_.context().poll();  // nothing may complete a second time
  EXPECT_EQ(got, data);
  EXPECT_EQ(std::count(writes.begin(), writes.end(), 1), n);
  EXPECT_EQ(std::count(reads.begin(), reads.end(), 1), n);
}

TEST_P(IoTest, CompletionNeverRunsInline) {
  auto f = create("a");
  std::vector<std::byte> buf(512);
  int ran = 0;
  auto check = [&](auto submit) {
    ran = 0;
    Error e = rt_.wait([&](vd::Completion done) {
      submit([&ran, done](Error err) {
        ++ran;
        done(err);
      });
      EXPECT_EQ(ran, 0);
    });
    EXPECT_FALSE(e) << e.message();
    EXPECT_EQ(ran, 1);
  };
  check([&](vd::Completion c) { f->async_write(IoKind::data, 0, buf, c); });
  check([&](vd::Completion c) { f->async_read(IoKind::data, 0, buf, c); });
  check([&](vd::Completion c) { f->async_read(IoKind::data, 0, {}, c); });
  check([&](vd::Completion c) { f->async_flush(c); });
}

TEST_P(IoTest, AsyncErrorStillCompletesOnce) {
  create("a");
  auto f = io().open(path("a"), vd::file_read);
  ASSERT_TRUE(f.ok());
  std::vector<std::byte> buf(512);
  int ran = 0;
  Error e = rt_.wait([&](vd::Completion done) {
    (*f)->async_write(IoKind::data, 0, buf, [&ran, done](Error err) {
      ++ran;
      done(err);
    });
  });
  EXPECT_TRUE(e);
  EXPECT_NE(e.message().find(path("a")), std::string::npos) << e.message();
  EXPECT_EQ(ran, 1);
}

TEST_P(IoTest, FileDestroyedWhileRequestInFlightDoesNotCrash) {
  auto f = create("a");
  auto data = vdtest::pattern(1 << 16, 8);
  Error e = rt_.wait([&](vd::Completion done) {
    f->async_write(IoKind::data, 0, data, done);
    f.reset();
  });
  EXPECT_FALSE(e) << e.message();
  auto g = io().open(path("a"), vd::file_read);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(read_back(**g, 0, data.size()), data);
}

INSTANTIATE_TEST_SUITE_P(Providers, IoTest,
                         ::testing::Values(Provider::posix, Provider::mem, Provider::posix_direct,
                                           Provider::uring, Provider::uring_direct),
                         [](const auto& info) {
                           switch (info.param) {
                             case Provider::posix: return "Posix";
                             case Provider::mem: return "Mem";
                             case Provider::posix_direct: return "PosixDirect";
                             case Provider::uring: return "Uring";
                             case Provider::uring_direct: return "UringDirect";
                           }
                           return "Unknown";
                         });

// ---- Provider-specific ---------------------------------------------------------------------

TEST(PosixIoTest, AllocatedSizeExcludesHoles) {
  vdtest::TempDir dir;
  vd::Runtime rt(2);
  auto f = rt.files().open(dir.file("a"), vd::file_read | vd::file_write | vd::file_create);
  ASSERT_TRUE(f.ok());
  ASSERT_FALSE((*f)->set_size(8 << 20));
  EXPECT_LT(*(*f)->allocated_size(), 1u << 20);
  ASSERT_FALSE((*f)->allocate(0, 8 << 20));
  EXPECT_GE(*(*f)->allocated_size(), 8u << 20);
}

TEST(PosixIoTest, OpenDirectoryFails) {
  vdtest::TempDir dir;
  vd::Runtime rt(2);
  auto f = rt.files().open(dir.path(), vd::file_read);
  EXPECT_FALSE(f.ok());
}

TEST(MemIoTest, ContentsSharesBytesWithOpenFiles) {
  vd::Runtime rt(1);
  vd::MemIoProvider mem(rt.executor());
  auto bytes = mem.contents("x");
  EXPECT_TRUE(mem.exists("x"));
  auto f = mem.open("x", vd::file_read | vd::file_write);
  ASSERT_TRUE(f.ok());
  ASSERT_FALSE((*f)->write(IoKind::meta, 2, vdtest::pattern(4, 9)));
  ASSERT_EQ(bytes->size(), 6u);
  (*bytes)[0] = std::byte{0x42};
  std::byte b{};
  ASSERT_FALSE((*f)->read(IoKind::meta, 0, std::span(&b, 1)));
  EXPECT_EQ(b, std::byte{0x42});
}

TEST(MemIoTest, WriteAtAbsurdOffsetFailsWithoutAllocating) {
  vd::Runtime rt(1);
  vd::MemIoProvider mem(rt.executor());
  auto f = mem.open("x", vd::file_read | vd::file_write | vd::file_create);
  ASSERT_TRUE(f.ok());
  Error e = (*f)->write(IoKind::data, uint64_t{1} << 60, vdtest::pattern(4, 1));
  EXPECT_TRUE(e.is(Errc::no_space)) << e.message();
  EXPECT_TRUE((*f)->set_size(uint64_t{1} << 50).is(Errc::no_space));
}

}  // namespace

namespace {

class IoPostTest : public ::testing::Test {
 protected:
  vdtest::TempDir dir_;
  vd::Runtime rt_{2};
};

TEST_F(IoPostTest, ProviderPostRunsLaterOnTheExecutor) {
  vd::MemIoProvider mem(rt_.executor());
  for (vd::IoProvider* io : {&rt_.files(), static_cast<vd::IoProvider*>(&mem)}) {
    int ran = 0;
    vd::Error e = rt_.wait([&](vd::Completion done) {
      io->post([&ran, done] {
        ++ran;
        done({});
      });
      EXPECT_EQ(ran, 0);
    });
    EXPECT_FALSE(e) << e.message();
    EXPECT_EQ(ran, 1);
  }
}

}  // namespace
