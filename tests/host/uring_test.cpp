// The io_uring provider's own machinery (host/io_uring_ring.h): the registered file table,
// the fallback when the kernel refuses setup flags, the completion loop on the executor
// (with several threads, with none, asleep on the eventfd), recycled operation records.
// Files live under the build tree: O_DIRECT needs a real file system, not tmpfs.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "host/io_uring.h"
#include "support/support.h"
#include "vd/runtime.h"

namespace {

namespace asio = boost::asio;
using vd::Error;
using vd::IoKind;
using vd::detail::UringSetup;

// A 4 KiB-aligned buffer (O_DIRECT).
struct Aligned {
  std::byte* p;
  size_t n;
  explicit Aligned(size_t len) : p(static_cast<std::byte*>(std::aligned_alloc(4096, len))), n(len) {}
  ~Aligned() { std::free(p); }
  std::span<std::byte> span() { return {p, n}; }
};

class UringRingTest : public ::testing::Test {
 protected:
  std::unique_ptr<vd::IoProvider> make(const UringSetup& s = {}) {
    return vd::detail::make_uring_provider(ctx_.get_executor(), pool_, s);
  }
  static vd::detail::UringStats stats(vd::IoProvider& p) { return *vd::detail::uring_stats(p); }

  std::unique_ptr<vd::File> open(vd::IoProvider& p, const std::string& name, unsigned extra = 0) {
    auto f = p.open(dir_.file(name), vd::file_read | vd::file_write | vd::file_create | extra);
    EXPECT_TRUE(f.ok()) << f.error().message();
    return f.ok() ? std::move(*f) : nullptr;
  }

  // Starts one request and runs the context until its completion has run.
  Error wait(const std::function<void(vd::Completion)>& start) {
    std::optional<Error> got;
    start([&](Error e) { got = std::move(e); });
    ctx_.restart();
    while (!got) {
      if (ctx_.run_one() == 0) return Error(vd::Errc::internal, "the context ran out of work");
    }
    return *got;
  }
  Error write(vd::File& f, uint64_t off, std::span<const std::byte> b) {
    return wait([&](vd::Completion d) { f.async_write(IoKind::data, off, b, std::move(d)); });
  }
  Error read(vd::File& f, uint64_t off, std::span<std::byte> b) {
    return wait([&](vd::Completion d) { f.async_read(IoKind::data, off, b, std::move(d)); });
  }

  // Starts `n` 4 KiB reads of the first blocks of `f` into `buf`, each completion expecting
  // success and counting itself in `done`.
  static void start_reads(vd::File& f, Aligned& buf, int n, int& done) {
    for (int i = 0; i < n; ++i)
      f.async_read(IoKind::data, i * 4096, std::span(buf.p + i * 4096, 4096), [&done](Error e) {
        EXPECT_FALSE(e);
        ++done;
      });
  }

  asio::io_context ctx_;
  asio::thread_pool pool_{2};
  vdtest::TempDir dir_{std::filesystem::absolute(".").string()};
};

#define MAKE_OR_SKIP(p, setup)                                       \
  auto p = make(setup);                                              \
  if (!p) GTEST_SKIP() << "the kernel gives no io_uring";

TEST_F(UringRingTest, FixedSlotsAreFreedOnCloseAndReused) {
  UringSetup s;
  s.fixed_files = 2;
  MAKE_OR_SKIP(p, s);
  if (stats(*p).table_size == 0) GTEST_SKIP() << "the kernel gives no registered file table";
  EXPECT_EQ(stats(*p).table_size, 2u);
  for (int round = 0; round < 3; ++round) {
    auto a = open(*p, "a", vd::file_direct);
    auto b = open(*p, "b", vd::file_direct);
    EXPECT_EQ(stats(*p).slots_used, 2u);
    Aligned wa(4096), ra(4096);
    std::memset(wa.p, 'a' + round, 4096);
    const uint64_t before = vd::io_counters().uring_ops.load();
    ASSERT_FALSE(write(*a, 4096, wa.span()));
    ASSERT_FALSE(write(*b, 0, wa.span()));
    ASSERT_FALSE(read(*a, 4096, ra.span()));
    EXPECT_EQ(std::memcmp(wa.p, ra.p, 4096), 0);
    EXPECT_EQ(vd::io_counters().uring_ops.load() - before, 3u);  // all on the ring, by slot
    a.reset();
    EXPECT_EQ(stats(*p).slots_used, 1u);
    b.reset();
    EXPECT_EQ(stats(*p).slots_used, 0u);
  }
}

TEST_F(UringRingTest, FilesBeyondTheTableUseTheirDescriptors) {
  UringSetup s;
  s.fixed_files = 2;
  MAKE_OR_SKIP(p, s);
  std::vector<std::unique_ptr<vd::File>> files;
  for (int i = 0; i < 5; ++i) files.push_back(open(*p, "f" + std::to_string(i), vd::file_direct));
  EXPECT_EQ(stats(*p).slots_used, stats(*p).table_size);
  Aligned buf(4096);
  const uint64_t before = vd::io_counters().uring_ops.load();
  for (int i = 0; i < 5; ++i) {
    std::memset(buf.p, i + 1, 4096);
    ASSERT_FALSE(write(*files[i], 0, buf.span())) << i;
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_FALSE(read(*files[i], 0, buf.span())) << i;
    EXPECT_EQ(buf.p[0], std::byte(i + 1)) << i;
    EXPECT_EQ(buf.p[4095], std::byte(i + 1)) << i;
  }
  EXPECT_EQ(vd::io_counters().uring_ops.load() - before, 10u);
  files.clear();
  EXPECT_EQ(stats(*p).slots_used, 0u);
}

TEST_F(UringRingTest, SetupFlagsTheKernelRefusesFallBackToAPlainRing) {
  UringSetup s;
  s.flags = 1u << 31;  // no such flag: every kernel answers EINVAL
  MAKE_OR_SKIP(p, s);
  EXPECT_EQ(stats(*p).flags, 0u);
  auto f = open(*p, "a");
  auto data = vdtest::pattern(8192, 3);
  ASSERT_FALSE(write(*f, 0, data));
  std::vector<std::byte> got(8192);
  ASSERT_FALSE(read(*f, 0, got));
  EXPECT_EQ(got, data);
}

TEST_F(UringRingTest, ALockedImageGetsNoSlotAndLetsGoOfItsLocksAtOnce) {
  MAKE_OR_SKIP(p, UringSetup{});
  auto data = vdtest::pattern(4096, 4);
  for (int i = 0; i < 3; ++i) {
    // A second open of a locked image for writing is refused while the first holds it:
    // a reference the ring kept to the file would keep the locks.
    auto f = open(*p, "img", vd::file_lock);
    ASSERT_TRUE(f) << i;
    EXPECT_EQ(stats(*p).slots_used, 0u);
    ASSERT_FALSE(write(*f, 0, data));
    f.reset();
  }
}

TEST_F(UringRingTest, OperationRecordsAreReused) {
  MAKE_OR_SKIP(p, UringSetup{});
  auto f = open(*p, "a", vd::file_direct);
  Aligned buf(4 * 4096);
  std::memset(buf.p, 7, buf.n);
  ASSERT_FALSE(write(*f, 0, buf.span()));
  const uint64_t made = stats(*p).ops_made;
  // 400 reads, four at a time.
  int done = 0;
  for (int round = 0; round < 100; ++round) {
    start_reads(*f, buf, 4, done);
    ctx_.restart();
    while (done < 4 * (round + 1)) ASSERT_GT(ctx_.run_one(), 0u);
  }
  EXPECT_LE(stats(*p).ops_made - made, 4u);
}

TEST_F(UringRingTest, AnyThreadSubmitsAndCompletionsRunOnTheExecutorNeverInline) {
  MAKE_OR_SKIP(p, UringSetup{});
  auto f = open(*p, "a", vd::file_direct);
  constexpr int kThreads = 3, kEach = 200;
  Aligned data(kThreads * kEach * 4096);
  for (size_t i = 0; i < data.n; ++i) data.p[i] = std::byte(i / 4096);
  auto guard = asio::make_work_guard(ctx_);
  std::vector<std::thread> runners;
  std::atomic<std::thread::id> runner_ids[2];
  for (int i = 0; i < 2; ++i) runners.emplace_back([&, i] {
      runner_ids[i] = std::this_thread::get_id();
      ctx_.run();
    });
  static thread_local bool submitting = false;
  std::atomic<int> done{0}, inline_runs{0}, errors{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < kThreads; ++t) submitters.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const uint64_t off = uint64_t(t * kEach + i) * 4096;
        submitting = true;
        f->async_write(IoKind::data, off, std::span<const std::byte>(data.p + off, 4096), [&](Error e) {
          if (submitting) ++inline_runs;
          if (e) ++errors;
          ++done;
        });
        submitting = false;
      }
    });
  for (auto& t : submitters) t.join();
  while (done < kThreads * kEach) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  guard.reset();
  for (auto& t : runners) t.join();
  EXPECT_EQ(inline_runs.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  Aligned back(data.n);
  ASSERT_FALSE(read(*f, 0, back.span()));
  EXPECT_EQ(std::memcmp(back.p, data.p, data.n), 0);
}

TEST_F(UringRingTest, DestructorWaitsForRequestsWhenNobodyRunsTheExecutor) {
  MAKE_OR_SKIP(p, UringSetup{});
  auto f = open(*p, "a", vd::file_direct);
  Aligned out(16 * 4096), in(16 * 4096);
  for (size_t i = 0; i < out.n; ++i) out.p[i] = std::byte(i * 7);
  ASSERT_FALSE(write(*f, 0, out.span()));
  std::memset(in.p, 0, in.n);
  int done = 0;
  start_reads(*f, in, 16, done);
  f.reset();
  p.reset();  // every read has finished when this returns
  EXPECT_EQ(std::memcmp(in.p, out.p, in.n), 0);
  EXPECT_EQ(done, 0);
  ctx_.restart();
  ctx_.run();  // runs the completions, then returns: nothing of the ring is left waiting
  EXPECT_EQ(done, 16);
}

TEST_F(UringRingTest, TheLoopSleepsOnTheEventfdAndTheExecutorRunsOutOfWork) {
  for (int poll_us : {0, 50}) {
    SCOPED_TRACE(poll_us);
    UringSetup s;
    s.poll_us = poll_us;
    MAKE_OR_SKIP(p, s);
    auto f = open(*p, "a", vd::file_direct);
    Aligned buf(8 * 4096);
    std::memset(buf.p, 3, buf.n);
    ASSERT_FALSE(write(*f, 0, buf.span()));
    int done = 0;
    for (int round = 0; round < 20; ++round) {
      start_reads(*f, buf, 8, done);
      ctx_.restart();
      ctx_.run();  // returns only once the ring has nothing in flight and waits for nothing
      EXPECT_EQ(done, 8 * (round + 1));
    }
    if (poll_us == 0) {
      EXPECT_GT(stats(*p).sleeps, 0u);
    }
  }
}

}  // namespace

namespace {

TEST_F(UringRingTest, ACompletionMayDestroyTheProvider) {
  MAKE_OR_SKIP(p, UringSetup{});
  auto f = open(*p, "a", vd::file_direct);
  Aligned buf(8 * 4096);
  std::memset(buf.p, 9, buf.n);
  ASSERT_FALSE(write(*f, 0, buf.span()));
  int done = 0;
  for (int i = 0; i < 8; ++i)
    f->async_read(IoKind::data, i * 4096, std::span(buf.p + i * 4096, 4096), [&](Error e) {
      EXPECT_FALSE(e);
      ++done;
      f.reset();
      p.reset();  // waits for the reads still on the ring, then posts their completions
    });
  ctx_.restart();
  ctx_.run();
  EXPECT_EQ(done, 8);
  EXPECT_FALSE(p);
}

}  // namespace
