// Crash simulation: random workloads (write -P, write -z, discard, flush) on storage that
// keeps writes volatile until a flush (crash_io.h), with the power lost at a random change.
// After each loss: the surviving bytes open, `qemu-img check` finds nothing worse than leaks,
// and every sector reads a value it may hold: what the last completed flush made durable,
// or a value written after it.
#include <random>
#include <set>

#include "faults/crash_io.h"
#include "faults/fault_fixture.h"

namespace vdtest::faults {
namespace {

constexpr uint64_t kSector = 512;
constexpr uint64_t kDiskSize = 1u << 20;

// Per sector: every byte value it may read after a crash. Writes fill sectors with one byte.
class Model {
 public:
  explicit Model(const Bytes& initial) : cands_(initial.size() / kSector) {
    for (size_t s = 0; s < cands_.size(); ++s) cands_[s] = {std::to_integer<uint8_t>(initial[s * kSector])};
    cur_.resize(cands_.size());
    for (size_t s = 0; s < cands_.size(); ++s) cur_[s] = *cands_[s].begin();
  }
  // A write that happened (acknowledged), or may have (failed at the power loss).
  void wrote(uint64_t offset, uint64_t length, uint8_t value, bool acknowledged) {
    for (uint64_t s = offset / kSector; s < (offset + length) / kSector; ++s) {
      cands_[s].insert(value);
      if (acknowledged) cur_[s] = value;
    }
  }
  void flushed() {
    for (size_t s = 0; s < cands_.size(); ++s) cands_[s] = {cur_[s]};
  }
  ::testing::AssertionResult matches(const Bytes& got) const {
    if (got.size() != cands_.size() * kSector) return ::testing::AssertionFailure() << "size " << got.size();
    for (size_t s = 0; s < cands_.size(); ++s) {
      const uint8_t v = std::to_integer<uint8_t>(got[s * kSector]);
      for (uint64_t i = 1; i < kSector; ++i)
        if (got[s * kSector + i] != got[s * kSector])
          return ::testing::AssertionFailure() << "sector " << s << " is torn";
      if (!cands_[s].count(v))
        return ::testing::AssertionFailure() << "sector " << s << " reads " << int(v) << ", which it never held since the last flush";
    }
    return ::testing::AssertionSuccess();
  }

 private:
  std::vector<std::set<uint8_t>> cands_;
  std::vector<uint8_t> cur_;
};

struct Op {
  enum Kind { write, zero, discard, flush } kind;
  uint64_t offset = 0, length = 0;
  uint8_t value = 0;
};

Op random_op(std::mt19937& rng, uint64_t cluster) {
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
  Op op{static_cast<Op::Kind>(pick(10) < 5 ? 0 : pick(10) < 4 ? 1 : pick(10) < 5 ? 2 : 3)};
  if (op.kind == Op::discard) {  // whole clusters: partial discards are ignored, as in qemu
    const uint64_t n = 1 + pick(3);
    op.offset = pick(kDiskSize / cluster - n + 1) * cluster;
    op.length = n * cluster;
  } else if (op.kind != Op::flush) {
    const uint64_t n = 1 + pick(std::max<uint64_t>(2, 3 * cluster / kSector));
    op.offset = pick(kDiskSize / kSector - n + 1) * kSector;
    op.length = n * kSector;
    op.value = op.kind == Op::write ? static_cast<uint8_t>(1 + pick(255)) : 0;
  }
  return op;
}

vd::Error issue(boost::asio::io_context& ctx, vd::Disk& disk, const Op& op, const Bytes& data) {
  return run_on(ctx, [&](vd::Completion c) {
    switch (op.kind) {
      case Op::write: return disk.write(op.offset, std::span(data).first(op.length), 0, std::move(c));
      case Op::zero: return disk.write_zeroes(op.offset, op.length, vd::zero_may_unmap, std::move(c));
      case Op::discard: return disk.discard(op.offset, op.length, std::move(c));
      case Op::flush: return disk.flush(std::move(c));
    }
  });
}

// One run: a workload until the power goes off after `budget` changes, then the checks.
void crash_once(const Files& fixture, uint64_t cluster, uint32_t seed, bool reorder) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (reorder ? ", random subset reordered" : ", unflushed dropped"));
  std::mt19937 rng(seed);
  Model model(fixture.at("initial"));
  Files survivors;
  {
    boost::asio::io_context ctx;
    CrashIoProvider storage(ctx.get_executor());
    storage.load("top.qcow2", fixture.at("top.qcow2"));
    storage.lose_power_after(std::uniform_int_distribution<uint64_t>(0, 60)(rng));
    auto disk = open_chain(storage, {});
    ASSERT_TRUE(disk) << disk.error().message();
    for (int i = 0; i < 40 && storage.powered(); ++i) {
      const Op op = random_op(rng, cluster);
      const Bytes data(op.length, std::byte{op.value});
      const vd::Error e = issue(ctx, **disk, op, data);
      if (op.kind == Op::flush) {
        if (!e) model.flushed();
      } else {
        model.wrote(op.offset, op.length, op.value, !e);
      }
    }
    for (auto& [name, bytes] : storage.survivors(reorder ? &rng : nullptr)) survivors[name] = std::move(bytes);
    disk->reset();  // closes on dead storage: nothing reaches it any more
  }
  CheckOutcome chk = qemu_check(survivors, "top.qcow2");
  EXPECT_TRUE(chk.clean_or_leaks()) << chk.output;
  Rig rig(survivors);
  vd::Error e = rig.open();
  ASSERT_FALSE(e) << e.message();
  EXPECT_TRUE(model.matches(rig.read_all()));
  expect_vd_check(rig.top(), true);
}

Files crash_fixture(const std::string& options) {
  Files f = make_files("qemu-img create -q -f qcow2 -o " + options + " top.qcow2 1M && "
                       "qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 512k 8k' top.qcow2 && "
                       "qemu-img convert -O raw top.qcow2 initial",
                       {"top.qcow2", "initial"});
  return f;
}

TEST(Crash, PowerLossDroppingUnflushedWritesKeepsFlushedData) {
  VD_REQUIRE_QEMU();
  const Files f = crash_fixture("cluster_size=4k");
  for (uint32_t seed = 1; seed <= 15 && !HasFailure(); ++seed) crash_once(f, 4096, seed, false);
}

TEST(Crash, PowerLossWithReorderedPartialWriteBackKeepsFlushedData) {
  VD_REQUIRE_QEMU();
  const Files f = crash_fixture("cluster_size=4k");
  for (uint32_t seed = 100; seed <= 115 && !HasFailure(); ++seed) crash_once(f, 4096, seed, true);
}

// Tiny clusters and 64-bit refcounts: refcount blocks fill after 64 clusters, so the
// workload also creates blocks (and the flushes write them) between crashes.
TEST(Crash, PowerLossOnTinyClustersWithGrowingRefcountsKeepsFlushedData) {
  VD_REQUIRE_QEMU();
  const Files f = crash_fixture("cluster_size=512,refcount_bits=64");
  for (uint32_t seed = 200; seed <= 215 && !HasFailure(); ++seed) crash_once(f, 512, seed, seed % 2 == 0);
}

}  // namespace
}  // namespace vdtest::faults

namespace vdtest::faults {
namespace {

uint64_t incompatible_bits(const Files& f) {
  const Bytes& h = f.at("top.qcow2");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | static_cast<uint8_t>(h.at(72 + i));
  return v;
}

// Lazy refcounts: the dirty bit reaches the disk with the first flush that writes metadata,
// stays set while the image is open (a crash there leaves an image that is repaired on open)
// and is cleared by a clean close, which leaves the image clean for qemu-img check.
TEST(LazyRefcounts, DirtyBitSetByTheFirstMetadataFlushAndClearedOnClose) {
  VD_REQUIRE_QEMU();
  const Files f = make_files("qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k top.qcow2 4M",
                             {"top.qcow2"});
  Rig rig(f);
  ASSERT_FALSE(rig.open());
  EXPECT_EQ(incompatible_bits(rig.snapshot()) & 1, 0u) << "dirty before any write";
  const Bytes data = pattern(20000, 5);
  ASSERT_FALSE(rig.write(12345, data));
  ASSERT_FALSE(rig.flush());
  const Files crashed = rig.snapshot();
  EXPECT_EQ(incompatible_bits(crashed) & 1, 1u) << "no dirty bit after a metadata flush";
  Bytes model = overlay(fill(4 << 20, 0), 12345, data);
  expect_recovers(crashed, {}, {&model, nullptr, 512, true});
  ASSERT_FALSE(rig.top().close(false));
  const Files closed = rig.snapshot();
  EXPECT_EQ(incompatible_bits(closed) & 1, 0u) << "still dirty after a clean close";
  EXPECT_TRUE(qemu_check(closed, "top.qcow2").clean()) << qemu_check(closed, "top.qcow2").output;
}

}  // namespace
}  // namespace vdtest::faults
