// The Asio-native forms of Disk (vd/disk.h): completion tokens (callbacks, use_future,
// use_awaitable coroutines, redirect_error), move-only handlers and the handler's associated
// executor, on a real Runtime whose io_context runs on its own thread.
#include <gtest/gtest.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/system/system_error.hpp>
#include <future>
#include <thread>

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
using vdtest::pattern;

// A Runtime whose io_context runs on a thread of its own for the test's lifetime.
struct Running {
  vd::Runtime rt{2};
  asio::executor_work_guard<asio::io_context::executor_type> work{rt.context().get_executor()};
  std::thread runner{[this] { rt.context().run(); }};
  ~Running() {
    work.reset();
    runner.join();
  }
};

std::unique_ptr<vd::Disk> open_disk(vd::Runtime& rt, const std::string& path) {
  auto d = vd::Disk::open(path, {}, registry(), rt.files());
  EXPECT_TRUE(d) << d.error().message();
  return d ? std::move(*d) : nullptr;
}

class DiskAsio : public ::testing::Test {
 protected:
  void SetUp() override {
    VD_REQUIRE_QEMU();
    path_ = dir_.file("a.qcow2");
    vdtest::sh("qemu-img create -q -f qcow2 " + path_ + " 16M");
  }
  // Closes on the executor (it owns the images), then the runner stops.
  void close(Running& r, std::unique_ptr<vd::Disk>& d) {
    EXPECT_NO_THROW(d->async_close(asio::use_future).get());
    d.reset();
    (void)r;
  }
  vdtest::TempDir dir_;
  std::string path_;
};

TEST_F(DiskAsio, FuturesFromAnotherThread) {
  Running r;
  auto d = open_disk(r.rt, path_);
  ASSERT_TRUE(d);
  EXPECT_TRUE(d->get_executor());
  const auto data = pattern(65536 + 300, 1);
  d->async_write(4096 + 7, data, asio::use_future).get();
  d->async_flush(asio::use_future).get();
  std::vector<std::byte> back(data.size());
  d->async_read(4096 + 7, back, asio::use_future).get();
  EXPECT_EQ(back, data);
  const vd::DiskExtent x = d->async_block_status(8u << 20, 4096, asio::use_future).get();
  EXPECT_EQ(x.extent.kind, vd::Extent::Kind::unallocated);
  close(r, d);
}

TEST_F(DiskAsio, AwaitableThrowsOnErrorAndRedirectErrorStoresIt) {
  Running r;
  auto d = open_disk(r.rt, path_);
  ASSERT_TRUE(d);
  auto body = [&]() -> asio::awaitable<void> {
    const auto data = pattern(5000, 2);
    co_await d->async_write(123, data, asio::use_awaitable);
    std::vector<std::byte> back(data.size());
    co_await d->async_read(123, back, asio::use_awaitable);
    EXPECT_EQ(back, data);
    bool threw = false;
    try {
      co_await d->async_read(16u << 20, back, asio::use_awaitable);  // past the end
    } catch (const boost::system::system_error& e) {
      threw = true;
      EXPECT_EQ(e.code().category(), vd::asio_category());
      EXPECT_EQ(e.code().value(), static_cast<int>(vd::Errc::out_of_range));
    }
    EXPECT_TRUE(threw);
    boost::system::error_code ec;
    co_await d->async_discard(16u << 20, 4096, asio::redirect_error(asio::use_awaitable, ec));
    EXPECT_EQ(ec.value(), static_cast<int>(vd::Errc::out_of_range));
  };
  asio::co_spawn(r.rt.context(), body(), asio::use_future).get();
  close(r, d);
}

TEST_F(DiskAsio, MoveOnlyHandlerRunsOnItsAssociatedExecutor) {
  Running r;
  auto d = open_disk(r.rt, path_);
  ASSERT_TRUE(d);
  auto strand = asio::make_strand(r.rt.context());
  std::promise<bool> in_strand;
  auto token = std::make_unique<int>(42);  // makes the handler move-only
  d->async_write_zeroes(0, 65536,
                        asio::bind_executor(strand, [&, token = std::move(token)](boost::system::error_code ec) {
                          EXPECT_FALSE(ec) << ec.message();
                          EXPECT_EQ(*token, 42);
                          in_strand.set_value(strand.running_in_this_thread());
                        }));
  EXPECT_TRUE(in_strand.get_future().get());
  close(r, d);
}

TEST_F(DiskAsio, RequestsAfterCloseFailWithCanceled) {
  Running r;
  auto d = open_disk(r.rt, path_);
  ASSERT_TRUE(d);
  d->async_close(asio::use_future).get();
  std::vector<std::byte> buf(512);
  try {
    d->async_read(0, buf, asio::use_future).get();
    ADD_FAILURE() << "a read after close succeeded";
  } catch (const boost::system::system_error& e) {
    EXPECT_EQ(e.code().value(), static_cast<int>(vd::Errc::canceled));
  }
  d.reset();
}

}  // namespace
