// Creation options for QCOW images, parsed from qemu-img's `-o key=value` pairs and checked
// the way qemu-img checks them (same wording where it has one).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "backends/crypto/luks.h"
#include "vd/backend.h"

namespace vd::qcow {

enum class Prealloc { off, metadata, falloc, full };

struct QcowCreateSpec {
  uint32_t version = 3;
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool lazy_refcounts = false;
  bool extended_l2 = false;
  Prealloc prealloc = Prealloc::off;
  uint8_t compression_type = 0;
  std::optional<std::string> backing_file;
  std::optional<std::string> backing_format;
  std::optional<std::string> data_file;
  bool data_file_raw = false;
  uint32_t crypt_method = 0;  // kCryptNone / kCryptAes / kCryptLuks
  LuksCreateOptions luks;
};

// `v1` selects QCOW version 1 rules (only backing file and encryption apply).
Result<QcowCreateSpec> parse_create_options(const CreateOptions& opts, bool v1, const std::string& path);

}  // namespace vd::qcow
