// qemu-img's create options for the luks format, with its messages. The passphrase itself
// comes in CreateOptions::passphrase (qemu-img's key-secret names a secret object holding it).
#include <cerrno>
#include <cstdlib>
#include <set>

#include "backends/luks/luks.h"

namespace vd::luks {
namespace {

Error bad(const std::string& path, const std::string& what) {
  return Error(Errc::invalid_argument, what).image(path);
}

Error rejected(const std::string& path, const std::string& key, const std::string& value) {
  return bad(path, "Parameter '" + key + "' does not accept value '" + value + "'");
}

// The cipher and mode as given; key sizes are settled once both are known (XTS doubles the
// key), whatever order the options came in.
struct Raw {
  std::string alg = "aes-256";
  std::string mode = "xts";
  std::string ivgen = "plain64";
  std::optional<std::string> ivgen_hash;
  std::string hash = "sha256";
};

// QEMU's cipher names (QCryptoCipherAlgorithm); key bits from the name.
Result<uint32_t> cipher_key_bits(const std::string& alg, const std::string& path) {
  static const std::set<std::string> known = {
      "aes-128",     "aes-192",     "aes-256",     "des",         "3des",
      "cast5-128",   "serpent-128", "serpent-192", "serpent-256", "twofish-128",
      "twofish-192", "twofish-256", "sm4"};
  if (!known.count(alg)) return rejected(path, "cipher-alg", alg);
  if (alg == "des") return 64u;
  if (alg == "3des") return 192u;
  if (alg == "sm4") return 128u;
  return static_cast<uint32_t>(std::stoul(alg.substr(alg.rfind('-') + 1)));
}

Result<uint32_t> parse_number(const std::string& key, const std::string& v, const std::string& path) {
  errno = 0;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || v[0] == '-' || n > UINT32_MAX)
    return bad(path, "Parameter '" + key + "' expects a number");
  return static_cast<uint32_t>(n);
}

Error parse_one(const std::string& key, const std::string& v, Raw& raw, LuksCreateSpec& s,
                const std::string& path) {
  static const std::set<std::string> hashes = {"md5",    "sha1",   "sha224",   "sha256",
                                               "sha384", "sha512", "ripemd160"};
  if (key == "key-secret" || key == "size") return {};  // passphrase / size fields
  if (key == "cipher-alg") {
    raw.alg = v;
  } else if (key == "cipher-mode") {
    if (v != "ecb" && v != "cbc" && v != "xts" && v != "ctr") return rejected(path, key, v);
    raw.mode = v;
  } else if (key == "ivgen-alg") {
    if (v != "plain" && v != "plain64" && v != "essiv") return rejected(path, key, v);
    raw.ivgen = v;
  } else if (key == "ivgen-hash-alg" || key == "hash-alg") {
    if (!hashes.count(v)) return rejected(path, key, v);
    (key == "hash-alg" ? raw.hash : raw.ivgen_hash.emplace()) = v;
  } else if (key == "iter-time") {
    auto ms = parse_number(key, v, path);
    if (!ms) return ms.error();
    s.luks.iter_time_ms = *ms;
  } else if (key == "preallocation") {
    if (v == "off" || v == "metadata") s.prealloc = Prealloc::off;  // no metadata to allocate
    else if (v == "falloc") s.prealloc = Prealloc::falloc;
    else if (v == "full") s.prealloc = Prealloc::full;
    else return bad(path, "invalid parameter value: " + v);
  } else {
    return bad(path, "Invalid parameter '" + key + "'");
  }
  return {};
}

Error settle_cipher(const Raw& raw, LuksCreateSpec& s, const std::string& path) {
  auto bits = cipher_key_bits(raw.alg, path);
  if (!bits) return bits.error();
  qcow::CipherSpec& c = s.luks.cipher;
  c.alg = raw.alg.substr(0, raw.alg.find('-'));
  c.mode = raw.mode;
  c.key_bytes = *bits / 8 * (raw.mode == "xts" ? 2 : 1);
  c.ivgen = raw.ivgen == "plain" ? qcow::IvGen::plain
          : raw.ivgen == "essiv" ? qcow::IvGen::essiv
                                 : qcow::IvGen::plain64;
  c.ivgen_hash = c.ivgen == qcow::IvGen::essiv ? raw.ivgen_hash.value_or("sha256") : "";
  s.luks.hash = raw.hash;
  return {};
}

}  // namespace

Result<LuksCreateSpec> parse_create_options(const CreateOptions& opts, const std::string& path) {
  LuksCreateSpec s;
  Raw raw;
  for (const auto& [key, value] : opts.options)
    if (Error e = parse_one(key, value, raw, s, path)) return e;
  if (opts.backing_file || opts.backing_format)
    return Error(Errc::not_supported, "Backing file not supported for file format 'luks'").image(path);
  if (Error e = settle_cipher(raw, s, path)) return e;
  if (!opts.passphrase) return bad(path, "Parameter 'key-secret' is required for cipher");
  return s;
}

std::vector<OptionHelp> create_option_help() {
  return {{"cipher-alg", "Name of encryption cipher algorithm"},
          {"cipher-mode", "Name of encryption cipher mode"},
          {"hash-alg", "Name of encryption hash algorithm"},
          {"iter-time", "Time to spend in PBKDF in milliseconds"},
          {"ivgen-alg", "Name of IV generator algorithm"},
          {"ivgen-hash-alg", "Name of IV generator hash algorithm"},
          {"key-secret", "ID of the secret that provides the keyslot passphrase"},
          {"preallocation", "Preallocation mode (allowed values: off, falloc, full)"},
          {"size", "Virtual disk size"}};
}

}  // namespace vd::luks
