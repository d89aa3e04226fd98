// The host's I/O runtime on Boost.Asio: one io_context on which images run and completions
// land, and a thread pool that does the blocking file I/O (preadv/pwritev/fdatasync), so
// many requests are in flight at once. Synchronous callers (vdimg) use `wait`.
#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>
#include <mutex>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "vd/backend.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd {

// A provider that can say which executor receives its completions: a Disk opened over it
// dispatches its requests there (vd/disk.h, "Threads").
class VD_API ExecutorSource {
 public:
  virtual ~ExecutorSource() = default;
  virtual boost::asio::any_io_executor completion_executor() const = 0;
};

// What the real-file providers did, process-wide (tests check cache modes with it).
struct IoCounters {
  std::atomic<uint64_t> flushes{0};           // fdatasync calls that reached the kernel
  std::atomic<uint64_t> unaligned_direct{0};  // O_DIRECT transfers not aligned (must stay 0)
  std::atomic<uint64_t> bounced{0};           // O_DIRECT requests that went through a bounce buffer
  std::atomic<uint64_t> rmw{0};               // of those, read-modify-writes
  std::atomic<uint64_t> uring_ops{0};         // requests the io_uring provider submitted
  std::atomic<uint64_t> nowait_reads{0};      // buffered reads done inline (RWF_NOWAIT)
};
VD_API IoCounters& io_counters();

// How asynchronous file I/O is done, as qemu's aio=: `threads` runs blocking syscalls on
// the runtime's pool; `io_uring` submits them to a Linux io_uring. `automatic` reads the
// VD_AIO environment variable (threads or io_uring) and defaults to threads, as qemu does;
// io_uring falls back to threads where the kernel refuses a ring.
enum class Aio : uint8_t { automatic, threads, io_uring };
VD_API Result<Aio> parse_aio(std::string_view name);

// The real-file provider `aio` asks for, its completions posted to `completions`, blocking
// work on `pool`; `aio` is updated to the one made (VD_AIO decides `automatic`, so CI runs a
// suite on each provider without changing the tests; io_uring falls back to threads where
// the kernel gives no ring). The provider must be destroyed before `pool` and the
// executor's context.
VD_API std::unique_ptr<IoProvider> make_file_provider(Aio& aio, boost::asio::any_io_executor completions,
                                                      boost::asio::thread_pool& pool);

// Real files. Blocking calls run on `pool`; completions are posted to `completions`.
class VD_API PosixIoProvider : public IoProvider, public ExecutorSource {
 public:
  boost::asio::any_io_executor completion_executor() const override { return ex_; }
  PosixIoProvider(boost::asio::any_io_executor completions, boost::asio::thread_pool& pool);
  Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) override;
  Error remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  void post(std::function<void()> fn) override;
  void offload(std::function<void()> work, std::function<void()> then) override;
  ~PosixIoProvider() override;

 protected:
  // The pool a file's blocking calls run on: O_DIRECT files get a pool of their own, made on
  // first use and larger (host/io_posix.cpp).
  boost::asio::thread_pool& pool_for(bool direct);

 private:
  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
  std::mutex direct_m_;
  std::unique_ptr<boost::asio::thread_pool> direct_pool_;
};

// Files in memory, for tests and fuzzing. Async completions are posted to `completions`.
class VD_API MemIoProvider : public IoProvider, public ExecutorSource {
 public:
  boost::asio::any_io_executor completion_executor() const override { return ex_; }
  explicit MemIoProvider(boost::asio::any_io_executor completions);
  Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) override;
  Error remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  void post(std::function<void()> fn) override;
  // The bytes of a file (created empty if missing); shared with every open File of it.
  std::shared_ptr<std::vector<std::byte>> contents(const std::string& path);

 private:
  boost::asio::any_io_executor ex_;
  std::unordered_map<std::string, std::shared_ptr<std::vector<std::byte>>> files_;
};

class VD_API Runtime {
 public:
  // io_threads = 0 picks a default from the hardware.
  explicit Runtime(unsigned io_threads = 0, Aio aio = Aio::automatic);
  ~Runtime();

  boost::asio::io_context& context() { return ctx_; }
  boost::asio::any_io_executor executor() { return ctx_.get_executor(); }
  IoProvider& files() { return *files_; }
  // The provider in use (threads, or io_uring when asked for and the kernel has it).
  Aio aio() const { return aio_; }

  // Starts an asynchronous operation and runs the io_context on this thread until the
  // operation's completion has run. Returns its error.
  Error wait(const std::function<void(Completion)>& start);

 private:
  boost::asio::io_context ctx_;
  boost::asio::thread_pool pool_;
  std::unique_ptr<IoProvider> files_;
  Aio aio_ = Aio::threads;
};

// Synchronous helpers over one Image (whole request, looping over partial results). Ranges
// the image does not hold read as zeros; use a Disk to read through a chain.
VD_API Error sync_image_read(Runtime& rt, Image& img, uint64_t offset, std::span<std::byte> buf);
VD_API Error sync_image_write(Runtime& rt, Image& img, uint64_t offset, std::span<const std::byte> buf,
                       unsigned flags = 0);

}  // namespace vd
