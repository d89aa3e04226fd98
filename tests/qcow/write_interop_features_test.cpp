// Random workloads (write_interop.h) on QCOW images with the features that change how a write
// lands: a backing file of each format (and one shorter than the overlay), compressed
// clusters being overwritten, internal snapshots taken between sessions, an external data
// file, LUKS and legacy AES encryption, and QCOW version 1.
#include "qcow/crypto_fixtures.h"
#include "qcow/write_interop.h"

namespace {

using vdtest::TempDir;
using vdtest::write::Geometry;
using vdtest::write::Target;

const char kPass[] = "abc";  // the secret crypto_fixtures.h creates images with

// Fills a base image with patterns and holes (qemu-io, so it is written as qemu writes);
// patterns past `size` are left out, for bases shorter than their overlay.
void make_base(const std::string& path, const std::string& fmt, uint64_t size) {
  vdtest::sh("qemu-img create -q -f " + fmt + " " + path + " " + std::to_string(size));
  const std::pair<uint64_t, uint64_t> runs[] = {{0, 1 << 20}, {1536 << 10, 1300 << 10}, {3000 << 10, 100000},
                                                {3800 << 10, 296 << 10}, {5 << 20, 1 << 20}};
  std::string cmd = "qemu-io -f " + fmt;
  int byte = 0x11;
  for (auto [off, len] : runs) {
    if (off + len <= size)
      cmd += " -c 'write -P " + std::to_string(byte) + " " + std::to_string(off) + " " + std::to_string(len) + "'";
    byte += 0x11;
  }
  vdtest::sh(cmd + " " + path + " >/dev/null");
}

// ---- Backing files ------------------------------------------------------------------------

struct BackingKind {
  const char* name;
  const char* base_fmt;
  uint64_t base_size;
  const char* overlay_fmt;
  const char* overlay_opts;
};

const BackingKind kBackingKinds[] = {
    {"Qcow2Base", "qcow2", 8 << 20, "qcow2", "compat=1.1"},
    {"Qcow2BaseCompat010", "qcow2", 8 << 20, "qcow2", "compat=0.10"},
    {"RawBase", "raw", 8 << 20, "qcow2", "cluster_size=4096"},
    {"QcowV1Base", "qcow", 8 << 20, "qcow2", "compat=1.1"},
    {"ShorterBase", "qcow2", 4 << 20, "qcow2", "cluster_size=4096"},
    {"ShorterBaseCompat010", "raw", 2900 << 10, "qcow2", "compat=0.10"},
    {"ExtendedL2OverBase", "qcow2", 8 << 20, "qcow2", "extended_l2=on"},
    {"QcowV1OverRawBase", "raw", 8 << 20, "qcow", ""},
};

void PrintTo(const BackingKind& k, std::ostream* os) { *os << k.name; }

class BackingWorkload : public ::testing::TestWithParam<std::tuple<BackingKind, uint64_t>> {};

TEST_P(BackingWorkload, ReadsAsQemuAndChecksClean) {
  VD_REQUIRE_QEMU();
  const auto& [kind, seed] = GetParam();
  TempDir dir;
  const std::string base = dir.file("base.img");
  make_base(base, kind.base_fmt, kind.base_size);
  Target q{dir.file("q.img"), kind.overlay_fmt}, v{dir.file("v.img"), kind.overlay_fmt};
  std::string opts = std::string(kind.overlay_opts);
  vdtest::sh("qemu-img create -q -f " + q.fmt + (opts.empty() ? "" : " -o " + opts) + " -b " + base +
             " -F " + kind.base_fmt + " " + q.path + " 8M");
  vdtest::sh("cp " + q.path + " " + v.path);
  const std::string base_sum = vdtest::sha256_file(base);
  Geometry g;
  if (q.fmt == "qcow") {
    g = Geometry{8 << 20, 4096, 2 << 20, false};  // qemu's v1 defaults: 4 KiB clusters, 512-entry L2
  } else {
    const uint64_t cs = opts.find("4096") != std::string::npos ? 4096 : 65536;
    g = vdtest::write::qcow2_geometry(8 << 20, cs, opts.find("extended_l2") != std::string::npos);
  }
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed));
  EXPECT_EQ(vdtest::sha256_file(base), base_sum) << "the backing file was modified";
}

std::string backing_name(const ::testing::TestParamInfo<BackingWorkload::ParamType>& info) {
  return std::string(std::get<0>(info.param).name) + "Seed" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Kinds, BackingWorkload,
                         ::testing::Combine(::testing::ValuesIn(kBackingKinds), ::testing::Values(1u, 2u, 3u)),
                         backing_name);

// ---- Compressed images being overwritten -------------------------------------------------

class CompressedWorkload : public ::testing::TestWithParam<std::tuple<const char*, uint64_t>> {};

TEST_P(CompressedWorkload, OverwritingCompressedClustersMatchesQemu) {
  VD_REQUIRE_QEMU();
  const auto& [codec, seed] = GetParam();
  TempDir dir;
  const std::string raw = dir.file("src.raw");
  make_base(raw, "raw", 8 << 20);
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  vdtest::sh("qemu-img convert -c -f raw -O qcow2 -o cluster_size=4096,compression_type=" + std::string(codec) +
             " " + raw + " " + q.path);
  vdtest::sh("cp " + q.path + " " + v.path);
  const Geometry g = vdtest::write::qcow2_geometry(8 << 20, 4096);
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed));
}

INSTANTIATE_TEST_SUITE_P(Codecs, CompressedWorkload,
                         ::testing::Combine(::testing::Values("zlib", "zstd"), ::testing::Values(1u, 2u, 3u)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param)) + "Seed" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---- Internal snapshots ------------------------------------------------------------------

class SnapshotWorkload : public ::testing::TestWithParam<std::tuple<const char*, uint64_t>> {};

std::string snapshot_name(const ::testing::TestParamInfo<SnapshotWorkload::ParamType>& info) {
  const std::string o = std::get<0>(info.param);
  std::string name = o == "compat=1.1" ? "Compat11"
                     : o.rfind("compat=0.10", 0) == 0 ? "Compat010"
                     : o == "extended_l2=on"          ? "ExtendedL2"
                                                      : "Refcount4";
  return name + "Seed" + std::to_string(std::get<1>(info.param));
}

// qemu-img snapshot -c between sessions shares every cluster and L2 table with the snapshot:
// the next writes must copy them. Every snapshot must afterwards still read as qemu reads it.
TEST_P(SnapshotWorkload, SnapshotsSurviveCopyOnWrite) {
  VD_REQUIRE_QEMU();
  const auto& [opts, seed] = GetParam();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  vdtest::sh("qemu-img create -q -f qcow2 -o " + std::string(opts) + " " + q.path + " 8M");
  vdtest::sh("qemu-io -f qcow2 -c 'write -P 0x5a 0 3M' -c 'write -P 0x6b 5M 1M' " + q.path + " >/dev/null");
  vdtest::sh("cp " + q.path + " " + v.path);
  const bool sub = std::string(opts).find("extended_l2") != std::string::npos;
  const uint64_t cs = std::string(opts).find("4096") != std::string::npos ? 4096 : 65536;
  const Geometry g = vdtest::write::qcow2_geometry(8 << 20, cs, sub);
  auto snap = [&](size_t i) {
    for (const Target* t : {&q, &v})
      vdtest::sh("qemu-img snapshot -c s" + std::to_string(i) + " " + t->path);
  };
  snap(100);
  if (!vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed, 4, 12), snap)) return;
  for (std::string s : {"s100", "s0", "s1", "s2", "s3"}) {
    const std::string qa = dir.file("q-" + s + ".raw"), va = dir.file("v-" + s + ".raw");
    vdtest::sh("qemu-img convert -f qcow2 -l snapshot.name=" + s + " -O raw " + q.path + " " + qa);
    vdtest::sh("qemu-img convert -f qcow2 -l snapshot.name=" + s + " -O raw " + v.path + " " + va);
    EXPECT_EQ(vdtest::sha256_file(qa), vdtest::sha256_file(va)) << "snapshot " << s << " differs";
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, SnapshotWorkload,
                         ::testing::Combine(::testing::Values("compat=1.1", "compat=0.10,cluster_size=4096",
                                                              "extended_l2=on", "refcount_bits=4,cluster_size=4096"),
                                            ::testing::Values(1u, 2u)),
                         snapshot_name);

// ---- External data file ------------------------------------------------------------------

class DataFileWorkload : public ::testing::TestWithParam<std::tuple<bool, uint64_t>> {};

TEST_P(DataFileWorkload, ExternalDataFileMatchesQemu) {
  VD_REQUIRE_QEMU();
  const auto& [raw_flag, seed] = GetParam();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  for (const Target* t : {&q, &v})
    vdtest::sh("qemu-img create -q -f qcow2 -o data_file=" + t->path + ".data" +
               (raw_flag ? ",data_file_raw=on" : "") + " " + t->path + " 8M");
  const Geometry g = vdtest::write::qcow2_geometry(8 << 20, 65536);
  if (!vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed)) || !raw_flag) return;
  // data_file_raw: the data file itself must read as the guest disk.
  auto r = vdtest::run({"qemu-img", "compare", "-f", "raw", "-F", "qcow2", v.path + ".data", v.path});
  EXPECT_EQ(r.exit_code, 0) << "vdimg's raw data file no longer reads as the disk: " << r.out << r.err;
}

INSTANTIATE_TEST_SUITE_P(Kinds, DataFileWorkload,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1u, 2u)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "DataFileRaw" : "DataFile") + "Seed" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---- Encryption --------------------------------------------------------------------------

class EncryptedWorkload : public ::testing::TestWithParam<std::tuple<const char*, uint64_t>> {};

TEST_P(EncryptedWorkload, EncryptedImageMatchesQemu) {
  VD_REQUIRE_QEMU();
  const auto& [format, seed] = GetParam();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  for (Target* t : {&q, &v}) {
    t->secret = kPass;
    t->passfile = dir.file("pass");
  }
  vdtest::sh(std::string("printf '%s' '") + kPass + "' > " + q.passfile);
  const std::string fmt = format;
  const std::string opts = "encrypt.format=" + fmt + ",encrypt.key-secret=sec0,cluster_size=4096";
  if (fmt == "luks") {
    ASSERT_TRUE(vdtest::crypto::qemu_create_encrypted("qcow2", opts, q.path, "4M"));
  } else {
    vdtest::sh("qemu-img create -q -f qcow2 --object secret,id=sec0,data=" + std::string(kPass) + " -o " + opts +
               " " + q.path + " 4M");
  }
  vdtest::sh("cp " + q.path + " " + v.path);
  const Geometry g = vdtest::write::qcow2_geometry(4 << 20, 4096);
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed, 2, 12));
}

INSTANTIATE_TEST_SUITE_P(Formats, EncryptedWorkload,
                         ::testing::Combine(::testing::Values("luks", "aes"), ::testing::Values(1u, 2u)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param)) + "Seed" +
                                  std::to_string(std::get<1>(info.param));
                         });

// ---- QCOW version 1 ----------------------------------------------------------------------

class QcowV1Workload : public ::testing::TestWithParam<uint64_t> {};

// qemu ignores discard on v1 and qemu-img check does not apply: content is compared only.
TEST_P(QcowV1Workload, QcowV1MatchesQemu) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  Target q{dir.file("q.qcow"), "qcow"}, v{dir.file("v.qcow"), "qcow"};
  vdtest::sh("qemu-img create -q -f qcow " + q.path + " 8M");
  vdtest::sh("cp " + q.path + " " + v.path);
  Geometry g{8 << 20, 4096, 2 << 20, false};
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Seeds, QcowV1Workload, ::testing::Values(1u, 2u, 3u));

TEST(WriteInterop, QcowV1DiscardIsIgnoredAsQemuDoes) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  Target q{dir.file("q.qcow"), "qcow"}, v{dir.file("v.qcow"), "qcow"};
  vdtest::sh("qemu-img create -q -f qcow " + q.path + " 4M");
  vdtest::sh("cp " + q.path + " " + v.path);
  vdtest::write::replay(q, v, {{"write -P 9 0 64k", "discard 0 64k", "flush"}, {"read -P 9 0 64k"}});
}

}  // namespace
