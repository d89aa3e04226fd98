#include "backends/common/sizes.h"

#include <cctype>
#include <cmath>
#include <cstdio>

namespace vd {
namespace {

// log2 of the multiplier for a unit letter, or -1 if the letter is not a unit.
int unit_shift(char c) {
  switch (std::tolower(static_cast<unsigned char>(c))) {
    case 'b': return 0;
    case 'k': return 10;
    case 'm': return 20;
    case 'g': return 30;
    case 't': return 40;
    case 'p': return 50;
    case 'e': return 60;
    default: return -1;
  }
}

Error bad_size(std::string_view text, const char* why) {
  return Error(Errc::invalid_argument, "invalid size '" + std::string(text) + "': " + why);
}

// Parses the unit that follows the number: "", "B", "K", "KB", "KiB" (any case).
Result<int> parse_unit(std::string_view text, std::string_view rest) {
  if (rest.empty()) return 0;
  int shift = unit_shift(rest[0]);
  if (shift < 0) return bad_size(text, "unknown unit");
  rest.remove_prefix(1);
  if (shift > 0 && !rest.empty() && (rest[0] == 'i' || rest[0] == 'I')) rest.remove_prefix(1);
  if (shift > 0 && !rest.empty() && (rest[0] == 'b' || rest[0] == 'B')) rest.remove_prefix(1);
  if (!rest.empty()) return bad_size(text, "trailing characters");
  return shift;
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
  size_t i = 0;
  uint64_t whole = 0;
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])))
    return bad_size(text, "expected a number");
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (whole > (UINT64_MAX - digit) / 10) return bad_size(text, "too large");
    whole = whole * 10 + digit;
  }
  // Hexadecimal, as qemu_strtosz takes it ("0x5800"): a whole number of bytes, no fraction and
  // no unit.
  if (whole == 0 && i < text.size() && (text[i] == 'x' || text[i] == 'X')) {
    uint64_t hex = 0;
    size_t start = ++i;
    for (; i < text.size() && std::isxdigit(static_cast<unsigned char>(text[i])); ++i) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
      const uint64_t digit = c <= '9' ? static_cast<uint64_t>(c - '0') : static_cast<uint64_t>(c - 'a' + 10);
      if (hex > (UINT64_MAX - digit) / 16) return bad_size(text, "too large");
      hex = hex * 16 + digit;
    }
    if (i == start) return bad_size(text, "expected hexadecimal digits after '0x'");
    if (i < text.size()) return bad_size(text, "a hexadecimal number takes no fraction or unit");
    return hex;
  }
  // The fraction is kept as digits over a power of ten, at most 18 digits (no overflow).
  uint64_t frac = 0, frac_den = 1;
  bool has_frac = i < text.size() && text[i] == '.';
  if (has_frac) {
    ++i;
    size_t start = i;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
      if (frac_den >= 1000000000000000000ull) continue;  // extra digits change nothing useful
      frac = frac * 10 + static_cast<uint64_t>(text[i] - '0');
      frac_den *= 10;
    }
    if (i == start) return bad_size(text, "expected digits after '.'");
  }
  auto shift = parse_unit(text, text.substr(i));
  if (!shift) return shift.error();
  if (has_frac && *shift == 0 && frac != 0) return bad_size(text, "fractional bytes");
  if (*shift >= 64 || whole > (UINT64_MAX >> *shift)) return bad_size(text, "too large");
  uint64_t value = whole << *shift;
  if (frac != 0) {
    // frac/frac_den < 1, so the product is below 2^shift; long double keeps it exact enough.
    long double part = static_cast<long double>(frac) / static_cast<long double>(frac_den);
    uint64_t add = static_cast<uint64_t>(std::floor(part * std::ldexp(1.0L, *shift)));
    if (value > UINT64_MAX - add) return bad_size(text, "too large");
    value += add;
  }
  return value;
}

std::string format_size(uint64_t bytes) {
  static const char* const units[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  // Switch to the next unit once the number would reach 1000 (so 1000 B is "0.977 KiB").
  int exp = 0;
  std::frexp(static_cast<double>(bytes) / (1000.0 / 1024.0), &exp);
  int idx = exp > 0 ? (exp - 1) / 10 : 0;
  if (idx > 6) idx = 6;
  double value = static_cast<double>(bytes) / std::ldexp(1.0, idx * 10);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%0.3g %sB", value, units[idx]);
  return buf;
}

}  // namespace vd
