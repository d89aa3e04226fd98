// Image fixtures built by qemu-img and qemu-io during a test, and the two readings the
// interop tests compare: qemu's (qemu-img convert -O raw) and vd's (Disk::open + reads).
//
// Every kind of image the read side must handle is one named recipe; `build_image` runs it
// in a TempDir and returns the path of the image to open (the top of a chain). The recipes
// keep images small (a few MiB) so a test that builds one stays well under a second.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "support/support.h"
#include "vd/disk.h"

namespace vdtest {

// The passphrase of every encrypted fixture.
inline constexpr const char* kFixturePassphrase = "vd-interop-pass";

struct ImageRecipe {
  std::string name;    // test-name friendly: letters, digits, '_'
  std::string format;  // format of the top image: "qcow2" or "qcow"
  std::string top;     // file name of the image to open, inside the TempDir
  std::string script;  // shell commands run in the TempDir that build it
  bool encrypted = false;
  // Hide the top's backing-format extension after building (qemu-img 7.2 will not write an
  // image without one), so the parent's format must be probed.
  bool drop_backing_format = false;
};

// The recipes of issue 3 (versions x cluster sizes, refcount widths, zero and discarded
// ranges, compression, subclusters, external data files, encryption, chains, dirty bit).
const std::vector<ImageRecipe>& read_recipes();
const ImageRecipe& recipe(const std::string& name);

// Runs the recipe in `dir` and returns the path of its top image.
std::string build_image(const TempDir& dir, const ImageRecipe& r);

// One image per recipe, built on first use and shared by every test of the process, with
// qemu's reading of its whole disk. Tests must not change it (copy it first).
struct SharedImage {
  const ImageRecipe* recipe = nullptr;
  std::string image;
  std::vector<std::byte> qemu_bytes;
};
const SharedImage& shared_image(const std::string& recipe_name);

// The qemu-io workload most recipes apply to an 8 MiB image: patterns at unaligned
// offsets, zeroes on allocated (preallocated zero) and unallocated (plain zero) clusters,
// an unmapping zero write and a discard. `fmt` is the -f given to qemu-io.
std::string standard_workload(const std::string& image, const std::string& fmt);

// qemu-io on an encrypted image (the fixture passphrase supplied as a secret object).
std::string qemu_io_encrypted(const std::string& image, const std::string& fmt,
                              const std::vector<std::string>& commands);

// The whole virtual disk as qemu-img reads it (convert -O raw), optionally one internal
// snapshot (-l) or with the fixture passphrase.
std::vector<std::byte> qemu_read_all(const std::string& image, const std::string& fmt,
                                     bool encrypted = false,
                                     const std::optional<std::string>& snapshot = std::nullopt);

// The whole virtual disk read through vd::Disk (read-only), in odd-sized chunks so reads
// start and end inside clusters. Fails the current test on an error (empty result).
std::vector<std::byte> vd_read_all(const std::string& image, vd::DiskOpenOptions opts = {});

// Opens through vd::Disk read-only and reads everything; returns the first error.
vd::Error vd_try_read_all(const std::string& image, vd::DiskOpenOptions opts = {});

// Writes the fixture passphrase into `dir` and returns the file name (--passphrase-file).
std::string passphrase_file(const TempDir& dir);

// Offset of the first occurrence of `bytes` in the first `limit` bytes of a file, or -1.
int64_t find_bytes(const std::string& path, const std::string& bytes, uint64_t limit);

}  // namespace vdtest
