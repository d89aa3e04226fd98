// Sector ciphers on OpenSSL's EVP layer: AES in XTS, CBC, CTR and ECB with the plain,
// plain64 and ESSIV IV generators, as dm-crypt, cryptsetup and QEMU define them.
//
// Thread safety: the keyed EVP contexts are built once and never modified afterwards; each
// encrypt/decrypt call copies them (EVP_CIPHER_CTX_copy keeps the key schedule, so no
// re-keying per call) and works on its private copies.
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "backends/crypto/crypto.h"

namespace vd::qcow {
namespace {

constexpr size_t kBlock = 16;  // AES block and IV size
constexpr size_t kBlocksPerSector = kCryptoSectorSize / kBlock;

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

Error ossl_error(const std::string& what) {
  return Error(Errc::internal, "OpenSSL failed: " + what);
}

// A context keyed for one direction, without padding (sectors are whole blocks).
Result<CtxPtr> keyed_ctx(const EVP_CIPHER* cipher, const std::byte* key, bool enc) {
  CtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return ossl_error("EVP_CIPHER_CTX_new");
  auto k = reinterpret_cast<const unsigned char*>(key);
  if (EVP_CipherInit_ex(ctx.get(), cipher, nullptr, k, nullptr, enc ? 1 : 0) != 1)
    return ossl_error(std::string("key setup for ") + EVP_CIPHER_get0_name(cipher));
  EVP_CIPHER_CTX_set_padding(ctx.get(), 0);
  return ctx;
}

Result<CtxPtr> clone(const EVP_CIPHER_CTX* tmpl) {
  CtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_CIPHER_CTX_copy(ctx.get(), tmpl) != 1) return ossl_error("context copy");
  return ctx;
}

// In-place update that must consume and produce exactly the input length.
bool update(EVP_CIPHER_CTX* ctx, std::byte* data, size_t len) {
  int out = 0;
  auto p = reinterpret_cast<unsigned char*>(data);
  return EVP_CipherUpdate(ctx, p, &out, p, static_cast<int>(len)) == 1 &&
         static_cast<size_t>(out) == len;
}

std::string aes_name(uint32_t key_bytes, const std::string& mode) {
  return "aes-" + std::to_string(key_bytes * 8) + "-" + mode;
}

// The hash that keys ESSIV decides the ESSIV cipher's key size; AES takes 16, 24 or 32.
bool aes_key_size_ok(uint32_t n) { return n == 16 || n == 24 || n == 32; }

// How a sector is run through OpenSSL.
enum class Engine : uint8_t {
  iv_mode,   // OpenSSL mode with an IV per sector (cbc, ctr, native xts)
  ecb,       // no IV: the whole buffer at once
  xts_soft,  // XTS built on ECB, for key sizes OpenSSL has no XTS for (aes-192)
};

class OsslCipher final : public SectorCipher {
 public:
  static Result<std::unique_ptr<SectorCipher>> make(const CipherSpec& spec,
                                                    std::span<const std::byte> key,
                                                    const std::string& where);

  Error encrypt(uint64_t sector, std::span<std::byte> buf) const override {
    return crypt(sector, buf, true);
  }
  Error decrypt(uint64_t sector, std::span<std::byte> buf) const override {
    return crypt(sector, buf, false);
  }
  uint32_t key_bytes() const override { return key_bytes_; }

 private:
  // Per-call copies of the keyed contexts.
  struct Work {
    CtxPtr data, tweak, essiv;
  };

  Error setup_data(const CipherSpec& spec, std::span<const std::byte> key);
  Error setup_essiv(const CipherSpec& spec, std::span<const std::byte> key);
  Result<Work> start(bool enc) const;
  bool make_iv(const Work& w, uint64_t sector, std::byte* iv) const;
  bool xts_sector(const Work& w, const std::byte* iv, std::byte* data) const;
  Error crypt(uint64_t sector, std::span<std::byte> buf, bool enc) const;

  Engine engine_ = Engine::iv_mode;
  IvGen ivgen_ = IvGen::plain64;
  uint32_t key_bytes_ = 0;
  CtxPtr enc_, dec_;  // the data cipher (for xts_soft: ECB keyed with the first half)
  CtxPtr tweak_;      // xts_soft: ECB encryption keyed with the second half
  CtxPtr essiv_;      // ESSIV: ECB encryption keyed with HASH(key)
};

Error OsslCipher::setup_data(const CipherSpec& spec, std::span<const std::byte> key) {
  uint32_t cipher_key = spec.mode == "xts" ? spec.key_bytes / 2 : spec.key_bytes;
  std::string name = aes_name(cipher_key, spec.mode);
  if (spec.mode == "xts" && cipher_key == 24) {
    engine_ = Engine::xts_soft;
    name = aes_name(cipher_key, "ecb");
  } else if (spec.mode == "ecb") {
    engine_ = Engine::ecb;
  }
  const EVP_CIPHER* c = EVP_get_cipherbyname(name.c_str());
  if (!c) return Error(Errc::not_supported, "cipher " + name + " is not available in OpenSSL");
  const std::byte* k = key.data();
  auto enc = keyed_ctx(c, k, true);
  if (!enc) return enc.error();
  auto dec = keyed_ctx(c, k, false);
  if (!dec) return dec.error();
  enc_ = std::move(*enc);
  dec_ = std::move(*dec);
  if (engine_ == Engine::xts_soft) {
    auto tw = keyed_ctx(c, k + cipher_key, true);
    if (!tw) return tw.error();
    tweak_ = std::move(*tw);
  }
  return {};
}

Error OsslCipher::setup_essiv(const CipherSpec& spec, std::span<const std::byte> key) {
  uint32_t n = hash_size(spec.ivgen_hash);
  std::array<std::byte, EVP_MAX_MD_SIZE> salt{};
  std::array<std::span<const std::byte>, 1> parts{key};
  if (Error e = hash_parts(spec.ivgen_hash, parts, std::span(salt).first(n))) return e;
  const EVP_CIPHER* c = EVP_get_cipherbyname(aes_name(n, "ecb").c_str());
  if (!c) return Error(Errc::not_supported, "no ESSIV cipher for " + spec.ivgen_hash);
  auto ctx = keyed_ctx(c, salt.data(), true);
  OPENSSL_cleanse(salt.data(), salt.size());  // HASH(key) is key material too
  if (!ctx) return ctx.error();
  essiv_ = std::move(*ctx);
  return {};
}

Result<std::unique_ptr<SectorCipher>> OsslCipher::make(const CipherSpec& spec,
                                                       std::span<const std::byte> key,
                                                       const std::string& where) {
  if (Error e = check_cipher_supported(spec, where)) return e;
  if (key.size() != spec.key_bytes)
    return Error(Errc::invalid_argument, where + ": key of " + std::to_string(key.size()) +
                                             " bytes for a " + std::to_string(spec.key_bytes) +
                                             "-byte cipher");
  auto c = std::make_unique<OsslCipher>();
  c->ivgen_ = spec.ivgen;
  c->key_bytes_ = spec.key_bytes;
  if (Error e = c->setup_data(spec, key)) return e.wrap("setting up", "cipher for " + where);
  if (spec.mode == "ecb") c->ivgen_ = IvGen::none;  // "ecb-plain64" carries an unused IV
  if (c->ivgen_ == IvGen::essiv) {
    if (Error e = c->setup_essiv(spec, key)) return e.wrap("setting up", "ESSIV for " + where);
  }
  return std::unique_ptr<SectorCipher>(std::move(c));
}

Result<OsslCipher::Work> OsslCipher::start(bool enc) const {
  Work w;
  auto data = clone(enc ? enc_.get() : dec_.get());
  if (!data) return data.error();
  w.data = std::move(*data);
  if (tweak_) {
    auto t = clone(tweak_.get());
    if (!t) return t.error();
    w.tweak = std::move(*t);
  }
  if (essiv_) {
    auto e = clone(essiv_.get());
    if (!e) return e.error();
    w.essiv = std::move(*e);
  }
  return w;
}

bool OsslCipher::make_iv(const Work& w, uint64_t sector, std::byte* iv) const {
  std::memset(iv, 0, kBlock);
  uint64_t n = ivgen_ == IvGen::plain ? (sector & 0xffffffffu) : sector;
  for (int i = 0; i < 8; ++i) iv[i] = std::byte((n >> (8 * i)) & 0xff);
  if (ivgen_ == IvGen::essiv) return update(w.essiv.get(), iv, kBlock);
  return true;
}

// Multiplies an XTS tweak by the primitive element x in GF(2^128), little-endian.
void xts_double(std::byte* t) {
  auto carry = std::to_integer<unsigned>(t[15]) >> 7;
  for (int i = 15; i > 0; --i)
    t[i] = std::byte(((std::to_integer<unsigned>(t[i]) << 1) |
                      (std::to_integer<unsigned>(t[i - 1]) >> 7)) & 0xff);
  t[0] = std::byte(((std::to_integer<unsigned>(t[0]) << 1) ^ (carry ? 0x87u : 0u)) & 0xff);
}

// XTS for one sector (a whole number of blocks, so no ciphertext stealing):
// C_j = E_k1(P_j ^ T_j) ^ T_j with T_0 = E_k2(IV) and T_{j+1} = T_j * x.
bool OsslCipher::xts_sector(const Work& w, const std::byte* iv, std::byte* data) const {
  std::array<std::byte, kCryptoSectorSize> tweaks;
  std::memcpy(tweaks.data(), iv, kBlock);
  if (!update(w.tweak.get(), tweaks.data(), kBlock)) return false;
  for (size_t j = 1; j < kBlocksPerSector; ++j) {
    std::memcpy(&tweaks[j * kBlock], &tweaks[(j - 1) * kBlock], kBlock);
    xts_double(&tweaks[j * kBlock]);
  }
  for (size_t i = 0; i < kCryptoSectorSize; ++i) data[i] ^= tweaks[i];
  if (!update(w.data.get(), data, kCryptoSectorSize)) return false;
  for (size_t i = 0; i < kCryptoSectorSize; ++i) data[i] ^= tweaks[i];
  return true;
}

Error OsslCipher::crypt(uint64_t sector, std::span<std::byte> buf, bool enc) const {
  if (buf.size() % kCryptoSectorSize != 0)
    return Error(Errc::invalid_argument, "encrypted I/O of " + std::to_string(buf.size()) +
                                             " bytes is not a whole number of sectors");
  auto work = start(enc);
  if (!work) return work.error();
  const Work& w = *work;
  if (engine_ == Engine::ecb) {
    return update(w.data.get(), buf.data(), buf.size()) ? Error{} : ossl_error("ECB update");
  }
  std::array<std::byte, kBlock> iv;
  for (size_t off = 0; off < buf.size(); off += kCryptoSectorSize, ++sector) {
    std::byte* p = buf.data() + off;
    if (!make_iv(w, sector, iv.data())) return ossl_error("IV generation");
    bool ok;
    if (engine_ == Engine::xts_soft) {
      ok = xts_sector(w, iv.data(), p);
    } else {
      auto ivp = reinterpret_cast<const unsigned char*>(iv.data());
      ok = EVP_CipherInit_ex(w.data.get(), nullptr, nullptr, nullptr, ivp, -1) == 1 &&
           update(w.data.get(), p, kCryptoSectorSize);
    }
    if (!ok) return ossl_error("sector " + std::to_string(sector));
  }
  return {};
}

}  // namespace

Error parse_cipher_mode(std::string_view text, CipherSpec& spec, const std::string& where) {
  auto dash = text.find('-');
  std::string_view mode = text.substr(0, dash);
  std::string_view iv = dash == std::string_view::npos ? std::string_view{} : text.substr(dash + 1);
  if (mode.empty()) return Error(Errc::corrupt, where + ": empty cipher mode");
  spec.mode = std::string(mode);
  spec.ivgen_hash.clear();
  if (iv.empty()) {
    // Only ECB may omit the IV generator; cryptsetup reads a bare "cbc" as cbc-plain.
    spec.ivgen = mode == "ecb" ? IvGen::none : IvGen::plain;
  } else if (iv == "plain") {
    spec.ivgen = IvGen::plain;
  } else if (iv == "plain64") {
    spec.ivgen = IvGen::plain64;
  } else if (iv.substr(0, 6) == "essiv:" && iv.size() > 6) {
    spec.ivgen = IvGen::essiv;
    spec.ivgen_hash = std::string(iv.substr(6));
  } else {
    return Error(Errc::not_supported,
                 where + ": IV generator '" + std::string(iv) + "' is not supported");
  }
  return {};
}

std::string format_cipher_mode(const CipherSpec& spec) {
  switch (spec.ivgen) {
    case IvGen::none: return spec.mode;
    case IvGen::plain: return spec.mode + "-plain";
    case IvGen::plain64: return spec.mode + "-plain64";
    case IvGen::essiv: return spec.mode + "-essiv:" + spec.ivgen_hash;
  }
  return spec.mode;
}

Error check_cipher_supported(const CipherSpec& spec, const std::string& where) {
  std::string desc = spec.alg + "-" + format_cipher_mode(spec) + " with a " +
                     std::to_string(spec.key_bytes) + "-byte key";
  auto refuse = [&](const std::string& why) {
    return Error(Errc::not_supported, where + ": cipher " + desc + " is not supported (" + why + ")");
  };
  if (spec.alg != "aes") return refuse("only aes is available");
  if (spec.mode != "xts" && spec.mode != "cbc" && spec.mode != "ctr" && spec.mode != "ecb")
    return refuse("unknown mode");
  uint32_t k = spec.mode == "xts" ? spec.key_bytes / 2 : spec.key_bytes;
  if ((spec.mode == "xts" && spec.key_bytes % 2) || !aes_key_size_ok(k))
    return refuse("bad key size");
  if (spec.ivgen == IvGen::none && spec.mode != "ecb") return refuse("mode needs an IV");
  if (spec.ivgen == IvGen::essiv && spec.mode != "ecb") {
    uint32_t n = hash_size(spec.ivgen_hash);
    if (n == 0) return refuse("unknown ESSIV hash");
    if (!aes_key_size_ok(n)) return refuse("no AES key size matches the ESSIV hash");
  }
  return {};
}

Result<std::unique_ptr<SectorCipher>> make_sector_cipher(const CipherSpec& spec,
                                                        std::span<const std::byte> key,
                                                        const std::string& where) {
  return OsslCipher::make(spec, key, where);
}

}  // namespace vd::qcow
