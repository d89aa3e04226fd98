// qemu-img amend's key slot options, as QEMU 7.2 handles them (crypto/block-luks.c:
// qcrypto_block_luks_amend_options, _amend_add_keyslot, _amend_erase_keyslots), with its
// checks in its order and its messages. The writes and their crash invariant are in
// luks_keyslots.cpp.
#include <cerrno>
#include <cstdlib>
#include <optional>

#include "backends/crypto/luks.h"

namespace vd::qcow {
namespace {

Error refused(const std::string& message) { return Error(Errc::invalid_argument, message); }

// What QEMU's QAPI visitor makes of the options (QCryptoBlockAmendOptionsLUKS).
struct Request {
  bool activate = false;
  std::optional<std::string> new_secret, old_secret;
  std::optional<int> keyslot;          // QEMU keeps it in an int: 2^32 is slot 0 again
  std::optional<uint64_t> iter_time;   // an int64 read as uint64: -5 is huge
};

// The visitor's integer: base 0, a sign allowed, int64 range ("expects integer", the option
// named without its "encrypt." prefix, as QEMU's visitor of the sub-dictionary does).
Result<int64_t> qapi_int(const std::string& name, const std::string& value) {
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(value.c_str(), &end, 0);
  if (value.empty() || *end || errno == ERANGE) return refused("Parameter '" + name + "' expects integer");
  return static_cast<int64_t>(n);
}

Result<Request> parse(const std::map<std::string, std::string>& options, const std::string& prefix) {
  auto get = [&](const char* name) -> const std::string* {
    auto it = options.find(prefix + name);
    return it == options.end() ? nullptr : &it->second;
  };
  Request r;
  const std::string* state = get("state");
  if (!state) return refused("Parameter 'state' is missing");
  if (*state != "active" && *state != "inactive")
    return refused("Parameter 'state' does not accept value '" + *state + "'");
  r.activate = *state == "active";
  if (auto* v = get("new-secret")) r.new_secret = *v;
  if (auto* v = get("old-secret")) r.old_secret = *v;
  if (auto* v = get("keyslot")) {
    auto n = qapi_int("keyslot", *v);
    if (!n) return n.error();
    r.keyslot = static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(*n)));
  }
  if (auto* v = get("iter-time")) {
    auto n = qapi_int("iter-time", *v);
    if (!n) return n.error();
    r.iter_time = static_cast<uint64_t>(*n);
  }
  return r;
}

Result<std::string> lookup_secret(const std::map<std::string, std::string>& options, const std::string& id) {
  auto it = options.find(std::string(kLuksAmendSecretPrefix) + id);
  if (it == options.end()) return Error(Errc::not_found, "No secret with id '" + id + "'");
  return it->second;
}

std::optional<unsigned> first_free(const LuksInfo& info) {
  for (unsigned i = 0; i < kLuksNumSlots; ++i)
    if (!info.slots[i].active) return i;
  return std::nullopt;
}

// QEMU appends a hint to the failure of a write ("Failed to write to keyslot 2").
Error with_hint(Error e, const std::string& hint) {
  return Error(e.code(), e.message() + "\n" + hint);
}

Error add_keyslot(const LuksArea& area, LuksInfo& info, std::span<const std::byte> mk,
                  const std::map<std::string, std::string>& options, const Request& r, bool force) {
  if (!r.new_secret) return refused("'new-secret' is required to activate a keyslot");
  if (r.old_secret) return refused("'old-secret' must not be given when activating keyslots");
  unsigned slot = 0;
  if (r.keyslot) {
    if (*r.keyslot < 0 || *r.keyslot >= static_cast<int>(kLuksNumSlots))
      return refused("Invalid keyslot " + std::to_string(static_cast<uint32_t>(*r.keyslot)) +
                     " specified, must be between 0 and " + std::to_string(kLuksNumSlots - 1));
    slot = static_cast<unsigned>(*r.keyslot);
  } else {
    auto free = first_free(info);
    if (!free) return refused("Can't add a keyslot - all keyslots are in use");
    slot = *free;
  }
  if (!force && info.slots[slot].active)
    return refused("Refusing to overwrite active keyslot " + std::to_string(slot) + " - please erase it first");
  // QEMU unlocks the master key again with the image's key here; vd kept it from the open.
  if (mk.size() != info.key_bytes)
    return Error(Errc::wrong_passphrase, "the image was opened without its key: the master key is unknown")
        .image(area.path);
  auto password = lookup_secret(options, *r.new_secret);
  if (!password) return password.error();
  const uint64_t iter_time = r.iter_time.value_or(2000);  // QEMU's default, as for create
  if (Error e = luks_store_key(area, info, slot, *password, mk, iter_time))
    return with_hint(e, "Failed to write to keyslot " + std::to_string(slot));
  return {};
}

Error erase_keyslots(const LuksArea& area, LuksInfo& info, const std::map<std::string, std::string>& options,
                     const Request& r, bool force) {
  if (r.new_secret) return refused("'new-secret' must not be given when erasing keyslots");
  if (r.iter_time) return refused("'iter-time' must not be given when erasing keyslots");
  std::optional<std::string> old_password;
  if (r.old_secret) {
    auto p = lookup_secret(options, *r.old_secret);
    if (!p) return p.error();
    old_password = std::move(*p);
  }
  SecretBytes scratch(info.key_bytes);
  if (r.keyslot) {
    const int k = *r.keyslot;
    if (k < 0 || k >= static_cast<int>(kLuksNumSlots))
      return refused("Invalid keyslot " + std::to_string(k) + " specified, must be between 0 and " +
                     std::to_string(kLuksNumSlots - 1));
    const unsigned slot = static_cast<unsigned>(k);
    if (old_password) {
      auto opens = luks_slot_unlocks(area, info, slot, *old_password, scratch.span());
      if (!opens) return opens.error();
      if (!*opens)
        return refused("Given keyslot " + std::to_string(slot) +
                       " doesn't contain the given old password for erase operation");
    }
    if (!force && !info.slots[slot].active)
      return refused("Given keyslot " + std::to_string(slot) + " is already erased (inactive) ");
    if (!force && info.active_slots() == 1)
      return refused("Attempt to erase the only active keyslot " + std::to_string(slot) +
                     " which will erase all the data in the image irreversibly - refusing operation");
    if (Error e = luks_erase_key(area, info, slot))
      return with_hint(e, "Failed to erase keyslot " + std::to_string(slot));
    return {};
  }
  if (!old_password)
    return refused("To erase keyslot(s), either explicit keyslot index or the password currently "
                   "contained in them must be given");
  std::array<bool, kLuksNumSlots> match{};
  unsigned matches = 0;
  for (unsigned i = 0; i < kLuksNumSlots; ++i) {
    auto opens = luks_slot_unlocks(area, info, i, *old_password, scratch.span());
    if (!opens) return opens.error();
    match[i] = *opens;
    matches += *opens;
  }
  if (matches == 0) return refused("No keyslots match given (old) password for erase operation");
  if (!force && matches == info.active_slots())
    return refused("All the active keyslots match the (old) password that was given and erasing them "
                   "will erase all the data in the image irreversibly - refusing operation");
  for (unsigned i = 0; i < kLuksNumSlots; ++i) {
    if (!match[i]) continue;
    if (Error e = luks_erase_key(area, info, i)) return with_hint(e, "Failed to erase keyslot " + std::to_string(i));
  }
  return {};
}

}  // namespace

Error luks_check_amend_number(const std::string& key, const std::string& value) {
  // QemuOpts' number: qemu_strtou64, base 0; a leading '-' wraps around and passes here.
  char* end = nullptr;
  errno = 0;
  std::strtoull(value.c_str(), &end, 0);
  if (value.empty() || *end) return refused("Parameter '" + key + "' expects a number");
  if (errno == ERANGE) return refused("Value '" + value + "' is too large for parameter '" + key + "'");
  return {};
}

Error luks_amend(const LuksArea& area, LuksInfo& info, std::span<const std::byte> mk,
                 const std::map<std::string, std::string>& options, const std::string& prefix, bool force) {
  auto r = parse(options, prefix);
  if (!r) return r.error();
  return r->activate ? add_keyslot(area, info, mk, options, *r, force)
                     : erase_keyslots(area, info, options, *r, force);
}

}  // namespace vd::qcow
