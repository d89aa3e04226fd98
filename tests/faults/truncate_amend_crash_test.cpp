// Power loss during the synchronous metadata rewrites added for qemu-img's commit, resize
// --shrink and amend: emptying the top of a chain (make_empty), shrinking, changing the
// refcount width and downgrading to compat=0.10. The power goes off after every possible
// number of changes in turn; what survives (unflushed changes dropped, or a random subset of
// them written back in random order) must check with nothing worse than leaks and read as
// the image read before (for make_empty: the chain, whose base holds the same data).
#include <algorithm>
#include <random>

#include "backends/builtin.h"
#include "faults/crash_io.h"
#include "faults/fault_fixture.h"

namespace vdtest::faults {
namespace {

using Operation = std::function<vd::Error(vd::Image&)>;

// Runs `op` on top.qcow2 with the power lost after `budget` changes; returns the survivors,
// and whether the operation finished before the power went.
Files crash_during(const Files& fixture, const Operation& op, uint64_t budget, std::mt19937* rng, bool& finished) {
  boost::asio::io_context ctx;
  CrashIoProvider storage(ctx.get_executor());
  for (const auto& [name, bytes] : fixture)
    if (name.ends_with(".qcow2")) storage.load(name, bytes);
  storage.lose_power_after(budget);
  vd::OpenOptions o;
  o.flags = vd::open_format_given;
  Files out;
  {
    auto img = vd::backends::qcow2().open("top.qcow2", o, storage);
    finished = img && !op(**img) && storage.powered();
    for (auto& [name, bytes] : storage.survivors(rng)) out[name] = std::move(bytes);
  }
  return out;
}

// Every budget until the operation completes; `expect_read` gets the survivors' content.
// With `sizes` (a resize: the old and the new size), the image must have one of them and
// read as `want` up to `want_len`, zeros after.
void sweep(const Files& fixture, const Operation& op, const OpenSpec& spec, const Bytes& want, uint64_t want_len,
           const std::vector<uint64_t>& sizes = {}) {
  std::mt19937 rng(7);
  for (uint64_t budget = 0; budget < 400; ++budget) {
    for (bool reorder : {false, true}) {
      SCOPED_TRACE("power lost after " + std::to_string(budget) + " changes" + (reorder ? ", reordered" : ""));
      bool finished = false;
      Files survivors = crash_during(fixture, op, budget, reorder ? &rng : nullptr, finished);
      for (const auto& [name, bytes] : fixture)
        if (!survivors.count(name)) survivors[name] = bytes;
      CheckOutcome chk = qemu_check(survivors, "top.qcow2");
      EXPECT_TRUE(chk.clean_or_leaks()) << chk.output;
      Rig rig(survivors);
      vd::Error e = rig.open(spec);
      ASSERT_FALSE(e) << e.message();
      Bytes got = rig.read_all();
      if (!sizes.empty()) {
        EXPECT_NE(std::find(sizes.begin(), sizes.end(), rig.top().size()), sizes.end()) << rig.top().size();
        EXPECT_EQ(got.size(), rig.top().size());
        for (uint64_t i = want_len; i < got.size(); ++i)
          if (got[i] != std::byte{0}) {
            ADD_FAILURE() << "byte " << i << " past the old size is not zero";
            break;
          }
      }
      got.resize(std::min<uint64_t>(got.size(), want_len));
      EXPECT_TRUE(got == Bytes(want.begin(), want.begin() + static_cast<long>(want_len)));
      if (finished) {
        EXPECT_GT(budget, 1u) << "the operation changed too little to be swept";
        return;
      }
    }
  }
  ADD_FAILURE() << "the operation never finished";
}

TEST(CrashRewrite, MakeEmptyKeepsTheChainReadingTheSame) {
  // The top and the base hold the same data (as after a commit's copy): emptying the top
  // at any point must leave the chain reading that data.
  Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 1M && "
                       "qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 top.qcow2 && "
                       "for i in base top; do qemu-io -c 'write -P 0x11 0 64k' -c 'write -z 64k 8k' "
                       "-c 'write -c -P 0x22 512k 8k' -c 'write -P 0x33 900k 12k' $i.qcow2 >/dev/null; done && "
                       "qemu-img convert -O raw top.qcow2 initial",
                       {"base.qcow2", "top.qcow2", "initial"});
  OpenSpec spec;
  spec.base = "base.qcow2";
  sweep(f, [](vd::Image& img) { return img.make_empty(); }, spec, f.at("initial"), f.at("initial").size());
}

TEST(CrashRewrite, ShrinkKeepsWhatStays) {
  Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 1M && "
                       "qemu-io -c 'write -P 0x11 0 300k' -c 'write -P 0x22 500k 100k' -c 'write -z 700k 8k' "
                       "top.qcow2 >/dev/null && qemu-img snapshot -c s top.qcow2 && "
                       "qemu-io -c 'write -P 0x44 400k 16k' top.qcow2 >/dev/null && "
                       "qemu-img convert -O raw top.qcow2 initial",
                       {"top.qcow2", "initial"});
  sweep(f, [](vd::Image& img) { return img.resize(410 * 1024); }, {}, f.at("initial"), 410 * 1024);
}

// Growing with preallocation=metadata: the L1 table moves, new L2 tables and clusters are
// allocated (the partial cluster at the old end copied on write), then the size changes.
// Whatever survives has the old size or the new one and reads the same below the old size.
TEST(CrashRewrite, GrowWithMetadataPreallocationKeepsTheImage) {
  Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 1000k && "
                       "qemu-io -c 'write -P 0x11 0 300k' -c 'write -z 300k 40k' -c 'write -P 0x22 990k 10k' "
                       "top.qcow2 >/dev/null && qemu-img convert -O raw top.qcow2 initial",
                       {"top.qcow2", "initial"});
  const uint64_t old_size = 1000 * 1024, new_size = 2600 * 1024;  // the L1 table grows (2M per L2)
  vd::ResizeOptions ro;
  ro.preallocation = vd::Preallocation::metadata;
  sweep(f, [ro](vd::Image& img) { return img.resize(new_size, ro); }, {}, f.at("initial"), old_size,
        {old_size, new_size});
}

// Shrinking an image of 512-byte clusters drops the refcount blocks left empty (the
// reftable written first): a crash leaks at most, and the image keeps what stays.
TEST(CrashRewrite, ShrinkDroppingRefcountBlocksKeepsWhatStays) {
  Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=512 top.qcow2 600k && "
                       "qemu-io -c 'write -P 0x11 0 100k' -c 'write -P 0x22 400k 150k' top.qcow2 >/dev/null && "
                       "qemu-img convert -O raw top.qcow2 initial",
                       {"top.qcow2", "initial"});
  sweep(f, [](vd::Image& img) { return img.resize(120 * 1024); }, {}, f.at("initial"), 120 * 1024);
}

TEST(CrashRewrite, RefcountWidthChangeAndDowngradeKeepTheImage) {
  Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=4k top.qcow2 1M && "
                       "qemu-img create -q -f qcow2 -o cluster_size=4k b.qcow2 1M && "
                       "qemu-io -c 'write -P 0x11 0 300k' -c 'write -z 300k 40k' -c 'write -c -P 0x22 512k 8k' "
                       "top.qcow2 >/dev/null && qemu-img convert -O raw top.qcow2 initial",
                       {"top.qcow2", "initial"});
  for (const char* options : {"refcount_bits=2", "refcount_bits=64", "compat=0.10"}) {
    SCOPED_TRACE(options);
    vd::AmendOptions a;
    std::string o = options;
    a.options[o.substr(0, o.find('='))] = o.substr(o.find('=') + 1);
    sweep(f, [a](vd::Image& img) { return img.amend(a); }, {}, f.at("initial"), f.at("initial").size());
  }
}

}  // namespace
}  // namespace vdtest::faults
