// Helpers for the encryption tests: an in-memory File, qemu-img invocations with a secret,
// and by-hand QCOW lookups (the tests locate ciphertext without the backend under test).
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "support/support.h"
#include "support/sync_file.h"
#include "vd/io.h"

namespace vdtest::crypto {

// A File over a byte vector: synchronous calls only matter to the LUKS code; the async
// ones complete inline (fine for tests that never use them).
class VecFile : public vdtest::SyncFile {
 public:
  explicit VecFile(std::vector<std::byte> data, std::string path = "mem.luks")
      : data_(std::move(data)), path_(std::move(path)) {}
  const std::string& path() const override { return path_; }
  vd::Result<uint64_t> size() override { return uint64_t{data_.size()}; }
  vd::Error set_size(uint64_t n) override {
    data_.resize(n);
    return {};
  }
  vd::Error read(vd::IoKind, uint64_t off, std::span<std::byte> buf) override {
    std::memset(buf.data(), 0, buf.size());
    if (off < data_.size())
      std::memcpy(buf.data(), data_.data() + off, std::min<uint64_t>(buf.size(), data_.size() - off));
    return {};
  }
  vd::Error write(vd::IoKind, uint64_t off, std::span<const std::byte> buf) override {
    if (data_.size() < off + buf.size()) data_.resize(off + buf.size());
    std::memcpy(data_.data() + off, buf.data(), buf.size());
    return {};
  }
  vd::Error flush() override { return {}; }
  vd::Error discard(uint64_t, uint64_t) override { return {}; }
  vd::Error allocate(uint64_t, uint64_t) override { return {}; }
  std::vector<std::byte>& data() { return data_; }

 private:
  std::vector<std::byte> data_;
  std::string path_;
};

inline std::string secret_object(const std::string& pass) {
  return "secret,id=sec0,data=" + pass;
}

// Runs qemu-img create with the given encryption -o options (vdtest::qemu_img_create_luks:
// retried while qemu-img's PBKDF2 calibration fails).
inline bool qemu_create_encrypted(const std::string& fmt, const std::string& opts, const std::string& path,
                                  const std::string& size) {
  auto r = qemu_img_create_luks(fmt, opts, path, size);
  if (r.exit_code == 0) return true;
  ADD_FAILURE() << "qemu-img create " << fmt << " -o " << opts << " failed: " << r.err;
  return false;
}

inline bool qemu_io(const std::string& image_opts, const std::string& cmd) {
  auto r = run({"qemu-io", "--object", secret_object("abc"), "--image-opts", image_opts, "-c", cmd});
  EXPECT_EQ(r.exit_code, 0) << cmd << ": " << r.err << r.out;
  return r.exit_code == 0 && r.out.find("error") == std::string::npos &&
         r.out.find("failed") == std::string::npos;
}

inline uint64_t be64_at(const std::vector<std::byte>& f, uint64_t off) {
  return off + 8 <= f.size() ? vd::load_be64(f.data() + off) : 0;
}
inline uint32_t be32_at(const std::vector<std::byte>& f, uint64_t off) {
  return off + 4 <= f.size() ? vd::load_be32(f.data() + off) : 0;
}

// Host offset of the cluster holding guest offset `g` (0 if unallocated), QCOW v1.
inline uint64_t qcow1_host_cluster(const std::vector<std::byte>& f, uint64_t g) {
  unsigned cb = std::to_integer<unsigned>(f.at(32)), l2b = std::to_integer<unsigned>(f.at(33));
  uint64_t l1 = be64_at(f, 40);
  uint64_t l2 = be64_at(f, l1 + 8 * (g >> (cb + l2b)));
  if (!l2) return 0;
  return be64_at(f, l2 + 8 * ((g >> cb) & ((1u << l2b) - 1)));
}

// Host offset of the cluster holding guest offset `g` (0 if unallocated), QCOW2.
inline uint64_t qcow2_host_cluster(const std::vector<std::byte>& f, uint64_t g) {
  unsigned cb = be32_at(f, 20);
  unsigned l2b = cb - 3;
  uint64_t l1 = be64_at(f, 40);
  uint64_t l2 = be64_at(f, l1 + 8 * (g >> (cb + l2b))) & vd::qcow::kL1OffsetMask;
  if (!l2) return 0;
  return be64_at(f, l2 + 8 * ((g >> cb) & ((1u << l2b) - 1))) & vd::qcow::kL2OffsetMask;
}

// The QCOW2 v3 full-disk-encryption header extension: {offset, length}, or {0, 0}.
inline std::pair<uint64_t, uint64_t> qcow2_crypto_ext(const std::vector<std::byte>& f) {
  uint64_t off = be32_at(f, 4) >= 3 ? be32_at(f, 100) : vd::qcow::kV2HeaderSize;
  while (off + 8 <= f.size()) {
    uint32_t type = be32_at(f, off), len = be32_at(f, off + 4);
    if (type == vd::qcow::kExtEnd) break;
    if (type == vd::qcow::kExtCryptoHeader) return {be64_at(f, off + 8), be64_at(f, off + 16)};
    off += 8 + (uint64_t{len} + 7) / 8 * 8;
  }
  return {0, 0};
}

inline bool all_bytes(std::span<const std::byte> b, uint8_t v) {
  for (auto x : b)
    if (x != std::byte{v}) return false;
  return !b.empty();
}

}  // namespace vdtest::crypto
