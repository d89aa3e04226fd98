// QCOW2 check and repair against qemu-img check 7.2 on the same files: clean images of every
// kind report the same figures; poked corruptions report the same counts and exit code; after
// every repair qemu-img check is clean and the disk reads as before (qemu-img compare).
#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <regex>

#include "support/qemu_fixtures.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace vdtest {
namespace {

using vd::CheckReport;
using vd::RepairMode;

const std::string kSecretArg = std::string("secret,id=sec0,data=") + kFixturePassphrase;

// qemu-img check --output=json: exit code and the numeric fields.
struct QemuCheck {
  int exit_code = -1;
  std::map<std::string, uint64_t> n;
  std::string err;
  uint64_t get(const std::string& k) const { return n.count(k) ? n.at(k) : 0; }
};

QemuCheck qemu_check(const std::string& image, bool encrypted = false, const std::string& repair = "") {
  std::vector<std::string> argv = {"qemu-img", "check", "--output=json"};
  if (!repair.empty()) argv.insert(argv.end(), {"-r", repair});
  if (encrypted)
    argv.insert(argv.end(), {"--object", kSecretArg, "--image-opts",
                             "driver=qcow2,file.filename=" + image + ",encrypt.key-secret=sec0"});
  else
    argv.insert(argv.end(), {"-f", "qcow2", image});
  auto r = run(argv);
  QemuCheck q;
  q.exit_code = r.exit_code;
  q.err = r.err;
  std::regex field("\"([a-z-]+)\": ([0-9]+)");
  for (std::sregex_iterator it(r.out.begin(), r.out.end(), field), end; it != end; ++it)
    q.n[(*it)[1]] = std::stoull((*it)[2]);
  return q;
}

int exit_code(const CheckReport& r) {
  if (r.check_errors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

std::string all_messages(const CheckReport& r) {
  std::string s;
  for (const auto& m : r.messages) s += m + "\n";
  return s;
}

// Opens `image` with vd (read-only for a plain check, read-write without the open-time
// repair otherwise), runs the check and closes the image.
vd::Result<CheckReport> vd_check(const std::string& image, RepairMode mode, bool encrypted = false) {
  vd::Runtime rt(1);
  auto reg = vd::Registry::builtin();
  vd::OpenOptions o;
  o.flags = mode == RepairMode::none ? vd::open_read_only : vd::open_no_repair;
  if (encrypted) o.passphrase = kFixturePassphrase;
  auto img = reg.find("qcow2")->open(image, o, rt.files());
  if (!img) return img.error();
  auto r = (*img)->check(mode);
  vd::Error e = (*img)->close(false);
  if (r && e) return e;
  return r;
}

// The figures both tools report must agree.
void expect_same(const CheckReport& v, const QemuCheck& q, const std::string& what) {
  SCOPED_TRACE(what + "\nvd says:\n" + all_messages(v) + "qemu-img says:\n" + q.err);
  EXPECT_EQ(exit_code(v), q.exit_code);
  EXPECT_EQ(v.corruptions, q.get("corruptions"));
  EXPECT_EQ(v.leaks, q.get("leaks"));
  EXPECT_EQ(v.check_errors, q.get("check-errors"));
  EXPECT_EQ(v.allocated_clusters, q.get("allocated-clusters"));
  EXPECT_EQ(v.total_clusters, q.get("total-clusters"));
  EXPECT_EQ(v.fragmented_clusters, q.get("fragmented-clusters"));
  EXPECT_EQ(v.compressed_clusters, q.get("compressed-clusters"));
  EXPECT_EQ(v.image_end_offset, q.get("image-end-offset"));
}

// ---- Clean images made by qemu-img -------------------------------------------------------

class CheckMatchesQemu : public ::testing::TestWithParam<ImageRecipe> {};

TEST_P(CheckMatchesQemu, ReportsTheSameFiguresAsQemuImgCheck) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const ImageRecipe& rec = GetParam();
  const std::string image = build_image(dir, rec);
  const std::string before = sha256_file(image);
  auto v = vd_check(image, RepairMode::none, rec.encrypted);
  ASSERT_TRUE(v.ok()) << v.error().message();
  expect_same(*v, qemu_check(image, rec.encrypted), rec.name);
  EXPECT_EQ(sha256_file(image), before) << "a plain check must not write";
}

std::vector<ImageRecipe> qcow2_recipes() {
  std::vector<ImageRecipe> out;
  for (const auto& r : read_recipes())
    if (r.format == "qcow2") out.push_back(r);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Recipes, CheckMatchesQemu, ::testing::ValuesIn(qcow2_recipes()),
                         [](const auto& info) { return info.param.name; });

// ---- Corruptions poked into qemu-made images ---------------------------------------------

class QcowCheck : public ::testing::Test {
 protected:
  void SetUp() override { VD_REQUIRE_QEMU(); }

  // A v3 image (64 KiB clusters unless `opts` says otherwise) with data in the first
  // clusters of the disk, and a pristine copy to compare with after a repair.
  std::string make(const std::string& opts = "", const std::string& extra_io = "") {
    image = dir.file("t.qcow2");
    sh("qemu-img create -q -f qcow2 " + (opts.empty() ? "" : "-o " + opts + " ") + image + " 4M");
    sh("qemu-io -f qcow2 -c 'write -P 0x5a 0 192k' -c 'write -P 0x6b 1M 64k' " + extra_io + " " +
       image + " >/dev/null");
    copy = dir.file("copy.qcow2");
    sh("cp " + image + " " + copy);
    return image;
  }

  uint64_t cluster_size() { return 1ull << peek_be32(image, 20); }
  uint64_t reftable() { return peek_be64(image, 48); }
  uint64_t refblock0() { return peek_be64(image, reftable()); }
  uint64_t l2_table() { return peek_be64(image, peek_be64(image, 40)) & 0x00fffffffffffe00ull; }
  uint64_t l2_entry(uint64_t i) { return peek_be64(image, l2_table() + i * 8); }
  // 16-bit refcount of host cluster `c`.
  void poke_refcount(uint64_t c, uint16_t v) { poke_be16(image, refblock0() + c * 2, v); }
  uint16_t peek_refcount(uint64_t c) {
    auto b = read_file(image);
    const uint64_t at = refblock0() + c * 2;
    return static_cast<uint16_t>((std::to_integer<uint16_t>(b[at]) << 8) | std::to_integer<uint16_t>(b[at + 1]));
  }

  // vd and qemu-img agree on the damage; returns vd's report.
  CheckReport check_both(const std::string& what) {
    auto v = vd_check(image, RepairMode::none);
    EXPECT_TRUE(v.ok()) << v.error().message();
    if (!v) return {};
    expect_same(*v, qemu_check(image), what);
    return *v;
  }

  // Repairs with vd, then qemu-img finds nothing and the disk reads as the copy does.
  CheckReport repair_and_verify(RepairMode mode) {
    auto v = vd_check(image, mode);
    EXPECT_TRUE(v.ok()) << v.error().message();
    auto q = qemu_check(image);
    EXPECT_EQ(q.exit_code, 0) << q.err << (v ? all_messages(*v) : "");
    EXPECT_EQ(q.get("corruptions") + q.get("leaks"), 0u);
    EXPECT_EQ(run({"qemu-img", "compare", "-q", copy, image}).exit_code, 0);
    auto again = vd_check(image, RepairMode::none);
    EXPECT_TRUE(again.ok());
    if (again) {
      EXPECT_EQ(exit_code(*again), 0) << all_messages(*again);
    }
    return v ? *v : CheckReport{};
  }

  TempDir dir;
  std::string image, copy;
};

TEST_F(QcowCheck, RaisedRefcountIsALeakAndRepairLeaksLowersIt) {
  make();
  const uint64_t data = (l2_entry(1) & 0x00fffffffffffe00ull) / cluster_size();
  poke_refcount(data, 2);
  auto r = check_both("raised refcount");
  EXPECT_EQ(r.leaks, 1u);
  EXPECT_NE(all_messages(r).find("Leaked cluster " + std::to_string(data) + " refcount=2 reference=1"),
            std::string::npos);
  auto fixed = repair_and_verify(RepairMode::leaks);
  EXPECT_EQ(fixed.leaks_fixed, 1u);
  EXPECT_EQ(fixed.leaks, 0u);
  EXPECT_EQ(peek_refcount(data), 1u);
}

TEST_F(QcowCheck, LoweredRefcountOfSharedClusterIsACorruptionAndRepairAllRaisesIt) {
  make();
  sh("qemu-img snapshot -c snap " + image);
  sh("cp " + image + " " + copy);
  const uint64_t data = (l2_entry(0) & 0x00fffffffffffe00ull) / cluster_size();
  ASSERT_EQ(peek_refcount(data), 2u);
  poke_refcount(data, 1);
  auto r = check_both("lowered refcount");
  EXPECT_GE(r.corruptions, 1u);
  EXPECT_NE(all_messages(r).find("ERROR cluster " + std::to_string(data) + " refcount=1 reference=2"),
            std::string::npos);
  auto leaks_only = vd_check(image, RepairMode::leaks);
  ASSERT_TRUE(leaks_only.ok());
  EXPECT_GE(leaks_only->corruptions, 1u) << "-r leaks must not raise refcounts";
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_GE(fixed.corruptions_fixed, 1u);
  EXPECT_EQ(peek_refcount(data), 2u);
}

TEST_F(QcowCheck, ZeroRefcountOfUsedClusterIsRepairedByRebuildingTheRefcounts) {
  make();
  const uint64_t data = (l2_entry(2) & 0x00fffffffffffe00ull) / cluster_size();
  poke_refcount(data, 0);
  auto r = check_both("refcount 0");
  EXPECT_GE(r.corruptions, 1u);
  auto leaks_only = vd_check(image, RepairMode::leaks);
  ASSERT_TRUE(leaks_only.ok());
  EXPECT_EQ(leaks_only->check_errors, 1u) << "a rebuild needs -r all";
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_GE(fixed.corruptions_fixed, 1u);
  EXPECT_NE(all_messages(fixed).find("Rebuilding refcount structure"), std::string::npos);
}

// iotest 138: an entry far beyond the end of the file is reported without counting it
// (which would need a refcount array the size of the offset).
TEST_F(QcowCheck, L2EntryFarBeyondEndOfFileIsReportedNotCounted) {
  make();
  const uint64_t entry_at = l2_table() + 3 * 8;
  poke_be64(image, entry_at, (1ull << 63) | 0x0000800000000000ull);
  auto r = check_both("L2 entry beyond EOF");
  EXPECT_GE(r.corruptions, 1u);
  EXPECT_NE(all_messages(r).find("exceeding the end of the file by one cluster or more: offset "
                                 "0x800000000000 size 0x10000"),
            std::string::npos)
      << all_messages(r);
}

TEST_F(QcowCheck, L2TableBeyondEndOfFileIsReported) {
  make();
  const uint64_t l1 = peek_be64(image, 40);
  poke_be64(image, l1, (1ull << 63) | 0x0000100000000000ull);
  auto r = check_both("L1 entry beyond EOF");
  EXPECT_GE(r.corruptions, 1u);
}

TEST_F(QcowCheck, ClearedCopiedFlagIsReportedAndRepaired) {
  make();
  const uint64_t at = l2_table() + 1 * 8;
  const uint64_t entry = peek_be64(image, at);
  poke_be64(image, at, entry & ~(1ull << 63));
  auto r = check_both("COPIED cleared");
  EXPECT_EQ(r.corruptions, 1u);
  char expect[96];
  std::snprintf(expect, sizeof expect, "ERROR OFLAG_COPIED data cluster: l2_entry=%llx refcount=1",
                static_cast<unsigned long long>(entry & ~(1ull << 63)));
  EXPECT_NE(all_messages(r).find(expect), std::string::npos) << all_messages(r);
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_EQ(fixed.corruptions_fixed, 1u);
  EXPECT_EQ(peek_be64(image, at), entry);
}

TEST_F(QcowCheck, ClearedL1CopiedFlagIsRepairedByRepairLeaksWhenRefcountsAreRight) {
  make();
  const uint64_t l1 = peek_be64(image, 40);
  const uint64_t entry = peek_be64(image, l1);
  poke_be64(image, l1, entry & ~(1ull << 63));
  auto r = check_both("L1 COPIED cleared");
  EXPECT_EQ(r.corruptions, 1u);
  auto fixed = repair_and_verify(RepairMode::leaks);
  EXPECT_EQ(fixed.corruptions_fixed, 1u);
  EXPECT_EQ(peek_be64(image, l1), entry);
}

TEST_F(QcowCheck, ZeroedRefblockPointerIsRebuiltByRepairAll) {
  make();
  poke_be64(image, reftable(), 0);
  auto r = check_both("refblock pointer zeroed");
  EXPECT_GT(r.corruptions, 0u);
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_GT(fixed.corruptions_fixed, 0u);
  EXPECT_EQ(fixed.corruptions, 0u);
}

// iotests 108/137: the whole refcount table zeroed.
TEST_F(QcowCheck, ZeroedRefcountTableIsRebuiltByRepairAll) {
  make("cluster_size=4k");
  const std::string zeros(cluster_size(), '\0');
  poke_bytes(image, reftable(), zeros);
  auto r = check_both("refcount table zeroed");
  EXPECT_GT(r.corruptions, 0u);
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_GT(fixed.corruptions_fixed, 0u);
}

TEST_F(QcowCheck, RefblockOutsideImageIsRebuiltByRepairAll) {
  make();
  poke_be64(image, reftable(), 0x40000000ull);
  auto r = check_both("refblock outside image");
  EXPECT_GT(r.corruptions, 0u);
  EXPECT_NE(all_messages(r).find("ERROR refcount block 0 is outside image"), std::string::npos);
  repair_and_verify(RepairMode::all);
  EXPECT_LT(file_size(image), 2u << 20) << "the repair must not grow the file to the bad offset";
}

TEST_F(QcowCheck, UnalignedRefblockIsReported) {
  make();
  poke_be64(image, reftable(), refblock0() + 512);
  auto v = vd_check(image, RepairMode::none);
  ASSERT_TRUE(v.ok());
  EXPECT_GT(v->corruptions + v->check_errors, 0u);
  EXPECT_NE(all_messages(*v).find("refcount block 0 is not cluster aligned"), std::string::npos);
  EXPECT_EQ(repair_and_verify(RepairMode::all).check_errors, 0u);
}

TEST_F(QcowCheck, RebuildKeepsNarrowAndWideRefcounts) {
  for (const char* bits : {"1", "64"}) {
    SCOPED_TRACE(bits);
    make(std::string("cluster_size=4k,refcount_bits=") + bits);
    poke_be64(image, reftable(), 0);
    EXPECT_GT(check_both("refblock zeroed").corruptions, 0u);
    repair_and_verify(RepairMode::all);
  }
}

TEST_F(QcowCheck, LeaksInSmallClustersAndSnapshotsMatchQemu) {
  make("cluster_size=512", "-c 'write -c -P 0x77 2M 512'");
  sh("qemu-img snapshot -c s1 " + image);
  sh("qemu-io -f qcow2 -c 'write -P 0x12 0 4k' " + image + " >/dev/null");
  sh("cp " + image + " " + copy);
  poke_refcount(peek_be64(image, 40) / 512, 3);  // the active L1 table
  auto r = check_both("leak with snapshots");
  EXPECT_EQ(r.leaks, 1u);
  EXPECT_EQ(repair_and_verify(RepairMode::leaks).leaks_fixed, 1u);
}

// Persistent bitmaps (autoclear bit set): directory, tables and bitmap data are references.
TEST_F(QcowCheck, BitmapClustersAreCountedAsQemuCountsThem) {
  make();
  sh("qemu-img bitmap --add " + image + " b0 && qemu-img bitmap --add -g 512k " + image + " b1");
  sh("qemu-io -f qcow2 -c 'write -P 9 2M 64k' " + image + " >/dev/null");
  ASSERT_EQ(peek_be64(image, 88) & 1, 1u);
  auto r = check_both("bitmaps");
  EXPECT_EQ(exit_code(r), 0) << all_messages(r);
  // A leaked bitmap-table cluster is still found among them.
  const uint64_t c = file_size(image) / cluster_size() - 1;
  poke_refcount(c, static_cast<uint16_t>(peek_refcount(c) + 1));
  EXPECT_EQ(check_both("bitmaps with a leak").leaks, 1u);
}

// A v3 snapshot entry without extra data (iotest 261): -r all writes the table again.
TEST_F(QcowCheck, IncompleteSnapshotEntryIsReportedAndRewrittenByRepairAll) {
  make();
  sh("qemu-img snapshot -c snap1 " + image);
  auto b = read_file(image);
  const uint64_t e = peek_be64(image, 64);
  const uint64_t extra = peek_be32(image, e + 36);
  const uint64_t names = (std::to_integer<uint64_t>(b[e + 12]) << 8 | std::to_integer<uint64_t>(b[e + 13])) +
                         (std::to_integer<uint64_t>(b[e + 14]) << 8 | std::to_integer<uint64_t>(b[e + 15]));
  ASSERT_EQ(extra, 24u);
  // Drop the extra data: the id and name move up to follow the fixed fields.
  std::copy(b.begin() + static_cast<ptrdiff_t>(e + 40 + extra),
            b.begin() + static_cast<ptrdiff_t>(e + 40 + extra + names), b.begin() + static_cast<ptrdiff_t>(e + 40));
  write_file(image, b);
  poke_be32(image, e + 36, 0);
  sh("cp " + image + " " + copy);
  auto r = check_both("incomplete snapshot entry");
  EXPECT_EQ(r.corruptions, 1u);
  EXPECT_NE(all_messages(r).find("ERROR snapshot table entry 0 is incomplete"), std::string::npos);
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_EQ(fixed.corruptions_fixed, 1u);
  EXPECT_EQ(peek_be32(image, peek_be64(image, 64) + 36), 24u);
  EXPECT_NE(run({"qemu-img", "snapshot", "-l", image}).out.find("snap1"), std::string::npos);
}

TEST_F(QcowCheck, RepairOnReadOnlyImageIsRefused) {
  make();
  vd::Runtime rt(1);
  auto reg = vd::Registry::builtin();
  vd::OpenOptions o;
  o.flags = vd::open_read_only;
  auto img = reg.find("qcow2")->open(image, o, rt.files());
  ASSERT_TRUE(img.ok());
  auto r = (*img)->check(RepairMode::all);
  EXPECT_TRUE(r.error().is(vd::Errc::read_only));
  EXPECT_FALSE((*img)->close(false));
}

// ---- Dirty images (lazy refcounts after a crash) ----------------------------------------

class QcowDirty : public QcowCheck {
 protected:
  // Written with lazy refcounts and closed cleanly, then a crash simulated: the dirty bit
  // set and refcounts left stale (one data cluster's refcount 0, as if never written).
  void make_crashed() {
    make("lazy_refcounts=on");
    const uint64_t data = (l2_entry(2) & 0x00fffffffffffe00ull) / cluster_size();
    poke_refcount(data, 0);
    poke_be64(image, 72, peek_be64(image, 72) | 1);
  }
};

TEST_F(QcowDirty, ReadWriteOpenRepairsAndClearsTheDirtyBit) {
  make_crashed();
  EXPECT_NE(qemu_check(image).exit_code, 0);
  {
    vd::Runtime rt(1);
    auto reg = vd::Registry::builtin();
    auto img = reg.find("qcow2")->open(image, vd::OpenOptions{}, rt.files());
    ASSERT_TRUE(img.ok()) << img.error().message();
    std::vector<std::byte> buf(4096);
    ASSERT_FALSE(vd::sync_image_write(rt, **img, 3u << 20, pattern(4096, 7)));
    EXPECT_FALSE((*img)->close(false));
  }
  EXPECT_EQ(peek_be64(image, 72) & 1, 0u);
  auto q = qemu_check(image);
  EXPECT_EQ(q.exit_code, 0) << q.err;
  sh("qemu-io -f qcow2 -c 'write -P 0 3M 4k' " + image + " >/dev/null");  // undo our write
  EXPECT_EQ(run({"qemu-img", "compare", "-q", copy, image}).exit_code, 0);
}

TEST_F(QcowDirty, ReadOnlyOpenLeavesTheImageAlone) {
  make_crashed();
  const std::string before = sha256_file(image);
  auto v = vd_check(image, RepairMode::none);
  ASSERT_TRUE(v.ok());
  EXPECT_GT(v->corruptions, 0u);
  EXPECT_EQ(sha256_file(image), before);
}

TEST_F(QcowDirty, NoRepairOpenKeepsTheDirtyBitUntilCheckRepairs) {
  make_crashed();
  auto fixed = repair_and_verify(RepairMode::all);
  EXPECT_GT(fixed.corruptions_fixed, 0u);
  EXPECT_EQ(peek_be64(image, 72) & 1, 0u);
}

TEST_F(QcowDirty, KilledQemuIoImageIsRepairedOnOpen) {
  image = build_image(dir, recipe("lazy_dirty"));
  ASSERT_EQ(peek_be64(image, 72) & 1, 1u) << "qemu-io left the image clean";
  copy = dir.file("copy.qcow2");
  sh("cp " + image + " " + copy);
  {
    vd::Runtime rt(1);
    auto reg = vd::Registry::builtin();
    auto img = reg.find("qcow2")->open(image, vd::OpenOptions{}, rt.files());
    ASSERT_TRUE(img.ok()) << img.error().message();
    EXPECT_FALSE((*img)->close(false));
  }
  EXPECT_EQ(qemu_check(image).exit_code, 0);
  EXPECT_EQ(run({"qemu-img", "compare", "-q", copy, image}).exit_code, 0);
}

}  // namespace
}  // namespace vdtest
