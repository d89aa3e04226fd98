// Helpers shared by every test binary: scratch folders, running commands (vdimg, qemu-img,
// qemu-io), reading and poking files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vd/registry.h"

namespace vdtest {

// A fresh folder under $TMPDIR, removed with everything in it when destroyed.
class TempDir {
 public:
  TempDir();
  // Under `base` instead of $TMPDIR (O_DIRECT tests want a real file system, not tmpfs).
  explicit TempDir(const std::string& base);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CmdResult {
  int exit_code = -1;  // -1 if it did not exit normally
  std::string out;
  std::string err;
};

// Runs argv[0] (searched in PATH) with the arguments, capturing stdout and stderr.
CmdResult run(const std::vector<std::string>& argv);
// Runs a shell command line; fails the current test if it exits non-zero.
std::string sh(const std::string& command_line);

std::string vdimg_path();      // the vdimg built with this tree
CmdResult vdimg(std::vector<std::string> args);  // runs that vdimg with `args`
std::string data_dir();        // tests/data
std::string plugin_path();     // the test plugin shared object
bool have_qemu();              // qemu-img and qemu-io are on PATH

// `qemu-img create` of a LUKS image (fmt "luks", or "qcow2" with encrypt.format=luks in
// `opts`) with secret `sec0` = `passphrase`. qemu-img times PBKDF2 with the thread's CPU
// clock in whole milliseconds and gives up ("Unable to get accurate CPU usage") when its
// first round takes under 1 ms: now and then here, most of the time on a faster machine.
// So it is retried, and when `opts` names no hash, the later tries use SHA-512 (slower per
// round, and still an image made by qemu-img); the last try runs qemu-img under valgrind's
// no-op tool (slower still). Returns the last result.
CmdResult qemu_img_create_luks(const std::string& fmt, const std::string& opts, const std::string& path,
                               const std::string& size, const std::string& passphrase = "abc");
// The same as a shell fragment for recipes: succeeds when `path` was made.
std::string qemu_img_create_luks_sh(const std::string& fmt, const std::string& opts, const std::string& path,
                                    const std::string& size, const std::string& passphrase = "abc");

std::vector<std::byte> read_file(const std::string& path);
void write_file(const std::string& path, const std::vector<std::byte>& bytes);
uint64_t file_size(const std::string& path);
std::string sha256_file(const std::string& path);

// Big-endian pokes at a byte offset of a file (corruption fixtures).
void poke_u8(const std::string& path, uint64_t offset, uint8_t v);
void poke_be16(const std::string& path, uint64_t offset, uint16_t v);
void poke_be32(const std::string& path, uint64_t offset, uint32_t v);
void poke_be64(const std::string& path, uint64_t offset, uint64_t v);
void poke_bytes(const std::string& path, uint64_t offset, const std::string& bytes);
uint64_t peek_be64(const std::string& path, uint64_t offset);
uint32_t peek_be32(const std::string& path, uint64_t offset);

// A deterministic pseudo-random byte pattern (for payloads).
std::vector<std::byte> pattern(size_t length, uint32_t seed);

// "qemu-img: X" and "vdimg: X" at the start of a line compare as "X": the two tools' error
// output, program name aside.
std::string without_tool_prefix(const std::string& text);

}  // namespace vdtest

// Skips the current test when qemu-img/qemu-io are missing (they are installed by the
// README's commands; a developer box may lack them).
#define VD_REQUIRE_QEMU()                                        \
  do {                                                           \
    if (!::vdtest::have_qemu()) GTEST_SKIP() << "qemu-utils missing"; \
  } while (0)

// Skips the current test when qemu is missing or vd was built without its qcow2 backend.
#define VD_REQUIRE_QCOW2()                                                          \
  do {                                                                              \
    VD_REQUIRE_QEMU();                                                              \
    if (!vd::Registry::builtin().find("qcow2")) GTEST_SKIP() << "no qcow2 backend"; \
  } while (0)
