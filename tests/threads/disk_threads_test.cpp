// Many threads issue requests against one Disk at once (vd/disk.h, "Threads": any thread may
// start a request; the Disk dispatches it onto its executor). CI runs this binary under
// ThreadSanitizer too (scripts/test.sh): it must find nothing.
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/use_future.hpp>
#include <future>
#include <thread>
#include <vector>

#include "vd/registry.h"
#include "support/support.h"
#include "vd/disk.h"
#include "vd/runtime.h"

namespace {

namespace asio = boost::asio;

const vd::Registry& registry() {
  static const vd::Registry r = vd::Registry::builtin();
  return r;
}

TEST(DiskThreads, ManyThreadsWriteReadAndFlushOneDisk) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  const std::string base = dir.file("base.qcow2"), top = dir.file("top.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 -o cluster_size=4k " + base + " 8M && qemu-io -c 'write -P 0x5a 0 8M' " +
             base + " >/dev/null && qemu-img create -q -f qcow2 -o cluster_size=4k -b " + base + " -F qcow2 " + top);
  vd::Runtime rt(2);
  asio::executor_work_guard<asio::io_context::executor_type> work{rt.context().get_executor()};
  std::thread runner([&] { rt.context().run(); });
  auto opened = vd::Disk::open(top, {}, registry(), rt.files());
  ASSERT_TRUE(opened) << opened.error().message();
  vd::Disk& disk = **opened;

  constexpr int kThreads = 8, kRounds = 40;
  constexpr uint64_t kSlice = (8u << 20) / kThreads;  // each thread its own part of the disk
  std::vector<std::thread> threads;
  std::vector<int> mismatches(kThreads, 0), errors(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        // Partial clusters over the backing file: allocation with copy-on-write each time.
        const uint64_t off = t * kSlice + (i * 7919u) % (kSlice - 6000);
        const auto data = vdtest::pattern(5000, t * 1000 + i);
        std::vector<std::byte> back(data.size());
        try {
          disk.async_write(off, data, asio::use_future).get();
          if (i % 8 == 0) disk.async_flush(asio::use_future).get();
          disk.async_read(off, back, asio::use_future).get();
          (void)disk.async_block_status(off, 4096, asio::use_future).get();
        } catch (const std::exception&) {
          ++errors[t];
        }
        if (back != data) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], 0) << "thread " << t;
    EXPECT_EQ(mismatches[t], 0) << "thread " << t;
  }
  disk.async_close(asio::use_future).get();
  opened->reset();
  work.reset();
  runner.join();
  EXPECT_EQ(vdtest::run({"qemu-img", "check", top}).exit_code, 0);
}

}  // namespace
