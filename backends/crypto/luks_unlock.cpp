// Opening a LUKS1 volume: find the key slot the passphrase opens and recover the master key.
#include <openssl/crypto.h>

#include <vector>

#include "backends/crypto/luks.h"

namespace vd::qcow {

void SecretBytes::wipe() {
  if (!b_.empty()) OPENSSL_cleanse(b_.data(), b_.size());
}

namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Every active slot's key material must lie inside the area the container gives the
// header and inside the file: checked before anything is read or derived.
Error check_bounds(const LuksInfo& info, uint64_t length, uint64_t file_size, uint64_t offset,
                   const std::string& where) {
  for (size_t i = 0; i < kLuksNumSlots; ++i) {
    const LuksSlot& s = info.slots[i];
    if (!s.active) continue;
    uint64_t end = uint64_t{s.key_offset} * kLuksSectorSize + info.material_bytes(s);
    if (end > length || offset > file_size || end > file_size - offset)
      return Error(Errc::corrupt, where + ": LUKS key slot " + std::to_string(i) +
                                      " key material ends at " + hex(offset + end) +
                                      ", beyond the end of the " +
                                      (end > length ? "LUKS header area" : "file"));
  }
  return {};
}

// Tries one slot: Ok(true) when the passphrase opens it and `mk` holds the master key.
Result<bool> try_slot(File& f, uint64_t offset, const LuksInfo& info, const LuksSlot& s,
                      std::string_view passphrase, std::span<std::byte> mk,
                      const std::string& where) {
  SecretBytes slot_key(info.key_bytes);
  if (Error e = pbkdf2(info.hash_spec, bytes(passphrase), s.salt, s.iterations, slot_key.span()))
    return e.wrap("deriving", "LUKS slot key").image(where);
  auto cipher = make_sector_cipher(info.cipher, slot_key.span(), where);
  if (!cipher) return cipher.error();
  uint64_t at = offset + uint64_t{s.key_offset} * kLuksSectorSize;
  SecretBytes material(info.material_bytes(s));
  if (Error e = f.read(IoKind::meta, at, material.span()))
    return e.wrap("reading", "LUKS key material", at).image(where);
  if (Error e = (*cipher)->decrypt(0, material.span()))
    return e.wrap("decrypting", "LUKS key material", at).image(where);
  auto split = material.span().first(size_t{info.key_bytes} * s.stripes);
  if (Error e = luks_af_merge(info.hash_spec, split, s.stripes, mk))
    return e.wrap("merging", "LUKS key material", at).image(where);
  std::array<std::byte, kLuksDigestSize> digest;
  if (Error e = pbkdf2(info.hash_spec, mk, info.mk_salt, info.mk_iterations, digest))
    return e.wrap("deriving", "LUKS master key digest").image(where);
  return CRYPTO_memcmp(digest.data(), info.mk_digest.data(), kLuksDigestSize) == 0;
}

// Refuses a slot whose PBKDF2 work exceeds the limits (see luks.h).
Error over_budget(const LuksLimits& limits, const LuksSlot& s, uint32_t mk_iterations,
                  uint64_t spent, unsigned i, const std::string& where) {
  std::string slot = where + ": LUKS key slot " + std::to_string(i);
  if (s.iterations > limits.max_iterations || mk_iterations > limits.max_iterations)
    return Error(Errc::not_supported, slot + " needs more than " +
                                          std::to_string(limits.max_iterations) +
                                          " PBKDF2 iterations (limit)");
  if (spent + s.iterations + mk_iterations > limits.max_total_iterations)
    return Error(Errc::not_supported, slot + " would exceed the unlock budget of " +
                                          std::to_string(limits.max_total_iterations) +
                                          " PBKDF2 iterations");
  return {};
}

Result<LuksInfo> read_header(File& f, uint64_t offset, uint64_t length, const std::string& where) {
  if (length < kLuksHeaderSize)
    return Error(Errc::corrupt, where + ": LUKS header area at " + hex(offset) + " is only " +
                                    std::to_string(length) + " bytes");
  std::array<std::byte, kLuksHeaderSize> raw;
  if (Error e = f.read(IoKind::meta, offset, raw))
    return e.wrap("reading", "LUKS header", offset).image(where);
  return luks_parse(raw, where);
}

}  // namespace

Result<LuksVolume> luks_unlock(File& f, uint64_t offset, uint64_t length,
                               std::string_view passphrase, const std::string& path,
                               const LuksLimits& limits) {
  auto info = read_header(f, offset, length, path);
  if (!info) return info.error();
  if (Error e = luks_check_supported(*info, path)) return e;
  auto file_size = f.size();
  if (!file_size) return file_size.error();
  if (Error e = check_bounds(*info, length, *file_size, offset, path)) return e;
  SecretBytes mk(info->key_bytes);
  Error skipped;
  uint64_t spent = 0;
  for (unsigned i = 0; i < kLuksNumSlots; ++i) {
    const LuksSlot& s = info->slots[i];
    if (!s.active) continue;
    if (Error e = over_budget(limits, s, info->mk_iterations, spent, i, path)) {
      skipped = e;
      continue;
    }
    spent += uint64_t{s.iterations} + info->mk_iterations;
    auto ok = try_slot(f, offset, *info, s, passphrase, mk.span(), path);
    if (!ok) return ok.error();
    if (!*ok) continue;
    auto cipher = make_sector_cipher(info->cipher, mk.span(), path);
    if (!cipher) return cipher.error();
    return LuksVolume{std::move(*info), std::move(*cipher), i, std::move(mk)};
  }
  if (skipped) return skipped;
  return Error(Errc::wrong_passphrase, "Invalid password, cannot unlock any keyslot").image(path);
}

Result<bool> luks_slot_unlocks(const LuksArea& area, const LuksInfo& info, unsigned slot,
                               std::string_view passphrase, std::span<std::byte> mk) {
  if (slot >= kLuksNumSlots || !info.slots[slot].active) return false;
  auto file_size = area.file.size();
  if (!file_size) return file_size.error();
  if (Error e = check_bounds(info, area.length, *file_size, area.offset, area.path)) return e;
  // A hostile iteration count must not make an amend run for hours (luks.h: LuksLimits).
  if (Error e = over_budget(LuksLimits{}, info.slots[slot], info.mk_iterations, 0, slot, area.path)) return e;
  return try_slot(area.file, area.offset, info, info.slots[slot], passphrase, mk, area.path);
}

}  // namespace vd::qcow
