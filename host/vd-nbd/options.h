// vd-nbd's command line: qemu-nbd's options where they apply (docs/nbd.md).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "vd/cache.h"
#include "vd/error.h"
#include "vd/nbd.h"
#include "vd/runtime.h"

namespace vdnbd {

struct ImageArg {
  std::string path;
  std::string name;  // export name (-x before it, or the only -x)
  std::string description;
};

struct Options {
  std::vector<ImageArg> images;
  std::optional<std::string> format;
  bool read_only = false;
  bool persistent = false;
  unsigned shared = 1;  // -e; 0 = unlimited
  bool allocation_depth = false;
  std::vector<std::string> bitmaps;  // -B, each exposed as qemu:dirty-bitmap:NAME
  bool force_share = false;
  std::optional<std::string> snapshot;  // -l
  bool snapshot_overlay = false;        // -s
  std::optional<std::string> socket;    // -k
  std::optional<std::string> bind;      // -b
  std::optional<uint16_t> port;         // -p
  std::optional<std::string> tls_dir;   // from --object tls-creds-x509 named by --tls-creds
  bool tls_verify_peer = true;
  bool fork = false;
  std::optional<std::string> pid_file;
  std::optional<std::string> passphrase_file;
  unsigned handshake_seconds = 10;
  vd::CacheMode cache = vd::CacheMode::writeback;  // --cache / -n
  vd::Aio aio = vd::Aio::automatic;                // --aio
  bool discard_unmap = false;                      // --discard (qemu-nbd's default: ignore)
  vd::nbd::DetectZeroes detect_zeroes = vd::nbd::DetectZeroes::off;
  bool help = false, version = false;
};

// Parses argv. Errors carry the message vd-nbd prints ("vd-nbd: MESSAGE").
vd::Result<Options> parse_options(int argc, char** argv);

extern const char* const kUsage;

}  // namespace vdnbd
