// Legacy QCOW encryption (QCOW v1 and QCOW2 crypt_method 1): AES-128-CBC with a plain64 IV.
//
// The format keeps no key check value: the passphrase is used as the key directly, its
// bytes truncated or zero-padded to 16 (no hashing, no salt), so a wrong passphrase cannot
// be detected and reads back garbage. QEMU refuses these images in its system emulators
// for that reason; we read and write them for conversion.
#include <algorithm>
#include <array>
#include <cstring>

#include "backends/crypto/crypto.h"

namespace vd::qcow {

Result<std::unique_ptr<SectorCipher>> make_legacy_aes(std::string_view passphrase) {
  std::array<std::byte, 16> key{};
  std::memcpy(key.data(), passphrase.data(), std::min(passphrase.size(), key.size()));
  CipherSpec spec;
  spec.alg = "aes";
  spec.mode = "cbc";
  spec.ivgen = IvGen::plain64;
  spec.key_bytes = 16;
  return make_sector_cipher(spec, key, "legacy QCOW AES");
}

}  // namespace vd::qcow
