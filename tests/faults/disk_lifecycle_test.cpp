// Closing a Disk with requests in flight (VM monitors close disks on hot-unplug while the guest
// still has I/O queued): every request completes exactly once, close either refuses (busy,
// nothing closed) or waits (async_close, drain), a destroyed Disk closes once its requests
// are done, and every call after close fails instead of touching freed state. Held
// completions keep the requests in flight; ASan sees any use after free.
#include <algorithm>

#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

constexpr const char* kImage =
    "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 8M && "
    "qemu-io -c 'write -P 0x11 0 64k' top.qcow2";

struct Pending {
  int done = 0;
  vd::Error error;
};

// Reads, allocating writes (one needs a new L2 table) and a flush, all in flight together.
struct Workload {
  Bytes model;
  std::vector<std::pair<uint64_t, Bytes>> writes;  // live until the writes complete
  std::vector<Bytes> reads;
  std::vector<Pending> pending;

  void start(Rig& rig) {
    model = rig.read_all();
    writes = {{100, pattern(3000, 1)}, {20000, pattern(9000, 2)}, {(5u << 20) + 7, pattern(5000, 3)}};
    for (const auto& [off, data] : writes) model = overlay(model, off, data);
    pending.assign(writes.size() + 3, {});
    reads.assign(2, Bytes(8192));
    rig.io.hold(true);
    size_t k = 0;
    for (const auto& [off, data] : writes) {
      rig.start([&rig, off = off, &data = data](vd::Completion c) { rig.disk().write(off, data, 0, std::move(c)); },
                [this, k](vd::Error e) { note(k, e); });
      ++k;
    }
    for (size_t r = 0; r < reads.size(); ++r, ++k)
      rig.start([&rig, this, r](vd::Completion c) { rig.disk().read(r * 40960, reads[r], std::move(c)); },
                [this, k](vd::Error e) { note(k, e); });
    rig.start([&rig](vd::Completion c) { rig.disk().flush(std::move(c)); }, [this, k](vd::Error e) { note(k, e); });
  }
  void note(size_t k, vd::Error e) {
    ++pending[k].done;
    pending[k].error = e;
  }
  bool all_done() const {
    return std::all_of(pending.begin(), pending.end(), [](const Pending& p) { return p.done > 0; });
  }
  void expect_each_once_without_error() const {
    for (size_t k = 0; k < pending.size(); ++k) {
      EXPECT_EQ(pending[k].done, 1) << "request " << k;
      EXPECT_FALSE(pending[k].error) << "request " << k << ": " << pending[k].error.message();
    }
  }
};

TEST(DiskLifecycle, CloseWithRequestsInFlightRefusesAndChangesNothing) {
  VD_REQUIRE_QEMU();
  Rig rig(make_files(kImage, {"top.qcow2"}));
  ASSERT_FALSE(rig.open());
  Workload w;
  w.start(rig);
  ASSERT_GT(rig.disk().in_flight(), 0u);
  vd::Error e = rig.disk().close();
  EXPECT_TRUE(e.is(vd::Errc::busy)) << e.message();
  EXPECT_FALSE(rig.disk().closed());
  ASSERT_TRUE(rig.drive([&] { return w.all_done(); }, 7)) << calls_text(rig.io);
  rig.io.hold(false);
  w.expect_each_once_without_error();
  EXPECT_EQ(rig.disk().in_flight(), 0u);
  EXPECT_TRUE(rig.read_all() == w.model);
}

TEST(DiskLifecycle, AsyncCloseWaitsForEveryRequestThenRefusesNewOnes) {
  VD_REQUIRE_QEMU();
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Rig rig(make_files(kImage, {"top.qcow2"}));
    ASSERT_FALSE(rig.open());
    Workload w;
    w.start(rig);
    Pending closing;
    rig.start([&](vd::Completion c) { rig.disk().async_close(std::move(c)); },
              [&](vd::Error e) {
                ++closing.done;
                closing.error = e;
                // Every request completed before the close did.
                EXPECT_TRUE(w.all_done());
              });
    // Started after the close began: refused, posted, once.
    Pending late;
    rig.start([&](vd::Completion c) { rig.disk().write(0, pattern(512, 9), 0, std::move(c)); },
              [&](vd::Error e) {
                ++late.done;
                late.error = e;
              });
    // Closing ends in the images' synchronous close (after an asynchronous flush did the
    // writing): the detector of synchronous calls cannot tell it from the requests.
    rig.io.allow_sync(true);
    ASSERT_TRUE(rig.drive([&] { return closing.done > 0 && late.done > 0; }, seed)) << calls_text(rig.io);
    rig.io.allow_sync(false);
    rig.io.hold(false);
    w.expect_each_once_without_error();
    EXPECT_EQ(closing.done, 1);
    EXPECT_FALSE(closing.error) << closing.error.message();
    EXPECT_EQ(late.done, 1);
    EXPECT_TRUE(late.error.is(vd::Errc::canceled)) << late.error.message();
    EXPECT_TRUE(rig.disk().closed());
    // After close: every call fails, none touches the closed images.
    Bytes buf(4096);
    vd::Error r = rig.run([&](vd::Completion c) { rig.disk().read(0, buf, std::move(c)); });
    EXPECT_TRUE(r.is(vd::Errc::canceled)) << r.message();
    r = rig.run([&](vd::Completion c) { rig.disk().flush(std::move(c)); });
    EXPECT_TRUE(r.is(vd::Errc::canceled)) << r.message();
    EXPECT_FALSE(rig.disk().close());  // closing again is fine
    expect_recovers(rig.snapshot(), {}, {&w.model, nullptr, 512, false});
  }
}

TEST(DiskLifecycle, DrainCompletesOnceNothingIsInFlight) {
  VD_REQUIRE_QEMU();
  Rig rig(make_files(kImage, {"top.qcow2"}));
  ASSERT_FALSE(rig.open());
  Workload w;
  w.start(rig);
  Pending drained;
  rig.start([&](vd::Completion c) { rig.disk().drain(std::move(c)); },
            [&](vd::Error e) {
              ++drained.done;
              drained.error = e;
              EXPECT_TRUE(w.all_done());
            });
  ASSERT_TRUE(rig.drive([&] { return drained.done > 0; }, 5)) << calls_text(rig.io);
  rig.io.hold(false);
  w.expect_each_once_without_error();
  EXPECT_EQ(drained.done, 1);
  EXPECT_FALSE(rig.disk().closed());  // drained, still open
  EXPECT_FALSE(rig.disk().close());
  expect_recovers(rig.snapshot(), {}, {&w.model, nullptr, 512, false});
}

TEST(DiskLifecycle, DestroyedDiskClosesAfterItsRequestsComplete) {
  VD_REQUIRE_QEMU();
  Rig rig(make_files(kImage, {"top.qcow2"}));
  ASSERT_FALSE(rig.open());
  Workload w;
  w.start(rig);
  rig.destroy_disk();  // a monitor dropping its handle mid-I/O
  rig.io.allow_sync(true);  // the last completion closes the images (synchronous close)
  ASSERT_TRUE(rig.drive([&] { return w.all_done(); }, 11)) << calls_text(rig.io);
  rig.io.hold(false);
  rig.ctx.restart();
  rig.ctx.run();
  w.expect_each_once_without_error();
  // The images were flushed and closed by the last completion: everything is on disk.
  expect_recovers(rig.snapshot(), {}, {&w.model, nullptr, 512, false});
}

}  // namespace
}  // namespace vdtest::faults
