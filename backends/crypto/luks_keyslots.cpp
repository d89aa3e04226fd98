// Writing one key slot of an existing LUKS1 header (amend): adding a passphrase, erasing one.
//
// Crash safety. The volume must open with a key the user knows at every moment, whatever
// write a crash or power cut interrupts. Three rules give that:
//   - a slot's key material is written and flushed while the slot is inactive on disk, and
//     only then is the slot marked active (its header entry written and flushed);
//   - erasing marks the slot inactive (flushed) before its key material is overwritten;
//   - a header write rewrites only the 48-byte entry of the slot that changes, never the
//     others: a torn write can spoil that one slot only, and the slots an amend does not
//     change keep working.
// Replacing an active slot (amend --force) would break the first rule; it goes through a
// free slot instead (luks_store_key below).
#include <openssl/rand.h>

#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

constexpr uint64_t kSlotTable = 208;  // header offset of slot 0's entry
constexpr uint64_t kSlotEntry = 48;

std::string slot_name(unsigned slot) { return "LUKS key slot " + std::to_string(slot); }

// The slot's key material area must lie after the 592-byte header, inside the LUKS area and
// not on any other slot's material.
Error check_area(const LuksArea& area, const LuksInfo& info, unsigned slot) {
  const LuksSlot& s = info.slots[slot];
  const uint64_t start = uint64_t{s.key_offset} * kLuksSectorSize;
  const uint64_t end = start + info.material_bytes(s);
  bool ok = s.stripes >= 1 && s.stripes <= kLuksMaxStripes && start >= kLuksHeaderSize && end <= area.length;
  for (unsigned i = 0; ok && i < kLuksNumSlots; ++i) {
    if (i == slot) continue;
    const LuksSlot& o = info.slots[i];
    const uint64_t os = uint64_t{o.key_offset} * kLuksSectorSize;
    if (start < os + info.material_bytes(o) && os < end && (o.active || o.stripes)) ok = false;
  }
  if (!ok)
    return Error(Errc::corrupt, slot_name(slot) + " has no valid key material area (" +
                                    std::to_string(s.stripes) + " stripes at " + hex(area.offset + start) + ")")
        .image(area.path)
        .structure("LUKS key slot")
        .at(area.offset + kSlotTable + slot * kSlotEntry);
  return {};
}

Error write_flush(const LuksArea& area, uint64_t at, std::span<const std::byte> bytes, const char* what) {
  if (Error e = area.file.write(IoKind::meta, area.offset + at, bytes))
    return e.wrap("writing", what, area.offset + at).image(area.path);
  if (Error e = area.file.flush()) return e.wrap("flushing", what, area.offset + at).image(area.path);
  return {};
}

// Slot `slot`'s 48-byte header entry as `info` has it, written and flushed. Slot 6's entry
// (bytes 496-543) straddles a sector boundary, and a power cut may land one sector of a
// write and not the other: its state word (in the first sector) is written after the rest
// when the slot becomes active and before it when it becomes inactive, so that a slot is
// never marked active over a half-written entry.
Error write_entry(const LuksArea& area, const LuksInfo& info, unsigned slot) {
  auto header = luks_serialize(info);
  const uint64_t at = kSlotTable + slot * kSlotEntry;
  auto entry = std::span<const std::byte>(header).subspan(at, kSlotEntry);
  const uint64_t boundary = (area.offset + at) / kLuksSectorSize * kLuksSectorSize + kLuksSectorSize;
  if (area.offset + at + kSlotEntry <= boundary)
    return write_flush(area, at, entry, "LUKS key slot entry");
  const size_t head = static_cast<size_t>(boundary - area.offset - at);
  const bool activating = info.slots[slot].active;
  for (int part = 0; part < 2; ++part) {
    const bool write_head = (part == 0) != activating;
    Error e = write_head ? write_flush(area, at, entry.first(head), "LUKS key slot entry")
                         : write_flush(area, at + head, entry.subspan(head), "LUKS key slot entry");
    if (e) return e;
  }
  return {};
}

Error write_material(const LuksArea& area, const LuksInfo& info, unsigned slot, std::span<const std::byte> m) {
  return write_flush(area, uint64_t{info.slots[slot].key_offset} * kLuksSectorSize, m, "LUKS key material");
}

// Random bytes over an inactive slot's key material (QEMU writes random data too; one pass:
// repeated passes do not make a block device or file forget more).
Error wipe_material(const LuksArea& area, const LuksInfo& info, unsigned slot) {
  SecretBytes garbage(info.material_bytes(info.slots[slot]));
  auto g = garbage.span();
  if (RAND_bytes(reinterpret_cast<unsigned char*>(g.data()), static_cast<int>(g.size())) != 1)
    std::fill(g.begin(), g.end(), std::byte{0});  // still overwrite, as QEMU does
  return write_material(area, info, slot, g);
}

void deactivate(LuksSlot& s) {
  s.active = false;
  s.iterations = 0;
  s.salt.fill(std::byte{0});
}

// A free slot whose material area has the size of `slot`'s: it can hold the same bytes.
int staging_slot(const LuksArea& area, const LuksInfo& info, unsigned slot) {
  for (unsigned i = 0; i < kLuksNumSlots; ++i) {
    if (i == slot || info.slots[i].active || info.slots[i].stripes != info.slots[slot].stripes) continue;
    if (!check_area(area, info, i)) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

Error luks_store_key(const LuksArea& area, LuksInfo& info, unsigned slot, std::string_view passphrase,
                     std::span<const std::byte> mk, uint64_t iter_time_ms) {
  if (slot >= kLuksNumSlots) return Error(Errc::invalid_argument, slot_name(slot) + " does not exist");
  if (Error e = check_area(area, info, slot)) return e;
  auto iterations = luks_slot_iterations(info.hash_spec, info.key_bytes, iter_time_ms);
  if (!iterations) return iterations.error();
  LuksInfo next = info;
  SecretBytes material(info.material_bytes(info.slots[slot]));
  if (Error e = luks_seal_slot(next, slot, *iterations, passphrase, mk, material.span()))
    return e.wrap("sealing", "LUKS key slot").image(area.path);
  next.slots[slot].active = true;

  if (!info.slots[slot].active) {
    // The slot is inactive on disk: its material is unused until the entry below lands.
    if (Error e = write_material(area, info, slot, material.span())) return e;
    if (Error e = write_entry(area, next, slot)) return e;
    info = next;
    return {};
  }

  // Replacing an active slot. Its material cannot be rewritten while the slot is active, and
  // while it is the only key the user has the volume must stay open meanwhile; so the new
  // key is staged in a free slot F first (the material decrypts the same in any slot: its
  // IVs count from the material's start):
  //   1. F's material, then F active: the old key (slot) and the new one (F) both open;
  //   2. slot inactive: the new key opens F;
  //   3. slot's new material, then slot active with its new salt: the new key opens both;
  //   4. F inactive, then F's material wiped.
  // With all 8 slots active there is no F, and the 7 others keep the volume open meanwhile.
  const int f = staging_slot(area, info, slot);
  if (f >= 0) {
    LuksInfo staged = info;
    staged.slots[f] = next.slots[slot];
    staged.slots[f].key_offset = info.slots[f].key_offset;
    staged.slots[f].stripes = info.slots[f].stripes;
    if (Error e = write_material(area, info, static_cast<unsigned>(f), material.span())) return e;
    if (Error e = write_entry(area, staged, static_cast<unsigned>(f))) return e;
    info = staged;
  }
  LuksInfo off = info;
  deactivate(off.slots[slot]);
  if (Error e = write_entry(area, off, slot)) return e;
  info = off;
  if (Error e = write_material(area, info, slot, material.span())) return e;
  info.slots[slot] = next.slots[slot];
  if (Error e = write_entry(area, info, slot)) return e;
  if (f >= 0) return luks_erase_key(area, info, static_cast<unsigned>(f));
  return {};
}

Error luks_erase_key(const LuksArea& area, LuksInfo& info, unsigned slot) {
  if (slot >= kLuksNumSlots) return Error(Errc::invalid_argument, slot_name(slot) + " does not exist");
  // Inactive on disk first: from then on nothing reads the material, which is destroyed next.
  LuksInfo next = info;
  deactivate(next.slots[slot]);
  if (Error e = write_entry(area, next, slot)) return e;
  info = next;
  // A slot whose material area is not valid (a hostile header, an erase forced on a slot that
  // never had one) has nothing of ours to overwrite.
  if (check_area(area, info, slot)) return {};
  return wipe_material(area, info, slot);
}

}  // namespace vd::qcow
