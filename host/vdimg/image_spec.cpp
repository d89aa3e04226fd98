#include "host/vdimg/image_spec.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>

#include "host/vdimg/args.h"
#include "host/vdimg/json.h"

namespace vdimg {

namespace {

using Dict = std::vector<std::pair<std::string, std::string>>;

// JSON null, told apart from "" (qemu warns about "backing": "").
const std::string kJsonNull(1, '\0');

// qemu's booleans: on/off, true/false, yes/no.
std::optional<bool> flag(const std::string& v) {
  if (v == "on" || v == "true" || v == "yes") return true;
  if (v == "off" || v == "false" || v == "no") return false;
  return std::nullopt;
}

vd::Error bad(const std::string& what) { return vd::Error(vd::Errc::invalid_argument, what); }

// A JSON text parsed straight into dotted keys, as qemu's qdict_flatten leaves it. Scalars
// keep their text (true/false/numbers); null becomes "" (qemu's "no backing" for backing).
class FlatJson {
 public:
  explicit FlatJson(const std::string& s) : s_(s) {}

  vd::Error parse(Dict& out) {
    skip();
    if (at_ >= s_.size()) return bad("Could not parse the JSON options: Expecting a JSON value");
    if (s_[at_] != '{') return bad("Invalid JSON object given");
    std::string ignored;
    if (vd::Error e = value("", out, ignored)) return e;
    skip();
    if (at_ != s_.size()) return parse_error("expecting value");
    return {};
  }

 private:
  vd::Error parse_error(const std::string& why) const {
    return bad("Could not parse the JSON options: JSON parse error, " + why);
  }
  void skip() {
    while (at_ < s_.size() && std::strchr(" \t\r\n", s_[at_])) ++at_;
  }
  vd::Error eoi() const { return parse_error("premature EOI"); }

  vd::Error string(std::string& out) {
    ++at_;  // the opening quote
    while (at_ < s_.size() && s_[at_] != '"') {
      char c = s_[at_++];
      if (c != '\\') { out += c; continue; }
      if (at_ >= s_.size()) return eoi();
      char e = s_[at_++];
      switch (e) {
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (at_ + 4 > s_.size()) return eoi();
          unsigned cp = std::stoul(s_.substr(at_, 4), nullptr, 16);
          at_ += 4;
          if (cp < 0x80) out += static_cast<char>(cp);
          else if (cp < 0x800) { out += static_cast<char>(0xc0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3f)); }
          else {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
          }
          break;
        }
        default: out += e;
      }
    }
    if (at_ >= s_.size()) return eoi();
    ++at_;
    return {};
  }

  // One value at dotted key `key`: objects add their members under "key.", scalars add one
  // pair; `text` gets a scalar's text (unused for objects).
  vd::Error value(const std::string& key, Dict& out, std::string& text) {
    skip();
    if (at_ >= s_.size()) return eoi();
    char c = s_[at_];
    if (c == '{') {
      ++at_;
      skip();
      if (at_ < s_.size() && s_[at_] == '}') { ++at_; return {}; }
      for (;;) {
        skip();
        if (at_ >= s_.size()) return eoi();
        if (s_[at_] != '"') {
          size_t end = at_;
          while (end < s_.size() && std::isalpha(static_cast<unsigned char>(s_[end]))) ++end;
          const std::string word = s_.substr(at_, end - at_);
          if (!word.empty() && word != "true" && word != "false" && word != "null")
            return parse_error("invalid keyword '" + word + "'");
          return parse_error("expecting value");
        }
        std::string name;
        if (vd::Error e = string(name)) return e;
        skip();
        if (at_ >= s_.size()) return eoi();
        if (s_[at_++] != ':') return parse_error("missing :");
        std::string child = key.empty() ? name : key + "." + name;
        std::string scalar;
        skip();
        const bool is_object = at_ < s_.size() && s_[at_] == '{';
        if (vd::Error e = value(child, out, scalar)) return e;
        if (!is_object) out.emplace_back(child, scalar);
        skip();
        if (at_ >= s_.size()) return eoi();
        if (s_[at_] == ',') { ++at_; continue; }
        if (s_[at_] == '}') { ++at_; return {}; }
        return parse_error("expected separator in dict");
      }
    }
    if (c == '"') return string(text);
    if (c == '[') return bad("Invalid parameter type for '" + key + "', expected: string (vdimg takes no lists)");
    size_t end = at_;
    while (end < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[end])) || std::strchr("+-.", s_[end])))
      ++end;
    std::string word = s_.substr(at_, end - at_);
    if (word.empty()) return parse_error("expecting value");
    if (word == "true" || word == "false") text = word == "true" ? "on" : "off";
    else if (word == "null") text = kJsonNull;
    else if (std::isdigit(static_cast<unsigned char>(word[0])) || word[0] == '-') text = word;
    else return parse_error("invalid keyword '" + word + "'");
    at_ = end;
    return {};
  }

  const std::string& s_;
  size_t at_ = 0;
};

// Options qemu knows on every node or on the file protocol that vdimg has no use for; they
// are refused in vd's words (qemu would take them), unlike keys qemu does not know either.
const std::set<std::string> kKnownNotHonoured = {
    "read-only", "auto-read-only", "discard", "detect-zeroes",
    "aio", "aio-max-batch", "pr-manager", "drop-cache", "x-check-cache-dropped",
    "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
    "overlap-check", "cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
    "cache-clean-interval", "encrypt.format", "data-file", "offset", "size"};

// The name qemu's qdict uses to order its members: tdb_hash of the key, modulo 512 buckets;
// qobject_to_json walks the buckets in order (never more than one key a bucket here).
unsigned qdict_bucket(const std::string& key) {
  uint32_t value = 0x238F13AFu * static_cast<uint32_t>(key.size());
  for (size_t i = 0; i < key.size(); ++i)
    value += static_cast<uint32_t>(static_cast<unsigned char>(key[i])) << (i * 5 % 24);
  return (1103515243u * value + 12345u) % 512;
}

std::string qdict_json(std::vector<std::pair<std::string, std::string>> members) {
  std::stable_sort(members.begin(), members.end(),
                   [](const auto& a, const auto& b) { return qdict_bucket(a.first) < qdict_bucket(b.first); });
  std::string out = "{";
  for (size_t i = 0; i < members.size(); ++i)
    out += (i ? ", " : "") + json_quote(members[i].first) + ": " + members[i].second;
  return out + "}";
}

}  // namespace

bool is_json_name(const std::string& name) { return name.rfind("json:", 0) == 0; }

vd::Result<Dict> image_dictionary(const std::string& text, bool image_opts) {
  Dict dict;
  if (image_opts) {
    auto list = parse_option_list({text});
    if (!list) return list.error();
    return *list;
  }
  if (vd::Error e = FlatJson(text.substr(5)).parse(dict)) return e;
  return dict;
}

vd::Result<ImageSpec> parse_image_spec(const std::string& text, bool image_opts) {
  auto dict = image_dictionary(text, image_opts);
  if (!dict) return dict.error();
  ImageSpec spec;
  std::optional<std::string> file_ref, file_driver;
  bool file_options = false;
  std::string unknown;
  for (const auto& [key, value] : *dict) {
    if (key == "driver") spec.format = value;
    else if (key == "file") file_ref = value;
    else if (key == "file.filename") { spec.filename = value; file_options = true; }
    else if (key == "file.driver") { file_driver = value; file_options = true; }
    else if (key == "encrypt.key-secret" || key == "key-secret") { spec.key_secret = value; spec.key_option = key; }
    else if (key == "backing.encrypt.key-secret" || key == "backing.key-secret") {
      spec.backing_key_secret = value;
      if (!spec.backing_option) spec.backing_option = key;
    } else if (key == "backing" && (value.empty() || value == kJsonNull)) {
      spec.no_backing = true;
      if (value.empty())
        spec.warnings.push_back("Use of \"backing\": \"\" is deprecated; use \"backing\": null instead");
    } else if (key == "force-share" || key == "cache.direct" || key == "cache.no-flush" || key == "file.cache.direct" ||
               key == "file.cache.no-flush" || key == "file.locking") {
      const std::string name = key.rfind("file.", 0) == 0 ? key.substr(5) : key;
      std::optional<bool> on = name == "locking" && value == "auto" ? std::optional<bool>(true) : flag(value);
      if (!on) return bad("Parameter '" + name + "' expects 'on' or 'off'");
      if (name == "force-share") spec.force_share = *on;
      else if (name == "cache.direct") spec.cache_direct = *on;
      else if (name == "cache.no-flush") spec.cache_no_flush = *on;
      else spec.no_lock = !*on;
    }
    else if (key == "node-name" || key == "file.node-name") continue;  // names nothing qemu-img shows
    else if (key.rfind("backing", 0) == 0) {
      return vd::Error(vd::Errc::not_supported, "vdimg does not honour the option '" + key +
                                                    "' (of the backing image only the key: backing.encrypt.key-secret, "
                                                    "backing.key-secret)");
    } else if (kKnownNotHonoured.count(key.rfind("file.", 0) == 0 ? key.substr(5) : key)) {
      return vd::Error(vd::Errc::not_supported, "vdimg does not honour the option '" + key + "'");
    } else if (key.rfind("file.", 0) == 0) {
      return bad("Block protocol 'file' doesn't support the option '" + key.substr(5) + "'");
    } else if (unknown.empty()) {
      unknown = key;
    }
  }
  if (file_ref && file_options)
    return bad("Cannot reference an existing block device with additional options or a new filename");
  if (file_ref) return bad("Cannot find device='" + *file_ref + "' nor node-name='" + *file_ref + "'");
  if (!spec.format && spec.filename.empty()) return bad("Must specify either driver or file");
  if (spec.filename.empty()) return bad("A block device must be specified for \"file\"");
  if (file_driver && *file_driver != "file") {
    static const std::set<std::string> qemu_protocols = {"host_device", "host_cdrom", "nbd", "nfs", "ssh",
                                                         "http", "https", "iscsi", "null-co", "null-aio"};
    if (!qemu_protocols.count(*file_driver)) return bad("Unknown driver '" + *file_driver + "'");
    return vd::Error(vd::Errc::not_supported,
                     "vdimg opens images through files only: file.driver '" + *file_driver + "' is not supported");
  }
  if (!unknown.empty()) spec.unknown_key = unknown;
  return spec;
}

std::string spec_display_name(const ImageSpec& spec, const std::string& format) {
  if (!spec.key_secret) return spec.filename;
  const std::string file = qdict_json({{"driver", "\"file\""}, {"filename", json_quote(spec.filename)}});
  const char* key = format == "luks" ? "key-secret" : "encrypt.key-secret";
  return "json:" + qdict_json({{"driver", json_quote(format)}, {key, json_quote(*spec.key_secret)}, {"file", file}});
}

}  // namespace vdimg
