// LUKS1 (cryptsetup's on-disk format, version 1), as QEMU uses it for raw LUKS volumes and
// for QCOW2 crypt_method 2 (the header then lives in the crypto header extension's area).
// Shared by the qcow and luks backends.
//
//   luks_header.cpp   parse and validate a header, serialize it
//   luks_unlock.cpp   find the key slot a passphrase opens, recover the master key
//   luks_af.cpp       the anti-forensic information splitter (AF split / merge)
//   luks_create.cpp   a new header with one key slot, laid out as qemu-img does
//   luks_info.cpp     qemu-img info's LUKS fields (luks images and QCOW2's "encrypt" block)
//   luks_keyslots.cpp one key slot written (its key material, then the header) or erased
//   luks_amend.cpp    qemu-img amend's key slot options (state, keyslot, old-secret,
//                     new-secret, iter-time) for luks images and QCOW2's encrypt.*
//   (sector ciphers, hashes and PBKDF2: crypto.h)
//
// Layout (all integers big-endian; offsets relative to the start of the LUKS header):
//    0  magic "LUKS\xba\xbe"      6  version (1)          8  cipher name[32] ("aes")
//   40  cipher mode[32]          72  hash spec[32]       104  payload offset (sectors)
//  108  key bytes               112  mk digest[20]       132  mk digest salt[32]
//  164  mk digest iterations    168  uuid[40]            208  8 key slots of 48 bytes:
//       active (0x00AC71F3 / 0x0000DEAD), iterations, salt[32], key material offset
//       (sectors), stripes (4000)                        592  end
//
// Unlocking slot s: K = PBKDF2(hash, passphrase, salt_s, iterations_s, key_bytes); the key
// material (key_bytes * stripes bytes at its offset) decrypted with the volume's cipher
// under K (sector numbers from 0 at the material's start) is the anti-forensic split of the
// master key; AF-merge gives a candidate MK, accepted when PBKDF2(hash, MK, mk_salt,
// mk_iterations, 20) equals the mk digest.
//
// Hostile headers: every size read from the header is bounded before use (key bytes <= 64,
// 1 <= stripes <= 4000, so key material is at most 256000 bytes; slot material must lie
// inside the LUKS area and the file, after the 592-byte header, not overlap another slot
// nor the payload). PBKDF2 iteration counts are u32 on disk, so a hostile header could
// make one unlock run for hours (QEMU has no cap). LuksLimits bounds the work:
// max_iterations caps each count (default 2^24, well above what cryptsetup or qemu-img
// calibrate for 2 s on today's CPUs) and max_total_iterations the sum over all slots tried
// in one unlock (default 2^26, about a minute of SHA-512 in the very worst case). A slot
// beyond either is skipped and, if nothing else unlocks, the unlock fails with
// Errc::not_supported naming the limit, not wrong_passphrase. Fuzz targets should pass
// small limits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/crypto/crypto.h"
#include "vd/backend.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd::qcow {

constexpr size_t kLuksHeaderSize = 592;
constexpr size_t kLuksNumSlots = 8;
constexpr size_t kLuksDigestSize = 20;
constexpr size_t kLuksSaltSize = 32;
constexpr uint32_t kLuksSlotActive = 0x00AC71F3;
constexpr uint32_t kLuksSlotInactive = 0x0000DEAD;
constexpr uint32_t kLuksStripes = 4000;     // what every implementation writes
constexpr uint32_t kLuksMaxStripes = 4000;  // and the most we accept
constexpr uint32_t kLuksMaxKeyBytes = 64;   // aes-256-xts; no LUKS cipher needs more
constexpr uint32_t kLuksSectorSize = 512;
constexpr uint32_t kLuksDefaultMaxIterations = 1u << 24;
constexpr uint64_t kLuksDefaultMaxTotalIterations = 1ull << 26;

struct LuksSlot {
  bool active = false;
  uint32_t iterations = 0;
  std::array<std::byte, kLuksSaltSize> salt{};
  uint32_t key_offset = 0;  // sectors from the start of the header
  uint32_t stripes = 0;
};

struct LuksInfo {
  std::string cipher_name;  // as on disk: "aes"
  std::string cipher_mode;  // as on disk: "xts-plain64"
  std::string hash_spec;    // as on disk: "sha256"
  CipherSpec cipher;        // cipher_name + cipher_mode + key_bytes, parsed
  uint32_t key_bytes = 0;
  uint64_t payload_offset = 0;  // bytes from the start of the header
  std::array<std::byte, kLuksDigestSize> mk_digest{};
  std::array<std::byte, kLuksSaltSize> mk_salt{};
  uint32_t mk_iterations = 0;
  std::string uuid;
  std::array<LuksSlot, kLuksNumSlots> slots{};

  // Bytes of key material of one slot: key_bytes * stripes rounded up to whole sectors.
  uint64_t material_bytes(const LuksSlot& s) const;
  // End (bytes from the header start) of the furthest active slot's key material.
  uint64_t material_end() const;
  unsigned active_slots() const;
};

// Parses and validates the 592-byte header (header.size() >= 592). Errc::wrong_format for a
// bad magic, Errc::not_supported for another version or an unknown IV generator,
// Errc::corrupt for anything inconsistent. Does not check that the cipher or hash is
// available: see luks_check_supported.
Result<LuksInfo> luks_parse(std::span<const std::byte> header, const std::string& where);
// The 592 bytes of `info` (the inverse of luks_parse).
std::vector<std::byte> luks_serialize(const LuksInfo& info);
// Errc::not_supported unless this build has the volume's cipher, mode, IV generator and hash.
Error luks_check_supported(const LuksInfo& info, const std::string& where);

struct LuksLimits {
  uint32_t max_iterations = kLuksDefaultMaxIterations;  // per PBKDF2 run
  uint64_t max_total_iterations = kLuksDefaultMaxTotalIterations;  // per unlock
};

// Key bytes (a master key, a slot key) wiped when they go out of scope.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(size_t n) : b_(n) {}
  ~SecretBytes() { wipe(); }
  SecretBytes(SecretBytes&& o) noexcept : b_(std::move(o.b_)) { o.b_.clear(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) {
      wipe();
      b_ = std::move(o.b_);
      o.b_.clear();
    }
    return *this;
  }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  std::span<std::byte> span() { return b_; }
  std::span<const std::byte> span() const { return b_; }
  bool empty() const { return b_.empty(); }

 private:
  void wipe();
  std::vector<std::byte> b_;
};

struct LuksVolume {
  LuksInfo info;
  std::unique_ptr<SectorCipher> cipher;  // keyed with the master key
  unsigned slot = 0;                     // the slot the passphrase opened
  SecretBytes master_key;                // for amend: a new key slot seals it
};

// Reads the LUKS header at `offset` of `f`, which may use `length` bytes from there (the
// QCOW2 crypto header extension's length; for a raw volume the file size), and opens it
// with `passphrase`. Errc::wrong_passphrase ("Invalid password, cannot unlock any keyslot")
// when no active slot accepts it. `path` names the image in messages.
Result<LuksVolume> luks_unlock(File& f, uint64_t offset, uint64_t length,
                               std::string_view passphrase, const std::string& path,
                               const LuksLimits& limits = {});

struct LuksCreateOptions {
  CipherSpec cipher;            // default aes-256-xts-plain64, as qemu-img
  std::string hash = "sha256";  // PBKDF2 and AF hash
  uint32_t iter_time_ms = 2000; // PBKDF2 calibration target, as qemu-img's iter-time
  uint32_t iterations = 0;      // nonzero: use exactly this for the slot and the mk digest
};

// Bytes a header created with `options` occupies (header, then 8 key slots, each aligned
// to 4096 bytes, as qemu-img lays them out); also its payload offset. Errc::not_supported
// for a cipher or hash this build lacks.
Result<uint64_t> luks_header_size(const LuksCreateOptions& options);
// Writes a new LUKS1 header at `offset` of `f` with a random master key in slot 0, unlocked
// by `passphrase`, and the other 7 slots inactive. Writes the whole area (zeros in unused
// key material) so the file covers it. Returns the volume (cipher keyed with the new MK).
Result<LuksVolume> luks_create(File& f, uint64_t offset, std::string_view passphrase,
                               const LuksCreateOptions& options, const std::string& path);

// ---- Key slots (luks_keyslots.cpp, luks_unlock.cpp) ------------------------------------------

// Where a LUKS header lives: `offset` of `file`, which gives it `length` bytes (QCOW2's crypto
// header extension length; a raw volume's payload offset).
struct LuksArea {
  File& file;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::string path;  // names the image in messages
};

// Whether `passphrase` opens slot `slot` (false for an inactive slot); `mk` (key_bytes long)
// then holds the master key. Errc::not_supported for a slot past the default LuksLimits.
Result<bool> luks_slot_unlocks(const LuksArea& area, const LuksInfo& info, unsigned slot,
                               std::string_view passphrase, std::span<std::byte> mk);

// PBKDF2 iterations for a new key slot: this machine's rate for `hash` scaled to
// `iter_time_ms`, at least 1000, as QEMU computes them (its errors for a rate or time so large
// that the count overflows); capped at kLuksDefaultMaxIterations so that vd can open the slot.
Result<uint32_t> luks_slot_iterations(const std::string& hash, uint32_t key_bytes,
                                      uint64_t iter_time_ms);

// Fills slot `slot` of `info` (fresh salt, `iterations`) and computes its key material:
// `mk` AF-split with the volume's hash, encrypted under PBKDF2(passphrase). `material` is
// material_bytes(slot) long. Does not write anything nor mark the slot active.
Error luks_seal_slot(LuksInfo& info, unsigned slot, uint32_t iterations, std::string_view passphrase,
                     std::span<const std::byte> mk, std::span<std::byte> material);

// Adds `passphrase` as key slot `slot` (QEMU's store_key): key material first, then the
// header that activates it. With `slot` active (amend --force) the slot is replaced through
// a free slot, so that the old key or the new one opens the volume at every moment.
Error luks_store_key(const LuksArea& area, LuksInfo& info, unsigned slot, std::string_view passphrase,
                     std::span<const std::byte> mk, uint64_t iter_time_ms);
// Erases key slot `slot` (QEMU's erase_key): the header that deactivates it, then its key
// material overwritten with random bytes.
Error luks_erase_key(const LuksArea& area, LuksInfo& info, unsigned slot);

// ---- qemu-img amend (luks_amend.cpp) ---------------------------------------------------------

// The secrets an amend may name (qemu-img's --object secret,id=ID,data=...): vdimg adds each
// to AmendOptions::options as kLuksAmendSecretPrefix + ID = its data, and the key slot
// options name them by ID as qemu-img's do (new-secret=ID, old-secret=ID).
inline constexpr std::string_view kLuksAmendSecretPrefix = "object.secret.";

// QemuOpts' number check of an amend option (keyslot, iter-time): qemu-img's messages for a
// value that is not a number or does not fit 64 bits. `key` as the user wrote it.
Error luks_check_amend_number(const std::string& key, const std::string& value);

// The key slot options of one amend, `prefix` + state, keyslot, old-secret, new-secret,
// iter-time ("" for a luks image, "encrypt." for QCOW2), applied as QEMU 7.2's
// qcrypto_block_luks_amend_options does, with its messages: state=active adds new-secret's
// key to keyslot (default the first free one), state=inactive erases keyslot or every slot
// old-secret opens; refusals unless `force` for an active slot to overwrite and for erasing
// the last active slots. `mk` is the master key the image was opened with; `info` is the
// header in memory, updated as the writes land.
Error luks_amend(const LuksArea& area, LuksInfo& info, std::span<const std::byte> mk,
                 const std::map<std::string, std::string>& options, const std::string& prefix, bool force);

// Anti-forensic split and merge (LUKS1 AF with `hash` as diffusion), for luks_*.cpp and
// tests. material.size() == key.size() * stripes.
Error luks_af_merge(std::string_view hash, std::span<const std::byte> material, uint32_t stripes,
                    std::span<std::byte> key);
Error luks_af_split(std::string_view hash, std::span<const std::byte> key, uint32_t stripes,
                    std::span<std::byte> material);

// The fields qemu-img info prints for a LUKS header, in its order, each key prefixed with
// `prefix` ("" for a luks image, "encrypt." inside a QCOW2 image, which also places its
// "encrypt.format" field, `before_mode`, just before cipher-mode).
void append_luks_info(const LuksInfo& info, const std::string& prefix, std::vector<InfoField>& out,
                      const InfoField* before_mode = nullptr);

}  // namespace vd::qcow
