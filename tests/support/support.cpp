#include "support/support.h"

#include <regex>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace vdtest {
namespace fs = std::filesystem;

TempDir::TempDir() : TempDir([] {
  const char* base = std::getenv("TMPDIR");
  return std::string(base && *base ? base : "/tmp");
}()) {}

TempDir::TempDir(const std::string& base) {
  std::string tmpl = base + "/vdtest.XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

namespace {
std::string slurp_fd(int fd) {
  std::string out;
  std::array<char, 65536> buf{};
  lseek(fd, 0, SEEK_SET);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n <= 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  return out;
}

int temp_fd() {
  char name[] = "/tmp/vdtest-out.XXXXXX";
  int fd = mkstemp(name);
  if (fd < 0) throw std::runtime_error("mkstemp failed");
  unlink(name);
  return fd;
}
}  // namespace

CmdResult run(const std::vector<std::string>& argv) {
  CmdResult r;
  int out = temp_fd(), err = temp_fd();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_adddup2(&fa, err, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ) == 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  } else {
    r.err = "cannot start " + argv[0];
  }
  posix_spawn_file_actions_destroy(&fa);
  r.out = slurp_fd(out);
  r.err += slurp_fd(err);
  close(out);
  close(err);
  return r;
}

std::string sh(const std::string& command_line) {
  CmdResult r = run({"/bin/sh", "-c", command_line});
  EXPECT_EQ(r.exit_code, 0) << command_line << "\nstdout: " << r.out << "\nstderr: " << r.err;
  return r.out;
}

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdimg_path());
  return run(args);
}

std::string vdimg_path() { return VD_VDIMG_PATH; }
std::string data_dir() { return VD_TEST_DATA_DIR; }
std::string plugin_path() { return VD_TEST_PLUGIN_PATH; }

bool have_qemu() {
  static const bool have = run({"/bin/sh", "-c", "command -v qemu-img && command -v qemu-io"}).exit_code == 0;
  return have;
}

std::vector<std::byte> read_file(const std::string& path) {
  std::vector<std::byte> out;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  struct stat st {};
  if (fstat(fd, &st) == 0) out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  ::close(fd);
  return out;
}

void write_file(const std::string& path, const std::vector<std::byte>& bytes) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  o.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

uint64_t file_size(const std::string& path) { return fs::file_size(path); }

std::string sha256_file(const std::string& path) {
  auto data = read_file(path);
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::ostringstream s;
  for (unsigned i = 0; i < len; ++i) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", md[i]);
    s << b;
  }
  return s.str();
}

void poke_bytes(const std::string& path, uint64_t offset, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

namespace {
std::string be(uint64_t v, int n) {
  std::string s(static_cast<size_t>(n), '\0');
  for (int i = n - 1; i >= 0; --i, v >>= 8) s[static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}
uint64_t peek_be(const std::string& path, uint64_t offset, int n) {
  int fd = ::open(path.c_str(), O_RDONLY);
  unsigned char b[8] = {};
  if (fd >= 0) {
    (void)!pread(fd, b, static_cast<size_t>(n), static_cast<off_t>(offset));
    ::close(fd);
  }
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | b[i];
  return v;
}
}  // namespace

void poke_u8(const std::string& p, uint64_t o, uint8_t v) { poke_bytes(p, o, be(v, 1)); }
void poke_be16(const std::string& p, uint64_t o, uint16_t v) { poke_bytes(p, o, be(v, 2)); }
void poke_be32(const std::string& p, uint64_t o, uint32_t v) { poke_bytes(p, o, be(v, 4)); }
void poke_be64(const std::string& p, uint64_t o, uint64_t v) { poke_bytes(p, o, be(v, 8)); }
uint64_t peek_be64(const std::string& p, uint64_t o) { return peek_be(p, o, 8); }
uint32_t peek_be32(const std::string& p, uint64_t o) { return static_cast<uint32_t>(peek_be(p, o, 4)); }

std::vector<std::byte> pattern(size_t length, uint32_t seed) {
  std::vector<std::byte> out(length);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<std::byte>(x & 0xff);
  }
  return out;
}

namespace {
// The -o lists tried in turn: as given with a short and a longer iteration time, then with
// SHA-512 when no hash was asked for.
std::vector<std::string> luks_option_tries(const std::string& fmt, const std::string& opts) {
  const std::string prefix = fmt == "luks" ? "" : "encrypt.";
  const std::string base = opts + (opts.empty() ? "" : ",");
  bool hash_named = false;
  std::stringstream list(opts);
  for (std::string kv; std::getline(list, kv, ',');) hash_named |= kv.rfind(prefix + "hash-alg=", 0) == 0;
  std::vector<std::string> tries;
  for (int i = 0; i < 8; ++i) tries.push_back(base + prefix + "iter-time=" + (i < 4 ? "10" : "100"));
  for (int i = 0; i < 8; ++i)
    tries.push_back(base + prefix + "iter-time=10" + (hash_named ? "" : "," + prefix + "hash-alg=sha512"));
  return tries;
}
}  // namespace

CmdResult qemu_img_create_luks(const std::string& fmt, const std::string& opts, const std::string& path,
                               const std::string& size, const std::string& passphrase) {
  CmdResult r;
  for (const auto& o : luks_option_tries(fmt, opts)) {
    r = run({"qemu-img", "create", "-q", "-f", fmt, "--object", "secret,id=sec0,data=" + passphrase, "-o", o,
             path, size});
    if (r.exit_code == 0 || r.err.find("accurate CPU usage") == std::string::npos) return r;
  }
  // A fast hash the options name (sha1, sha256) can keep failing: under valgrind's no-op
  // tool qemu-img runs a few times slower, long enough for its clock.
  return run({"valgrind", "-q", "--tool=none", "qemu-img", "create", "-q", "-f", fmt, "--object",
              "secret,id=sec0,data=" + passphrase, "-o", luks_option_tries(fmt, opts).front(), path, size});
}

std::string qemu_img_create_luks_sh(const std::string& fmt, const std::string& opts, const std::string& path,
                                    const std::string& size, const std::string& passphrase) {
  std::string s = "{ false";
  for (const auto& o : luks_option_tries(fmt, opts))
    s += " || qemu-img create -q -f " + fmt + " --object secret,id=sec0,data=" + passphrase + " -o " + o + " " +
         path + " " + size + " 2>/dev/null";
  s += " || valgrind -q --tool=none qemu-img create -q -f " + fmt + " --object secret,id=sec0,data=" + passphrase +
       " -o " + luks_option_tries(fmt, opts).front() + " " + path + " " + size + " 2>/dev/null";
  return s + "; } && test -f " + path;
}

std::string without_tool_prefix(const std::string& text) {
  static const std::regex prefix("(^|\n)(qemu-img|vdimg): ");
  return std::regex_replace(text, prefix, "$1");
}

}  // namespace vdtest
