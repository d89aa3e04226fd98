// The snapshot table: tables made by `qemu-img snapshot -c`, QEMU's limits (iotests 080,
// 261, 029), per-snapshot L1 checks, and the encode round trip.
#include <gtest/gtest.h>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/snapshot_table.h"
#include "qcow/header_fixtures.h"
#include "support/support.h"

namespace vdtest::qcowhdr {
namespace {

using vd::Errc;
using namespace vd::qcow;
using namespace vd;  // the big-endian helpers (backends/common/endian.h)

class QcowSnapshotTable : public ::testing::Test {
 protected:
  void SetUp() override { VD_REQUIRE_QEMU(); }

  // An image with `n` internal snapshots named s0, s1, ...
  std::string image_with_snapshots(int n, const std::string& options = "") {
    auto path = qemu_create(dir, "snap.qcow2", options);
    for (int i = 0; i < n; ++i) {
      sh("qemu-io -c 'write -P " + std::to_string(i + 1) + " " + std::to_string(i) + "M 64k' '" + path + "' >/dev/null");
      sh("qemu-img snapshot -c s" + std::to_string(i) + " '" + path + "'");
    }
    return path;
  }

  // Header and table of `path`, asserting both read.
  std::pair<Header, std::vector<Snapshot>> read_all(const std::string& path) {
    VecFile f(path, read_file(path));
    auto h = read_header(f, path);
    EXPECT_TRUE(h.ok()) << h.error().message();
    if (!h) return {};
    auto s = read_snapshot_table(f, *h, path);
    EXPECT_TRUE(s.ok()) << s.error().message();
    return {*h, s.ok() ? *s : std::vector<Snapshot>{}};
  }

  // File offset of entry `i` of the table (entries are 8-byte aligned).
  uint64_t entry_offset(const Header& h, const std::vector<Snapshot>& s, size_t i) {
    std::vector<Snapshot> before(s.begin(), s.begin() + i);
    uint64_t rel = snapshot_table_size(before);
    return h.snapshots_offset + ((rel + 7) & ~uint64_t{7});
  }

  TempDir dir;
};

TEST_F(QcowSnapshotTable, ReadsSnapshotsMadeByQemu) {
  auto path = image_with_snapshots(2);
  auto [h, snaps] = read_all(path);
  EXPECT_EQ(h.nb_snapshots, 2u);
  ASSERT_EQ(snaps.size(), 2u);
  EXPECT_EQ(snaps[0].id, "1");
  EXPECT_EQ(snaps[0].name, "s0");
  EXPECT_EQ(snaps[1].id, "2");
  EXPECT_EQ(snaps[1].name, "s1");
  for (size_t i = 0; i < snaps.size(); ++i) {
    EXPECT_EQ(snaps[i].l1_size, 1u);
    EXPECT_EQ(snaps[i].l1_table_offset % h.cluster_size(), 0u);
    EXPECT_EQ(snaps[i].disk_size, 64u << 20);
    EXPECT_TRUE(snaps[i].icount.has_value());
    EXPECT_EQ(snaps[i].extra_data.size(), 24u);
    EXPECT_EQ(snaps[i].vm_state_size, 0u);
    EXPECT_NE(snaps[i].date_sec, 0u);
    EXPECT_FALSE(validate_snapshot(snaps[i], h, i, file_size(path), path));
    EXPECT_FALSE(snapshot_entry_incomplete(snaps[i], h.version));
  }
}

TEST_F(QcowSnapshotTable, EncodeReproducesQemuTable) {
  for (const char* options : {"", "-o compat=0.10", "-o cluster_size=512"}) {
    auto path = image_with_snapshots(3, options);
    auto [h, snaps] = read_all(path);
    ASSERT_EQ(snaps.size(), 3u) << options;
    auto enc = encode_snapshot_table(snaps, h);
    ASSERT_TRUE(enc.ok()) << enc.error().message();
    EXPECT_EQ(enc->size(), snapshot_table_size(snaps));
    auto file = read_file(path);
    ASSERT_GE(file.size(), h.snapshots_offset + enc->size());
    std::vector<std::byte> on_disk(file.begin() + h.snapshots_offset,
                                   file.begin() + h.snapshots_offset + enc->size());
    EXPECT_TRUE(on_disk == *enc) << options;
  }
}

TEST_F(QcowSnapshotTable, OpenRejectsTooMuchExtraMetadataInEntry3) {
  auto path = image_with_snapshots(4);
  auto [h, snaps] = read_all(path);
  ASSERT_EQ(snaps.size(), 4u);
  poke_be32(path, entry_offset(h, snaps, 3) + 36, 65536);
  VecFile f(path, read_file(path));
  EXPECT_TRUE(fails_with(read_snapshot_table(f, h, path), Errc::too_large,
                         "Too much extra metadata in snapshot table entry 3", path));
  auto q = run({"qemu-img", "info", path});
  EXPECT_NE(q.err.find("Too much extra metadata in snapshot table entry 3"), std::string::npos) << q.err;
}

TEST_F(QcowSnapshotTable, UnalignedSnapshotL1IsReportedPerSnapshot) {
  auto path = image_with_snapshots(2);
  auto [h, snaps] = read_all(path);
  ASSERT_EQ(snaps.size(), 2u);
  poke_be64(path, entry_offset(h, snaps, 1), 0x400200);
  auto [h2, again] = read_all(path);  // the open still works
  ASSERT_EQ(again.size(), 2u);
  EXPECT_FALSE(validate_snapshot(again[0], h2, 0, file_size(path), path));
  EXPECT_TRUE(error_is(validate_snapshot(again[1], h2, 1, file_size(path), path), Errc::corrupt,
                       "Snapshot L1 table offset invalid"));
  auto q = run({"qemu-img", "snapshot", "-a", "s1", path});
  EXPECT_NE(q.err.find("Snapshot L1 table offset invalid"), std::string::npos) << q.err;
}

TEST_F(QcowSnapshotTable, OversizedSnapshotL1IsReportedPerSnapshot) {
  auto path = image_with_snapshots(1);
  auto [h, snaps] = read_all(path);
  ASSERT_EQ(snaps.size(), 1u);
  poke_be32(path, entry_offset(h, snaps, 0) + 8, 0x10000000);
  auto [h2, again] = read_all(path);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(error_is(validate_snapshot(again[0], h2, 0, file_size(path), path), Errc::too_large,
                       "Snapshot L1 table too large"));
  auto q = run({"qemu-img", "snapshot", "-a", "s0", path});
  EXPECT_NE(q.err.find("Snapshot L1 table too large"), std::string::npos) << q.err;
}

TEST_F(QcowSnapshotTable, SnapshotL1BeyondEndOfFileIsReported) {
  auto path = image_with_snapshots(1);
  auto [h, snaps] = read_all(path);
  ASSERT_EQ(snaps.size(), 1u);
  snaps[0].l1_table_offset = 0x10000000;
  EXPECT_TRUE(error_is(validate_snapshot(snaps[0], h, 0, file_size(path), path), Errc::corrupt,
                       "beyond the end of the file"));
}

TEST_F(QcowSnapshotTable, V3EntryWithoutExtraDataOpensButIsIncomplete) {
  auto path = image_with_snapshots(1);
  auto [h, snaps] = read_all(path);
  ASSERT_EQ(snaps.size(), 1u);
  poke_be32(path, entry_offset(h, snaps, 0) + 36, 0);  // extra_data_size
  auto [h2, again] = read_all(path);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_TRUE(again[0].extra_data.empty());
  EXPECT_TRUE(snapshot_entry_incomplete(again[0], h2.version));
  EXPECT_TRUE(qemu_opens(path));
  auto q = run({"qemu-img", "check", path});
  EXPECT_NE(q.err.find("snapshot table entry 0 is incomplete"), std::string::npos) << q.err;
}

// A file whose snapshot table never ends: every entry has a 64 KiB id and name.
class EndlessTableFile : public VecFile {
 public:
  static constexpr uint64_t kBase = 0x10000;
  static constexpr uint64_t kStride = 40 + 2 * 65535 + 2;  // padded to 8 bytes
  EndlessTableFile() : VecFile("endless.qcow2", {}) {}
  vd::Result<uint64_t> size() override { return uint64_t{1} << 40; }
  vd::Error read(vd::IoKind, uint64_t offset, std::span<std::byte> buf) override {
    for (size_t i = 0; i < buf.size(); ++i) {
      uint64_t pos = (offset + i - kBase) % kStride;
      buf[i] = pos == 12 || pos == 13 || pos == 14 || pos == 15 ? std::byte{0xff}
               : pos >= 40                                     ? std::byte{'a'}
                                                               : std::byte{0};
    }
    return {};
  }
};

TEST(QcowSnapshotTableLimits, OpenRejectsSnapshotTableOver64MiB) {
  EndlessTableFile f;
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  h.nb_snapshots = 1000;
  h.snapshots_offset = EndlessTableFile::kBase;
  EXPECT_TRUE(fails_with(read_snapshot_table(f, h, f.path()), Errc::too_large, "Snapshot table is too big",
                         f.path()));
}

TEST(QcowSnapshotTableLimits, AllZeroEntryIsCompleteOnlyInV2) {
  std::vector<std::byte> zero(40);
  auto s = parse_snapshot_table(zero, 1, "z.qcow2");
  ASSERT_TRUE(s.ok()) << s.error().message();
  ASSERT_EQ(s->size(), 1u);
  EXPECT_FALSE((*s)[0].disk_size.has_value());
  EXPECT_FALSE(snapshot_entry_incomplete((*s)[0], 2));
  EXPECT_TRUE(snapshot_entry_incomplete((*s)[0], 3));
}

TEST(QcowSnapshotTableLimits, RejectsMoreThan65536Snapshots) {
  EXPECT_TRUE(fails_with(parse_snapshot_table({}, 65537, "many.qcow2"), Errc::too_large,
                         "Snapshot table too large", "many.qcow2"));
}

TEST(QcowSnapshotTableLimits, RoundTripKeepsUnknownExtraData) {
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  h.size = 1 << 30;
  Snapshot a;
  a.l1_table_offset = 0x50000;
  a.l1_size = 2;
  a.id = "7";
  a.name = "with extra";
  a.vm_state_size = 0x123456789ull;  // needs the 64-bit field
  a.extra_data.assign(40, std::byte{0});
  for (size_t i = 24; i < 40; ++i) a.extra_data[i] = std::byte(i);
  Snapshot b;
  b.id = "8";
  b.name = "odd";  // makes the next entry need padding
  std::vector<Snapshot> in{a, b, a};
  auto enc = encode_snapshot_table(in, h);
  ASSERT_TRUE(enc.ok()) << enc.error().message();
  auto out = parse_snapshot_table(*enc, 3, "rt.qcow2");
  ASSERT_TRUE(out.ok()) << out.error().message();
  ASSERT_EQ(out->size(), 3u);
  EXPECT_EQ((*out)[0].vm_state_size, 0x123456789ull);
  EXPECT_EQ((*out)[0].disk_size, 1u << 30);
  EXPECT_EQ((*out)[0].extra_data.size(), 40u);
  EXPECT_EQ((*out)[0].extra_data[30], std::byte(30));
  EXPECT_EQ((*out)[1].name, "odd");
  EXPECT_EQ((*out)[1].icount, ~uint64_t{0});
  EXPECT_EQ((*out)[2].name, "with extra");
  EXPECT_EQ((*out)[2].l1_table_offset, 0x50000u);
}

TEST(QcowSnapshotTableLimits, EncodeRefusesOverlongName) {
  Header h;
  h.version = 3;
  h.cluster_bits = 16;
  Snapshot s;
  s.name.assign(70000, 'x');
  auto enc = encode_snapshot_table({s}, h);
  EXPECT_FALSE(enc.ok());
  EXPECT_TRUE(enc.error().is(Errc::invalid_argument));
}

}  // namespace
}  // namespace vdtest::qcowhdr
