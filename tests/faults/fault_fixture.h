// Shared machinery of the fault tests: fixtures made by qemu-img, a "rig" (an io_context, a
// MockIoProvider holding the image files in memory, and a Disk over them) driven without a
// vd::Runtime, and the recovery checks every fault test ends with.
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "support/mock_io.h"
#include "support/support.h"
#include "vd/backend.h"
#include "vd/disk.h"

// Marks a test that exposes a known backend bug: skipped (the suite stays green) unless
// VD_RUN_KNOWN_BUGS=1 is set, which is how the fix is verified. Each use has a BUG: comment.
#define VD_KNOWN_BUG(why)                                                     \
  do {                                                                        \
    if (!::vdtest::faults::run_known_bugs()) GTEST_SKIP() << "BUG: " << why;  \
  } while (0)

namespace vdtest::faults {

bool run_known_bugs();

using Bytes = std::vector<std::byte>;
using Files = std::map<std::string, Bytes>;  // file name -> content

// Runs `script` with /bin/sh in a fresh TempDir (qemu-img/qemu-io commands on relative
// names) and returns the named files' bytes.
Files make_files(const std::string& script, const std::vector<std::string>& names);

struct CheckOutcome {
  int exit_code = -1;  // qemu-img check: 0 clean, 3 leaks only, 2 corrupt, 1 error
  std::string output;
  bool clean() const { return exit_code == 0; }
  bool clean_or_leaks() const { return exit_code == 0 || exit_code == 3; }
};
// Writes the files to a TempDir and runs `qemu-img check` on `image` (of `format`; with a
// passphrase, an encrypted image opened with it as secret sec0).
CheckOutcome qemu_check(const Files& files, const std::string& image, const std::string& format = "qcow2",
                        const std::optional<std::string>& passphrase = std::nullopt);

struct OpenSpec {
  std::string top = "top.qcow2";
  std::optional<std::string> base;  // read-only parent; ".raw" opens as raw, else qcow2
  uint64_t cache_bytes = 32ull << 20;
  std::string top_format = "qcow2";       // "qcow2", "qcow", "raw" or "luks"
  std::optional<std::string> base_format;  // overrides the guess from base's name
  std::optional<std::string> passphrase;   // for an encrypted top
};

// Opens `spec` (top read-write, base read-only) on `io` and assembles the chain.
vd::Result<std::unique_ptr<vd::Disk>> open_chain(vd::IoProvider& io, const OpenSpec& spec);
// Starts an operation and runs `ctx` until it has nothing left; fails the test unless the
// completion ran exactly once, and not inside the call that started it (completions are
// always posted). With `io`, the operation counts as a data-path request in flight on it
// from the start until its completion runs (MockIoProvider::begin_data_path): a synchronous
// file call meanwhile fails the test. Returns its error.
vd::Error run_on(boost::asio::io_context& ctx, const std::function<void(vd::Completion)>& start,
                 MockIoProvider* io = nullptr);
// Wraps `done` for a data-path request started now: counts it in flight on `io` (if given)
// until it runs, and fails the test if it runs inside the start call (until `*returned` is
// set) or more than once. Used by run_on and Rig::start.
struct Tracked {
  vd::Completion done;                   // pass this to the operation
  std::shared_ptr<bool> returned;        // set it once the start call returned
  std::shared_ptr<int> calls;            // how often `done` ran
};
Tracked track(vd::Completion done, MockIoProvider* io);
// The whole disk, read with `run_on`.
Bytes read_disk(boost::asio::io_context& ctx, vd::Disk& disk);

// One machine: an executor, the mock storage and a disk over it. Members are declared so that
// the disk goes before the provider and the provider before the executor.
class Rig {
 public:
  explicit Rig(const Files& files);
  ~Rig();

  // Opens the chain; faults and holds armed before this apply to the open too.
  vd::Error open(const OpenSpec& spec = {});
  vd::Disk& disk() { return *disk_; }
  vd::Image& top() { return disk_->image(0); }

  // Starts an operation and runs the executor until it has nothing left. Fails the test
  // unless the completion ran exactly once. Returns its error.
  // Every operation started here counts as a data-path request in flight (see run_on).
  vd::Error run(const std::function<void(vd::Completion)>& start);
  vd::Error write(uint64_t offset, const Bytes& data, unsigned flags = 0);
  vd::Error write_zeroes(uint64_t offset, uint64_t length, unsigned flags = vd::zero_may_unmap);
  vd::Error discard(uint64_t offset, uint64_t length);
  vd::Error flush();
  vd::Result<vd::DiskExtent> block_status(uint64_t offset, uint64_t length);
  // The whole disk through the chain (test failure and empty result on error).
  Bytes read_all();

  // Starts a data-path operation without running the executor (for requests in flight
  // together, with `drive`): it counts as in flight until `done` runs, and the test fails
  // if `done` runs inside the start call or more than once.
  void start(const std::function<void(vd::Completion)>& start, vd::Completion done);

  // With held completions: runs posted work and fires held requests (random order) until
  // `done()` holds. False if everything stalled before that (a hang). Everything that runs
  // meanwhile counts as the data path (a synchronous file call fails the test).
  bool drive(const std::function<bool()>& done, uint32_t seed);

  Files snapshot();                     // current bytes of every file
  uint64_t file_size(const std::string& name);
  void drop_without_close();            // forget the disk without flushing (a crash)
  void destroy_disk() { disk_.reset(); }  // the Disk object goes; requests in flight go on

  boost::asio::io_context ctx;
  MockIoProvider io;

 private:
  std::vector<std::string> names_;
  std::unique_ptr<vd::Disk> disk_;
};

// What a recovery must show after a fault: the files open again, read `old_content` or
// `new_content` in every `grain`-sized piece (new_content may be null: old only), and
// `qemu-img check` (and vd's check, once it exists) finds no corruption, and no leak unless
// `allow_leaks`.
struct Expect {
  const Bytes* old_content = nullptr;
  const Bytes* new_content = nullptr;
  uint64_t grain = 512;
  bool allow_leaks = false;
};
void expect_recovers(const Files& files, const OpenSpec& spec, const Expect& x);

// Per piece of `grain` bytes: true if `got` equals one of the candidates there.
::testing::AssertionResult old_or_new(const Bytes& got, const Bytes& old_content, const Bytes* new_content,
                                      uint64_t grain);

// Checks vd's own check on an open image when the backend implements it.
void expect_vd_check(vd::Image& img, bool allow_leaks);

Bytes fill(size_t n, uint8_t value);
// `base` with [offset, offset + data.size()) replaced.
Bytes overlay(Bytes base, uint64_t offset, const Bytes& data);

// The calls a provider saw, one a line (for failure messages).
std::string calls_text(const MockIoProvider& io);

// True if `e` carries an injected fault (so it is the fault's error, not another).
bool is_injected(const vd::Error& e);

}  // namespace vdtest::faults
