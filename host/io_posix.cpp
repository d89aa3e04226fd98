// PosixIoProvider: real files. Synchronous calls run on the caller's thread; asynchronous
// calls run the same blocking syscalls (host/io_fd.h) as a job on the runtime's thread pool
// and post their completion to the completion executor.
//
// Lifetime: the descriptor lives in a shared `Fd` that every queued job co-owns, so a File
// may be destroyed while its requests are still on the pool; the last job closes the fd.
// Each job also holds a tracked-work executor, so the io_context does not run out of work
// (and `Runtime::wait` keeps blocking in run_one) while a request is on the pool.
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>

#include "host/io_fd.h"
#include "host/io_posix_file.h"
#include "vd/runtime.h"

namespace vd {

using detail::Fd;

namespace {
constexpr unsigned kDirectIoThreads = 16;
}

PosixFile::PosixFile(std::shared_ptr<Fd> fd, boost::asio::any_io_executor ex, boost::asio::thread_pool& pool)
    : fd_(std::move(fd)), ex_(std::move(ex)), pool_(pool) {}

const std::string& PosixFile::path() const { return fd_->path; }
Result<uint64_t> PosixFile::size() { return detail::size_of(*fd_); }
Error PosixFile::set_size(uint64_t size) { return detail::truncate_fd(*fd_, size); }
Result<uint64_t> PosixFile::allocated_size() { return detail::allocated_of(*fd_); }
Result<FileExtent> PosixFile::extent_at(uint64_t offset) { return detail::extent_of(*fd_, offset); }
Error PosixFile::read(IoKind, uint64_t offset, std::span<std::byte> buf) { return detail::read_all(*fd_, offset, buf); }
Error PosixFile::write(IoKind, uint64_t offset, std::span<const std::byte> buf) {
  return detail::write_all(*fd_, offset, buf);
}
Error PosixFile::flush() { return detail::flush_fd(*fd_); }
Error PosixFile::discard(uint64_t offset, uint64_t length) { return detail::discard_fd(*fd_, offset, length); }
Error PosixFile::allocate(uint64_t offset, uint64_t length) { return detail::allocate_fd(*fd_, offset, length); }

void PosixFile::async_read(IoKind, uint64_t offset, std::span<std::byte> buf, Completion done) {
  if (buf.empty()) return post_done(std::move(done), {});
  if (read_nowait(offset, buf)) return post_done(std::move(done), {});
  submit([offset, buf](const Fd& f) { return detail::read_all(f, offset, buf); }, std::move(done));
}
void PosixFile::async_write(IoKind, uint64_t offset, std::span<const std::byte> buf, Completion done) {
  if (buf.empty()) return post_done(std::move(done), {});
  submit([offset, buf](const Fd& f) { return detail::write_all(f, offset, buf); }, std::move(done));
}
void PosixFile::async_flush(Completion done) {
  if (fd_->no_flush) return post_done(std::move(done), {});  // cache=unsafe: nothing to wait for
  submit([](const Fd& f) { return detail::flush_fd(f); }, std::move(done));
}
void PosixFile::async_discard(uint64_t offset, uint64_t length, Completion done) {
  submit([offset, length](const Fd& f) { return detail::discard_fd(f, offset, length); }, std::move(done));
}
void PosixFile::async_allocate(uint64_t offset, uint64_t length, Completion done) {
  submit([offset, length](const Fd& f) { return detail::allocate_fd(f, offset, length); }, std::move(done));
}
void PosixFile::async_set_size(uint64_t size, Completion done) {
  submit([size](const Fd& f) { return detail::truncate_fd(f, size); }, std::move(done));
}
void PosixFile::async_extent_at(uint64_t offset, ExtentCompletion done) {
  auto work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
  boost::asio::post(pool_, [fd = fd_, offset, done = std::move(done), work = std::move(work)]() mutable {
    auto r = detail::extent_of(*fd, offset);
    fd.reset();  // see submit
    boost::asio::post(work, [done = std::move(done), r = std::move(r)]() { done(r.error(), r ? *r : FileExtent{}); });
  });
}

// A buffered read whose pages are all in the page cache costs less done here, at once,
// than a hop to the pool and back: preadv2 with RWF_NOWAIT does it when it cannot block and
// refuses (EAGAIN) otherwise. True when the whole buffer was read (or lies past the end of
// the file); the completion is still posted, never run inline. A file system that does not
// know RWF_NOWAIT is not asked again.
bool PosixFile::read_nowait(uint64_t offset, std::span<std::byte> buf) {
  // VD_NOWAIT=0 turns it off (benchmarks compare; an escape hatch for odd file systems).
  static const bool enabled = [] {
    const char* v = std::getenv("VD_NOWAIT");
    return !(v && std::string_view(v) == "0");
  }();
  if (!enabled || fd_->align || !fd_->nowait.load(std::memory_order_relaxed) || buf.size() > (size_t{1} << 20) ||
      offset > static_cast<uint64_t>(INT64_MAX) - buf.size())
    return false;
  iovec iov{buf.data(), buf.size()};
  ssize_t n;
  // tmpfs has no RWF_NOWAIT (EOPNOTSUPP), and needs none: its pages are memory, a read
  // there is a copy that waits for no device.
  const int flags = fd_->in_memory ? 0 : RWF_NOWAIT;
  do n = ::preadv2(fd_->fd, &iov, 1, static_cast<off_t>(offset), flags);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS) fd_->nowait.store(false, std::memory_order_relaxed);
    return false;
  }
  if (n == 0) {  // at or past the end of the file: zeros
    std::memset(buf.data(), 0, buf.size());
  } else if (static_cast<size_t>(n) < buf.size()) {
    return false;  // partly cached, or the end of the file: the pool reads it all again
  }
  io_counters().nowait_reads++;
  return true;
}

void PosixFile::post_done(Completion done, Error e) {
  detail::post_recycled(ex_, [done = std::move(done), e = std::move(e)]() { done(e); });
}

PosixIoProvider::PosixIoProvider(boost::asio::any_io_executor completions, boost::asio::thread_pool& pool)
    : ex_(std::move(completions)), pool_(pool) {}

PosixIoProvider::~PosixIoProvider() {
  // Its jobs post to the executor, which outlives the provider: let them finish first.
  if (direct_pool_) direct_pool_->join();
}

// An O_DIRECT read or write blocks on the device, not the CPU: the device is kept busy by
// as many threads as requests it is given at once, so such files get a pool of their own,
// larger than the default one, whose size suits buffered I/O (a copy to or from the page
// cache, CPU-bound: more threads than that only contend). Measured on 2 cores, 4 KiB
// cache=none reads at depth 32: 4 threads 0.51-0.70 s, 16 threads 0.32-0.40 s for 50 000
// requests (24 and 32 threads slower again); buffered 4 KiB writes went from 0.46-0.53 s on
// 4 threads to 0.63-0.84 s on 16, hence two pools.
boost::asio::thread_pool& PosixIoProvider::pool_for(bool direct) {
  if (!direct) return pool_;
  std::lock_guard lock(direct_m_);
  if (!direct_pool_) direct_pool_ = std::make_unique<boost::asio::thread_pool>(kDirectIoThreads);
  return *direct_pool_;
}

Result<std::unique_ptr<File>> PosixIoProvider::open(const std::string& path, unsigned mode) {
  auto fd = detail::open_fd(path, mode);
  if (!fd) return fd.error();
  auto& pool = pool_for((*fd)->align != 0);
  return std::unique_ptr<File>(std::make_unique<PosixFile>(std::move(*fd), ex_, pool));
}

Error PosixIoProvider::remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return Error::from_errno(errno, "remove", path);
  return {};
}

void PosixIoProvider::post(std::function<void()> fn) { detail::post_recycled(ex_, std::move(fn)); }

void PosixIoProvider::offload(std::function<void()> work, std::function<void()> then) {
  // Tracked, so the executor's run() does not return while the job is on the pool.
  auto track = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
  boost::asio::post(pool_, [work = std::move(work), then = std::move(then), track = std::move(track)]() mutable {
    work();
    boost::asio::post(track, std::move(then));
  });
}

bool PosixIoProvider::exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace vd
