#include "host/vdimg/io_script.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <sstream>

#include "backends/common/sizes.h"

namespace vd {
namespace {

std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::istringstream in{std::string(line)};
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

Error bad_command(std::string_view line, const std::string& why) {
  return Error(Errc::invalid_argument, "io command '" + std::string(line) + "': " + why);
}

// The flags each command accepts; letters followed by ':' take a value.
const char* flags_for(IoCommand::Op op) {
  switch (op) {
    case IoCommand::Op::read: return "P:qv";
    case IoCommand::Op::write: return "P:cfquz";
    case IoCommand::Op::discard: return "q";
    default: return "";
  }
}

Result<IoCommand::Op> parse_op(std::string_view line, const std::string& name) {
  if (name == "read") return IoCommand::Op::read;
  if (name == "write") return IoCommand::Op::write;
  if (name == "discard") return IoCommand::Op::discard;
  if (name == "flush") return IoCommand::Op::flush;
  return bad_command(line, "unknown command '" + name + "'");
}

// Applies one flag letter (with its value, if it takes one) to the command.
Error apply_flag(IoCommand& cmd, std::string_view line, char flag, const std::string& value,
                 bool& pattern_given) {
  switch (flag) {
    case 'P': {
      auto byte = parse_pattern_byte(value);
      if (!byte) return bad_command(line, byte.error().message());
      cmd.pattern = *byte;
      pattern_given = true;
      if (cmd.op == IoCommand::Op::read) cmd.verify = true;
      return {};
    }
    case 'q': cmd.quiet = true; return {};
    case 'v': cmd.dump = true; return {};
    case 'c': cmd.flags |= write_compressed; return {};
    case 'f': cmd.flags |= write_fua; return {};
    case 'u': cmd.flags |= zero_may_unmap; return {};
    case 'z': cmd.op = IoCommand::Op::write_zeroes; return {};
  }
  return bad_command(line, std::string("unknown option -") + flag);
}

// Splits flags (anywhere before "--", getopt style) from positional words.
Result<std::vector<std::string>> parse_flags(IoCommand& cmd, std::string_view line,
                                             const std::vector<std::string>& words) {
  const std::string spec = flags_for(cmd.op);
  std::vector<std::string> positional;
  bool pattern_given = false, unmap_given = false, options_done = false;
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (options_done || w.size() < 2 || w[0] != '-') { positional.push_back(w); continue; }
    if (w == "--") { options_done = true; continue; }
    for (size_t j = 1; j < w.size(); ++j) {
      size_t at = spec.find(w[j]);
      if (at == std::string::npos) return bad_command(line, "unknown option -" + w.substr(j, 1));
      std::string value;
      if (at + 1 < spec.size() && spec[at + 1] == ':') {
        if (j + 1 < w.size()) value = w.substr(j + 1);
        else if (i + 1 < words.size()) value = words[++i];
        else return bad_command(line, "option -" + w.substr(j, 1) + " needs a value");
        j = w.size();
      }
      if (spec[at] == 'u') unmap_given = true;
      if (auto err = apply_flag(cmd, line, spec[at], value, pattern_given)) return err;
    }
  }
  if (cmd.op == IoCommand::Op::write_zeroes && (pattern_given || (cmd.flags & write_compressed)))
    return bad_command(line, "-z cannot be combined with -P or -c");
  if (unmap_given && cmd.op != IoCommand::Op::write_zeroes)
    return bad_command(line, "-u requires -z");
  return positional;
}

// qemu-io's cvtnum over qemu_strtosz (QEMU 7.2): decimal with an optional '+', a fraction
// only before a unit other than B (truncated to whole bytes, "1.k" allowed, no exponent),
// "0x" hex without a fraction (a unit after it is deprecated but still taken), one unit
// letter (b k m g t p e, either case, powers of 1024; no "KiB"), nothing after it, and at
// most INT64_MAX. Errors in qemu-io's words.
Result<uint64_t> parse_qemu_io_number(const std::string& text) {
  const Error invalid(Errc::invalid_argument,
                      "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- " + text);
  const Error too_large(Errc::invalid_argument, "Parsing error: argument too large -- " + text);
  size_t i = text[0] == '+' ? 1 : 0;
  auto digits = [&](int base, uint64_t& v) {
    const size_t start = i;
    v = 0;
    bool overflow = false;
    for (; i < text.size(); ++i) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
      const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : (base == 16 && c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (d < 0 || d >= base) break;
      overflow |= v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base);
      v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
    }
    return i == start ? -1 : overflow ? 1 : 0;
  };
  uint64_t whole = 0;
  int r = digits(10, whole);
  if (r < 0) return invalid;
  if (r > 0) return too_large;
  double fraction = 0;
  bool hex = false;
  if (whole == 0 && i < text.size() && (text[i] == 'x' || text[i] == 'X') && i == (text[0] == '+' ? 2u : 1u)) {
    ++i;
    r = digits(16, whole);
    if (r < 0) return invalid;
    if (r > 0) return too_large;
    if (i < text.size() && text[i] == '.') return invalid;
    hex = true;
  } else if (i < text.size() && text[i] == '.') {
    const size_t start = ++i;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
    if (i < text.size() && (text[i] == 'e' || text[i] == 'E') && i + 1 < text.size()) return invalid;
    if (i > start) fraction = std::strtod(("0." + text.substr(start, i - start)).c_str(), nullptr);
  }
  unsigned shift = 0;
  if (i < text.size()) {
    static const std::string units = "bkmgtpe";
    const size_t u = units.find(static_cast<char>(std::tolower(static_cast<unsigned char>(text[i]))));
    if (u == std::string::npos) return invalid;
    shift = static_cast<unsigned>(u) * 10;
    ++i;
  }
  (void)hex;
  if (i != text.size() || (fraction != 0 && shift == 0)) return invalid;
  if (shift && whole > (UINT64_MAX >> shift)) return too_large;
  const uint64_t value = (whole << shift) + static_cast<uint64_t>(fraction * static_cast<double>(uint64_t{1} << shift));
  if (value > static_cast<uint64_t>(INT64_MAX) || value < (whole << shift)) return too_large;
  return value;
}

}  // namespace

Result<uint8_t> parse_pattern_byte(std::string_view text) {
  std::string s(text);
  if (s.empty() || s[0] == '-' || s[0] == '+')
    return Error(Errc::invalid_argument, "invalid pattern byte '" + s + "'");
  errno = 0;
  char* end = nullptr;
  unsigned long v = std::strtoul(s.c_str(), &end, 0);
  if (errno != 0 || end == s.c_str() || *end != '\0' || v > 255)
    return Error(Errc::invalid_argument, "invalid pattern byte '" + s + "' (0..255, 0x hex)");
  return static_cast<uint8_t>(v);
}

Result<IoCommand> parse_io_command(std::string_view line) {
  auto words = split_words(line);
  if (words.empty()) return bad_command(line, "empty command");
  IoCommand cmd;
  cmd.text = std::string(line);
  auto op = parse_op(line, words[0]);
  if (!op) return op.error();
  cmd.op = *op;
  auto positional = parse_flags(cmd, line, words);
  if (!positional) return positional.error();
  size_t want = cmd.op == IoCommand::Op::flush ? 0 : 2;
  if (positional->size() != want)
    return bad_command(line, want ? "expected OFFSET and LENGTH" : "takes no arguments");
  if (want == 0) return cmd;
  auto offset = parse_qemu_io_number((*positional)[0]);
  if (!offset) return offset.error();
  auto length = parse_qemu_io_number((*positional)[1]);
  if (!length) return length.error();
  if (*offset > UINT64_MAX - *length) return bad_command(line, "offset + length overflows");
  bool buffered = cmd.op == IoCommand::Op::read || cmd.op == IoCommand::Op::write;
  if (buffered && *length > kIoMaxTransfer)
    return bad_command(line, "length above " + format_size(kIoMaxTransfer));
  cmd.offset = *offset;
  cmd.length = *length;
  return cmd;
}

bool io_commands_write(const std::vector<IoCommand>& commands) {
  for (const auto& c : commands)
    if (c.op != IoCommand::Op::read && c.op != IoCommand::Op::flush) return true;
  return false;
}

}  // namespace vd

// ---- Running commands --------------------------------------------------------------------

namespace vd {
namespace {

// qemu-io's byte counts in its report lines: "64 KiB", "2.930 KiB", "100 bytes".
std::string qemu_io_amount(double value) {
  static const char* const units[] = {" EiB", " PiB", " TiB", " GiB", " MiB", " KiB"};
  const char* suffix = " bytes";
  for (int i = 0; i < 6; ++i) {
    double unit = std::ldexp(1.0, 10 * (6 - i));
    if (value >= unit) { value /= unit; suffix = units[i]; break; }
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", value);
  std::string s = buf;
  if (s.size() > 4 && s.compare(s.size() - 4, 4, ".000") == 0) s.resize(s.size() - 4);
  return s + suffix;
}

void report(std::ostream& out, const char* verb, const IoCommand& cmd, double secs) {
  out << verb << ' ' << cmd.length << '/' << cmd.length << " bytes at offset " << cmd.offset
      << '\n';
  double t = secs > 1e-9 ? secs : 1e-9;
  char line[160];
  std::snprintf(line, sizeof line, "%s, 1 ops; %05.2f sec (%s/sec and %.4f ops/sec)\n",
                qemu_io_amount(static_cast<double>(cmd.length)).c_str(), secs,
                qemu_io_amount(static_cast<double>(cmd.length) / t).c_str(), 1.0 / t);
  out << line;
}

// read -v: qemu-io's hex dump, 16 bytes a line with the alphanumeric characters after them.
void dump(std::ostream& out, uint64_t offset, const std::vector<std::byte>& buf) {
  for (size_t i = 0; i < buf.size(); i += 16) {
    char head[32];
    std::snprintf(head, sizeof head, "%08llx:  ", static_cast<unsigned long long>(offset + i));
    std::string hex_part = head, text;
    for (size_t j = i; j < i + 16 && j < buf.size(); ++j) {
      auto c = static_cast<unsigned char>(buf[j]);
      char b[4];
      std::snprintf(b, sizeof b, "%02x ", c);
      hex_part += b;
      text += std::isalnum(c) ? static_cast<char>(c) : '.';  // qemu-io shows alnum only
    }
    out << hex_part << ' ' << text << '\n';
  }
}

Error check_range(const Disk& disk, const IoCommand& cmd) {
  if (cmd.offset > disk.size() || cmd.length > disk.size() - cmd.offset)
    return Error(Errc::out_of_range, "request at offset " + hex(cmd.offset) + " length " +
                                         std::to_string(cmd.length) + " is beyond the disk size " +
                                         std::to_string(disk.size()));
  return {};
}

Error run_read(Runtime& rt, Disk& disk, const IoCommand& cmd, std::ostream& out, bool& mismatch) {
  std::vector<std::byte> buf(cmd.length);
  if (auto err = rt.wait([&](Completion done) { disk.read(cmd.offset, buf, std::move(done)); }))
    return err;
  if (cmd.verify) {
    for (std::byte b : buf) {
      if (static_cast<uint8_t>(b) != cmd.pattern) { mismatch = true; break; }
    }
    if (mismatch)
      out << "Pattern verification failed at offset " << cmd.offset << ", " << cmd.length
          << " bytes\n";
  }
  if (cmd.dump) dump(out, cmd.offset, buf);
  return {};
}

Error run_one(Runtime& rt, Disk& disk, const IoCommand& cmd, std::ostream& out, bool& mismatch) {
  switch (cmd.op) {
    case IoCommand::Op::read: return run_read(rt, disk, cmd, out, mismatch);
    case IoCommand::Op::write: {
      std::vector<std::byte> buf(cmd.length, static_cast<std::byte>(cmd.pattern));
      return rt.wait([&](Completion done) {
        disk.write(cmd.offset, buf, cmd.flags, std::move(done));
      });
    }
    case IoCommand::Op::write_zeroes:
      return rt.wait([&](Completion done) {
        disk.write_zeroes(cmd.offset, cmd.length, cmd.flags, std::move(done));
      });
    case IoCommand::Op::discard:
      return rt.wait([&](Completion done) {
        disk.discard(cmd.offset, cmd.length, std::move(done));
      });
    case IoCommand::Op::flush:
      return rt.wait([&](Completion done) { disk.flush(std::move(done)); });
  }
  return Error(Errc::internal, "unknown io command");
}

const char* verb_of(IoCommand::Op op) {
  switch (op) {
    case IoCommand::Op::read: return "read";
    case IoCommand::Op::discard: return "discard";
    case IoCommand::Op::flush: return nullptr;
    default: return "wrote";
  }
}

}  // namespace

Error run_io_commands(Runtime& rt, Disk& disk, const std::vector<IoCommand>& commands,
                      std::ostream& out, bool quiet) {
  // A request that fails is reported as qemu-io reports it, on `out`: "read failed:
  // Input/output error" (a range past the end of the disk is an I/O error there too).
  // The image's own account of a failure (a corruption it refused, the system error) still
  // goes to the caller, as QEMU's block layer prints it beside qemu-io's line.
  auto failed = [&](const IoCommand& cmd, const Error& err) {
    const char* what = cmd.op == IoCommand::Op::read ? "read"
                     : cmd.op == IoCommand::Op::discard ? "discard"
                     : cmd.op == IoCommand::Op::flush ? "flush" : "write";
    const int e = err.system_errno() ? err.system_errno() : EIO;
    out << what << " failed: " << std::strerror(e) << '\n';
    out.flush();
    return err;
  };
  for (const auto& cmd : commands) {
    if (cmd.op != IoCommand::Op::flush)
      if (auto err = check_range(disk, cmd)) return failed(cmd, err.wrap(cmd.text).wrap(kIoReported));
    bool mismatch = false;
    auto start = std::chrono::steady_clock::now();
    if (auto err = run_one(rt, disk, cmd, out, mismatch)) return failed(cmd, err.wrap(cmd.text));
    std::chrono::duration<double> secs = std::chrono::steady_clock::now() - start;
    const char* verb = verb_of(cmd.op);
    if (verb && !quiet && !cmd.quiet) report(out, verb, cmd, secs.count());
    if (mismatch)
      return Error(Errc::invalid_argument, cmd.text + ": pattern verification failed at offset " +
                                               std::to_string(cmd.offset))
          .wrap(kIoReported);
  }
  out.flush();
  return {};
}

}  // namespace vd
