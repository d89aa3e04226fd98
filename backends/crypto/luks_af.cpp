// LUKS1 anti-forensic information splitter: the master key is spread over `stripes` blocks
// so that wiping any one of them destroys it. Diffusion hashes the block in digest-sized
// chunks, chunk j as HASH(be32(j) || chunk), and keeps as many bytes as the chunk had.
#include <openssl/rand.h>

#include <array>
#include <vector>

#include "backends/common/endian.h"
#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

Error diffuse(std::string_view hash, std::span<std::byte> block) {
  uint32_t ds = hash_size(hash);
  if (ds == 0) return Error(Errc::not_supported, "hash algorithm '" + std::string(hash) + "' is not supported");
  std::array<std::byte, 4> index;
  for (size_t off = 0, j = 0; off < block.size(); off += ds, ++j) {
    size_t n = std::min<size_t>(ds, block.size() - off);
    store_be32(index.data(), static_cast<uint32_t>(j));
    std::array<std::span<const std::byte>, 2> parts{std::span<const std::byte>(index),
                                                    block.subspan(off, n)};
    std::array<std::byte, 64> out;  // EVP_MAX_MD_SIZE
    if (Error e = hash_parts(hash, parts, std::span(out).first(n))) return e;
    std::copy_n(out.begin(), n, block.begin() + off);
  }
  return {};
}

// d = diffuse(...diffuse(diffuse(b0) ^ b1)... ^ b_{stripes-2}): what the last block is
// XORed with to give the key.
Error accumulate(std::string_view hash, std::span<const std::byte> material, size_t key_bytes,
                 uint32_t stripes, std::span<std::byte> d) {
  std::fill(d.begin(), d.end(), std::byte{0});
  for (uint32_t i = 0; i + 1 < stripes; ++i) {
    auto blk = material.subspan(i * key_bytes, key_bytes);
    for (size_t k = 0; k < key_bytes; ++k) d[k] ^= blk[k];
    if (Error e = diffuse(hash, d)) return e;
  }
  return {};
}

Error check_sizes(size_t key_bytes, uint32_t stripes, size_t material) {
  if (key_bytes == 0 || key_bytes > kLuksMaxKeyBytes || stripes == 0 ||
      stripes > kLuksMaxStripes || material != key_bytes * stripes)
    return Error(Errc::invalid_argument, "AF: bad key size or stripe count");
  return {};
}

}  // namespace

Error luks_af_merge(std::string_view hash, std::span<const std::byte> material, uint32_t stripes,
                    std::span<std::byte> key) {
  if (Error e = check_sizes(key.size(), stripes, material.size())) return e;
  if (Error e = accumulate(hash, material, key.size(), stripes, key)) return e;
  auto last = material.subspan((stripes - 1) * key.size(), key.size());
  for (size_t k = 0; k < key.size(); ++k) key[k] ^= last[k];
  return {};
}

Error luks_af_split(std::string_view hash, std::span<const std::byte> key, uint32_t stripes,
                    std::span<std::byte> material) {
  if (Error e = check_sizes(key.size(), stripes, material.size())) return e;
  size_t random_bytes = (stripes - 1) * key.size();
  if (random_bytes &&
      RAND_bytes(reinterpret_cast<unsigned char*>(material.data()), static_cast<int>(random_bytes)) != 1)
    return Error(Errc::internal, "OpenSSL RAND_bytes failed");
  std::vector<std::byte> d(key.size());
  if (Error e = accumulate(hash, material, key.size(), stripes, d)) return e;
  auto last = material.subspan(random_bytes, key.size());
  for (size_t k = 0; k < key.size(); ++k) last[k] = d[k] ^ key[k];
  return {};
}

}  // namespace vd::qcow
