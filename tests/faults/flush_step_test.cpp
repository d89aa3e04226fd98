// One test per flush step failing (flush_request.h): data sync, refcount block write,
// refcount table write, header write, L2 write, L1 write, release write; and InSequence tests
// that pin the order of a successful allocation and flush to the crash invariants.
#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

using testing::_;
using testing::AtLeast;
using testing::InSequence;
using vd::IoKind;

constexpr const char* kSmall =
    "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 8M && "
    "qemu-io -c 'write -P 0x11 0 8k' -c 'write -P 0x12 2M 4k' top.qcow2";
constexpr const char* kTinyNearTableEnd =
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M && "
    "qemu-io -c 'write -P 0x31 0 1980k' top.qcow2";

uint64_t block0_of(const Files& f) {
  const Bytes& b = f.at("top.qcow2");
  return be64_at(b, be64_at(b, 48));
}

FlushStep small_write_step() {
  FlushStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  s.change = [](Rig& rig) { return rig.write(16384, pattern(6000, 11)); };
  return s;
}

TEST(FlushStep, DataSyncFailureFailsTheFlushAndTheRetryPersists) {
  VD_REQUIRE_QEMU();
  FlushStep s = small_write_step();
  s.fault = [](Rig&) { return IoMatch{.op = IoOp::flush, .async = true}; };
  expect_flush_step_fails_cleanly(s);
}

TEST(FlushStep, RefcountBlockWriteFailureLeavesAConsistentImage) {
  VD_REQUIRE_QEMU();
  FlushStep s = small_write_step();
  const uint64_t block0 = block0_of(s.files);
  s.fault = [block0](Rig&) { return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = block0}; };
  expect_flush_step_fails_cleanly(s);
}

TEST(FlushStep, NewRefcountBlockWriteFailureLeavesAConsistentImage) {
  VD_REQUIRE_QEMU();
  FlushStep s;
  s.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M && "
      "qemu-io -c 'write -P 0x21 0 28k' top.qcow2",
      {"top.qcow2"});
  s.change = [](Rig& rig) { return rig.write(28 * 1024, pattern(4096, 12)); };
  // Wherever the allocator placed refcount block 1 (the write crosses into its range).
  s.fault = [](Rig& rig) {
    const uint64_t at = qcow(rig).refcounts()->block_offset(1);
    EXPECT_NE(at, 0u) << "fixture: the write did not need refcount block 1";
    return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = at};
  };
  expect_flush_step_fails_cleanly(s);
}

FlushStep table_growth_step() {
  FlushStep s;
  s.files = make_files(kTinyNearTableEnd, {"top.qcow2"});
  s.change = [](Rig& rig) { return rig.write(1980 * 1024, pattern(4096, 13)); };
  return s;
}

TEST(FlushStep, GrownRefcountTableWriteFailureKeepsTheOldTableInUse) {
  VD_REQUIRE_QEMU();
  FlushStep s = table_growth_step();
  s.fault = [](Rig& rig) {
    const uint64_t table = qcow(rig).refcounts()->table_offset();
    EXPECT_NE(table, 512u) << "fixture: the refcount table did not move";
    return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = table};
  };
  expect_flush_step_fails_cleanly(s);
}

// Regression (fixed): after this failure the refcount table is written (table_dirty_ cleared) but the header
// still points at the old one; the retry flush sees Refcounts::dirty() false and skips
// write_reftable/commit_reftable, so the header is never switched and the clusters counted
// only in the new table's blocks read refcount 0 while referenced (corruption). The pending
// move (old_table_offset_ != 0) must keep the refcounts dirty until the header commits.
TEST(FlushStep, HeaderWriteFailureForMovedRefcountTableKeepsTheOldTableInUse) {
  VD_REQUIRE_QEMU();
  FlushStep s = table_growth_step();
  s.fault = [](Rig&) { return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = 0}; };
  expect_flush_step_fails_cleanly(s);
}

TEST(FlushStep, L2WriteFailureLeavesOnlyLeaks) {
  VD_REQUIRE_QEMU();
  FlushStep s = small_write_step();
  s.fault = [](Rig&) { return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .async = true}; };
  expect_flush_step_fails_cleanly(s);
}

TEST(FlushStep, L1WriteFailureLeavesOnlyLeaks) {
  VD_REQUIRE_QEMU();
  FlushStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  s.change = [](Rig& rig) { return rig.write(5u << 20, pattern(4096, 14)); };  // new L2 table
  s.fault = [](Rig& rig) {
    return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = qcow(rig).header().l1_table_offset};
  };
  expect_flush_step_fails_cleanly(s);
}

// Overwriting a compressed cluster releases it: the lowered refcount is written last, after
// the L2 table no longer points at it. Refcount block 0 is written twice; the second fails.
TEST(FlushStep, ReleaseWriteFailureLeavesOnlyLeaks) {
  VD_REQUIRE_QEMU();
  FlushStep s;
  s.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 4M && "
      "qemu-io -c 'write -c -P 0x41 64k 4k' -c 'write -P 0x42 0 4k' top.qcow2",
      {"top.qcow2"});
  const uint64_t block0 = block0_of(s.files);
  s.change = [](Rig& rig) { return rig.write(65536, pattern(4096, 15)); };
  s.fault = [block0](Rig&) { return IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = block0}; };
  s.skip = 1;
  expect_flush_step_fails_cleanly(s);
}

// The releases read a refcount block that is not cached yet; that read fails. The releases
// must survive for the next flush.
// Regression (fixed): Refcounts::apply_releases moves releases_ out before applying them, so when an update
// fails (here: reading the block) the remaining decreases are lost and the next flush leaves
// the clusters leaked for good (qemu-img check: leaks after a successful flush).
TEST(FlushStep, ReleaseRefcountBlockReadFailureKeepsTheReleasesForTheNextFlush) {
  VD_REQUIRE_QEMU();
  FlushStep s = small_write_step();
  const uint64_t block0 = block0_of(s.files);
  s.change = [](Rig& rig) { return rig.discard(0, 8192); };  // releases, no allocation
  s.fault = [block0](Rig&) { return IoMatch{.op = IoOp::read, .kind = IoKind::meta, .offset = block0}; };
  expect_flush_step_fails_cleanly(s);
}

// The header step of a flush runs for a changed size (resize flushes synchronously).
TEST(FlushStep, ResizeHeaderWriteFailureKeepsTheOldSizeOnDisk) {
  VD_REQUIRE_QEMU();
  const Files files = make_files(kSmall, {"top.qcow2"});
  const Bytes old = content_of(files);
  Rig rig(files);
  ASSERT_FALSE(rig.open());
  rig.io.fail(IoMatch{.op = IoOp::write, .kind = IoKind::meta, .offset = 0}, injected_error());
  vd::Error e = rig.top().resize(8u << 20);
  EXPECT_TRUE(is_injected(e)) << e.message();
  EXPECT_EQ(rig.io.faults_injected(), 1u);
  rig.io.clear_faults();
  expect_recovers(rig.snapshot(), {}, {&old, nullptr, 512, true});
  ASSERT_FALSE(rig.flush());
  const Bytes grown = overlay(Bytes(8u << 20), 0, old);
  expect_recovers(rig.snapshot(), {}, {&grown, nullptr, 512, false});
}

// ---- The order of a successful allocation and flush ------------------------------------------

TEST(FlushOrder, AllocationThenFlushWritesDataRefcountsL2ThenL1WithFlushesBetween) {
  VD_REQUIRE_QEMU();
  const Files files = make_files("qemu-img create -q -f qcow2 top.qcow2 1M", {"top.qcow2"});
  const uint64_t block0 = block0_of(files);
  const uint64_t l1 = be64_at(files.at("top.qcow2"), 40);
  Rig rig(files);
  ASSERT_FALSE(rig.open());
  MockFile& f = *rig.io.file("top.qcow2");
  {
    InSequence order;
    EXPECT_CALL(f, async_write(IoKind::data, _, _, _));  // data first (invariant 1)
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, block0, _, _));      // the raised refcounts (invariant 2)
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, _, _, _));  // the new L2 table
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, l1, _, _));          // then the L1 entry pointing at it
    EXPECT_CALL(f, async_flush(_));
  }
  ASSERT_FALSE(rig.write(0, pattern(65536, 21)));
  ASSERT_FALSE(rig.flush());
  testing::Mock::VerifyAndClearExpectations(&f);
  expect_recovers(rig.snapshot(), {}, {nullptr, nullptr, 512, false});
}

// Every step at once: new refcount blocks and a moved refcount table (committed by the
// header), a new L2 table and its L1 entry, and a released compressed cluster.
TEST(FlushOrder, FullFlushFollowsEveryCrashInvariant) {
  VD_REQUIRE_QEMU();
  const Files files = make_files(std::string(kTinyNearTableEnd) + " && qemu-io -c 'write -c -P 0x32 3M 512' top.qcow2",
                                 {"top.qcow2"});
  const uint64_t l1 = be64_at(files.at("top.qcow2"), 40);
  const uint64_t l1_bytes = (be64_at(files.at("top.qcow2"), 32) & 0xffffffffu) * 8;  // l1_size at 36
  Rig rig(files);
  ASSERT_FALSE(rig.open());
  // Known once the table has moved: matched when the call comes.
  auto the_new_table = testing::Truly([&rig](uint64_t off) { return off == qcow(rig).refcounts()->table_offset(); });
  auto in_l1 = testing::AllOf(testing::Ge(l1), testing::Lt(l1 + l1_bytes));
  MockFile& f = *rig.io.file("top.qcow2");
  {
    InSequence order;
    EXPECT_CALL(f, async_write(IoKind::data, _, _, _)).Times(AtLeast(1));  // data only, before the flush
    EXPECT_CALL(f, async_flush(_));                                    // data durable
    EXPECT_CALL(f, async_write(IoKind::meta, _, _, _)).Times(AtLeast(1));       // refcount blocks
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, the_new_table, _, _));             // the new table
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, 0, _, _));                         // header -> new table
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, _, _, _)).Times(AtLeast(1));  // L2 tables
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, in_l1, _, _)).Times(AtLeast(1));   // L1 entries
    EXPECT_CALL(f, async_flush(_));
    EXPECT_CALL(f, async_write(IoKind::meta, _, _, _)).Times(AtLeast(1));       // lowered refcounts
    EXPECT_CALL(f, async_flush(_));
  }
  ASSERT_FALSE(rig.write(1980 * 1024, pattern(4096, 22)));      // grows the refcount table
  ASSERT_FALSE(rig.write(3u << 20, pattern(512, 23)));         // releases a compressed cluster
  ASSERT_FALSE(rig.write((3u << 20) + (512u << 10), pattern(512, 24)));  // new L2 table
  ASSERT_NE(qcow(rig).refcounts()->table_offset(), 512u) << "fixture: the refcount table did not move";
  ASSERT_FALSE(rig.flush());
  testing::Mock::VerifyAndClearExpectations(&f);
  expect_recovers(rig.snapshot(), {}, {nullptr, nullptr, 512, false});
}

}  // namespace
}  // namespace vdtest::faults
