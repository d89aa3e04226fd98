// Cache modes (vd/cache.h): what each one asks of the kernel, seen from outside (the open
// file's flags in /proc/self/fdinfo, the process-wide I/O counters), and O_DIRECT images
// written by vd that qemu reads back. Files live under the build tree: $TMPDIR may be tmpfs.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/support.h"
#include "vd/cache.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

namespace fs = std::filesystem;
using vd::Error;
using vd::IoKind;

// The flags (O_*) of every descriptor this process has open on `path`.
std::vector<int> open_flags_of(const std::string& path) {
  std::vector<int> out;
  const fs::path want = fs::canonical(path);
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    fs::path target = fs::read_symlink(entry.path(), ec);
    if (ec || target != want) continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    std::string key;
    while (info >> key) {
      if (key == "flags:") {
        std::string octal;
        info >> octal;
        out.push_back(static_cast<int>(std::stoul(octal, nullptr, 8)));
        break;
      }
    }
  }
  return out;
}

class CacheTest : public ::testing::Test {
 protected:
  vdtest::TempDir dir_{fs::absolute(".").string()};
  vd::Runtime rt_{4, vd::Aio::threads};
  vd::Registry registry_ = vd::Registry::builtin();

  std::unique_ptr<vd::File> open(const std::string& name, unsigned extra) {
    auto f = rt_.files().open(dir_.file(name), vd::file_read | vd::file_write | vd::file_create | extra);
    EXPECT_TRUE(f.ok()) << f.error().message();
    return f.ok() ? std::move(*f) : nullptr;
  }
  void TearDown() override { EXPECT_EQ(vd::io_counters().unaligned_direct.load(), 0u); }
};

TEST(CacheModeTest, NamesAndBitsAreQemus) {
  EXPECT_EQ(*vd::parse_cache_mode("none"), vd::CacheMode::none);
  EXPECT_EQ(*vd::parse_cache_mode("off"), vd::CacheMode::none);
  EXPECT_EQ(vd::cache_file_mode(vd::CacheMode::writeback), 0u);
  EXPECT_EQ(vd::cache_file_mode(vd::CacheMode::none), unsigned(vd::file_direct));
  EXPECT_EQ(vd::cache_file_mode(vd::CacheMode::writethrough), unsigned(vd::file_write_through));
  EXPECT_EQ(vd::cache_file_mode(vd::CacheMode::directsync), unsigned(vd::file_direct | vd::file_write_through));
  EXPECT_EQ(vd::cache_file_mode(vd::CacheMode::unsafe), unsigned(vd::file_no_flush));
  auto bad = vd::parse_cache_mode("fast");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message(), "Invalid cache option: fast");
}

TEST_F(CacheTest, DirectOpensWithODirectAndWriteThroughWithODsync) {
  auto d = open("direct", vd::file_direct);
  auto w = open("wt", vd::file_write_through);
  auto ds = open("ds", vd::file_direct | vd::file_write_through);
  auto b = open("buffered", 0);
  auto flags = [&](const char* n) {
    auto all = open_flags_of(dir_.file(n));
    EXPECT_EQ(all.size(), 1u) << n;
    return all.empty() ? 0 : all[0];
  };
  EXPECT_TRUE(flags("direct") & O_DIRECT);
  EXPECT_FALSE(flags("direct") & O_DSYNC);
  EXPECT_TRUE(flags("wt") & O_DSYNC);
  EXPECT_FALSE(flags("wt") & O_DIRECT);
  EXPECT_TRUE(flags("ds") & O_DIRECT);
  EXPECT_TRUE(flags("ds") & O_DSYNC);
  EXPECT_FALSE(flags("buffered") & (O_DIRECT | O_DSYNC));
}

TEST_F(CacheTest, UnsafeIgnoresFlushesWritebackDoesNot) {
  auto unsafe = open("u", vd::file_no_flush);
  auto wb = open("w", 0);
  auto& n = vd::io_counters().flushes;
  uint64_t before = n.load();
  ASSERT_FALSE(unsafe->write(IoKind::data, 0, vdtest::pattern(4096, 1)));
  ASSERT_FALSE(unsafe->flush());
  ASSERT_FALSE(rt_.wait([&](vd::Completion done) { unsafe->async_flush(std::move(done)); }));
  EXPECT_EQ(n.load(), before);
  ASSERT_FALSE(wb->flush());
  ASSERT_FALSE(rt_.wait([&](vd::Completion done) { wb->async_flush(std::move(done)); }));
  EXPECT_EQ(n.load(), before + 2);
}

// Many small writes into the same few blocks at once: each is a read-modify-write of a
// whole block, and none may write back bytes another one changed meanwhile.
TEST_F(CacheTest, ConcurrentUnalignedDirectWritesToOneBlockAllLand) {
  auto f = open("rmw", vd::file_direct);
  ASSERT_FALSE(f->set_size(16384));
  const uint64_t rmw_before = vd::io_counters().rmw.load();
  std::vector<std::byte> want(16384);
  std::vector<std::vector<std::byte>> bufs;
  for (int i = 0; i < 128; ++i) {
    bufs.push_back(vdtest::pattern(24, static_cast<uint8_t>(i + 1)));
    std::copy(bufs.back().begin(), bufs.back().end(), want.begin() + 8000 + i * 24);
  }
  Error e = rt_.wait([&](vd::Completion all) {
    auto left = std::make_shared<int>(128);
    for (int i = 0; i < 128; ++i) {
      f->async_write(IoKind::meta, 8000 + i * 24, bufs[i], [left, all](Error err) {
        EXPECT_FALSE(err) << err.message();
        if (--*left == 0) all({});
      });
    }
  });
  ASSERT_FALSE(e) << e.message();
  EXPECT_GE(vd::io_counters().rmw.load(), rmw_before + 128);
  std::vector<std::byte> got(16384);
  ASSERT_FALSE(f->read(IoKind::data, 0, got));
  EXPECT_EQ(got, want);
  EXPECT_EQ(*f->size(), 16384u);
}

TEST_F(CacheTest, UnalignedDirectWritePastEndKeepsExactLength) {
  auto f = open("len", vd::file_direct);
  ASSERT_FALSE(f->write(IoKind::meta, 0, vdtest::pattern(104, 3)));
  EXPECT_EQ(*f->size(), 104u);
  ASSERT_FALSE(f->write(IoKind::meta, 5000, vdtest::pattern(10, 4)));
  EXPECT_EQ(*f->size(), 5010u);
  std::vector<std::byte> got(10);
  ASSERT_FALSE(f->read(IoKind::meta, 5000, got));
  EXPECT_EQ(got, vdtest::pattern(10, 4));
}

// A QCOW2 chain opened with cache=none: every file of it (top and backing) has O_DIRECT;
// vd's allocating writes (L2, refcount and header updates of a few bytes) are all aligned,
// and qemu reads the result back intact.
TEST_F(CacheTest, QcowChainWithCacheNoneIsDirectThroughoutAndQemuReadsIt) {
 for (vd::Aio aio : {vd::Aio::threads, vd::Aio::io_uring}) {
  SCOPED_TRACE(aio == vd::Aio::threads ? "threads" : "io_uring");
  vd::Runtime rt(4, aio);
  const std::string sub = aio == vd::Aio::threads ? "t-" : "u-";
  const std::string base = dir_.file(sub + "base.qcow2"), top = dir_.file(sub + "top.qcow2");
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", base, "4M"}).exit_code, 0);
  ASSERT_EQ(vdtest::run({"qemu-io", "-c", "write -P 0x11 0 1M", base}).exit_code, 0);
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top}).exit_code, 0);
  vd::DiskOpenOptions o;
  o.cache = vd::CacheMode::none;
  auto d = vd::Disk::open(top, o, registry_, rt.files());
  ASSERT_TRUE(d) << d.error().message();
  for (const auto& p : {base, top}) {
    auto fl = open_flags_of(p);
    ASSERT_FALSE(fl.empty()) << p;
    for (int x : fl) EXPECT_TRUE(x & O_DIRECT) << p;
  }
  // Partial clusters over the backing data (copy-on-write) and sector-sized pieces.
  auto data = vdtest::pattern(3 * 512, 0x22);
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*d)->write(512, data, 0, std::move(done)); }));
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*d)->write(2 << 20, data, 0, std::move(done)); }));
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*d)->flush(std::move(done)); }));
  ASSERT_FALSE((*d)->close());
  d->reset();
  auto check = vdtest::run({"qemu-img", "check", top});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  auto io = vdtest::run({"qemu-io", "-c", "read -P 0x11 0 512", "-c", "read -P 0x11 2048 1046528", top});
  EXPECT_EQ(io.exit_code, 0) << io.out << io.err;
  EXPECT_EQ(io.out.find("Pattern verification failed"), std::string::npos) << io.out;
 }
}

TEST(UringTest, RuntimeUsesTheRingWhenAskedAndTheKernelHasIt) {
  vd::Runtime rt(2, vd::Aio::io_uring);
  if (rt.aio() != vd::Aio::io_uring) GTEST_SKIP() << "the kernel gives no io_uring";
  vdtest::TempDir dir;
  auto f = rt.files().open(dir.file("a"), vd::file_read | vd::file_write | vd::file_create);
  ASSERT_TRUE(f.ok());
  const uint64_t before = vd::io_counters().uring_ops.load();
  auto data = vdtest::pattern(8192, 5);
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*f)->async_write(IoKind::data, 0, data, std::move(done)); }));
  std::vector<std::byte> got(8192);
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*f)->async_read(IoKind::data, 0, got, std::move(done)); }));
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*f)->async_flush(std::move(done)); }));
  ASSERT_FALSE(rt.wait([&](vd::Completion done) { (*f)->async_allocate(8192, 65536, std::move(done)); }));
  EXPECT_EQ(got, data);
  EXPECT_EQ(*(*f)->size(), 8192u + 65536u);
  // The write, flush and allocate go through the ring; the read may be served inline (a
  // buffered read that cannot block: RWF_NOWAIT, or tmpfs) and never reach it.
  const uint64_t ops = vd::io_counters().uring_ops.load() - before;
  EXPECT_TRUE(ops == 3 || ops == 4) << ops;
}

TEST(UringTest, AioNamesAreQemus) {
  EXPECT_EQ(*vd::parse_aio("threads"), vd::Aio::threads);
  EXPECT_EQ(*vd::parse_aio("io_uring"), vd::Aio::io_uring);
  EXPECT_EQ(vd::parse_aio("foo").error().message(), "Invalid aio option: foo");
  EXPECT_TRUE(vd::parse_aio("native").error().is(vd::Errc::not_supported));
}

}  // namespace
