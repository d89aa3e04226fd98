// Fixtures for the header and snapshot-table tests: a File over bytes in memory, images
// made by qemu-img in a TempDir, and assertions on vd::Error results.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "backends/qcow/meta/header.h"
#include "support/support.h"
#include "support/sync_file.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vdtest::qcowhdr {

// A synchronous File over a byte vector (async calls complete inline: these tests never
// use them). Reads past the end fill zeros, as the File contract says.
class VecFile : public vdtest::SyncFile {
 public:
  VecFile(std::string path, std::vector<std::byte> bytes) : path_(std::move(path)), bytes_(std::move(bytes)) {}
  const std::string& path() const override { return path_; }
  vd::Result<uint64_t> size() override { return uint64_t{bytes_.size()}; }
  vd::Error set_size(uint64_t size) override {
    bytes_.resize(size);
    return {};
  }
  vd::Error read(vd::IoKind, uint64_t offset, std::span<std::byte> buf) override {
    ++reads;
    std::fill(buf.begin(), buf.end(), std::byte{0});
    if (offset < bytes_.size()) {
      size_t n = std::min<uint64_t>(buf.size(), bytes_.size() - offset);
      std::copy_n(bytes_.begin() + offset, n, buf.begin());
    }
    return {};
  }
  vd::Error write(vd::IoKind, uint64_t offset, std::span<const std::byte> buf) override {
    if (bytes_.size() < offset + buf.size()) bytes_.resize(offset + buf.size());
    std::copy(buf.begin(), buf.end(), bytes_.begin() + offset);
    return {};
  }
  vd::Error flush() override { return {}; }
  vd::Error discard(uint64_t, uint64_t) override { return {}; }
  vd::Error allocate(uint64_t, uint64_t) override { return {}; }

  std::vector<std::byte>& bytes() { return bytes_; }
  int reads = 0;

 private:
  std::string path_;
  std::vector<std::byte> bytes_;
};

inline vd::Result<vd::qcow::Header> read_path(const std::string& path,
                                              const vd::qcow::ReadHeaderOptions& opts = {}) {
  VecFile f(path, read_file(path));
  return vd::qcow::read_header(f, path, opts);
}

// Runs `qemu-img create -q -f FMT OPTIONS NAME SIZE` in `dir`; returns the image path.
inline std::string qemu_create(const TempDir& dir, const std::string& name, const std::string& options,
                               const std::string& size = "64M", const std::string& fmt = "qcow2") {
  std::string path = dir.file(name);
  sh("cd '" + dir.path() + "' && qemu-img create -q -f " + fmt + " " + options + " '" + path + "' " + size);
  return path;
}

// A 1 MiB LUKS-encrypted qcow2 (passphrase "abc"), made by qemu-img.
inline std::string qemu_create_luks(const TempDir& dir, const std::string& name) {
  std::string path = dir.file(name);
  auto r = qemu_img_create_luks("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0", path, "1M");
  if (r.exit_code != 0) ADD_FAILURE() << "qemu-img could not create a LUKS image: " << r.err;
  return path;
}

// The error of a failed result must have kind `kind` and contain `text` and the path.
template <class T>
::testing::AssertionResult fails_with(const vd::Result<T>& r, vd::Errc kind, const std::string& text,
                                      const std::string& path) {
  if (r.ok()) return ::testing::AssertionFailure() << "succeeded, expected: " << text;
  const vd::Error& e = r.error();
  if (!e.is(kind)) return ::testing::AssertionFailure() << "wrong kind: " << e.message();
  if (e.message().find(text) == std::string::npos)
    return ::testing::AssertionFailure() << "message lacks '" << text << "': " << e.message();
  if (e.message().find(path) == std::string::npos)
    return ::testing::AssertionFailure() << "message lacks the path: " << e.message();
  return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult error_is(const vd::Error& e, vd::Errc kind, const std::string& text) {
  if (!e) return ::testing::AssertionFailure() << "no error, expected: " << text;
  if (!e.is(kind)) return ::testing::AssertionFailure() << "wrong kind: " << e.message();
  if (e.message().find(text) == std::string::npos)
    return ::testing::AssertionFailure() << "message lacks '" << text << "': " << e.message();
  return ::testing::AssertionSuccess();
}

// qemu-img's verdict on opening the image (for tests that pin QEMU's behaviour too).
inline bool qemu_opens(const std::string& path) {
  return run({"qemu-img", "info", path}).exit_code == 0;
}

}  // namespace vdtest::qcowhdr
