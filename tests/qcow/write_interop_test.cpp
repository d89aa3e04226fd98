// Random write/zero/discard/flush workloads through qemu-io and vdimg io on plain QCOW2
// images of every create option that changes the write path: compat 0.10 and 1.1, cluster
// sizes 512 B to 2 MiB, refcount widths 1 to 64, lazy refcounts, subclusters. The copies must
// read the same afterwards and vdimg's must check clean (write_interop.h).
#include "qcow/write_interop.h"

namespace {

using vdtest::TempDir;
using vdtest::write::Geometry;
using vdtest::write::Target;

struct PlainKind {
  const char* name;
  const char* options;  // qemu-img create -o
  uint64_t size;
  uint64_t cluster;
  bool extended_l2 = false;
};

const PlainKind kPlainKinds[] = {
    {"Compat010", "compat=0.10", 8 << 20, 65536},
    {"Compat11", "compat=1.1", 8 << 20, 65536},
    {"Cluster512", "cluster_size=512", 4 << 20, 512},
    {"Cluster512Compat010", "compat=0.10,cluster_size=512", 4 << 20, 512},
    {"Cluster4k", "cluster_size=4096", 16 << 20, 4096},
    {"Cluster4kCompat010", "compat=0.10,cluster_size=4096", 8 << 20, 4096},
    {"Cluster2M", "cluster_size=2M", 16 << 20, 2 << 20},
    {"Refcount1", "refcount_bits=1,cluster_size=4096", 8 << 20, 4096},
    {"Refcount16", "refcount_bits=16", 8 << 20, 65536},
    {"Refcount64", "refcount_bits=64,cluster_size=4096", 8 << 20, 4096},
    {"Cluster512Refcount64", "refcount_bits=64,cluster_size=512", 4 << 20, 512},
    {"Cluster512Refcount2", "refcount_bits=2,cluster_size=512", 4 << 20, 512},
    {"LazyRefcounts", "lazy_refcounts=on,cluster_size=4096", 8 << 20, 4096},
    {"ExtendedL2", "extended_l2=on", 8 << 20, 65536, true},
    {"ExtendedL2Cluster16k", "extended_l2=on,cluster_size=16k", 8 << 20, 16384, true},
    {"ExtendedL2Cluster2M", "extended_l2=on,cluster_size=2M", 16 << 20, 2 << 20, true},
};

void PrintTo(const PlainKind& k, std::ostream* os) { *os << k.name; }

class PlainWorkload : public ::testing::TestWithParam<std::tuple<PlainKind, uint64_t>> {};

TEST_P(PlainWorkload, ReadsAsQemuAndChecksClean) {
  VD_REQUIRE_QEMU();
  const auto& [kind, seed] = GetParam();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  const std::string size = std::to_string(kind.size);
  vdtest::sh("qemu-img create -q -f qcow2 -o " + std::string(kind.options) + " " + q.path + " " + size);
  vdtest::sh("cp " + q.path + " " + v.path);
  const Geometry g = vdtest::write::qcow2_geometry(kind.size, kind.cluster, kind.extended_l2);
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, seed));
}

std::string plain_name(const ::testing::TestParamInfo<PlainWorkload::ParamType>& info) {
  return std::string(std::get<0>(info.param).name) + "Seed" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Kinds, PlainWorkload,
                         ::testing::Combine(::testing::ValuesIn(kPlainKinds), ::testing::Values(1u, 2u, 3u)),
                         plain_name);

// Many short sessions on a small-cluster image: state (refcounts, freed clusters, packed
// tables) must survive a reopen every few commands.
TEST(WriteInterop, ManyReopensKeepTheImageConsistent) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  vdtest::sh("qemu-img create -q -f qcow2 -o cluster_size=512 " + q.path + " 4M");
  vdtest::sh("cp " + q.path + " " + v.path);
  const Geometry g = vdtest::write::qcow2_geometry(4 << 20, 512);
  vdtest::write::replay(q, v, vdtest::write::make_workload(g, 77, 10, 5));
}

// An image whose size is not a multiple of the cluster size: the last cluster is partial.
TEST(WriteInterop, UnalignedImageSizeMatchesQemu) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  Target q{dir.file("q.qcow2")}, v{dir.file("v.qcow2")};
  const uint64_t size = (5 << 20) + 12345 * 512ull % (1 << 20);
  vdtest::sh("qemu-img create -q -f qcow2 " + q.path + " " + std::to_string(size));
  vdtest::sh("cp " + q.path + " " + v.path);
  Geometry g = vdtest::write::qcow2_geometry(size, 65536);
  auto w = vdtest::write::make_workload(g, 5);
  w.push_back({"write -P 7 " + std::to_string(size - 70000) + " 70000", "discard " + std::to_string(size - 65536 * 2) +
                                                                            " " + std::to_string(65536 * 2),
               "write -z " + std::to_string(size - 1000) + " 1000"});
  vdtest::write::replay(q, v, w);
}

}  // namespace
