// Creating a LUKS1 header with one key slot, laid out as qemu-img does: the 592-byte header
// padded to 4096 bytes, then 8 key material areas of key_bytes * 4000 bytes each rounded up
// to 4096, the payload right after (for QCOW2 the "payload" offset is simply the end of the
// header area).
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint32_t kMinIterations = 1000;  // cryptsetup's floor for calibrated counts

uint64_t align_up(uint64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

std::span<const std::byte> bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

Error random(std::span<std::byte> out) {
  if (out.empty()) return {};
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size())) != 1)
    return Error(Errc::internal, "OpenSSL RAND_bytes failed");
  return {};
}

Result<std::string> random_uuid() {
  std::array<std::byte, 16> u;
  if (Error e = random(u)) return e;
  u[6] = (u[6] & std::byte{0x0f}) | std::byte{0x40};  // version 4
  u[8] = (u[8] & std::byte{0x3f}) | std::byte{0x80};  // RFC 4122 variant
  std::string s;
  char hexbuf[3];
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    std::snprintf(hexbuf, sizeof hexbuf, "%02x", std::to_integer<unsigned>(u[i]));
    s += hexbuf;
  }
  return s;
}

// PBKDF2 iterations per second for this hash on this machine (as QEMU's count_iters, but
// timed over at least 20 ms rather than 500: a slot needs a rough count, not a benchmark).
Result<uint64_t> iterations_per_second(const std::string& hash, uint32_t key_bytes) {
  std::array<std::byte, 32> salt{};
  std::vector<std::byte> out(key_bytes);
  using clock = std::chrono::steady_clock;
  for (uint32_t n = 1u << 12;; n *= 2) {
    auto t0 = clock::now();
    if (Error e = pbkdf2(hash, bytes("calibration"), salt, n, out)) return e;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(clock::now() - t0).count();
    if (us >= 20000 || n >= (1u << 30))
      return static_cast<uint64_t>(static_cast<double>(n) * 1e6 / static_cast<double>(std::max<int64_t>(us, 1)));
  }
}

// PBKDF2 iterations that take about `ms` milliseconds for this hash on this machine.
Result<uint32_t> calibrate(const std::string& hash, uint32_t key_bytes, uint32_t ms) {
  auto rate = iterations_per_second(hash, key_bytes);
  if (!rate) return rate.error();
  const double total = static_cast<double>(*rate) * ms / 1000.0;
  return static_cast<uint32_t>(std::clamp(total, double{kMinIterations}, double{kLuksDefaultMaxIterations}));
}

uint64_t slot_stride(uint32_t key_bytes) { return align_up(uint64_t{key_bytes} * kLuksStripes); }

// Header fields for a new volume: layout, salts, uuid; slot 0 active, the rest inactive.
Result<LuksInfo> new_header(const LuksCreateOptions& o, uint32_t slot_iter, uint32_t mk_iter) {
  LuksInfo info;
  info.cipher = o.cipher;
  info.cipher_name = o.cipher.alg;
  info.cipher_mode = format_cipher_mode(o.cipher);
  info.hash_spec = o.hash;
  info.key_bytes = o.cipher.key_bytes;
  info.mk_iterations = mk_iter;
  auto uuid = random_uuid();
  if (!uuid) return uuid.error();
  info.uuid = *uuid;
  if (Error e = random(info.mk_salt)) return e;
  uint64_t stride = slot_stride(info.key_bytes);
  for (size_t i = 0; i < kLuksNumSlots; ++i) {
    LuksSlot& s = info.slots[i];
    s.key_offset = static_cast<uint32_t>((kAlign + i * stride) / kLuksSectorSize);
    s.stripes = kLuksStripes;
  }
  info.payload_offset = kAlign + kLuksNumSlots * stride;
  info.slots[0].active = true;
  info.slots[0].iterations = slot_iter;
  return info;
}

Error check_options(const LuksCreateOptions& o, const std::string& where) {
  if (o.cipher.key_bytes == 0 || o.cipher.key_bytes > kLuksMaxKeyBytes)
    return Error(Errc::invalid_argument, where + ": LUKS key size " +
                                             std::to_string(o.cipher.key_bytes) + " bytes");
  if (hash_size(o.hash) == 0)
    return Error(Errc::not_supported, where + ": hash algorithm '" + o.hash + "' is not supported");
  return check_cipher_supported(o.cipher, where);
}

}  // namespace

Result<uint64_t> luks_header_size(const LuksCreateOptions& options) {
  if (Error e = check_options(options, "LUKS")) return e;
  return kAlign + kLuksNumSlots * slot_stride(options.cipher.key_bytes);
}

Result<LuksVolume> luks_create(File& f, uint64_t offset, std::string_view passphrase,
                               const LuksCreateOptions& options, const std::string& path) {
  if (Error e = check_options(options, path)) return e;
  uint32_t slot_iter = options.iterations, mk_iter = options.iterations;
  if (!slot_iter) {
    auto it = calibrate(options.hash, options.cipher.key_bytes, options.iter_time_ms);
    if (!it) return it.error().wrap("calibrating", "PBKDF2 iterations").image(path);
    slot_iter = *it;
    mk_iter = std::max(kMinIterations, slot_iter / 8);
  }
  auto info = new_header(options, slot_iter, mk_iter);
  if (!info) return info.error().wrap("creating", "LUKS header", offset).image(path);
  SecretBytes mk(info->key_bytes);
  Error err = random(mk.span());
  if (!err) err = pbkdf2(info->hash_spec, mk.span(), info->mk_salt, mk_iter, info->mk_digest);
  std::vector<std::byte> area(info->payload_offset);
  const LuksSlot& s0 = info->slots[0];
  auto material = std::span(area).subspan(uint64_t{s0.key_offset} * kLuksSectorSize,
                                          info->material_bytes(s0));
  if (!err) err = luks_seal_slot(*info, 0, slot_iter, passphrase, mk.span(), material);
  // One write: the header and its only key slot's material land together (a new image).
  auto header = luks_serialize(*info);
  std::copy(header.begin(), header.end(), area.begin());
  if (!err) err = f.write(IoKind::meta, offset, area);
  Result<std::unique_ptr<SectorCipher>> cipher = err ? Result<std::unique_ptr<SectorCipher>>(err)
                                                     : make_sector_cipher(info->cipher, mk.span(), path);
  if (!cipher) return cipher.error().wrap("creating", "LUKS header", offset).image(path);
  return LuksVolume{std::move(*info), std::move(*cipher), 0, std::move(mk)};
}

Result<uint32_t> luks_slot_iterations(const std::string& hash, uint32_t key_bytes, uint64_t iter_time_ms) {
  auto rate = iterations_per_second(hash, key_bytes);
  if (!rate) return rate.error();
  // QEMU's checks and words (crypto/block-luks.c, store_key), errno ERANGE's text appended.
  if (iter_time_ms && *rate > UINT64_MAX / iter_time_ms)
    return Error(Errc::invalid_argument, "PBKDF iterations " + std::to_string(*rate) +
                                             " too large to scale: Numerical result out of range");
  const uint64_t iters = *rate * iter_time_ms / 1000;
  if (iters > UINT32_MAX)
    return Error(Errc::invalid_argument, "PBKDF iterations " + std::to_string(iters) + " larger than " +
                                             std::to_string(UINT32_MAX) + ": Numerical result out of range");
  return static_cast<uint32_t>(std::clamp<uint64_t>(iters, kMinIterations, kLuksDefaultMaxIterations));
}

Error luks_seal_slot(LuksInfo& info, unsigned slot, uint32_t iterations, std::string_view passphrase,
                     std::span<const std::byte> mk, std::span<std::byte> material) {
  LuksSlot& s = info.slots[slot];
  if (mk.size() != info.key_bytes || material.size() != info.material_bytes(s))
    return Error(Errc::invalid_argument, "LUKS key slot " + std::to_string(slot) + ": bad key or material size");
  if (Error e = random(s.salt)) return e;
  s.iterations = iterations;
  SecretBytes slot_key(info.key_bytes);
  if (Error e = pbkdf2(info.hash_spec, bytes(passphrase), s.salt, s.iterations, slot_key.span())) return e;
  // Sectors past the split key (rounding to whole sectors) are encrypted zeros.
  std::fill(material.begin(), material.end(), std::byte{0});
  if (Error e = luks_af_split(info.hash_spec, mk, s.stripes, material.first(size_t{info.key_bytes} * s.stripes)))
    return e;
  auto cipher = make_sector_cipher(info.cipher, slot_key.span(), "LUKS key slot " + std::to_string(slot));
  if (!cipher) return cipher.error();
  return (*cipher)->encrypt(0, material);
}

}  // namespace vd::qcow
