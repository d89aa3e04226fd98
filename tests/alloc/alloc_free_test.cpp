// The proof of issue 13's "no heap allocation per request": after a warm-up, N requests go
// through a vd::Disk while every operator new in the process is counted (this executable
// replaces the global operator new/delete, so it is a test binary of its own: tests/alloc),
// and the count per request must be 0.
//
// Cases: a fully allocated QCOW2, a 2-deep chain whose top holds nothing (every read goes on
// to the backing file), and a raw file; 4 KiB reads buffered (the inline RWF_NOWAIT path;
// ctest runs the buffered reads once more with VD_NOWAIT=0, the pool path), 4 KiB reads with
// cache=none (O_DIRECT, in the build tree: $TMPDIR may be tmpfs), and 4 KiB writes in place
// (clusters already allocated). Each on the thread pool and on io_uring.
//
// The counter forwards to malloc/free, which AddressSanitizer intercepts: the CI build
// (ASan + UBSan) counts the same way.
#include <execinfo.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <string>
#include <string_view>
#include <tuple>

#include "support/support.h"
#include "vd/cache.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

// ---- Counting allocator -------------------------------------------------------------------

namespace {
std::atomic<bool> g_counting{false};
std::atomic<uint64_t> g_allocs{0};
// VD_ALLOC_TRACE=n prints the stacks of the first n counted allocations (to find them).
const long g_trace = [] {
  const char* v = std::getenv("VD_ALLOC_TRACE");
  return v ? std::atol(v) : 0L;
}();
thread_local bool t_tracing = false;

void trace(uint64_t nth) {
  if (static_cast<long>(nth) >= g_trace || t_tracing) return;
  t_tracing = true;
  void* frames[64];
  int n = backtrace(frames, 64);
  (void)!write(2, "---- counted allocation\n", 24);
  backtrace_symbols_fd(frames, n, 2);
  t_tracing = false;
}

void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) trace(g_allocs.fetch_add(1, std::memory_order_relaxed));
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n);
  } else if (posix_memalign(&p, align, n) != 0) {
    p = nullptr;
  }
  return p;
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = counted_alloc(n, 0)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_alloc(n, 0)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = counted_alloc(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = counted_alloc(n, static_cast<std::size_t>(a))) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_alloc(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

constexpr uint64_t kImageBytes = 4ull << 20;
constexpr size_t kBlock = 4096;
constexpr size_t kDepth = 8;
constexpr uint64_t kWarmup = 300;
constexpr uint64_t kMeasured = 1000;

enum class Image { qcow2, chain, raw };
enum class Op { read, write };

struct Case {
  const char* name;
  Image image;
  vd::CacheMode cache;
  Op op;
};

const Case kCases[] = {
    {"Qcow2BufferedRead", Image::qcow2, vd::CacheMode::writeback, Op::read},
    {"ChainBufferedRead", Image::chain, vd::CacheMode::writeback, Op::read},
    {"RawBufferedRead", Image::raw, vd::CacheMode::writeback, Op::read},
    {"Qcow2DirectRead", Image::qcow2, vd::CacheMode::none, Op::read},
    {"ChainDirectRead", Image::chain, vd::CacheMode::none, Op::read},
    {"RawDirectRead", Image::raw, vd::CacheMode::none, Op::read},
    {"Qcow2BufferedWriteInPlace", Image::qcow2, vd::CacheMode::writeback, Op::write},
    {"RawBufferedWrite", Image::raw, vd::CacheMode::writeback, Op::write},
    {"Qcow2DirectWriteInPlace", Image::qcow2, vd::CacheMode::none, Op::write},
};

// Keeps kDepth requests in flight on the disk's executor until kWarmup + kMeasured have
// completed, counting allocations while the last kMeasured complete. Handlers capture `this`
// and a slot number: small enough for std::function's inline buffer, so the driver itself
// allocates nothing.
struct Driver {
  vd::Disk* disk = nullptr;
  Op op = Op::read;
  std::byte* bufs = nullptr;  // kDepth blocks, 4 KiB aligned
  uint64_t issued = 0, done = 0, in_flight = 0;
  uint64_t allocs_before = 0, allocs = 0;
  uint64_t bad_data = 0;
  vd::Error first_error;
  vd::Completion finished;

  void issue(size_t slot) {
    const uint64_t blocks = kImageBytes / kBlock;
    const uint64_t off = (issued++ * 7919 % blocks) * kBlock;
    std::span<std::byte> buf(bufs + slot * kBlock, kBlock);
    ++in_flight;
    if (op == Op::read) {
      disk->read(off, buf, [this, slot](vd::Error e) { complete(slot, std::move(e)); });
    } else {
      disk->write(off, buf, 0, [this, slot](vd::Error e) { complete(slot, std::move(e)); });
    }
  }

  void complete(size_t slot, vd::Error e) {
    --in_flight;
    if (e && !first_error) first_error = std::move(e);
    const std::byte* b = bufs + slot * kBlock;
    if (op == Op::read && (b[0] != std::byte{0x5a} || b[kBlock - 1] != std::byte{0x5a})) ++bad_data;
    ++done;
    if (done == kWarmup) {
      allocs_before = g_allocs.load();
      g_counting = true;
    } else if (done == kWarmup + kMeasured) {
      g_counting = false;
      allocs = g_allocs.load() - allocs_before;
    }
    if (issued < kWarmup + kMeasured + kDepth && !first_error) return issue(slot);
    if (in_flight == 0) finished({});
  }
};

std::string aio_name(vd::Aio a) { return a == vd::Aio::io_uring ? "Uring" : "Threads"; }

class AllocFree : public ::testing::TestWithParam<std::tuple<vd::Aio, Case>> {
 protected:
  vd::Aio aio() const { return std::get<0>(GetParam()); }
  const Case& c() const { return std::get<1>(GetParam()); }
};

// The dir for the case's images: O_DIRECT wants a real file system (the build tree).
std::string dir_base(const Case& c) {
  if (c.cache == vd::CacheMode::none) return ".";
  const char* t = std::getenv("TMPDIR");
  return t && *t ? t : "/tmp";
}

TEST_P(AllocFree, NoHeapAllocationPerRequest) {
  VD_REQUIRE_QCOW2();
  const Case& cs = c();
  const bool pool_only = [] {
    const char* v = std::getenv("VD_NOWAIT");
    return v && std::string_view(v) == "0";
  }();
  vdtest::TempDir dir(dir_base(cs));
  const std::string base = dir.file("base.img"), top = dir.file("top.qcow2");
  std::string path = base;
  if (cs.image == Image::raw) {
    vdtest::sh("qemu-img create -q -f raw " + base + " 4M && qemu-io -f raw -c 'write -P 0x5a 0 4M' " + base +
               " >/dev/null");
  } else {
    vdtest::sh("qemu-img create -q -f qcow2 " + base + " 4M && qemu-io -f qcow2 -c 'write -P 0x5a 0 4M' " + base +
               " >/dev/null");
  }
  if (cs.image == Image::chain) {
    vdtest::sh("qemu-img create -q -f qcow2 -b base.img -F qcow2 " + top + " 4M");
    path = top;
  }

  vd::Runtime rt(4, aio());
  if (aio() == vd::Aio::io_uring && rt.aio() != vd::Aio::io_uring) GTEST_SKIP() << "no io_uring here";
  vd::DiskOpenOptions opts;
  opts.format = cs.image == Image::raw ? "raw" : "qcow2";
  opts.cache = cs.cache;
  auto disk = vd::Disk::open(path, opts, vd::Registry::builtin(), rt.files());
  if (!disk && cs.cache == vd::CacheMode::none && disk.error().system_errno() == EINVAL)
    GTEST_SKIP() << "no O_DIRECT on " << dir.path();
  ASSERT_TRUE(disk) << disk.error().message();

  auto* bufs = static_cast<std::byte*>(std::aligned_alloc(kBlock, kDepth * kBlock));
  ASSERT_NE(bufs, nullptr);
  std::memset(bufs, 0x5a, kDepth * kBlock);
  Driver d;
  d.disk = disk->get();
  d.op = cs.op;
  d.bufs = bufs;
  const uint64_t nowait_before = vd::io_counters().nowait_reads.load();
  vd::Error e = rt.wait([&](vd::Completion done) {
    d.finished = std::move(done);
    for (size_t s = 0; s < kDepth; ++s) d.issue(s);
  });
  g_counting = false;
  const uint64_t nowait = vd::io_counters().nowait_reads.load() - nowait_before;
  std::free(bufs);
  ASSERT_FALSE(e) << e.message();
  ASSERT_FALSE(d.first_error) << d.first_error.message();
  EXPECT_EQ(d.bad_data, 0u);
  EXPECT_EQ(d.done, kWarmup + kMeasured + kDepth);
  ASSERT_FALSE((*disk)->close());

  // Which read path ran: buffered reads on the pool provider go inline unless VD_NOWAIT=0.
  if (aio() == vd::Aio::threads && cs.op == Op::read) {
    if (cs.cache == vd::CacheMode::none || pool_only) {
      EXPECT_EQ(nowait, 0u);
    } else {
      EXPECT_GE(nowait, kMeasured);
    }
  }
  const std::string what = std::to_string(d.allocs) + " heap allocations in " + std::to_string(kMeasured) +
                           " requests (" + std::to_string(static_cast<double>(d.allocs) / kMeasured) + " per request)";
  RecordProperty("allocations", std::to_string(d.allocs));
  if (rt.aio() == vd::Aio::io_uring) {
    // The io_uring provider recycles its operations; what is left is Asio's: the ring's
    // poll turn is posted through the type-erased any_io_executor, whose function objects
    // come from a two-slot per-thread cache, so when the turn restarts while other
    // handlers hold both slots it allocates (0 to 0.25 per request measured, the chain the
    // most). The bound is four times that.
    constexpr uint64_t kUringPerRequest = 1;
    EXPECT_LE(d.allocs, kUringPerRequest * kMeasured) << what;
    std::cout << "io_uring: " << what << "\n";
  } else {
    EXPECT_EQ(d.allocs, 0u) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(, AllocFree,
                         ::testing::Combine(::testing::Values(vd::Aio::threads, vd::Aio::io_uring),
                                            ::testing::ValuesIn(kCases)),
                         [](const auto& info) {
                           return std::string(std::get<1>(info.param).name) + aio_name(std::get<0>(info.param));
                         });

}  // namespace
