// qemu-img info's description of a LUKS header. qemu-img prints the members of its
// QCryptoBlockInfoLUKS in the order below (that of its dictionary, not of the schema); a
// luks image prints them at the top of "format-specific", a QCOW2 image under "encrypt".
#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

const char* ivgen_name(IvGen g) {
  switch (g) {
    case IvGen::none: return "none";
    case IvGen::plain: return "plain";
    case IvGen::plain64: return "plain64";
    case IvGen::essiv: return "essiv";
  }
  return "plain64";
}

// "aes-256": the cipher and its key size without XTS's second half.
std::string cipher_alg(const CipherSpec& c) {
  const uint32_t key_bytes = c.mode == "xts" ? c.key_bytes / 2 : c.key_bytes;
  return c.alg + "-" + std::to_string(key_bytes * 8);
}

void append_slots(const LuksInfo& info, const std::string& prefix,
                  std::vector<InfoField>& out) {
  for (size_t i = 0; i < info.slots.size(); ++i) {
    const LuksSlot& s = info.slots[i];
    const std::string k = prefix + "slots." + std::to_string(i) + ".";
    out.push_back({k + "active", s.active});
    if (s.active) out.push_back({k + "iters", uint64_t{s.iterations}});
    out.push_back({k + "key-offset", uint64_t{s.key_offset} * kLuksSectorSize});
    if (s.active) out.push_back({k + "stripes", uint64_t{s.stripes}});
  }
}

}  // namespace

void append_luks_info(const LuksInfo& info, const std::string& prefix, std::vector<InfoField>& out,
                      const InfoField* before_mode) {
  const CipherSpec& c = info.cipher;
  out.push_back({prefix + "ivgen-alg", std::string(ivgen_name(c.ivgen))});
  out.push_back({prefix + "hash-alg", info.hash_spec});
  out.push_back({prefix + "cipher-alg", cipher_alg(c)});
  out.push_back({prefix + "uuid", info.uuid});
  if (c.ivgen == IvGen::essiv) out.push_back({prefix + "ivgen-hash-alg", c.ivgen_hash});
  if (before_mode) out.push_back(*before_mode);
  out.push_back({prefix + "cipher-mode", c.mode});
  append_slots(info, prefix, out);
  out.push_back({prefix + "payload-offset", info.payload_offset});
  out.push_back({prefix + "master-key-iters", uint64_t{info.mk_iterations}});
}

}  // namespace vd::qcow
