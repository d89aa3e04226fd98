// LuksImage::amend: qemu-img amend -o for a luks volume. QEMU 7.2 takes the key slot options
// only (state, keyslot, old-secret, new-secret, iter-time); the header lives at the start of
// the file and may use everything before the payload.
#include <array>

#include "backends/luks/luks.h"

namespace vd::luks {
namespace {

Error refused(const std::string& message) { return Error(Errc::invalid_argument, message); }

// The luks create options: qemu-img adds a hint when amend is given one of them.
constexpr std::array<const char*, 7> kCreateOnly = {"key-secret", "cipher-alg", "cipher-mode", "ivgen-alg",
                                                    "ivgen-hash-alg", "hash-alg", "size"};

// qemu-img's option parsing for luks: unknown and create-only names, number values.
Error check_names(const std::map<std::string, std::string>& options) {
  for (const auto& [key, value] : options) {
    if (key.starts_with(qcow::kLuksAmendSecretPrefix)) continue;
    if (key == "state" || key == "new-secret" || key == "old-secret") continue;
    if (key == "keyslot" || key == "iter-time") {
      if (Error e = qcow::luks_check_amend_number(key, value)) return e;
      continue;
    }
    for (const char* c : kCreateOnly)
      if (key == c) return refused("Invalid parameter '" + key + "'\nThis option is only supported for image creation");
    return refused("Invalid parameter '" + key + "'");
  }
  return {};
}

}  // namespace

Error LuksImage::amend(const AmendOptions& opts) {
  if (Error e = check_names(opts.options)) return e;
  if (!file_) return Error(Errc::internal, "amend after the image was closed").image(path_);
  if (flags_ & open_read_only)
    return Error(Errc::read_only, "amend refused: the image is open read-only").image(path_);
  if (!locks_.idle()) return Error(Errc::busy, "amend refused: writes are in flight").image(path_);
  // The key material must lie before the payload, as for the unlock.
  const qcow::LuksArea area{*file_, 0, info_.payload_offset, path_};
  return qcow::luks_amend(area, info_, master_key_.span(), opts.options, "", opts.force);
}

}  // namespace vd::luks
