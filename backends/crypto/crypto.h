// Sector ciphers for encrypted QCOW images and LUKS volumes, on OpenSSL.
//
//   crypto_cipher.cpp   AES in XTS, CBC, CTR and ECB with the plain, plain64 and ESSIV IVs
//   crypto_hash.cpp     hashes and PBKDF2 by their LUKS names
//   crypto_legacy.cpp   legacy QCOW encryption (QCOW v1, QCOW2 crypt_method 1)
//   (the LUKS1 header and key slots: luks.h)
//
// Data is encrypted in 512-byte sectors; each sector has its own IV derived from a sector
// number. Which number is used depends on the container (checked against qemu-io 7.2 by
// tests/qcow/crypto_test.cpp and luks_test.cpp):
//   - QCOW v1 and QCOW2 crypt_method 1 (legacy AES): the GUEST offset / 512
//     (virtual disk offset of the sector).
//   - QCOW2 crypt_method 2 (LUKS): the HOST offset / 512, i.e. the absolute byte offset of
//     the sector in the image file (QEMU's crypt_physical_offset). A cluster therefore
//     decrypts differently if it is moved: copy-on-write must decrypt and re-encrypt.
//   - raw LUKS volumes: the offset relative to the payload start / 512.
//   - LUKS key material: the offset relative to the start of the slot's key material / 512.
// The caller computes the number; the cipher only turns it into an IV.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "vd/error.h"

namespace vd::qcow {

constexpr uint32_t kCryptoSectorSize = 512;

class SectorCipher {
 public:
  virtual ~SectorCipher() = default;
  // In place. buf.size() must be a multiple of 512 (else Errc::invalid_argument); `sector`
  // is the number of the first sector of buf, consecutive sectors use sector+1, +2...
  // Thread-safe: const and may be called from several I/O threads at once.
  virtual Error encrypt(uint64_t sector, std::span<std::byte> buf) const = 0;
  virtual Error decrypt(uint64_t sector, std::span<std::byte> buf) const = 0;
  // Bytes of key the cipher was built with (16 for legacy AES, 64 for aes-256-xts...).
  virtual uint32_t key_bytes() const = 0;
};

// How a sector number becomes an IV (dm-crypt's names, as LUKS stores them).
enum class IvGen : uint8_t {
  none,     // ECB: no IV
  plain,    // low 32 bits of the sector number, little-endian, zero-padded
  plain64,  // 64-bit sector number, little-endian, zero-padded
  essiv,    // plain64 encrypted (ECB) with the same cipher keyed by HASH(key)
};

// A cipher as LUKS names it: "aes" + "xts-plain64" with 64 key bytes is AES-256-XTS.
struct CipherSpec {
  std::string alg = "aes";  // only "aes" is provided by OpenSSL here
  std::string mode = "xts";  // xts, cbc, ecb, ctr
  IvGen ivgen = IvGen::plain64;
  std::string ivgen_hash;  // for essiv: sha256, sha1, md5...
  uint32_t key_bytes = 64;  // the whole key (both halves for XTS)
};

// Parses a LUKS cipher-mode string ("xts-plain64", "cbc-essiv:sha256", "ecb", "ecb-plain64")
// into spec.mode/ivgen/ivgen_hash. Errc::corrupt for malformed strings, Errc::not_supported
// for an IV generator we do not know (benbi, lmk, null...).
Error parse_cipher_mode(std::string_view text, CipherSpec& spec, const std::string& where);
// "xts-plain64", "cbc-essiv:sha256", "ecb": the inverse of parse_cipher_mode.
std::string format_cipher_mode(const CipherSpec& spec);

// Checks that this build can run `spec` (OpenSSL has the cipher, mode and key size, and the
// ESSIV hash gives a valid key size). Errc::not_supported with a message naming the cipher.
Error check_cipher_supported(const CipherSpec& spec, const std::string& where);

// Builds a cipher for `spec` keyed with `key` (key.size() == spec.key_bytes).
Result<std::unique_ptr<SectorCipher>> make_sector_cipher(const CipherSpec& spec,
                                                        std::span<const std::byte> key,
                                                        const std::string& where);

// Hashes by their LUKS names: md5, sha1, sha224, sha256, sha384, sha512, ripemd160.
// Digest size in bytes, or 0 when the name is unknown or OpenSSL lacks it.
uint32_t hash_size(std::string_view name);
// out = HASH(parts[0] || parts[1] || ...); out.size() <= hash_size(name) (truncates).
Error hash_parts(std::string_view name, std::span<const std::span<const std::byte>> parts,
                 std::span<std::byte> out);
// PBKDF2-HMAC-HASH(password, salt, iterations) -> out (any length).
Error pbkdf2(std::string_view hash, std::span<const std::byte> password,
             std::span<const std::byte> salt, uint32_t iterations, std::span<std::byte> out);

// Legacy QCOW AES (QCOW v1, QCOW2 crypt_method 1): AES-128-CBC, plain64 IV from the guest
// sector, key = the passphrase's bytes truncated or zero-padded to 16. Any passphrase
// "works": there is no key check in the format, a wrong one just reads garbage.
Result<std::unique_ptr<SectorCipher>> make_legacy_aes(std::string_view passphrase);

}  // namespace vd::qcow
