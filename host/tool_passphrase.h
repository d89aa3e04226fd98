// The passphrase file both tools take (--passphrase-file): its whole content, without a
// trailing line break (a file made with `echo` works). Header-only: vdimg and vd-nbd are
// separate programs and this is not library API.
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "vd/error.h"

namespace vd::tools {

inline Result<std::string> read_passphrase_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error(Errc::not_found, "cannot read passphrase file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (!s.empty() && s.back() == '\n') s.pop_back();
  if (!s.empty() && s.back() == '\r') s.pop_back();
  return s;
}

}  // namespace vd::tools
