// No blocking call on the executor during the data path, for every kind of image: reads,
// allocating and in-place writes, write_zeroes (with and without unmap), discard, flush,
// block_status and compressed writes run while the MockIoProvider's data-path detector is on
// (Rig::run counts each request in flight until its completion runs), so any synchronous
// File call (size, set_size, allocated_size, extent_at, read, write, flush, discard, allocate)
// fails the test and names itself. Rig::run also fails a completion that runs inside the
// call that started it or more than once. Each case then checks the outcome: the disk reads
// what was written, qemu reads the same, and `qemu-img check` is clean.
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "faults/fault_fixture.h"
#include "support/qemu_fixtures.h"

namespace vdtest::faults {
namespace {

constexpr uint64_t kMiB = 1u << 20;

struct Case {
  Files files;
  OpenSpec spec;
  uint64_t cluster = 65536;  // the unit the workload aligns to
  bool qcow2 = true;         // top is qcow2: compressed writes, qemu-img check
  bool compress = true;      // try vd::write_compressed
  std::string qemu_format = "qcow2";
};

// What qemu reads of the whole disk from these bytes.
Bytes qemu_content(const Files& files, const Case& c) {
  TempDir dir;
  for (const auto& [name, bytes] : files) write_file(dir.file(name), bytes);
  // In the folder: qemu opens a relative external data file name from the working directory.
  const std::string cd = "cd '" + dir.path() + "' && ";
  if (!c.spec.passphrase) {
    sh(cd + "qemu-img convert -O raw -f " + c.qemu_format + " " + c.spec.top + " qemu.out");
  } else {
    const std::string key = c.qemu_format == "luks" ? "key-secret" : "encrypt.key-secret";
    sh(cd + "qemu-img convert -O raw --object secret,id=sec0,data=" + *c.spec.passphrase + " --image-opts driver=" +
       c.qemu_format + ",file.filename=" + c.spec.top + "," + key + "=sec0 qemu.out");
  }
  return read_file(dir.file("qemu.out"));
}

// qemu-io commands on a LUKS image (format luks) unlocked with the fixture passphrase.
std::string qemu_io_luks(const std::string& image, const std::vector<std::string>& commands) {
  std::string s = std::string("qemu-io --object secret,id=sec0,data=") + kFixturePassphrase + " --image-opts";
  for (const auto& c : commands) s += " -c '" + c + "'";
  return s + " driver=luks,file.filename=" + image + ",key-secret=sec0 >/dev/null";
}

// The synchronous calls made during a phase, one a kind (for the log and the report).
void log_sync_calls(const Rig& rig, size_t from, const std::string& phase) {
  std::map<std::string, int> kinds;
  const auto& all = rig.io.sync_on_data_path();
  for (size_t i = from; i < all.size(); ++i) {
    const IoCall& c = all[i];
    std::string k = std::string(to_string(c.op));
    if (c.op == IoOp::read || c.op == IoOp::write) k += c.kind == vd::IoKind::meta ? " meta" : " data";
    k += " '" + c.path + "'";
    ++kinds[k];
  }
  for (const auto& [k, n] : kinds)
    std::printf("[sync on data path] %s: %s x%d\n", phase.c_str(), k.c_str(), n);
}

// Runs one phase of the workload: `body`, then a flush, then checks the disk against the
// model (whole-disk read) and logs the synchronous calls it made.
class Workload {
 public:
  Workload(Rig& rig, const Case& c) : rig_(rig), c_(c) {}

  Bytes model;

  void phase(const std::string& name, const std::function<void()>& body) {
    SCOPED_TRACE("phase: " + name);
    const size_t from = rig_.io.sync_on_data_path().size();
    body();
    log_sync_calls(rig_, from, name);
    const size_t flush_from = rig_.io.sync_on_data_path().size();
    vd::Error e = rig_.flush();
    EXPECT_FALSE(e) << "flush after " << name << ": " << e.message();
    log_sync_calls(rig_, flush_from, name + " / its flush");
    const size_t read_from = rig_.io.sync_on_data_path().size();
    EXPECT_TRUE(rig_.read_all() == model) << "the disk differs from the model after " << name;
    log_sync_calls(rig_, read_from, name + " / read back");
  }

  void write(uint64_t offset, const Bytes& data, unsigned flags = 0) {
    vd::Error e = rig_.write(offset, data, flags);
    if ((flags & vd::write_compressed) && e.is(vd::Errc::not_supported)) return;
    ASSERT_FALSE(e) << "write at " << vd::hex(offset) << ": " << e.message();
    model = overlay(std::move(model), offset, data);
  }
  // A write that may be refused (the model changes only if it was done).
  void try_write(uint64_t offset, const Bytes& data, unsigned flags) {
    if (!rig_.write(offset, data, flags)) model = overlay(std::move(model), offset, data);
  }
  void zero(uint64_t offset, uint64_t length, unsigned flags) {
    vd::Error e = rig_.write_zeroes(offset, length, flags);
    ASSERT_FALSE(e) << "write_zeroes at " << vd::hex(offset) << ": " << e.message();
    model = overlay(std::move(model), offset, Bytes(length));
  }
  // Discarded ranges read whatever the format gives (zeros or the parent): take that.
  void discard(uint64_t offset, uint64_t length) {
    vd::Error e = rig_.discard(offset, length);
    if (e.is(vd::Errc::not_supported)) return;
    ASSERT_FALSE(e) << "discard at " << vd::hex(offset) << ": " << e.message();
    Bytes now(length);
    ASSERT_FALSE(rig_.run([&](vd::Completion done) { rig_.disk().read(offset, now, std::move(done)); }));
    model = overlay(std::move(model), offset, now);
  }
  // Reads the disk in odd-sized pieces (starting and ending inside clusters).
  void read_in_pieces() {
    const uint64_t size = rig_.disk().size();
    for (uint64_t at = 0; at < size;) {
      const uint64_t n = std::min<uint64_t>(size - at, 3 * c_.cluster + 1536);
      Bytes got(n);
      vd::Error e = rig_.run([&](vd::Completion done) { rig_.disk().read(at, got, std::move(done)); });
      ASSERT_FALSE(e) << "read at " << vd::hex(at) << ": " << e.message();
      ASSERT_TRUE(std::equal(got.begin(), got.end(), model.begin() + static_cast<std::ptrdiff_t>(at)))
          << "read at " << vd::hex(at) << " differs from the model";
      at += n;
    }
  }
  void block_status_all() {
    const uint64_t size = rig_.disk().size();
    int guard = 0;
    for (uint64_t at = 0; at < size; ++guard) {
      ASSERT_LT(guard, 100000) << "block_status makes no progress";
      auto r = rig_.block_status(at, size - at);
      ASSERT_TRUE(r) << "block_status at " << vd::hex(at) << ": " << r.error().message();
      ASSERT_GT(r->extent.length, 0u) << "block_status at " << vd::hex(at);
      at += r->extent.length;
    }
  }

 private:
  Rig& rig_;
  const Case& c_;
};

// The whole workload on one image, then the outcome checks.
void run_case(const Case& c) {
  Files after;
  Bytes model;
  {
    Rig rig(c.files);
    vd::Error e = rig.open(c.spec);
    ASSERT_FALSE(e) << "open: " << e.message();
    Workload w(rig, c);
    w.model = rig.read_all();
    EXPECT_TRUE(w.model == qemu_content(c.files, c)) << "vd and qemu read the fixture differently";
    const uint64_t cs = c.cluster;
    const uint64_t size = rig.disk().size();
    ASSERT_GE(size, 4 * kMiB);

    w.phase("reads", [&] { w.read_in_pieces(); });
    w.phase("block_status", [&] { w.block_status_all(); });
    w.phase("allocating writes", [&] {
      w.write(2 * kMiB, pattern(2 * cs, 1));                      // whole clusters
      w.write(2 * kMiB + 4 * cs + 100, pattern(cs / 2, 2));       // part of a cluster (parent below)
      w.write(3 * kMiB - cs / 2, pattern(2 * cs, 3));             // across clusters, unaligned
      w.write(kMiB + 8 * cs + 7, pattern(cs / 3 + 1, 4));         // part of a cluster near data
    });
    w.phase("in-place writes", [&] {
      w.write(2 * kMiB + 10, pattern(1000, 5));                   // into what the phase above wrote
      w.write(100, pattern(3000, 6));                              // into the fixture's data
      w.write(kMiB, pattern(cs, 7));                               // a whole fixture cluster
    });
    w.phase("write_zeroes", [&] {
      w.zero(2 * kMiB + cs, cs, 0);                                // aligned, allocated
      w.zero(500, 3000, 0);                                        // unaligned
      w.zero(3 * kMiB + 4 * cs, 2 * cs, 0);                        // unallocated
    });
    w.phase("write_zeroes unmap", [&] {
      w.zero(2 * kMiB, cs, vd::zero_may_unmap);                    // allocated cluster
      w.zero(kMiB + 700, 2 * cs, vd::zero_may_unmap);              // unaligned over data
      w.zero(3 * kMiB + 8 * cs, 2 * cs, vd::zero_may_unmap);       // unallocated
    });
    w.phase("discard", [&] {
      w.discard(cs, cs);                                           // a fixture cluster
      w.discard(3 * kMiB - cs, 2 * cs);                            // clusters written above
      w.discard(kMiB + 3 * cs + 100, cs);                          // partial: may be ignored
    });
    if (c.compress) {
      w.phase("compressed writes", [&] {
        w.write(3 * kMiB + 12 * cs, fill(cs, 0x5a), vd::write_compressed);  // unallocated
        w.write(3 * kMiB + 13 * cs, pattern(cs, 8), vd::write_compressed);  // incompressible
        // Over an allocated cluster: refused (as by qemu) or done, but posted either way.
        w.try_write(2 * kMiB + 4 * cs, fill(cs, 0x6b), vd::write_compressed);
      });
      w.phase("write over compressed", [&] { w.write(3 * kMiB + 12 * cs + 300, pattern(700, 9)); });
    }
    w.phase("block_status after writes", [&] { w.block_status_all(); });
    w.phase("final reads", [&] { w.read_in_pieces(); });
    model = w.model;
    EXPECT_FALSE(rig.disk().close()) << "close";
    after = rig.snapshot();
  }
  if (c.qcow2) {
    CheckOutcome chk = qemu_check(after, c.spec.top, "qcow2", c.spec.passphrase);
    EXPECT_TRUE(chk.clean()) << chk.output;
  }
  EXPECT_TRUE(qemu_content(after, c) == model) << "qemu reads other bytes than were written";
  Rig again(after);
  ASSERT_FALSE(again.open(c.spec));
  EXPECT_TRUE(again.read_all() == model) << "reopened, vd reads other bytes than were written";
}

// Data the fixtures hold: two runs of clusters, so there is allocated and unallocated space.
std::string fixture_writes(const std::string& image, const std::string& fmt, const std::string& extra = "") {
  return "qemu-io -f " + fmt + " -c 'write -P 0x11 0 192k' -c 'write -P 0x12 1M 300k' " + extra + image +
         " >/dev/null";
}

Case qcow2_case(const std::string& opts, uint64_t cluster) {
  Case c;
  c.files = make_files("qemu-img create -q -f qcow2 -o " + opts + " top.qcow2 4M && " +
                           fixture_writes("top.qcow2", "qcow2"),
                       {"top.qcow2"});
  c.cluster = cluster;
  return c;
}

TEST(NoBlocking, Qcow2V3Cluster64k) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("cluster_size=64k", 65536));
}

TEST(NoBlocking, Qcow2V3Cluster4k) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("cluster_size=4k", 4096));
}

TEST(NoBlocking, Qcow2V3Cluster512) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("cluster_size=512", 512));
}

TEST(NoBlocking, Qcow2V2Compat010) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("compat=0.10,cluster_size=4k", 4096));
}

TEST(NoBlocking, Qcow2ExtendedL2) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("cluster_size=64k,extended_l2=on", 65536));
}

TEST(NoBlocking, Qcow2LazyRefcounts) {
  VD_REQUIRE_QEMU();
  run_case(qcow2_case("cluster_size=4k,lazy_refcounts=on", 4096));
}

TEST(NoBlocking, Qcow2CompressedClusters) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 4M && "
      "qemu-io -c 'write -c -P 0x21 0 64k' -c 'write -c -P 0x22 1M 64k' -c 'write -P 0x23 1088k 8k' top.qcow2",
      {"top.qcow2"});
  c.cluster = 4096;
  run_case(c);
}

TEST(NoBlocking, Qcow2ExternalDataFile) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files("qemu-img create -q -f qcow2 -o cluster_size=4k,data_file=top.data top.qcow2 4M && " +
                           fixture_writes("top.qcow2", "qcow2"),
                       {"top.qcow2", "top.data"});
  c.cluster = 4096;
  c.compress = false;  // qcow2 cannot compress into an external data file
  run_case(c);
}

TEST(NoBlocking, Qcow2ExternalDataFileRaw) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k,data_file=top.data,data_file_raw=on top.qcow2 4M && " +
          fixture_writes("top.qcow2", "qcow2"),
      {"top.qcow2", "top.data"});
  c.cluster = 4096;
  c.compress = false;
  run_case(c);
}

TEST(NoBlocking, Qcow2LuksEncrypted) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(qemu_img_create_luks_sh("qcow2", "cluster_size=4k,encrypt.format=luks,encrypt.key-secret=sec0",
                                               "top.qcow2", "4M", kFixturePassphrase) +
                           " && " +
                           qemu_io_encrypted("top.qcow2", "qcow2", {"write -P 0x11 0 192k", "write -P 0x12 1M 300k"}),
                       {"top.qcow2"});
  c.spec.passphrase = kFixturePassphrase;
  c.cluster = 4096;
  run_case(c);
}

TEST(NoBlocking, Qcow2OverQcow2) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 4M && "
      "qemu-io -c 'write -P 0x33 0 4M' base.qcow2 >/dev/null && "
      "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 4M && " +
          fixture_writes("top.qcow2", "qcow2"),
      {"top.qcow2", "base.qcow2"});
  c.spec.base = "base.qcow2";
  c.cluster = 4096;
  run_case(c);
}

TEST(NoBlocking, Qcow2OverRaw) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(
      "qemu-img create -q -f raw base.raw 4M && qemu-io -f raw -c 'write -P 0x33 0 4M' base.raw >/dev/null && "
      "qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw top.qcow2 4M && " +
          fixture_writes("top.qcow2", "qcow2"),
      {"top.qcow2", "base.raw"});
  c.spec.base = "base.raw";
  c.cluster = 65536;
  run_case(c);
}

TEST(NoBlocking, QcowV1) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files("qemu-img create -q -f qcow top.qcow 4M && " + fixture_writes("top.qcow", "qcow"),
                       {"top.qcow"});
  c.spec.top = "top.qcow";
  c.spec.top_format = "qcow";
  c.qemu_format = "qcow";
  c.qcow2 = false;
  c.compress = false;
  c.cluster = 4096;
  run_case(c);
}

TEST(NoBlocking, Raw) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files("qemu-img create -q -f raw top.raw 4M && " + fixture_writes("top.raw", "raw"), {"top.raw"});
  c.spec.top = "top.raw";
  c.spec.top_format = "raw";
  c.qemu_format = "raw";
  c.qcow2 = false;
  c.compress = false;
  c.cluster = 4096;
  run_case(c);
}

TEST(NoBlocking, Luks) {
  VD_REQUIRE_QEMU();
  Case c;
  c.files = make_files(qemu_img_create_luks_sh("luks", "key-secret=sec0", "top.luks", "4M", kFixturePassphrase) +
                           " && " +
                           qemu_io_luks("top.luks", {"write -P 0x11 0 192k", "write -P 0x12 1M 300k"}),
                       {"top.luks"});
  c.spec.top = "top.luks";
  c.spec.top_format = "luks";
  c.spec.passphrase = kFixturePassphrase;
  c.qemu_format = "luks";
  c.qcow2 = false;
  c.compress = false;
  c.cluster = 4096;
  run_case(c);
}

// Requests refused before any I/O (out of range, a compressed write that cannot be done)
// still complete through the executor, never inside the call that made them (Rig::run
// fails the test otherwise; whether each is refused is not what this test is about).
TEST(NoBlocking, RefusedRequestsCompletePosted) {
  VD_REQUIRE_QEMU();
  struct Kind {
    std::string name, script, top, format;
  };
  const std::vector<Kind> kinds = {
      {"qcow2", "qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 4M && " + fixture_writes("top.qcow2", "qcow2"),
       "top.qcow2", "qcow2"},
      {"raw", "qemu-img create -q -f raw top.raw 4M", "top.raw", "raw"},
      {"qcow", "qemu-img create -q -f qcow top.qcow 4M", "top.qcow", "qcow"},
  };
  for (const auto& k : kinds) {
    SCOPED_TRACE(k.name);
    Rig rig(make_files(k.script, {k.top}));
    OpenSpec spec;
    spec.top = k.top;
    spec.top_format = k.format;
    ASSERT_FALSE(rig.open(spec));
    const uint64_t end = rig.disk().size();
    Bytes buf(4096);
    {
      SCOPED_TRACE("read past the end");
      rig.run([&](vd::Completion c) { rig.disk().read(end, buf, std::move(c)); });
    }
    {
      SCOPED_TRACE("write past the end");
      rig.write(end - 512, buf);
    }
    {
      SCOPED_TRACE("write_zeroes past the end");
      rig.write_zeroes(end, 4096, 0);
    }
    {
      SCOPED_TRACE("discard past the end");
      rig.discard(end, 4096);
    }
    {
      SCOPED_TRACE("compressed write of part of a cluster");
      rig.write(2 * kMiB + 512, Bytes(512), vd::write_compressed);
    }
    {
      SCOPED_TRACE("compressed write over an allocated cluster");
      rig.write(0, fill(4096, 0x77), vd::write_compressed);
    }
  }
}

// 512-byte clusters with 16-bit refcounts: a refcount block covers 256 clusters (128 KiB), so
// 6 MiB of data need dozens of them. Opened afresh, none is loaded: allocating into
// unallocated space, discarding allocated space and flushing (which applies the released
// refcounts) must load refcount blocks on the data path, asynchronously.
TEST(NoBlocking, RefcountBlocksLoadedOnTheDataPath) {
  VD_REQUIRE_QEMU();
  const Files files = make_files(
      "qemu-img create -q -f qcow2 -o cluster_size=512 top.qcow2 8M && "
      "qemu-io -c 'write -P 0x41 0 3M' -c 'write -P 0x42 4M 3M' top.qcow2 >/dev/null",
      {"top.qcow2"});
  Case c;
  c.files = files;
  c.cluster = 512;
  Bytes model;
  Files after;
  {
    Rig rig(files);
    OpenSpec spec;
    spec.cache_bytes = 4096;  // few tables cached: reloads on the data path too
    ASSERT_FALSE(rig.open(spec));
    Workload w(rig, c);
    w.model = rig.read_all();
    w.phase("allocate into unallocated space", [&] {
      for (uint64_t k = 0; k < 16; ++k) w.write(3 * kMiB + k * 40000 + 13, pattern(3000, 50 + k));
      w.write(7 * kMiB + 512, pattern(64 * 1024, 70));
    });
    w.phase("discard allocated space", [&] {
      w.discard(0, 64 * 1024);
      w.discard(2 * kMiB, 256 * 1024);
      w.discard(5 * kMiB + 512 * 7, 512 * 300);
    });
    w.phase("reuse released clusters", [&] {
      for (uint64_t k = 0; k < 8; ++k) w.write(kMiB + k * 100000, pattern(5000, 80 + k));
    });
    w.phase("zeroes with unmap", [&] { w.zero(4 * kMiB, 128 * 1024, vd::zero_may_unmap); });
    model = w.model;
    EXPECT_FALSE(rig.disk().close());
    after = rig.snapshot();
  }
  CheckOutcome chk = qemu_check(after, "top.qcow2");
  EXPECT_TRUE(chk.clean()) << chk.output;
  EXPECT_TRUE(qemu_content(after, c) == model);
}

// Several allocating writes, a flush and a discard in flight together, every I/O completion
// held and fired in a random order: no synchronous call, each completion runs once (posted),
// and the result is the serial model.
TEST(NoBlocking, HeldCompletionsInRandomOrder) {
  VD_REQUIRE_QEMU();
  const Files files = make_files(
      "qemu-img create -q -f raw base.raw 4M && qemu-io -f raw -c 'write -P 0x33 0 4M' base.raw >/dev/null && "
      "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw top.qcow2 4M && "
      "qemu-io -c 'write -P 0x11 0 64k' top.qcow2 >/dev/null",
      {"top.qcow2", "base.raw"});
  OpenSpec spec;
  spec.base = "base.raw";
  for (uint32_t seed = 1; seed <= 6 && !::testing::Test::HasFailure(); ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Rig rig(files);
    ASSERT_FALSE(rig.open(spec));
    Bytes model = rig.read_all();
    struct Piece {
      uint64_t offset;
      Bytes data;
    };
    std::vector<Piece> pieces;
    for (uint64_t k = 0; k < 4; ++k) pieces.push_back({kMiB + k * 1024 + 100, pattern(700, seed + k)});  // one cluster
    pieces.push_back({2 * kMiB, pattern(8192, seed + 10)});                                              // whole clusters
    pieces.push_back({2 * kMiB + 12288 + 77, pattern(5000, seed + 11)});                                 // across
    pieces.push_back({3 * kMiB + 5, pattern(2000, seed + 12)});                                          // new L2 range
    for (const auto& p : pieces) model = overlay(model, p.offset, p.data);

    rig.io.hold(true);
    int writes = 0, flushes = 0, discards = 0;
    auto ok = [](int& n) {
      return [&n](vd::Error e) {
        ++n;
        EXPECT_FALSE(e) << e.message();
      };
    };
    for (size_t i = 0; i < pieces.size(); ++i) {
      rig.start([&, i](vd::Completion c) { rig.disk().write(pieces[i].offset, pieces[i].data, 0, std::move(c)); },
                ok(writes));
      if (i == 2) rig.start([&](vd::Completion c) { rig.disk().flush(std::move(c)); }, ok(flushes));
      if (i == 4) rig.start([&](vd::Completion c) { rig.disk().discard(16384, 16384, std::move(c)); }, ok(discards));
    }
    ASSERT_TRUE(rig.drive([&] { return writes == int(pieces.size()) && flushes == 1 && discards == 1; }, seed))
        << rig.io.held() << " held\n" << calls_text(rig.io);
    rig.io.hold(false);
    rig.ctx.restart();
    rig.ctx.run();
    EXPECT_EQ(rig.io.data_path_in_flight(), 0u);
    Bytes discarded(16384);
    ASSERT_FALSE(rig.run([&](vd::Completion c) { rig.disk().read(16384, discarded, std::move(c)); }));
    model = overlay(model, 16384, discarded);
    ASSERT_FALSE(rig.flush());
    EXPECT_TRUE(rig.read_all() == model) << "the result differs from the serial model";
    expect_recovers(rig.snapshot(), spec, {&model, nullptr, 512, false});
  }
}

}  // namespace
}  // namespace vdtest::faults
