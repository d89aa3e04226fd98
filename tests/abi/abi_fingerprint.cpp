// The plugin ABI fingerprint: a hash of the headers a plugin sees (vd/plugin.h and every
// vd header it includes, followed transitively), normalised so that comments and
// whitespace do not count. The lines defining VD_PLUGIN_ABI_VERSION and
// VD_PLUGIN_ABI_FINGERPRINT are left out (the fingerprint cannot contain itself).
//
//   vd_abi_fingerprint [INCLUDE_DIR]          prints the fingerprint of INCLUDE_DIR/vd
//   vd_abi_fingerprint --check [INCLUDE_DIR]  compares it with the one recorded in
//                                             vd/plugin.h (the ctest test abi.fingerprint)
//
// scripts/abi-fingerprint.sh builds and runs this; --write records the value.
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

bool ident(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Comments become a space; string and character literals are kept as they are.
std::string strip_comments(const std::string& in) {
  std::string out;
  for (size_t i = 0; i < in.size();) {
    char c = in[i];
    if (c == '/' && i + 1 < in.size() && in[i + 1] == '/') {
      while (i < in.size() && in[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < in.size() && in[i + 1] == '*') {
      size_t end = in.find("*/", i + 2);
      i = end == std::string::npos ? in.size() : end + 2;
      out += ' ';
    } else if (c == '"' || (c == '\'' && !(i > 0 && std::isxdigit(static_cast<unsigned char>(in[i - 1]))))) {
      // A literal (a ' after a digit is a digit separator: 1'000).
      out += in[i++];
      while (i < in.size() && in[i] != c && in[i] != '\n') {
        if (in[i] == '\\' && i + 1 < in.size()) out += in[i++];
        out += in[i++];
      }
      if (i < in.size() && in[i] == c) out += in[i++];
    } else {
      out += in[i++];
    }
  }
  return out;
}

// One line without its whitespace, except one space between two identifier characters and
// everything inside literals.
std::string squeeze(const std::string& line) {
  std::string out;
  bool pending_space = false;
  for (size_t i = 0; i < line.size();) {
    char c = line[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      pending_space = true;
      ++i;
      continue;
    }
    if (pending_space && !out.empty() && ident(out.back()) && ident(c)) out += ' ';
    pending_space = false;
    if (c == '"' || (c == '\'' && !(i > 0 && std::isxdigit(static_cast<unsigned char>(line[i - 1]))))) {
      out += line[i++];
      while (i < line.size() && line[i] != c) {
        if (line[i] == '\\' && i + 1 < line.size()) out += line[i++];
        out += line[i++];
      }
      if (i < line.size()) out += line[i++];
    } else {
      out += line[i++];
    }
  }
  return out;
}

// The normalised text: preprocessor directives keep their own line, code lines are joined.
std::string normalise(const std::string& text) {
  static const std::regex excluded(R"(^#\s*define\s+VD_PLUGIN_ABI_(VERSION|FINGERPRINT)\b)");
  std::istringstream in(strip_comments(text));
  std::string line, out;
  bool in_code = false;
  while (std::getline(in, line)) {
    std::string s = squeeze(line);
    if (s.empty()) continue;
    if (s[0] == '#') {
      if (std::regex_search(s, excluded)) continue;
      if (in_code) out += '\n';
      out += s + '\n';
      in_code = false;
    } else {
      if (in_code && ident(out.back()) && ident(s[0])) out += ' ';
      out += s;
      in_code = true;
    }
  }
  return out;
}

bool read(const std::string& path, std::string& text) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  text = ss.str();
  return true;
}

struct Fingerprint {
  std::string value;
  std::vector<std::string> headers;
  std::string recorded;  // VD_PLUGIN_ABI_FINGERPRINT in vd/plugin.h
  std::string version;   // VD_PLUGIN_ABI_VERSION in vd/plugin.h
  std::string error;
};

Fingerprint compute(const std::string& include_dir) {
  Fingerprint fp;
  static const std::regex include_re(R"re(^\s*#\s*include\s*"(vd/[^"]+)")re");
  std::map<std::string, std::string> texts;  // sorted by name
  std::vector<std::string> todo = {"vd/plugin.h"};
  while (!todo.empty()) {
    std::string name = todo.back();
    todo.pop_back();
    if (texts.count(name)) continue;
    std::string text;
    if (!read(include_dir + "/" + name, text)) {
      fp.error = "cannot read " + include_dir + "/" + name;
      return fp;
    }
    std::istringstream lines(strip_comments(text));
    std::string line;
    std::smatch m;
    while (std::getline(lines, line)) {
      if (std::regex_search(line, m, include_re)) todo.push_back(m[1]);
    }
    texts[name] = text;
  }
  uint64_t h = 14695981039346656037ull;  // FNV-1a, 64 bits
  auto feed = [&h](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
    h ^= 0xff;  // a terminator between fields
    h *= 1099511628211ull;
  };
  for (const auto& [name, text] : texts) {
    fp.headers.push_back(name);
    feed(name);
    feed(normalise(text));
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "fnv1a64-%016llx", static_cast<unsigned long long>(h));
  fp.value = buf;

  std::smatch m;
  const std::string& plugin = texts["vd/plugin.h"];
  static const std::regex recorded_re(R"re(#\s*define\s+VD_PLUGIN_ABI_FINGERPRINT\s+"([^"]*)")re");
  static const std::regex version_re(R"(#\s*define\s+VD_PLUGIN_ABI_VERSION\s+(\w+))");
  if (std::regex_search(plugin, m, recorded_re)) fp.recorded = m[1];
  if (std::regex_search(plugin, m, version_re)) fp.version = m[1];
  return fp;
}

}  // namespace

int main(int argc, char** argv) {
  bool check = false;
  std::string include_dir = VD_INCLUDE_DIR;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--check") {
      check = true;
    } else if (a == "--help" || a == "-h") {
      std::cout << "usage: vd_abi_fingerprint [--check] [INCLUDE_DIR]\n";
      return 0;
    } else {
      include_dir = a;
    }
  }
  Fingerprint fp = compute(include_dir);
  if (!fp.error.empty()) {
    std::cerr << "vd_abi_fingerprint: " << fp.error << "\n";
    return 2;
  }
  if (!check) {
    std::cout << fp.value << "\n";
    return 0;
  }
  std::string headers;
  for (const auto& h : fp.headers) headers += (headers.empty() ? "" : ", ") + h;
  if (fp.value == fp.recorded) {
    std::cout << "plugin ABI " << fp.version << ", fingerprint " << fp.value << " (" << headers
              << "): as recorded\n";
    return 0;
  }
  std::cout << "The headers a plugin sees (" << headers << ") changed:\n"
            << "  recorded in vd/plugin.h: VD_PLUGIN_ABI_FINGERPRINT \"" << fp.recorded << "\"\n"
            << "  computed now:            " << fp.value << "\n"
            << "Plugins built against the old headers would crash. Bump VD_PLUGIN_ABI_VERSION"
            << " (now " << fp.version << ") in include/vd/plugin.h and record the new"
            << " fingerprint:\n"
            << "  scripts/abi-fingerprint.sh --write\n"
            << "(the same version may keep a new fingerprint only while it is unreleased; see"
            << " docs/backend-guide.md)\n";
  return 1;
}
