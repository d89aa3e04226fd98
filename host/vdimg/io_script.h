// The `vdimg io` command language: a subset of qemu-io's commands, parsed from one -c
// string each and run in order against one open Disk. The same list given to qemu-io and to
// vdimg io must leave disks that read the same, so the grammar and defaults follow qemu-io
// (write's default pattern 0xcd, pattern bytes in decimal, 0x hex or 0 octal).
//
//   read    [-P BYTE] [-q] [-v] OFF LEN   with -P: fail unless every byte equals BYTE
//   write   [-P BYTE] [-c] [-f] [-q] OFF LEN
//   write   -z [-u] [-f] [-q] OFF LEN     zeroes; -u lets the image deallocate
//   discard [-q] OFF LEN
//   flush
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include "vd/disk.h"
#include "vd/error.h"
#include "vd/runtime.h"

namespace vd {

struct IoCommand {
  enum class Op { read, write, write_zeroes, discard, flush };
  Op op = Op::flush;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint8_t pattern = 0xcd;   // write's fill byte, or read's expected byte when verify
  bool verify = false;      // read -P
  bool quiet = false;       // -q: no report lines
  bool dump = false;        // read -v: hex dump of what was read
  unsigned flags = 0;       // WriteFlags for write, ZeroFlags for write -z
  std::string text;         // the command as given, for messages
};

// The longest read or write one command may ask for (its buffer is allocated whole).
inline constexpr uint64_t kIoMaxTransfer = 1ull << 30;

// Parses one -c string. Errors name the command and what is wrong with it.
Result<IoCommand> parse_io_command(std::string_view line);

// True if any command changes the disk (the disk must then be opened read-write).
bool io_commands_write(const std::vector<IoCommand>& commands);

// The operation of an error run_io_commands has reported in full on its output, in qemu-io's
// words (a range past the end: "read failed: Input/output error"; "Pattern verification
// failed ..."): a caller that mirrors qemu-io prints nothing more. Other failures print
// qemu-io's line too, and come back for the caller to print the image's own account.
inline constexpr const char* kIoReported = "reported";

// Runs the commands in order and stops at the first that fails, returning its error. Report
// lines go to `out` in qemu-io's wording ("wrote 4096/4096 bytes at offset 0") unless the
// command or `quiet` says otherwise; a pattern mismatch prints qemu-io's "Pattern verification
// failed at offset N, M bytes" line to `out` too.
Error run_io_commands(Runtime& rt, Disk& disk, const std::vector<IoCommand>& commands,
                      std::ostream& out, bool quiet = false);

// Parses a pattern byte as qemu-io does (strtol base 0): "205", "0xcd", "0315".
Result<uint8_t> parse_pattern_byte(std::string_view text);

}  // namespace vd
