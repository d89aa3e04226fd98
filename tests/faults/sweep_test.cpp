// Fault sweeps (SPDK power-failure thresholds, Beast fail_count, QEMU iotest 026): run an
// operation failing its Nth I/O, for N = 0, 1, 2, ... until it succeeds untouched. After each
// failure: every completion fired exactly once (Rig::run), the open image reads old or new
// content, the bytes reopen with old or new content and check clean apart from leaks, and a
// flush of the surviving in-memory state leaves a clean image.
#include "backends/builtin.h"
#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

struct SweepCase {
  Files files;
  OpenSpec spec;
  std::function<vd::Error(Rig&)> op;
  uint64_t grain = 512;  // old/new content is compared piece by piece of this size
};

// Runs `op` and returns the first error of its calls.
vd::Error then(vd::Error a, const std::function<vd::Error()>& b) { return a ? a : b(); }

void sweep(const SweepCase& c) {
  const Bytes old = content_of(c.files, c.spec);
  Bytes wanted;
  {
    SCOPED_TRACE("baseline without faults");
    Rig rig(c.files);
    ASSERT_FALSE(rig.open(c.spec));
    vd::Error e = c.op(rig);
    ASSERT_FALSE(e) << e.message();
    wanted = rig.read_all();
    expect_recovers(rig.snapshot(), c.spec, {&wanted, nullptr, c.grain, false});
  }
  for (uint64_t n = 0;; ++n) {
    ASSERT_LT(n, 400u) << "the operation never ran out of I/O to fail";
    SCOPED_TRACE("failing counted I/O #" + std::to_string(n));
    Rig rig(c.files);
    ASSERT_FALSE(rig.open(c.spec));
    rig.io.reset_counts();
    rig.io.fail_nth(n, injected_error());
    vd::Error e = c.op(rig);
    if (rig.io.faults_injected() == 0) {
      EXPECT_FALSE(e) << e.message();
      break;  // every I/O of the operation was let through
    }
    EXPECT_TRUE(!e || is_injected(e)) << "an error other than the injected one: " << e.message();
    rig.io.clear_faults();
    const Bytes now = rig.read_all();
    EXPECT_TRUE(old_or_new(now, old, &wanted, c.grain)) << "in-memory state";
    expect_recovers(rig.snapshot(), c.spec, {&old, &wanted, c.grain, true});
    vd::Error healed = rig.flush();
    ASSERT_FALSE(healed) << healed.message();
    expect_recovers(rig.snapshot(), c.spec, {&now, nullptr, c.grain, false});
    if (::testing::Test::HasFailure()) {  // one failing N tells enough
      ADD_FAILURE() << "I/O of the failing run:\n" << calls_text(rig.io);
      break;
    }
  }
}

constexpr const char* kSmall =
    "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 8M && "
    "qemu-io -c 'write -P 0x11 0 8k' -c 'write -P 0x12 2M 4k' top.qcow2";

TEST(FaultSweep, AllocatingWriteAndFlush) {
  VD_REQUIRE_QEMU();
  sweep({make_files(kSmall, {"top.qcow2"}), {}, [](Rig& r) {
           return then(r.write((5u << 20) + 1000, pattern(10000, 31)), [&] { return r.flush(); });
         }});
}

TEST(FaultSweep, PartialWriteOverBackingFile) {
  VD_REQUIRE_QEMU();
  SweepCase c;
  c.files = make_files(
      "qemu-img create -q -f raw base.raw 1M && qemu-io -f raw -c 'write -P 0x33 0 1M' base.raw && "
      "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw top.qcow2 1M",
      {"top.qcow2", "base.raw"});
  c.spec.base = "base.raw";
  c.op = [](Rig& r) { return then(r.write(4096 + 1000, pattern(5000, 32)), [&] { return r.flush(); }); };
  c.grain = 4096;
  sweep(c);
}

TEST(FaultSweep, WriteOverCompressedCluster) {
  VD_REQUIRE_QEMU();
  SweepCase c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 4M && "
      "qemu-io -c 'write -c -P 0x41 64k 4k' -c 'write -c -P 0x43 68k 4k' top.qcow2",
      {"top.qcow2"});
  c.op = [](Rig& r) { return then(r.write(65536 + 100, pattern(1000, 33)), [&] { return r.flush(); }); };
  c.grain = 4096;
  sweep(c);
}

TEST(FaultSweep, CopyOnWriteUnderInternalSnapshot) {
  VD_REQUIRE_QEMU();
  SweepCase c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 4M && "
      "qemu-io -c 'write -P 0x51 0 16k' top.qcow2 && qemu-img snapshot -c s1 top.qcow2",
      {"top.qcow2"});
  c.op = [](Rig& r) { return then(r.write(4096 + 10, pattern(6000, 34)), [&] { return r.flush(); }); };
  c.grain = 4096;
  sweep(c);
}

TEST(FaultSweep, WriteZeroes) {
  VD_REQUIRE_QEMU();
  sweep({make_files(kSmall, {"top.qcow2"}), {}, [](Rig& r) {
           return then(r.write_zeroes(1000, 12000), [&] { return r.flush(); });
         }, 4096});
}

// Regression (fixed): fails at the refcount block read of the release step: the releases are lost
// (FlushStep.ReleaseRefcountBlockReadFailureKeepsTheReleasesForTheNextFlush).
TEST(FaultSweep, Discard) {
  VD_REQUIRE_QEMU();
  sweep({make_files(kSmall, {"top.qcow2"}), {}, [](Rig& r) {
           return then(r.discard(0, 8192), [&] { return r.flush(); });
         }, 4096});
}

TEST(FaultSweep, ResizeGrowingTheL1Table) {
  VD_REQUIRE_QEMU();
  SweepCase c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=512 top.qcow2 1M && "
      "qemu-io -c 'write -P 0x61 0 4k' top.qcow2",
      {"top.qcow2"});
  // The disk's size changes: compare what both sizes share, through a write after it.
  c.op = [](Rig& r) {
    return then(r.top().resize(4u << 20), [&] { return r.write(3u << 20, pattern(512, 35)); });
  };
  // Old and new differ in length: sweep() compares only equal sizes, so check by hand.
  const Bytes old = content_of(c.files);
  for (uint64_t n = 0;; ++n) {
    ASSERT_LT(n, 200u);
    SCOPED_TRACE("failing counted I/O #" + std::to_string(n));
    Rig rig(c.files);
    ASSERT_FALSE(rig.open());
    rig.io.fail_nth(n, injected_error());
    vd::Error e = c.op(rig);
    if (rig.io.faults_injected() == 0) {
      ASSERT_FALSE(e) << e.message();
      break;
    }
    EXPECT_TRUE(!e || is_injected(e)) << e.message();
    rig.io.clear_faults();
    const Files after = rig.snapshot();
    EXPECT_TRUE(qemu_check(after, "top.qcow2").clean_or_leaks()) << qemu_check(after, "top.qcow2").output;
    Rig again(after);
    ASSERT_FALSE(again.open());
    const Bytes got = again.read_all();
    ASSERT_TRUE(got.size() == old.size() || got.size() == (4u << 20)) << got.size();
    EXPECT_TRUE(std::equal(old.begin(), old.end(), got.begin())) << "old content lost";
    for (size_t i = old.size(); i < got.size(); ++i)
      if (got[i] != std::byte{0} && (i < (3u << 20) || i >= (3u << 20) + 512)) {
        ADD_FAILURE() << "grown area not zero at " << vd::hex(i);
        break;
      }
    expect_vd_check(again.top(), true);
  }
}

// Many allocations on a 512-byte-cluster image whose refcount table is almost full.
// Regression (fixed): fails where the flush after the new refcount table's write fails: the retry never
// commits the table (FlushStep.HeaderWriteFailureForMovedRefcountTableKeepsTheOldTableInUse).
TEST(FaultSweep, RefcountTableGrowth) {
  VD_REQUIRE_QEMU();
  sweep({make_files("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M && "
                    "qemu-io -c 'write -P 0x31 0 1980k' top.qcow2",
                    {"top.qcow2"}),
         {},
         [](Rig& r) {
           vd::Error e;
           for (uint64_t i = 0; i < 6 && !e; ++i) e = r.write(1980 * 1024 + i * 1024, pattern(512, 36 + i));
           return then(e, [&] { return r.flush(); });
         }});
}

// Creating an image: whatever a failure leaves behind either refuses to open or is a clean
// image; without a failure the image opens and checks clean.
TEST(FaultSweep, Create) {
  VD_REQUIRE_QEMU();
  for (uint64_t n = 0;; ++n) {
    ASSERT_LT(n, 200u);
    SCOPED_TRACE("failing counted I/O #" + std::to_string(n));
    Rig rig({});
    rig.io.fail_nth(n, injected_error());
    vd::CreateOptions o;
    o.size = 1u << 20;
    o.options["cluster_size"] = "4096";
    o.options["preallocation"] = "metadata";
    auto img = vd::backends::qcow2().create("new.qcow2", o, rig.io);
    if (!img && img.error().is(vd::Errc::not_supported)) GTEST_SKIP() << img.error().message();
    vd::Error closed = img ? (*img)->close(false) : vd::Error{};
    const bool failed = rig.io.faults_injected() > 0;
    EXPECT_TRUE(!closed || is_injected(closed)) << closed.message();
    rig.io.clear_faults();
    if (!failed) {
      ASSERT_TRUE(img) << img.error().message();
      ASSERT_FALSE(closed) << closed.message();
      EXPECT_TRUE(qemu_check({{"new.qcow2", rig.io.bytes("new.qcow2")}}, "new.qcow2").clean());
      break;
    }
    if (!rig.io.exists("new.qcow2")) continue;
    Files left{{"top.qcow2", rig.io.bytes("new.qcow2")}};
    Rig reopen(left);
    if (vd::Error oe = reopen.open()) continue;  // refused with an error: fine
    CheckOutcome chk = qemu_check(left, "top.qcow2");
    EXPECT_TRUE(chk.clean_or_leaks()) << chk.output;
    EXPECT_EQ(reopen.read_all(), Bytes(reopen.disk().size()));
  }
}

}  // namespace
}  // namespace vdtest::faults
