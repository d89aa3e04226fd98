// Persistent bitmaps under faults and power loss. The contract (QEMU's): a bitmap that a
// reader finds consistent (not in use) marks every granule whose content changed since it
// was last cleared; one a writer was keeping when it stopped is found in use, and is
// reported inconsistent, never trusted. Here:
//   - every I/O of a write + flush + write + flush sequence (store, then marking in use
//     again) fails in turn: the image recovers (qemu-img check clean or leaks) and a
//     consistent bitmap covers every changed sector;
//   - random workloads lose power at a random point (crash_io.h): the same checks on what
//     survives, and a clean close afterwards leaves the bitmap consistent and complete;
//   - the data path's flush and marking never block (MockIoProvider fails sync calls).
#include <random>

#include "faults/crash_io.h"
#include "faults/fault_fixture.h"
#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

constexpr uint64_t kDisk = 1u << 20;

Files bitmap_fixture(const char* options) {
  return make_files(std::string("qemu-img create -q -f qcow2 -o ") + options + " top.qcow2 1M && "
                        "qemu-io -c 'write -P 0x11 0 64k' top.qcow2 && "
                        "qemu-img bitmap --add -g 4k top.qcow2 b0 && "
                        "qemu-img convert -O raw top.qcow2 initial",
                    {"top.qcow2", "initial"});
}

// Opens `files` and checks the bitmap against the content: consistent ones cover every
// changed sector. After a crash the bitmap may also be gone: a crash inside the in-place
// directory update leaves the autoclear bit clear, and readers drop the bitmaps (QEMU's
// contract: lost, never wrong). Returns whether the bitmap is there and consistent.
bool expect_bitmap_covers_changes(const Files& files, const Bytes& initial, bool may_be_lost = false) {
  Rig rig(files);
  OpenSpec spec;
  vd::Error e = rig.open(spec);
  EXPECT_FALSE(e) << e.message();
  if (e) return false;
  vd::DirtyBitmaps* b = rig.top().bitmaps();
  EXPECT_NE(b, nullptr);
  if (!b) return false;
  auto list = b->list();
  if (may_be_lost && list.empty()) return false;
  EXPECT_EQ(list.size(), 1u);
  if (list.size() != 1 || list[0].inconsistent) return false;
  const Bytes now = rig.read_all();
  for (uint64_t s = 0; s < kDisk / 512; ++s) {
    if (std::equal(now.begin() + s * 512, now.begin() + (s + 1) * 512, initial.begin() + s * 512)) continue;
    auto run = b->extent("b0", s * 512, 512);
    EXPECT_TRUE(run && run->first) << "sector " << s << " changed but the consistent bitmap is clean there";
    if (!run || !run->first) return true;
  }
  return true;
}

TEST(BitmapFaults, SweepWriteFlushWriteFlush) {
  VD_REQUIRE_QEMU();
  const Files f = bitmap_fixture("cluster_size=4k");
  auto op = [](Rig& r) -> vd::Error {
    if (vd::Error e = r.write(200000, pattern(9000, 7))) return e;
    if (vd::Error e = r.flush()) return e;
    if (vd::Error e = r.write(700000, pattern(3000, 8))) return e;
    return r.flush();
  };
  for (uint64_t n = 0;; ++n) {
    ASSERT_LT(n, 400u);
    SCOPED_TRACE("failing counted I/O #" + std::to_string(n));
    Rig rig(f);
    ASSERT_FALSE(rig.open());
    rig.io.reset_counts();
    rig.io.fail_nth(n, injected_error());
    vd::Error e = op(rig);
    const bool done = rig.io.faults_injected() == 0;
    if (done) EXPECT_FALSE(e) << e.message();
    else EXPECT_TRUE(!e || is_injected(e)) << e.message();
    rig.io.clear_faults();
    // As it is now (a crash here), then after the surviving state is flushed and closed.
    const Files crashed = rig.snapshot();
    CheckOutcome chk = qemu_check(crashed, "top.qcow2");
    EXPECT_TRUE(chk.clean_or_leaks()) << chk.output;
    expect_bitmap_covers_changes(crashed, f.at("initial"), true);
    if (!done) {
      // The failed write may be retried: after it, flush and close must leave a bitmap
      // that is consistent and covers it.
      (void)rig.write(700000, pattern(3000, 8));
    }
    EXPECT_FALSE(rig.top().close(false));
    const Files closed = rig.snapshot();
    EXPECT_TRUE(qemu_check(closed, "top.qcow2").clean_or_leaks());
    EXPECT_TRUE(expect_bitmap_covers_changes(closed, f.at("initial"))) << "inconsistent after a clean close";
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "I/O of the failing run:\n" << calls_text(rig.io);
      break;
    }
    if (done) break;
  }
}

void crash_once(const Files& fixture, uint32_t seed, bool reorder) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  Files survivors;
  {
    boost::asio::io_context ctx;
    CrashIoProvider storage(ctx.get_executor());
    storage.load("top.qcow2", fixture.at("top.qcow2"));
    storage.lose_power_after(pick(80));
    // The open marks the bitmaps in use: the power may go off there already.
    auto disk = open_chain(storage, {});
    EXPECT_TRUE(disk || !storage.powered()) << disk.error().message();
    for (int i = 0; disk && i < 30 && storage.powered(); ++i) {
      const uint64_t kind = pick(10);
      const uint64_t off = pick(kDisk / 512 - 16) * 512, len = (1 + pick(16)) * 512;
      const Bytes data(len, std::byte{static_cast<uint8_t>(1 + pick(255))});
      (void)run_on(ctx, [&](vd::Completion c) {
        if (kind < 5) return (*disk)->write(off, data, 0, std::move(c));
        if (kind < 6) return (*disk)->write_zeroes(off, len, vd::zero_may_unmap, std::move(c));
        if (kind < 7) return (*disk)->discard(off / 4096 * 4096, 4096, std::move(c));
        return (*disk)->flush(std::move(c));
      });
    }
    for (auto& [name, bytes] : storage.survivors(reorder ? &rng : nullptr)) survivors[name] = std::move(bytes);
    if (disk) disk->reset();
  }
  CheckOutcome chk = qemu_check(survivors, "top.qcow2");
  EXPECT_TRUE(chk.clean_or_leaks()) << chk.output;
  expect_bitmap_covers_changes(survivors, fixture.at("initial"), true);
}

TEST(BitmapFaults, PowerLossLeavesBitmapsInUseOrComplete) {
  VD_REQUIRE_QEMU();
  const Files f = bitmap_fixture("cluster_size=4k");
  for (uint32_t seed = 1; seed <= 12 && !HasFailure(); ++seed) crash_once(f, seed, seed % 2 == 0);
}

TEST(BitmapFaults, PowerLossOnTinyClusters) {
  VD_REQUIRE_QEMU();
  const Files f = bitmap_fixture("cluster_size=512,refcount_bits=64");
  for (uint32_t seed = 50; seed <= 58 && !HasFailure(); ++seed) crash_once(f, seed, seed % 2 == 1);
}

// A flush that stores bitmaps, and the marking before the next write, with every
// completion held and fired in random order: no hang, no blocking call, content right.
TEST(BitmapFaults, StoreAndMarkUnderHeldCompletions) {
  VD_REQUIRE_QEMU();
  const Files f = bitmap_fixture("cluster_size=4k");
  for (uint32_t seed = 1; seed <= 6; ++seed) {
    SCOPED_TRACE(seed);
    Rig rig(f);
    ASSERT_FALSE(rig.open());
    rig.io.hold(true);
    int finished = 0;
    std::vector<vd::Error> errors;
    const Bytes a = pattern(5000, 1), b = pattern(7000, 2);
    auto done = [&](vd::Error e) {
      errors.push_back(e);
      ++finished;
    };
    rig.start([&](vd::Completion c) { rig.disk().write(4096, a, 0, std::move(c)); }, done);
    rig.start([&](vd::Completion c) { rig.disk().flush(std::move(c)); }, done);
    rig.start([&](vd::Completion c) { rig.disk().write(300000, b, 0, std::move(c)); }, done);
    rig.start([&](vd::Completion c) { rig.disk().flush(std::move(c)); }, done);
    rig.start([&](vd::Completion c) { rig.disk().write(600000, b, 0, std::move(c)); }, done);
    ASSERT_TRUE(rig.drive([&] { return finished == 5; }, seed));
    rig.io.hold(false);
    for (auto& e : errors) EXPECT_FALSE(e) << e.message();
    EXPECT_FALSE(rig.top().close(false));
    const Files closed = rig.snapshot();
    EXPECT_TRUE(qemu_check(closed, "top.qcow2").clean());
    EXPECT_TRUE(expect_bitmap_covers_changes(closed, f.at("initial")));
  }
}

// After a flush stored the bitmap, a write over granules it already marks needs no marking
// (the stored bitmap covers it: a crash keeps it consistent); a write that dirties a new
// granule is held until the bitmap is in use on disk.
TEST(BitmapFaults, RewritesOfDirtyGranulesKeepTheStoredBitmapValid) {
  VD_REQUIRE_QEMU();
  const Files f = bitmap_fixture("cluster_size=4k");
  Rig rig(f);
  ASSERT_FALSE(rig.open());
  ASSERT_FALSE(rig.write(100000, pattern(5000, 3)));
  ASSERT_FALSE(rig.flush());
  rig.io.reset_counts();
  ASSERT_FALSE(rig.write(100000 + 512, pattern(2000, 4)));  // inside the dirty granules
  Files crashed = rig.snapshot();
  EXPECT_TRUE(expect_bitmap_covers_changes(crashed, f.at("initial"))) << "a rewrite made the bitmap in use";
  ASSERT_FALSE(rig.write(900000, pattern(100, 5)));  // a clean granule: marked in use first
  crashed = rig.snapshot();
  EXPECT_FALSE(expect_bitmap_covers_changes(crashed, f.at("initial"), true)) << "in use expected";
  EXPECT_TRUE(qemu_check(crashed, "top.qcow2").clean_or_leaks());
  ASSERT_FALSE(rig.top().close(false));
  EXPECT_TRUE(expect_bitmap_covers_changes(rig.snapshot(), f.at("initial")));
}

}  // namespace
}  // namespace vdtest::faults
