// Many writes in flight at once through the library (vd::Runtime + vd::Disk): 64 writes and
// zero writes to disjoint byte ranges packed into the same few clusters and across an L2
// table boundary, issued together in random order. Two requests that need the same new
// cluster or L2 table must not both allocate it, and a partial-cluster fill must never
// overwrite a neighbour's data. The result must equal a serial model in memory, read the
// same in qemu-img, and check clean.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>

#include "qcow/crypto_fixtures.h"
#include "support/support.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using vdtest::TempDir;

struct Slice {
  uint64_t off, len;
  bool zero;
  std::vector<std::byte> data;
};

// Cuts [start, start + span) into `n` disjoint slices of random lengths, in random order.
std::vector<Slice> make_slices(uint64_t start, uint64_t span, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint64_t> cuts{0, span};
  while (cuts.size() < n + 1) cuts.push_back(1 + rng() % (span - 1));
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Slice> out;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    Slice s{start + cuts[i], cuts[i + 1] - cuts[i], rng() % 8 == 0, {}};
    if (!s.zero) s.data = vdtest::pattern(s.len, seed * 1000 + static_cast<uint32_t>(i));
    out.push_back(std::move(s));
  }
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

struct Kind {
  uint64_t cluster;
  bool backing;
  bool extended_l2;  // and some subclusters written by qemu first: partly allocated clusters
  bool luks = false;  // encrypted: partial sectors are read, merged and rewritten
};

class ConcurrentWrites : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    VD_REQUIRE_QEMU();
    const auto [cs, backing, extended, luks] = GetParam();
    cluster_ = cs;
    path_ = dir_.file("top.qcow2");
    model_.assign(size_, std::byte{0});
    std::string create = "qemu-img create -q -f qcow2 -o cluster_size=" + std::to_string(cs) +
                         (extended ? ",extended_l2=on" : "");
    if (luks) {
      passphrase_ = "abc";
      ASSERT_TRUE(vdtest::crypto::qemu_create_encrypted(
          "qcow2", "encrypt.format=luks,encrypt.key-secret=sec0,cluster_size=" + std::to_string(cs), path_,
          std::to_string(size_)));
      image_opts_ = "driver=qcow2,file.filename=" + path_ + ",encrypt.key-secret=sec0";
      return;
    }
    if (backing) {
      const std::string base = dir_.file("base.raw");
      vdtest::sh("qemu-img create -q -f raw " + base + " " + std::to_string(size_));
      auto fill = vdtest::pattern(size_, 99);
      vdtest::write_file(base, fill);
      model_ = fill;
      create += " -b " + base + " -F raw";
    }
    vdtest::sh(create + " " + path_ + " " + std::to_string(size_));
    if (extended) prewrite_subclusters();
  }

  // Every third subcluster of the region, written by qemu: the racing writes then mix
  // in-place writes to allocated subclusters with allocations of the rest of the cluster.
  void prewrite_subclusters() {
    const uint64_t sub = cluster_ / 32;
    std::string cmd = "qemu-io -f qcow2";
    for (uint64_t o = region_start() - cluster_; o < region_start() + 8 * cluster_; o += 3 * sub) {
      cmd += " -c 'write -P 0x77 " + std::to_string(o) + " " + std::to_string(sub) + "'";
      std::fill_n(model_.begin() + static_cast<ptrdiff_t>(o), sub, std::byte{0x77});
    }
    vdtest::sh(cmd + " " + path_ + " >/dev/null");
  }

  std::unique_ptr<vd::Disk> open() {
    vd::DiskOpenOptions o;
    o.format = "qcow2";
    o.passphrase = passphrase_;
    auto d = vd::Disk::open(path_, o, registry_, rt_.files());
    EXPECT_TRUE(d.ok()) << d.error().message();
    return d.ok() ? std::move(*d) : nullptr;
  }

  // Issues every slice at once and waits for all of them; applies them to the model.
  void write_all(vd::Disk& disk, const std::vector<Slice>& slices) {
    size_t pending = slices.size();
    std::vector<std::string> errors;
    vd::Error e = rt_.wait([&](vd::Completion all_done) {
      for (const auto& s : slices) {
        auto done = [&, all_done](vd::Error err) {
          if (err) errors.push_back(err.message());
          if (--pending == 0) all_done({});
        };
        if (s.zero) disk.write_zeroes(s.off, s.len, 0, done);
        else disk.write(s.off, s.data, 0, done);
      }
    });
    ASSERT_FALSE(e) << e.message();
    ASSERT_TRUE(errors.empty()) << errors.front();
    for (const auto& s : slices) {
      if (s.zero) std::fill_n(model_.begin() + static_cast<ptrdiff_t>(s.off), s.len, std::byte{0});
      else std::memcpy(model_.data() + s.off, s.data.data(), s.len);
    }
  }

  void expect_matches_model(const std::string& what) {
    const std::string out = dir_.file("out.raw");
    vdtest::sh("qemu-img convert " + qemu_source() + " -O raw " + out);
    auto got = vdtest::read_file(out);
    ASSERT_EQ(got.size(), model_.size());
    auto diff = std::mismatch(got.begin(), got.end(), model_.begin());
    EXPECT_TRUE(diff.first == got.end()) << what << ": first difference at byte "
                                         << (diff.first - got.begin());
    auto r = vdtest::run({"/bin/sh", "-c", "qemu-img check " + qemu_source()});
    EXPECT_EQ(r.exit_code, 0) << what << ":\n" << r.out << r.err;
  }

  std::string qemu_source() const {
    if (image_opts_.empty()) return "-f qcow2 " + path_;
    return "--object secret,id=sec0,data=" + *passphrase_ + " --image-opts " + image_opts_;
  }

  // The region the slices cover: a few clusters on both sides of the first L2 table's end.
  uint64_t region_start() const { return std::min(l2_end(), size_ / 2) - 3 * cluster_; }
  uint64_t l2_end() const { return cluster_ * (cluster_ / 8); }

  TempDir dir_;
  vd::Runtime rt_{2};
  vd::Registry registry_ = vd::Registry::builtin();
  std::string path_;
  uint64_t cluster_ = 0;
  const uint64_t size_ = 4 << 20;
  std::vector<std::byte> model_;
  std::optional<std::string> passphrase_;
  std::string image_opts_;  // qemu's name for an encrypted image
};

TEST_P(ConcurrentWrites, SixtyFourOverlappingWritesMatchSerialModel) {
  auto disk = open();
  ASSERT_TRUE(disk);
  write_all(*disk, make_slices(region_start(), 6 * cluster_, 64, 1));
  ASSERT_FALSE(disk->close());
  expect_matches_model("fresh clusters");

  // The same clusters again, now allocated: in-place writes racing each other.
  disk = open();
  ASSERT_TRUE(disk);
  write_all(*disk, make_slices(region_start() - cluster_ / 2, 7 * cluster_, 64, 2));
  ASSERT_FALSE(disk->close());
  expect_matches_model("allocated clusters");
}

// After a snapshot every cluster and L2 table is shared: the racing writes must copy them
// once, and the snapshot must still read as before.
TEST_P(ConcurrentWrites, SixtyFourWritesCopySharedClustersOnce) {
  auto disk = open();
  ASSERT_TRUE(disk);
  write_all(*disk, make_slices(region_start(), 6 * cluster_, 64, 3));
  ASSERT_FALSE(disk->close());
  const auto before = model_;
  vdtest::sh("qemu-img snapshot -c snap " + (image_opts_.empty() ? path_ : qemu_source()));

  disk = open();
  ASSERT_TRUE(disk);
  write_all(*disk, make_slices(region_start() + cluster_ / 3, 6 * cluster_, 64, 4));
  ASSERT_FALSE(disk->close());
  expect_matches_model("after copy on write");

  const std::string snap = dir_.file("snap.raw");
  vdtest::sh("qemu-img convert -l snapshot.name=snap " + qemu_source() + " -O raw " + snap);
  EXPECT_TRUE(vdtest::read_file(snap) == before) << "the snapshot changed";
}

std::string kind_name(const ::testing::TestParamInfo<Kind>& info) {
  const Kind& k = info.param;
  return "Cluster" + std::to_string(k.cluster) + (k.backing ? "OverBase" : "") + (k.extended_l2 ? "ExtendedL2" : "") +
         (k.luks ? "Luks" : "");
}

INSTANTIATE_TEST_SUITE_P(Kinds, ConcurrentWrites,
                         ::testing::Values(Kind{512, false, false}, Kind{512, true, false}, Kind{4096, false, false},
                                           Kind{4096, true, false}, Kind{65536, false, false},
                                           Kind{65536, true, false}, Kind{65536, false, true},
                                           Kind{65536, true, true}, Kind{4096, false, false, true}),
                         kind_name);

}  // namespace
