#include "host/vdimg/secrets.h"

#include "host/vdimg/vdimg.h"

namespace vdimg {

namespace {

// "secret,id=sec0,data=abc" -> the key=value fields (a leading bare word is the kind, as
// qom-type=secret). ",," escapes a comma, as in qemu's option lists.
std::map<std::string, std::string> object_fields(const std::string& text) {
  std::map<std::string, std::string> out;
  std::string field;
  bool first = true;
  auto take = [&] {
    auto eq = field.find('=');
    if (eq == std::string::npos) {
      if (first) out["qom-type"] = field;
    } else {
      out[field.substr(0, eq)] = field.substr(eq + 1);
    }
    first = false;
    field.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ',' && i + 1 < text.size() && text[i + 1] == ',') {
      field += ',';
      ++i;
    } else if (text[i] == ',') {
      take();
    } else {
      field += text[i];
    }
  }
  take();
  return out;
}

}  // namespace

vd::Result<std::map<std::string, std::string>> secret_objects(const Args& args) {
  std::map<std::string, std::string> secrets;
  for (const auto& text : args.all("object")) {
    auto f = object_fields(text);
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
