// Sizes and offsets as people type them on a command line ("64M", "1.5G", "4096") and as
// qemu-img prints them ("64 MiB", "1.5 GiB", "512 B"). Shared by vdimg and its tests.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "vd/error.h"

namespace vd {

// Parses a byte count. Suffixes k/K, M, G, T, P, E (case-insensitive, optionally followed
// by "iB" or "B") multiply by powers of 1024; a plain number or a "B" suffix is bytes. A
// fraction is accepted with a unit ("1.5G"), as qemu-img does, and must come to whole bytes.
// Rejects signs, garbage, empty input and anything that overflows 64 bits.
Result<uint64_t> parse_size(std::string_view text);

// Formats a byte count the way qemu-img does: three significant digits and a binary unit
// chosen so that the number stays below 1000 ("196 KiB", "1.5 GiB", "0.977 KiB", "512 B").
std::string format_size(uint64_t bytes);

}  // namespace vd
