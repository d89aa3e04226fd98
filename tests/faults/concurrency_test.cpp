// Concurrency: writes in flight together on one cluster and on one L2 table, with the mock
// holding every I/O completion and firing them in a random order. Whatever the order, the
// result must equal the serial model (the writes touch disjoint bytes), each completion runs
// exactly once, and the image checks clean after a flush.
#include <random>

#include "faults/fault_fixture.h"

namespace vdtest::faults {
namespace {

struct Piece {
  uint64_t offset;
  Bytes data;
};

// Issues every piece at once, fires held I/O in an order drawn from `seed`, and checks.
void concurrent_writes(const Files& files, const OpenSpec& spec, const std::vector<Piece>& pieces, uint32_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  Rig rig(files);
  ASSERT_FALSE(rig.open(spec));
  Bytes model = rig.read_all();
  for (const auto& p : pieces) model = overlay(model, p.offset, p.data);

  rig.io.hold(true);
  std::vector<int> done(pieces.size(), 0);
  std::vector<vd::Error> errors(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i)
    rig.start([&, i](vd::Completion c) { rig.disk().write(pieces[i].offset, pieces[i].data, 0, std::move(c)); },
              [&, i](vd::Error e) {
                ++done[i];
                errors[i] = e;
              });
  const bool finished = rig.drive([&] { return std::all_of(done.begin(), done.end(), [](int d) { return d > 0; }); }, seed);
  ASSERT_TRUE(finished) << "the writes stalled: " << rig.io.held() << " held\n" << calls_text(rig.io);
  rig.io.hold(false);
  rig.ctx.restart();
  rig.ctx.run();
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(done[i], 1) << "write " << i << " completed " << done[i] << " times";
    EXPECT_FALSE(errors[i]) << errors[i].message();
  }
  EXPECT_TRUE(rig.read_all() == model) << "concurrent result differs from the serial model";
  ASSERT_FALSE(rig.flush());
  expect_recovers(rig.snapshot(), spec, {&model, nullptr, 512, false});
}

// Disjoint pieces: several inside one unallocated cluster, others in clusters of the same
// (existing) L2 table, and some needing a new L2 table together.
std::vector<Piece> pieces_for(uint32_t salt) {
  std::vector<Piece> p;
  for (uint64_t k = 0; k < 4; ++k) p.push_back({16384 + k * 1024 + 100, pattern(700, salt + k)});  // one cluster
  p.push_back({24576, pattern(4096, salt + 10)});                                                    // whole cluster, same table
  p.push_back({28672 + 2000, pattern(3000, salt + 11)});                                             // crosses into the next
  for (uint64_t k = 0; k < 3; ++k) p.push_back({(5u << 20) + k * 4096 + 7, pattern(2000, salt + 20 + k)});  // new table
  return p;
}

constexpr const char* kImage =
    "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 8M && "
    "qemu-io -c 'write -P 0x11 0 8k' top.qcow2";

TEST(Concurrency, OverlappingClusterAndTableWritesMatchTheSerialModel) {
  VD_REQUIRE_QEMU();
  const Files f = make_files(kImage, {"top.qcow2"});
  for (uint32_t seed = 1; seed <= 5 && !HasFailure(); ++seed) concurrent_writes(f, {}, pieces_for(seed), seed);
}

TEST(Concurrency, OverlappingWritesOverBackingFileMatchTheSerialModel) {
  VD_REQUIRE_QEMU();
  const Files f = make_files(
      "qemu-img create -q -f raw base.raw 8M && qemu-io -f raw -c 'write -P 0x33 0 8M' base.raw && "
      "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw top.qcow2 8M",
      {"top.qcow2", "base.raw"});
  OpenSpec spec;
  spec.base = "base.raw";
  for (uint32_t seed = 50; seed <= 54 && !HasFailure(); ++seed) concurrent_writes(f, spec, pieces_for(seed), seed);
}

// Extended L2: a write into an unallocated subcluster of an allocated cluster rewrites the
// whole cluster elsewhere, filling it from the old one. An in-place write to an allocated
// subcluster still in flight must land before that fill reads, or its data goes with the
// old cluster.
TEST(Concurrency, InPlaceSubclusterWritesSurviveTheirClusterBeingRewritten) {
  VD_REQUIRE_QEMU();
  const Files f = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=64k,extended_l2=on top.qcow2 1M && "
      "qemu-io -c 'write -P 0x11 64k 4k' -c 'write -P 0x22 256k 2k' top.qcow2",
      {"top.qcow2"});
  for (uint32_t seed = 1; seed <= 12 && !HasFailure(); ++seed) {
    std::vector<Piece> p;
    p.push_back({65536 + 100, pattern(1500, seed)});             // allocated subcluster: in place
    p.push_back({65536 + 2048 + 7, pattern(900, seed + 1)});     // the other allocated one
    p.push_back({65536 + 10240, pattern(1024, seed + 2)});       // unallocated: rewrites cluster
    p.push_back({262144 + 10, pattern(300, seed + 3)});          // in place, second cluster
    p.push_back({262144 + 40000, pattern(5000, seed + 4)});      // rewrites the second cluster
    p.push_back({262144 + 1000, pattern(700, seed + 5)});        // in place again
    concurrent_writes(f, {}, p, seed);
  }
}

// Writes and a flush in flight together (the flush drains the writes in flight and gates
// the later ones), then a flush after they all completed: the result is the serial model.
TEST(Concurrency, FlushAmongWritesInFlightPersistsTheModel) {
  VD_REQUIRE_QEMU();
  const Files f = make_files(kImage, {"top.qcow2"});
  for (uint32_t seed = 70; seed <= 74 && !HasFailure(); ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Rig rig(f);
    ASSERT_FALSE(rig.open());
    const auto pieces = pieces_for(seed);
    Bytes model = rig.read_all();
    for (const auto& p : pieces) model = overlay(model, p.offset, p.data);
    rig.io.hold(true);
    int writes = 0, flushes = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      rig.start([&, i](vd::Completion c) { rig.disk().write(pieces[i].offset, pieces[i].data, 0, std::move(c)); },
                [&](vd::Error e) {
                  ++writes;
                  EXPECT_FALSE(e) << e.message();
                });
      if (i == pieces.size() / 2)
        rig.start([&](vd::Completion c) { rig.disk().flush(std::move(c)); }, [&](vd::Error e) {
          ++flushes;
          EXPECT_FALSE(e) << e.message();
        });
    }
    ASSERT_TRUE(rig.drive([&] { return writes == int(pieces.size()) && flushes == 1; }, seed))
        << calls_text(rig.io);
    rig.io.hold(false);
    rig.ctx.restart();
    rig.ctx.run();
    EXPECT_EQ(writes, int(pieces.size()));
    EXPECT_EQ(flushes, 1);
    // A flush covers the writes completed before it was issued (the block-layer contract):
    // issued now, it must persist every piece.
    ASSERT_FALSE(rig.flush());
    EXPECT_TRUE(rig.read_all() == model) << "in-memory result differs from the serial model";
    expect_recovers(rig.snapshot(), {}, {&model, nullptr, 512, false});
  }
}

}  // namespace
}  // namespace vdtest::faults
