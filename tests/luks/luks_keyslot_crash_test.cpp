// Power lost in the middle of a key slot amend (backends/crypto/luks_keyslots.cpp): after
// every possible number of writes, and with the interrupted write torn at a sector boundary,
// the volume must still open with a key the user knows (the old one, or the new one once it
// is in), to the same master key, and no slot may be active without key material that opens.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>

#include "backends/crypto/luks.h"
#include "support/sync_file.h"

namespace {

using vd::Errc;
using vd::Error;
using namespace vd::qcow;

// A file in memory whose power goes off after `budget` writes: the next write lands torn (up
// to its first sector boundary) or not at all, and every later write and flush fails. The key slot code
// flushes after each write, so what landed before the cut is what a real disk keeps.
class PowerCutFile : public vdtest::SyncFile {
 public:
  std::vector<std::byte> bytes;
  std::optional<uint64_t> budget;
  bool torn = false;
  uint64_t writes = 0;

  const std::string& path() const override { return path_; }
  vd::Result<uint64_t> size() override { return static_cast<uint64_t>(bytes.size()); }
  Error set_size(uint64_t n) override {
    bytes.resize(n);
    return {};
  }
  Error read(vd::IoKind, uint64_t off, std::span<std::byte> buf) override {
    if (off > bytes.size() || buf.size() > bytes.size() - off) return Error(Errc::io, "read past the end");
    std::memcpy(buf.data(), bytes.data() + off, buf.size());
    return {};
  }
  Error write(vd::IoKind, uint64_t off, std::span<const std::byte> buf) override {
    if (dead_) return Error(Errc::io, "power lost");
    size_t n = buf.size();
    if (budget && writes >= *budget) {
      dead_ = true;
      if (!torn) return Error(Errc::io, "power lost");
      // Sectors land whole: the write is torn at its first sector boundary, if it has one.
      const uint64_t boundary = (off / 512 + 1) * 512;
      n = boundary < off + n ? static_cast<size_t>(boundary - off) : 0;
    }
    ++writes;
    if (off + n > bytes.size()) bytes.resize(off + n);
    std::memcpy(bytes.data() + off, buf.data(), n);
    return dead_ ? Error(Errc::io, "power lost") : Error{};
  }
  Error flush() override { return dead_ ? Error(Errc::io, "power lost") : Error{}; }
  Error discard(uint64_t, uint64_t) override { return {}; }
  Error allocate(uint64_t, uint64_t) override { return {}; }
  bool dead() const { return dead_; }

 private:
  std::string path_ = "mem.luks";
  bool dead_ = false;
};

struct Volume {
  std::vector<std::byte> bytes;
  std::vector<std::byte> master_key;
  uint64_t payload = 0;
};

// A volume with slot 0 opened by "pw0" (1000 iterations: cheap to open).
Volume make_volume() {
  PowerCutFile f;
  LuksCreateOptions o;
  o.iterations = 1000;
  auto v = luks_create(f, 0, "pw0", o, "mem.luks");
  EXPECT_TRUE(v.ok()) << v.error().message();
  Volume out;
  out.bytes = f.bytes;
  out.payload = v->info.payload_offset;
  auto mk = v->master_key.span();
  out.master_key.assign(mk.begin(), mk.end());
  return out;
}

// The LUKS header at the start of `bytes`, parsed.
vd::Result<LuksInfo> header_of(const std::vector<std::byte>& bytes) {
  return luks_parse(std::span(bytes.data(), kLuksHeaderSize), "mem.luks");
}

// Runs an amend on a copy of `vol` with the power cut after `budget` writes; returns the copy.
PowerCutFile amend_with_cut(const Volume& vol, const std::map<std::string, std::string>& options, bool force,
                            std::optional<uint64_t> budget, bool torn, Error& result) {
  PowerCutFile f;
  f.bytes = vol.bytes;
  auto info = header_of(vol.bytes);
  EXPECT_TRUE(info.ok());
  f.budget = budget;
  f.torn = torn;
  const LuksArea area{f, 0, vol.payload, "mem.luks"};
  result = luks_amend(area, *info, vol.master_key, options, "", force);
  return f;
}

// Whether `pw` opens the volume in `f`, to the volume's master key; and every active slot
// opens with one of the keys (an active slot must never point at unfinished material).
bool opens(PowerCutFile& f, const Volume& vol, const std::string& pw) {
  PowerCutFile copy;
  copy.bytes = f.bytes;
  auto info = header_of(f.bytes);
  EXPECT_TRUE(info.ok());
  if (!info) return false;
  const LuksArea area{copy, 0, vol.payload, "mem.luks"};
  std::vector<std::byte> mk(info->key_bytes);
  for (unsigned i = 0; i < kLuksNumSlots; ++i) {
    if (!info->slots[i].active) continue;
    auto a = luks_slot_unlocks(area, *info, i, "pw0", mk), b = luks_slot_unlocks(area, *info, i, "pw1", mk);
    EXPECT_TRUE((a.ok() && *a) || (b.ok() && *b)) << "slot " << i << " is active but opens with no key";
  }
  auto v = luks_unlock(copy, 0, vol.payload, pw, "mem.luks");
  if (!v) return false;
  auto got = v->master_key.span();
  return std::vector<std::byte>(got.begin(), got.end()) == vol.master_key;
}

std::map<std::string, std::string> with_secrets(std::map<std::string, std::string> o) {
  for (const char* id : {"pw0", "pw1"}) o[std::string(kLuksAmendSecretPrefix) + id] = id;
  return o;
}

// Every cut until the amend completes; `check` judges each survivor.
void sweep(const Volume& vol, const std::map<std::string, std::string>& options, bool force,
           const std::function<void(PowerCutFile&, bool finished)>& check) {
  for (uint64_t budget = 0; budget < 64; ++budget) {
    for (bool torn : {false, true}) {
      SCOPED_TRACE("power lost after " + std::to_string(budget) + " writes" + (torn ? ", the next torn" : ""));
      Error result;
      PowerCutFile f = amend_with_cut(vol, options, force, budget, torn, result);
      const bool finished = !result && !f.dead();
      check(f, finished);
      if (finished) {
        EXPECT_GE(budget, 2u) << "the amend wrote too little to be swept";
        return;
      }
    }
  }
  ADD_FAILURE() << "the amend never finished";
}

TEST(LuksKeySlotCrash, AddingAKeyKeepsTheOldOne) {
  const Volume vol = make_volume();
  sweep(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"iter-time", "0"}}), false,
        [&](PowerCutFile& f, bool finished) {
          EXPECT_TRUE(opens(f, vol, "pw0"));
          if (finished) { EXPECT_TRUE(opens(f, vol, "pw1")); }
        });
}

// Slot 6's entry straddles the header's first sector boundary.
TEST(LuksKeySlotCrash, AddingAndErasingSlot6NeverLeavesAHalfEntryActive) {
  Volume vol = make_volume();
  Error e;
  sweep(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"keyslot", "6"}, {"iter-time", "0"}}), false,
        [&](PowerCutFile& f, bool finished) {
          EXPECT_TRUE(opens(f, vol, "pw0"));
          if (finished) {
            EXPECT_TRUE(opens(f, vol, "pw1"));
            vol.bytes = f.bytes;
          }
        });
  sweep(vol, with_secrets({{"state", "inactive"}, {"keyslot", "6"}}), false, [&](PowerCutFile& f, bool finished) {
    EXPECT_TRUE(opens(f, vol, "pw0"));
    if (finished) { EXPECT_FALSE(opens(f, vol, "pw1")); }
  });
}

TEST(LuksKeySlotCrash, ErasingAKeyKeepsTheOthers) {
  Volume vol = make_volume();
  Error e;
  PowerCutFile two = amend_with_cut(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"iter-time", "0"}}),
                                    false, std::nullopt, false, e);
  ASSERT_FALSE(e) << e.message();
  vol.bytes = two.bytes;
  sweep(vol, with_secrets({{"state", "inactive"}, {"old-secret", "pw0"}}), false, [&](PowerCutFile& f, bool finished) {
    EXPECT_TRUE(opens(f, vol, "pw1"));
    if (finished) { EXPECT_FALSE(opens(f, vol, "pw0")); }
  });
}

// --force over the only active slot: at every moment the old key or the new one opens it.
TEST(LuksKeySlotCrash, ReplacingTheOnlySlotAlwaysLeavesAKey) {
  const Volume vol = make_volume();
  sweep(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"keyslot", "0"}, {"iter-time", "0"}}), true,
        [&](PowerCutFile& f, bool finished) {
          EXPECT_TRUE(opens(f, vol, "pw0") || opens(f, vol, "pw1"));
          if (finished) {
            EXPECT_TRUE(opens(f, vol, "pw1"));
            EXPECT_FALSE(opens(f, vol, "pw0"));
            auto info = header_of(f.bytes);
            ASSERT_TRUE(info.ok());
            EXPECT_EQ(info->active_slots(), 1u);  // the staging slot is gone again
            EXPECT_TRUE(info->slots[0].active);
          }
        });
}

// All 8 slots in use: no free slot for a new key (qemu-img's refusal), and --force over one
// of them rewrites it in place (no slot to stage in) while the 7 others keep the volume open.
TEST(LuksKeySlotCrash, AllSlotsInUse) {
  Volume vol = make_volume();
  for (int i = 1; i < 8; ++i) {
    Error e;
    PowerCutFile f = amend_with_cut(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"iter-time", "0"}}),
                                    false, std::nullopt, false, e);
    ASSERT_FALSE(e) << e.message();
    vol.bytes = f.bytes;
  }
  Error e;
  amend_with_cut(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}}), false, std::nullopt, false, e);
  EXPECT_EQ(e.message(), "Can't add a keyslot - all keyslots are in use");
  sweep(vol, with_secrets({{"state", "active"}, {"new-secret", "pw1"}, {"keyslot", "0"}, {"iter-time", "0"}}), true,
        [&](PowerCutFile& f, bool finished) {
          EXPECT_TRUE(opens(f, vol, "pw1"));
          if (finished) { EXPECT_FALSE(opens(f, vol, "pw0")); }
        });
}

}  // namespace
