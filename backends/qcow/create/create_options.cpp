#include "backends/qcow/create/create_options.h"

#include <bit>
#include <set>

#include "backends/qcow/meta/format.h"
#include "backends/common/sizes.h"

namespace vd::qcow {
namespace {

constexpr const char* kV3Hint = " (use version=v3 or greater)";

Error bad(const std::string& path, const std::string& what) {
  return Error(Errc::invalid_argument, what).image(path);
}

Result<bool> on_off(const std::string& key, const std::string& v, const std::string& path) {
  if (v == "on" || v == "true" || v == "yes" || v == "y") return true;  // qapi_bool_parse's words
  if (v == "off" || v == "false" || v == "no" || v == "n") return false;
  return bad(path, "Parameter '" + key + "' expects 'on' or 'off'");
}

// Options shared by both versions: backing file and encryption.
Error parse_common(const std::string& key, const std::string& v, QcowCreateSpec& s,
                   const std::string& path) {
  if (key == "backing_file") {
    s.backing_file = v;
  } else if (key == "backing_fmt") {
    s.backing_format = v;
  } else if (key == "encryption") {
    auto b = on_off(key, v, path);
    if (!b) return b.error();
    if (*b && !s.crypt_method) s.crypt_method = kCryptAes;
  } else if (key == "encrypt.format") {
    if (v == "aes") s.crypt_method = kCryptAes;
    else if (v == "luks") s.crypt_method = kCryptLuks;
    else return bad(path, "Parameter 'encrypt.format' does not accept value '" + v + "'");
  } else if (key == "encrypt.key-secret" || key == "size") {
    // The passphrase comes through CreateOptions::passphrase; the size through its field.
  } else if (key == "encrypt.cipher-alg") {
    const auto dash = v.find('-');
    if (dash == std::string::npos) return bad(path, "Invalid cipher algorithm '" + v + "'");
    s.luks.cipher.alg = v.substr(0, dash);
    auto bits = parse_size(v.substr(dash + 1));
    if (!bits || *bits % 8) return bad(path, "Invalid cipher algorithm '" + v + "'");
    s.luks.cipher.key_bytes = static_cast<uint32_t>(*bits / 8) * (s.luks.cipher.mode == "xts" ? 2 : 1);
  } else if (key == "encrypt.cipher-mode") {
    const uint32_t base = s.luks.cipher.mode == "xts" ? s.luks.cipher.key_bytes / 2 : s.luks.cipher.key_bytes;
    s.luks.cipher.mode = v;
    s.luks.cipher.key_bytes = v == "xts" ? base * 2 : base;
  } else if (key == "encrypt.ivgen-alg") {
    if (v == "plain") s.luks.cipher.ivgen = IvGen::plain;
    else if (v == "plain64") s.luks.cipher.ivgen = IvGen::plain64;
    else if (v == "essiv") s.luks.cipher.ivgen = IvGen::essiv;
    else return bad(path, "Parameter 'encrypt.ivgen-alg' does not accept value '" + v + "'");
  } else if (key == "encrypt.ivgen-hash-alg") {
    s.luks.cipher.ivgen_hash = v;
  } else if (key == "encrypt.hash-alg") {
    s.luks.hash = v;
  } else if (key == "encrypt.iter-time") {
    auto t = parse_size(v);
    if (!t) return bad(path, "Parameter 'encrypt.iter-time' expects a number");
    s.luks.iter_time_ms = static_cast<uint32_t>(*t);
  } else {
    return bad(path, "Invalid parameter '" + key + "'");
  }
  return {};
}

Error parse_qcow2(const std::string& key, const std::string& v, QcowCreateSpec& s, const std::string& path) {
  if (key == "compat" || key == "version") {
    if (v == "0.10" || v == "v2") s.version = 2;
    else if (v == "1.1" || v == "v3") s.version = 3;
    else return bad(path, "Parameter 'version' does not accept value '" + v + "'");
  } else if (key == "cluster_size") {
    auto n = parse_size(v);
    if (!n || !std::has_single_bit(*n) || *n < 512 || *n > (2u << 20))
      return bad(path, "Cluster size must be a power of two between 512 and 2048k");
    s.cluster_bits = static_cast<uint32_t>(std::countr_zero(*n));
  } else if (key == "refcount_bits") {
    auto n = parse_size(v);
    if (!n || !std::has_single_bit(*n) || *n > 64)
      return bad(path, "Refcount width must be a power of two and may not exceed 64 bits");
    s.refcount_order = static_cast<uint32_t>(std::countr_zero(*n));
  } else if (key == "lazy_refcounts" || key == "extended_l2" || key == "data_file_raw") {
    auto b = on_off(key, v, path);
    if (!b) return b.error();
    (key == "lazy_refcounts" ? s.lazy_refcounts : key == "extended_l2" ? s.extended_l2 : s.data_file_raw) = *b;
  } else if (key == "preallocation") {
    if (v == "off") s.prealloc = Prealloc::off;
    else if (v == "metadata") s.prealloc = Prealloc::metadata;
    else if (v == "falloc") s.prealloc = Prealloc::falloc;
    else if (v == "full") s.prealloc = Prealloc::full;
    else return bad(path, "Parameter 'preallocation' does not accept value '" + v + "'");
  } else if (key == "compression_type") {
    if (v == "zlib") s.compression_type = kCompressionZlib;
    else if (v == "zstd") s.compression_type = kCompressionZstd;
    else return bad(path, "Parameter 'compression-type' does not accept value '" + v + "'");
  } else if (key == "data_file") {
    s.data_file = v;
  } else {
    return parse_common(key, v, s, path);
  }
  return {};
}

// The cross-option rules, in qemu-img's order and words.
Error check_qcow2(const QcowCreateSpec& s, const std::string& path) {
  if (s.version < 3) {
    if (s.refcount_order != 4)
      return bad(path, std::string("Different refcount widths than 16 bits require compatibility level 1.1 or above") + kV3Hint);
    if (s.lazy_refcounts)
      return bad(path, std::string("Lazy refcounts only supported with compatibility level 1.1 and above") + kV3Hint);
    if (s.compression_type != kCompressionZlib)
      return bad(path, std::string("Non-zlib compression type is only supported with compatibility level 1.1 and above") + kV3Hint);
    if (s.extended_l2)
      return bad(path, std::string("Extended L2 entries are only supported with compatibility level 1.1 and above") + kV3Hint);
    if (s.data_file)
      return bad(path, std::string("External data files are only supported with compatibility level 1.1 and above") + kV3Hint);
  }
  if (s.extended_l2 && s.cluster_bits < 14)
    return bad(path, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  if (s.backing_file && s.prealloc != Prealloc::off && !s.extended_l2)
    return bad(path, "Backing file and preallocation can only be used at the same time if extended_l2 is on");
  if (s.data_file_raw && !s.data_file) return bad(path, "data-file-raw requires data-file");
  if (s.backing_file && s.data_file_raw)
    return bad(path, "Backing file and data-file-raw cannot be used at the same time");
  if (s.crypt_method && s.data_file)
    return bad(path, "Encryption is not supported with an external data file");
  return {};
}

}  // namespace

Result<QcowCreateSpec> parse_create_options(const CreateOptions& opts, bool v1, const std::string& path) {
  QcowCreateSpec s;
  for (const auto& [key, value] : opts.options) {
    Error e = v1 ? parse_common(key, value, s, path) : parse_qcow2(key, value, s, path);
    if (e) return e;
  }
  if (opts.backing_file) s.backing_file = opts.backing_file;
  if (opts.backing_format) s.backing_format = opts.backing_format;
  if (v1) {
    s.version = 1;
    if (s.crypt_method == kCryptLuks)
      return bad(path, "Parameter 'encrypt.format' does not accept value 'luks'");
  } else if (Error e = check_qcow2(s, path)) {
    return e;
  }
  if (s.crypt_method && !opts.passphrase)
    return bad(path, "Parameter 'encrypt.key-secret' is required for cipher");
  return s;
}

}  // namespace vd::qcow
