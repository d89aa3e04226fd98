// LUKS1 header: parse and validate, serialize. Layout in luks.h.
#include <algorithm>
#include <cstring>

#include "backends/common/endian.h"
#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

constexpr std::array<unsigned char, 6> kLuksMagic{'L', 'U', 'K', 'S', 0xba, 0xbe};
constexpr size_t kOffVersion = 6, kOffCipherName = 8, kOffCipherMode = 40, kOffHash = 72;
constexpr size_t kOffPayload = 104, kOffKeyBytes = 108, kOffMkDigest = 112, kOffMkSalt = 132;
constexpr size_t kOffMkIter = 164, kOffUuid = 168, kOffSlots = 208, kSlotSize = 48;
constexpr size_t kNameLen = 32, kUuidLen = 40;

Error corrupt(const std::string& where, const std::string& what, uint64_t off) {
  return Error(Errc::corrupt, where + ": LUKS header: " + what + " (at " + hex(off) + ")");
}

// A NUL-terminated string field; a field without terminator is corrupt (cryptsetup and
// QEMU both terminate, and an unterminated name could not be written back).
Result<std::string> field(std::span<const std::byte> h, size_t off, size_t len,
                          const std::string& where, const char* name) {
  const char* p = reinterpret_cast<const char*>(h.data() + off);
  size_t n = strnlen(p, len);
  if (n == len) return corrupt(where, std::string(name) + " is not NUL-terminated", off);
  return std::string(p, n);
}

void put_field(std::byte* dst, const std::string& s, size_t len) {
  std::memset(dst, 0, len);
  std::memcpy(dst, s.data(), std::min(s.size(), len - 1));
}

Error parse_slots(std::span<const std::byte> h, LuksInfo& info, const std::string& where) {
  for (size_t i = 0; i < kLuksNumSlots; ++i) {
    const std::byte* p = h.data() + kOffSlots + i * kSlotSize;
    LuksSlot& s = info.slots[i];
    uint32_t state = load_be32(p);
    if (state != kLuksSlotActive && state != kLuksSlotInactive)
      return corrupt(where, "key slot " + std::to_string(i) + " has a bad state " + hex(state),
                     kOffSlots + i * kSlotSize);
    s.active = state == kLuksSlotActive;
    s.iterations = load_be32(p + 4);
    std::memcpy(s.salt.data(), p + 8, kLuksSaltSize);
    s.key_offset = load_be32(p + 40);
    s.stripes = load_be32(p + 44);
  }
  return {};
}

Error check_slot(const LuksInfo& info, size_t i, const std::string& where) {
  const LuksSlot& s = info.slots[i];
  uint64_t at = kOffSlots + i * kSlotSize;
  std::string name = "key slot " + std::to_string(i);
  if (s.iterations == 0) return corrupt(where, name + " has 0 iterations", at + 4);
  if (s.stripes == 0 || s.stripes > kLuksMaxStripes)
    return corrupt(where, name + " has " + std::to_string(s.stripes) + " stripes", at + 44);
  uint64_t start = uint64_t{s.key_offset} * kLuksSectorSize;
  if (start < kLuksHeaderSize)
    return corrupt(where, name + " key material overlaps the header", at + 40);
  uint64_t end = start + info.material_bytes(s);
  if (info.payload_offset && end > info.payload_offset)
    return corrupt(where, name + " key material overlaps the payload", at + 40);
  for (size_t j = 0; j < i; ++j) {
    const LuksSlot& o = info.slots[j];
    if (!o.active) continue;
    uint64_t ostart = uint64_t{o.key_offset} * kLuksSectorSize;
    if (start < ostart + info.material_bytes(o) && ostart < end)
      return corrupt(where, name + " key material overlaps key slot " + std::to_string(j), at + 40);
  }
  return {};
}

Error parse_strings(std::span<const std::byte> h, LuksInfo& info, const std::string& where) {
  auto name = field(h, kOffCipherName, kNameLen, where, "cipher name");
  if (!name) return name.error();
  auto mode = field(h, kOffCipherMode, kNameLen, where, "cipher mode");
  if (!mode) return mode.error();
  auto hash = field(h, kOffHash, kNameLen, where, "hash spec");
  if (!hash) return hash.error();
  auto uuid = field(h, kOffUuid, kUuidLen, where, "uuid");
  if (!uuid) return uuid.error();
  info.cipher_name = *name;
  info.cipher_mode = *mode;
  info.hash_spec = *hash;
  info.uuid = *uuid;
  if (info.cipher_name.empty()) return corrupt(where, "empty cipher name", kOffCipherName);
  if (info.hash_spec.empty()) return corrupt(where, "empty hash spec", kOffHash);
  info.cipher.alg = info.cipher_name;
  return parse_cipher_mode(info.cipher_mode, info.cipher, where + ": LUKS header");
}

}  // namespace

uint64_t LuksInfo::material_bytes(const LuksSlot& s) const {
  uint64_t n = uint64_t{key_bytes} * s.stripes;
  return (n + kLuksSectorSize - 1) / kLuksSectorSize * kLuksSectorSize;
}

uint64_t LuksInfo::material_end() const {
  uint64_t end = kLuksHeaderSize;
  for (const auto& s : slots) {
    if (s.active) end = std::max(end, uint64_t{s.key_offset} * kLuksSectorSize + material_bytes(s));
  }
  return end;
}

unsigned LuksInfo::active_slots() const {
  return static_cast<unsigned>(std::count_if(slots.begin(), slots.end(),
                                             [](const LuksSlot& s) { return s.active; }));
}

Result<LuksInfo> luks_parse(std::span<const std::byte> h, const std::string& where) {
  if (h.size() < kLuksHeaderSize) return corrupt(where, "truncated header", h.size());
  if (std::memcmp(h.data(), kLuksMagic.data(), kLuksMagic.size()) != 0)
    return Error(Errc::wrong_format, where + ": not a LUKS header (bad magic at 0x0)");
  uint16_t version = load_be16(h.data() + kOffVersion);
  if (version != 1)
    return Error(Errc::not_supported,
                 where + ": LUKS version " + std::to_string(version) + " is not supported");
  LuksInfo info;
  if (Error e = parse_strings(h, info, where)) return e;
  info.key_bytes = load_be32(h.data() + kOffKeyBytes);
  if (info.key_bytes == 0 || info.key_bytes > kLuksMaxKeyBytes)
    return corrupt(where, "key size " + std::to_string(info.key_bytes) + " bytes", kOffKeyBytes);
  info.cipher.key_bytes = info.key_bytes;
  info.payload_offset = uint64_t{load_be32(h.data() + kOffPayload)} * kLuksSectorSize;
  std::memcpy(info.mk_digest.data(), h.data() + kOffMkDigest, kLuksDigestSize);
  std::memcpy(info.mk_salt.data(), h.data() + kOffMkSalt, kLuksSaltSize);
  info.mk_iterations = load_be32(h.data() + kOffMkIter);
  if (info.mk_iterations == 0) return corrupt(where, "master key digest has 0 iterations", kOffMkIter);
  if (Error e = parse_slots(h, info, where)) return e;
  for (size_t i = 0; i < kLuksNumSlots; ++i) {
    if (!info.slots[i].active) continue;
    if (Error e = check_slot(info, i, where)) return e;
  }
  return info;
}

std::vector<std::byte> luks_serialize(const LuksInfo& info) {
  std::vector<std::byte> h(kLuksHeaderSize);
  std::memcpy(h.data(), kLuksMagic.data(), kLuksMagic.size());
  store_be16(&h[kOffVersion], 1);
  put_field(&h[kOffCipherName], info.cipher_name, kNameLen);
  put_field(&h[kOffCipherMode], info.cipher_mode, kNameLen);
  put_field(&h[kOffHash], info.hash_spec, kNameLen);
  store_be32(&h[kOffPayload], static_cast<uint32_t>(info.payload_offset / kLuksSectorSize));
  store_be32(&h[kOffKeyBytes], info.key_bytes);
  std::memcpy(&h[kOffMkDigest], info.mk_digest.data(), kLuksDigestSize);
  std::memcpy(&h[kOffMkSalt], info.mk_salt.data(), kLuksSaltSize);
  store_be32(&h[kOffMkIter], info.mk_iterations);
  put_field(&h[kOffUuid], info.uuid, kUuidLen);
  for (size_t i = 0; i < kLuksNumSlots; ++i) {
    std::byte* p = &h[kOffSlots + i * kSlotSize];
    const LuksSlot& s = info.slots[i];
    store_be32(p, s.active ? kLuksSlotActive : kLuksSlotInactive);
    store_be32(p + 4, s.iterations);
    std::memcpy(p + 8, s.salt.data(), kLuksSaltSize);
    store_be32(p + 40, s.key_offset);
    store_be32(p + 44, s.stripes);
  }
  return h;
}

Error luks_check_supported(const LuksInfo& info, const std::string& where) {
  if (hash_size(info.hash_spec) == 0)
    return Error(Errc::not_supported,
                 where + ": LUKS hash algorithm '" + info.hash_spec + "' is not supported");
  return check_cipher_supported(info.cipher, where);
}

}  // namespace vd::qcow
