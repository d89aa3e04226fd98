#include "host/vdimg/args.h"

namespace vdimg {

bool Args::has(const std::string& key) const {
  for (const auto& [k, v] : options)
    if (k == key) return true;
  return false;
}

std::optional<std::string> Args::last(const std::string& key) const {
  std::optional<std::string> found;
  for (const auto& [k, v] : options)
    if (k == key) found = v;
  return found;
}

std::vector<std::string> Args::all(const std::string& key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : options)
    if (k == key) out.push_back(v);
  return out;
}

namespace {

std::string key_of(const OptionSpec& s) {
  return s.long_name ? std::string(s.long_name) : std::string(1, s.short_name);
}

vd::Error usage_error(const std::string& what) {
  return vd::Error(vd::Errc::invalid_argument, what + " (try --help)");
}

// "--name[=value]": finds the option (an unambiguous prefix is accepted, as getopt_long does).
vd::Error parse_long(const std::vector<std::string>& argv, size_t& i,
                     const std::vector<OptionSpec>& specs, Args& out) {
  std::string word = argv[i].substr(2), value;
  size_t eq = word.find('=');
  bool has_value = eq != std::string::npos;
  if (has_value) { value = word.substr(eq + 1); word.resize(eq); }
  if (word == "help") { out.help = true; return {}; }
  const OptionSpec* match = nullptr;
  int prefix_matches = 0;
  for (const auto& s : specs) {
    if (!s.long_name) continue;
    std::string name = s.long_name;
    if (name == word) { match = &s; prefix_matches = 1; break; }
    if (name.compare(0, word.size(), word) == 0) { match = &s; ++prefix_matches; }
  }
  if (!match) return usage_error("unrecognized option '--" + word + "'");
  if (prefix_matches > 1) return usage_error("option '--" + word + "' is ambiguous");
  if (match->takes_value && !has_value) {
    if (i + 1 >= argv.size()) return usage_error("option '--" + word + "' requires an argument");
    value = argv[++i];
  } else if (!match->takes_value && has_value) {
    return usage_error("option '--" + word + "' doesn't allow an argument");
  }
  out.options.emplace_back(key_of(*match), value);
  return {};
}

// "-abc" or "-ovalue": one or more short options.
vd::Error parse_short(const std::vector<std::string>& argv, size_t& i,
                      const std::vector<OptionSpec>& specs, Args& out) {
  const std::string word = argv[i];
  for (size_t j = 1; j < word.size(); ++j) {
    if (word[j] == 'h') { out.help = true; continue; }
    const OptionSpec* match = nullptr;
    for (const auto& s : specs)
      if (s.short_name == word[j]) match = &s;
    if (!match) return usage_error(std::string("invalid option -- '") + word[j] + "'");
    std::string value;
    if (match->takes_value) {
      if (j + 1 < word.size()) value = word.substr(j + 1);
      else if (i + 1 < argv.size()) value = argv[++i];
      else return usage_error(std::string("option requires an argument -- '") + word[j] + "'");
      j = word.size();
    }
    out.options.emplace_back(key_of(*match), value);
  }
  return {};
}

}  // namespace

vd::Result<Args> parse_args(const std::vector<std::string>& argv,
                            const std::vector<OptionSpec>& specs) {
  Args out;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& w = argv[i];
    if (w == "--") {
      for (++i; i < argv.size(); ++i) out.positional.push_back(argv[i]);
      break;
    }
    vd::Error err;
    if (w.size() > 2 && w[0] == '-' && w[1] == '-') err = parse_long(argv, i, specs, out);
    else if (w.size() > 1 && w[0] == '-') err = parse_short(argv, i, specs, out);
    else out.positional.push_back(w);
    if (err) return err;
  }
  return out;
}

vd::Result<std::vector<std::pair<std::string, std::string>>> parse_option_list(
    const std::vector<std::string>& lists) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& list : lists) {
    std::vector<std::string> items{""};
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i] == ',' && i + 1 < list.size() && list[i + 1] == ',') { items.back() += ','; ++i; }
      else if (list[i] == ',') items.emplace_back();
      else items.back() += list[i];
    }
    for (const auto& item : items) {
      if (item.empty()) continue;
      size_t eq = item.find('=');
      if (eq == 0) return vd::Error(vd::Errc::invalid_argument, "invalid option '" + item + "'");
      if (eq == std::string::npos) out.emplace_back(item, item == "help" || item == "?" ? "" : "on");
      else out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
  }
  return out;
}

vd::Error check_option_list(const std::string& list) {
  size_t trailing = 0;
  while (trailing < list.size() && list[list.size() - 1 - trailing] == ',') ++trailing;
  if (list.empty() || list[0] == ',' || trailing % 2)
    return vd::Error(vd::Errc::invalid_argument, "Invalid option list: " + list);
  return {};
}

vd::Error check_option_lists(const Args& args) {
  for (const auto& [key, list] : args.options)
    if (key == "options")
      if (auto e = check_option_list(list)) return e;
  return {};
}

}  // namespace vdimg
