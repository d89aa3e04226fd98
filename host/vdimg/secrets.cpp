#include "host/vdimg/secrets.h"

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

}  // namespace

vd::Result<std::map<std::string, std::string>> secret_objects(const Args& args) {
  std::map<std::string, std::string> secrets;
  for (const auto& text : args.all("object")) {
    auto fields = object_fields(text);
    if (!fields) return fields.error();
    auto& f = *fields;
    if (f["qom-type"] != "secret") continue;
    const std::string id = f["id"];
    if (id.empty()) return vd::Error(vd::Errc::invalid_argument, "Parameter 'id' is missing in --object " + text);
    if (f.count("format") && f["format"] != "raw")
      return vd::Error(vd::Errc::not_supported, "secret '" + id + "': only format=raw is supported");
    if (f.count("data")) {
      secrets[id] = f["data"];
    } else if (f.count("file")) {
      auto pass = read_passphrase_file(f["file"]);
      if (!pass) return pass.error();
      secrets[id] = *pass;
    } else {
      return vd::Error(vd::Errc::invalid_argument, "secret '" + id + "': Either 'file' or 'data' must be provided");
    }
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
