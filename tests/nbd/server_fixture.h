// A Server over a real two-image QCOW2 chain (made by qemu-img), run on its own io thread,
// with clients connected through socketpairs (vd::nbd::serve_fd).
#pragma once

#include <sys/socket.h>

#include <future>
#include <memory>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "nbd/nbd_client.h"
#include "support/support.h"
#include "vd/disk.h"
#include "vd/nbd.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace nbdtest {

// The chain: base holds 0x01 at [0, 1M); top holds 0x02 at [512k, 576k) and a zero cluster at
// [2M, 2M+64k); the rest of the 4 MiB is unallocated everywhere.
class NbdServerTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kSize = 4u << 20;

  void SetUp() override {
    if (!vdtest::have_qemu()) GTEST_SKIP() << "qemu-img not installed";
    base_ = dir_.file("base.qcow2");
    top_ = dir_.file("top.qcow2");
    vdtest::sh("qemu-img create -q -f qcow2 " + base_ + " 4M && qemu-io -c 'write -P 1 0 1M' " + base_ +
               " >/dev/null && qemu-img create -q -f qcow2 -b " + base_ + " -F qcow2 " + top_ +
               " && qemu-io -c 'write -P 2 512k 64k' -c 'write -z 2M 64k' " + top_ + " >/dev/null");
  }
  void TearDown() override { shutdown(); }

  // Opens the chain and starts the server with `opts` and one export tuned by `tune`.
  void serve(vd::nbd::ServerOptions opts = {}, std::function<void(vd::nbd::Export&)> tune = {},
             bool read_only = false) {
    vd::DiskOpenOptions o;
    o.flags = read_only ? vd::open_read_only : 0u;
    auto d = vd::Disk::open(top_, o, registry_, rt_.files());
    ASSERT_TRUE(d) << d.error().message();
    disk_ = std::shared_ptr<vd::Disk>(std::move(*d));
    server_ = std::make_unique<vd::nbd::Server>(rt_.executor(), opts);
    vd::nbd::Export x;
    x.name = "top";
    x.description = "the top of a chain";
    x.disk = disk_;
    x.read_only = read_only;
    x.allocation_depth = true;
    if (tune) tune(x);
    ASSERT_FALSE(server_->add_export(std::move(x)));
    ASSERT_FALSE(server_->start());
    io_ = std::thread([this] { rt_.context().run(); });
  }

  template <class F>
  auto on_io(F f) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto fut = task.get_future();
    boost::asio::post(rt_.context(), [&task] { task(); });
    return fut.get();
  }

  std::unique_ptr<Client> connect() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    vd::Error e = on_io([&] { return vd::nbd::serve_fd(*server_, sv[0]); });
    EXPECT_FALSE(e) << e.message();
    return std::make_unique<Client>(sv[1]);
  }

  // Graceful stop; returns the stop's error. Idempotent.
  vd::Error stop() {
    if (!server_ || stopped_) return {};
    stopped_ = true;
    std::promise<vd::Error> done;
    boost::asio::post(rt_.context(), [&] { server_->stop([&](vd::Error e) { done.set_value(e); }); });
    return done.get_future().get();
  }

  void shutdown() {
    if (!io_.joinable()) return;
    stop();
    on_io([&] {
      server_.reset();
      return 0;
    });
    std::promise<vd::Error> closed;
    boost::asio::post(rt_.context(), [&] { disk_->async_close(vd::Completion([&](vd::Error e) { closed.set_value(e); })); });
    EXPECT_FALSE(closed.get_future().get());
    work_.reset();
    io_.join();
  }

  vdtest::TempDir dir_;
  std::string base_, top_;
  vd::Runtime rt_{2};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{rt_.context().get_executor()};
  vd::Registry registry_ = vd::Registry::builtin();
  std::shared_ptr<vd::Disk> disk_;
  std::unique_ptr<vd::nbd::Server> server_;
  std::thread io_;
  bool stopped_ = false;
};

inline std::string fill(size_t n, char c) { return std::string(n, c); }

}  // namespace nbdtest
