#include "host/vdimg/secrets.h"

#include <optional>
#include <set>

#include "host/vdimg/vdimg.h"

namespace vdimg {

namespace {

// "secret,id=sec0,data=abc" -> its fields; the leading bare word (qemu's qom-type) comes back
// from the shared -o list parser as ("secret", "on").
vd::Result<std::map<std::string, std::string>> object_fields(const std::string& text) {
  auto list = parse_option_list({text});
  if (!list) return list.error();
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < list->size(); ++i) {
    const auto& [key, value] = (*list)[i];
    if (i == 0 && value == "on" && text.find('=') != key.size()) out["qom-type"] = key;
    else out[key] = value;
  }
  return out;
}

// RFC 4648 base64 as qemu's secret format=base64 takes it (padding optional, no whitespace).
std::optional<std::string> base64_decode(const std::string& text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=') { ++pad; continue; }
    else return std::nullopt;
    if (pad) return std::nullopt;  // data after padding
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (pad > 2) return std::nullopt;
  return out;
}

// qemu's user-creatable object types: vdimg uses secrets only and refuses the others by name.
const std::set<std::string> kQemuObjectTypes = {
    "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan",
    "colo-compare", "cryptodev-backend", "cryptodev-backend-builtin", "dbus-vmstate", "filter-buffer",
    "filter-dump", "filter-mirror", "filter-redirector", "filter-replay", "filter-rewriter",
    "input-barrier", "input-linux", "iothread", "main-loop", "memory-backend-epc", "memory-backend-file",
    "memory-backend-memfd", "memory-backend-ram", "pr-manager-helper", "rng-builtin", "rng-egd",
    "rng-random", "secret_keyring", "thread-context", "throttle-group", "tls-cipher-suites",
    "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "x-remote-object", "x-vfio-user-server"};

}  // namespace

vd::Result<std::map<std::string, std::string>> secret_objects(const Args& args) {
  std::map<std::string, std::string> secrets;
  for (const auto& text : args.all("object")) {
    auto fields = object_fields(text);
    if (!fields) return fields.error();
    auto& f = *fields;
    const std::string type = f["qom-type"];
    if (type != "secret") {
      if (!kQemuObjectTypes.count(type))
        return vd::Error(vd::Errc::invalid_argument, "Parameter 'qom-type' does not accept value '" + type + "'");
      return vd::Error(vd::Errc::not_supported, "vdimg has no use for --object " + type + " (only secret)");
    }
    const std::string id = f["id"];
    if (id.empty()) return vd::Error(vd::Errc::invalid_argument, "Parameter 'id' is missing");
    const std::string format = f.count("format") ? f["format"] : "raw";
    if (format != "raw" && format != "base64")
      return vd::Error(vd::Errc::invalid_argument, "Parameter 'format' does not accept value '" + format + "'");
    std::string value;
    if (f.count("data")) {
      value = f["data"];
    } else if (f.count("file")) {
      auto pass = read_passphrase_file(f["file"]);
      if (!pass) return pass.error();
      value = *pass;
    } else {
      return vd::Error(vd::Errc::invalid_argument, "Either 'file' or 'data' must be provided");
    }
    if (f.count("keyid")) {
      if (!secrets.count(f["keyid"])) return vd::Error(vd::Errc::not_found, "No secret with id '" + f["keyid"] + "'");
      return vd::Error(vd::Errc::not_supported,
                       "secret '" + id + "': vdimg does not decrypt secrets (keyid, iv); give the key in clear");
    }
    if (format == "base64") {
      auto bytes = base64_decode(value);
      if (!bytes) return vd::Error(vd::Errc::invalid_argument, "Base64 data contains invalid characters");
      value = *bytes;
    }
    secrets[id] = value;
  }
  return secrets;
}

vd::Result<std::optional<std::string>> creation_passphrase(const Args& args,
                                                           const std::map<std::string, std::string>& options,
                                                           const std::optional<std::string>& passphrase_file) {
  for (const char* key : {"encrypt.key-secret", "key-secret"}) {
    auto it = options.find(key);
    if (it == options.end()) continue;
    auto secrets = secret_objects(args);
    if (!secrets) return secrets.error();
    auto s = secrets->find(it->second);
    if (s == secrets->end())
      return vd::Error(vd::Errc::not_found, "No secret with id '" + it->second + "'");
    return std::optional<std::string>(s->second);
  }
  if (passphrase_file) {
    auto pass = read_passphrase_file(*passphrase_file);
    if (!pass) return pass.error();
    return std::optional<std::string>(*pass);
  }
  return std::optional<std::string>();
}

}  // namespace vdimg
