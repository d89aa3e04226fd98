// Hashes and PBKDF2 by their LUKS names, on OpenSSL's EVP layer.
#include <openssl/evp.h>

#include <array>
#include <string>

#include "backends/crypto/crypto.h"

namespace vd::qcow {
namespace {

// Only the names LUKS implementations write. Anything else is refused rather than handed
// to OpenSSL's name lookup, which knows aliases no other LUKS reader would accept.
const EVP_MD* find_md(std::string_view name) {
  struct Entry {
    std::string_view luks;
    const char* ossl;
  };
  static constexpr std::array<Entry, 7> kTable{{{"md5", "MD5"},
                                                {"sha1", "SHA1"},
                                                {"sha224", "SHA224"},
                                                {"sha256", "SHA256"},
                                                {"sha384", "SHA384"},
                                                {"sha512", "SHA512"},
                                                {"ripemd160", "RIPEMD160"}}};
  for (const auto& e : kTable) {
    if (e.luks == name) return EVP_get_digestbyname(e.ossl);
  }
  return nullptr;
}

Error unknown_hash(std::string_view name) {
  return Error(Errc::not_supported, "hash algorithm '" + std::string(name) + "' is not supported");
}

}  // namespace

uint32_t hash_size(std::string_view name) {
  const EVP_MD* md = find_md(name);
  return md ? static_cast<uint32_t>(EVP_MD_get_size(md)) : 0;
}

Error hash_parts(std::string_view name, std::span<const std::span<const std::byte>> parts,
                 std::span<std::byte> out) {
  const EVP_MD* md = find_md(name);
  if (!md) return unknown_hash(name);
  if (out.size() > static_cast<size_t>(EVP_MD_get_size(md)))
    return Error(Errc::internal, "hash output larger than the digest");
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) return Error(Errc::internal, "out of memory creating a hash context");
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int len = 0;
  bool ok = EVP_DigestInit_ex(ctx, md, nullptr) == 1;
  for (auto part : parts) ok = ok && EVP_DigestUpdate(ctx, part.data(), part.size()) == 1;
  ok = ok && EVP_DigestFinal_ex(ctx, digest.data(), &len) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) return Error(Errc::internal, "hash " + std::string(name) + " failed in OpenSSL");
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::byte(digest[i]);
  return {};
}

Error pbkdf2(std::string_view hash, std::span<const std::byte> password,
             std::span<const std::byte> salt, uint32_t iterations, std::span<std::byte> out) {
  const EVP_MD* md = find_md(hash);
  if (!md) return unknown_hash(hash);
  // OpenSSL takes int lengths and iterations; LUKS values fit (bounded by the parser).
  if (iterations == 0 || iterations > 0x7fffffffu || out.size() > 0x7fffffffu ||
      password.size() > 0x7fffffffu || salt.size() > 0x7fffffffu)
    return Error(Errc::invalid_argument, "PBKDF2 parameters out of range");
  int rc = PKCS5_PBKDF2_HMAC(reinterpret_cast<const char*>(password.data()),
                             static_cast<int>(password.size()),
                             reinterpret_cast<const unsigned char*>(salt.data()),
                             static_cast<int>(salt.size()), static_cast<int>(iterations), md,
                             static_cast<int>(out.size()),
                             reinterpret_cast<unsigned char*>(out.data()));
  if (rc != 1) return Error(Errc::internal, "PBKDF2-" + std::string(hash) + " failed in OpenSSL");
  return {};
}

}  // namespace vd::qcow
