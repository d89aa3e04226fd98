// One test per step of a guest write failing (cluster_alloc.h): the L2 table read, the fill
// read from the backing file, the data write, the L2 reload before linking, the refcount
// block read an allocation needs, and allocations that create a refcount block or grow the
// refcount table. Each ends with the checks of expect_write_step_fails_cleanly.
#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

using vd::IoKind;

constexpr const char* kSmall =  // 4 KiB clusters, data in the first two
    "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 8M && "
    "qemu-io -c 'write -P 0x11 0 8k' -c 'write -P 0x12 2M 4k' top.qcow2";

IoMatch l2_read() { return IoMatch{.op = IoOp::read, .kind = IoKind::meta, .async = true}; }
IoMatch data_write() { return IoMatch{.op = IoOp::write, .kind = IoKind::data}; }

TEST(WriteStep, L2TableReadFailureFailsTheWriteAndChangesNothing) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  s.offset = 16384 + 100;  // unallocated cluster mapped by the existing L2 table
  s.data = pattern(5000, 1);
  s.fault = l2_read();
  expect_write_step_fails_cleanly(s);
}

TEST(WriteStep, FillReadFailureOverBackingFileRollsBackTheAllocation) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(
      "qemu-img create -q -f raw base.raw 1M && qemu-io -f raw -c 'write -P 0x33 0 1M' base.raw && "
      "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw top.qcow2 1M",
      {"top.qcow2", "base.raw"});
  s.spec.base = "base.raw";
  s.offset = 4096 + 1000;  // partial cluster: its head and tail come from base.raw
  s.data = pattern(1000, 2);
  s.fault = IoMatch{.op = IoOp::read, .path = "base.raw"};
  expect_write_step_fails_cleanly(s);
}

TEST(WriteStep, DataWriteFailureRollsBackClustersAndKeepsTheFileSize) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  s.offset = 12288;  // two whole clusters and a partial one
  s.data = pattern(9000, 3);
  s.fault = data_write();
  expect_write_step_fails_cleanly(s);
}

TEST(WriteStep, DataWriteFailureWithNewL2TableKeepsTheImageClean) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  s.offset = 5u << 20;  // no L2 table there yet: one is allocated and linked in memory
  s.data = pattern(4096, 4);
  s.fault = data_write();
  expect_write_step_fails_cleanly(s);
}

// The L2 table leaves the cache while the data is written (cache of one table), so linking
// reads it again; that read fails.
TEST(WriteStep, L2ReloadFailureBeforeLinkRollsBackTheAllocation) {
  VD_REQUIRE_QEMU();
  const Files files = make_files(kSmall, {"top.qcow2"});
  const Bytes old = content_of(files);
  Rig rig(files);
  OpenSpec spec;
  spec.cache_bytes = 4096;  // one 4 KiB L2 table
  ASSERT_FALSE(rig.open(spec));
  const uint64_t table_a = qcow(rig).l1()[0] & vd::qcow::kL1OffsetMask;

  rig.io.hold(true);
  const Bytes data = pattern(4096, 5);
  int write_done = 0;
  vd::Error write_err;
  rig.start([&](vd::Completion c) { rig.disk().write(16384, data, 0, std::move(c)); },
            [&](vd::Error e) { ++write_done, write_err = e; });
  auto data_write_held = [&] {
    for (size_t i = 0; i < rig.io.held(); ++i)
      if (rig.io.held_call(i).op == IoOp::write && rig.io.held_call(i).kind == IoKind::data) return true;
    return false;
  };
  auto fire_all_but_data = [&] {
    for (size_t i = 0; i < rig.io.held();)
      if (rig.io.held_call(i).kind == IoKind::data && rig.io.held_call(i).op == IoOp::write) ++i;
      else rig.io.fire(i);
  };
  // Run until the data write is in flight; then read through the other table (evicts A).
  for (int guard = 0; guard < 100 && !data_write_held(); ++guard) {
    rig.ctx.restart();
    rig.ctx.poll();
    fire_all_but_data();
  }
  ASSERT_TRUE(data_write_held());
  Bytes other(4096);
  int read_done = 0;
  rig.start([&](vd::Completion c) { rig.disk().read(2u << 20, other, std::move(c)); }, [&](vd::Error e) {
    ++read_done;
    EXPECT_FALSE(e) << e.message();
  });
  for (int guard = 0; guard < 100 && !read_done; ++guard) {
    rig.ctx.restart();
    rig.ctx.poll();
    fire_all_but_data();
  }
  ASSERT_EQ(read_done, 1);
  rig.io.fail(IoMatch{.op = IoOp::read, .kind = IoKind::meta, .offset = table_a}, injected_error());
  ASSERT_TRUE(rig.drive([&] { return write_done > 0 && rig.io.held() == 0; }, 1));
  rig.io.hold(false);
  rig.ctx.restart();
  rig.ctx.run();
  EXPECT_EQ(write_done, 1);
  EXPECT_TRUE(is_injected(write_err)) << write_err.message();
  EXPECT_EQ(rig.io.faults_injected(), 1u);
  rig.io.clear_faults();
  EXPECT_EQ(rig.read_all(), old);
  expect_recovers(rig.snapshot(), spec, {&old, nullptr, 512, false});
  ASSERT_FALSE(rig.flush());
  expect_recovers(rig.snapshot(), spec, {&old, nullptr, 512, false});
}

// The first allocation reads the refcount block (synchronously, while linking a new L2
// table into L1); that read fails before anything changed.
TEST(WriteStep, RefcountBlockReadFailureDuringL1LinkChangesNothing) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kSmall, {"top.qcow2"});
  const uint64_t reftable = be64_at(s.files["top.qcow2"], 48);
  const uint64_t block0 = be64_at(s.files["top.qcow2"], reftable);
  s.offset = 5u << 20;
  s.data = pattern(4096, 6);
  s.fault = IoMatch{.op = IoOp::read, .kind = IoKind::meta, .async = true, .offset = block0};
  expect_write_step_fails_cleanly(s);
}

// 512-byte clusters, 64-bit refcounts: a refcount block covers 64 clusters, so a write soon
// needs a new block. It is created in memory; the data write then fails.
constexpr const char* kTinyNearBlockEnd =
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M && "
    "qemu-io -c 'write -P 0x21 0 28k' top.qcow2";

TEST(WriteStep, DataWriteFailureAfterNewRefcountBlockKeepsTheImageClean) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kTinyNearBlockEnd, {"top.qcow2"});
  ASSERT_EQ(be64_at(s.files["top.qcow2"], 512 + 8), 0u) << "fixture: the second refcount block exists already";
  s.offset = 28 * 1024;
  s.data = pattern(4096, 7);
  s.fault = data_write();
  expect_write_step_fails_cleanly(s);
}

// A write whose clusters lie past what one refcount-table cluster can describe: the table is
// grown (in memory) and the data write fails.
constexpr const char* kTinyNearTableEnd =
    "qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M && "
    "qemu-io -c 'write -P 0x31 0 1980k' top.qcow2";

TEST(WriteStep, DataWriteFailureAfterRefcountTableGrowthKeepsTheImageClean) {
  VD_REQUIRE_QEMU();
  WriteStep s;
  s.files = make_files(kTinyNearTableEnd, {"top.qcow2"});
  s.offset = 1980 * 1024;
  s.data = pattern(4096, 8);
  s.fault = data_write();
  expect_write_step_fails_cleanly(s);
}

}  // namespace
}  // namespace vdtest::faults
