// The io_uring provider: reads, writes, fdatasync and fallocate go on one Linux io_uring
// per provider (host/io_uring_ring.h: completions are reaped on the completion executor,
// polled while requests are in flight; files sit in the ring's registered file table).
// What the ring does not do here falls back to the thread pool path of PosixFile: discard,
// set_size, extents, and O_DIRECT requests that need a bounce buffer or a
// read-modify-write (host/io_fd.h), or an aligned write whose blocks such a
// read-modify-write holds.
//
// Registered buffers are not used: the ring only ever sees callers' buffers, which differ
// from request to request (registering one costs more than the request), and the bounce
// buffers of unaligned O_DIRECT requests live on the pool's path.
#include "host/io_uring.h"

#include <cstdlib>

#include "host/io_fd.h"
#include "host/io_posix_file.h"
#include "host/io_uring_ring.h"
#include "vd/runtime.h"

namespace vd::detail {
namespace {

using Kind = UringOp::Kind;

class UringFile final : public PosixFile {
 public:
  UringFile(std::shared_ptr<Fd> fd, boost::asio::any_io_executor ex, boost::asio::thread_pool& pool,
            std::shared_ptr<UringRing> ring, int slot)
      : PosixFile(std::move(fd), std::move(ex), pool), ring_(std::move(ring)), slot_(slot) {}

  void async_read(IoKind kind, uint64_t offset, std::span<std::byte> buf, Completion done) override {
    if (buf.empty() || !fd_->aligned(offset, buf.size(), buf.data()) || buf.size() > (1u << 30) ||
        check_span(*fd_, "read", offset, buf.size()))
      return PosixFile::async_read(kind, offset, buf, std::move(done));
    // On tmpfs a read is a copy: done here it costs less than the ring, which hands
    // tmpfs reads to its worker threads (no RWF_NOWAIT there).
    if (fd_->in_memory && read_nowait(offset, buf)) return post_done(std::move(done), {});
    if (!ring_->submit(Kind::read, fd_, slot_, buf.data(), offset, buf.size(), false, done))
      PosixFile::async_read(kind, offset, buf, std::move(done));  // the ring is full: the pool does it
  }
  void async_write(IoKind kind, uint64_t offset, std::span<const std::byte> buf, Completion done) override {
    if (buf.empty() || !fd_->aligned(offset, buf.size(), buf.data()) || buf.size() > (1u << 30) ||
        check_span(*fd_, "write", offset, buf.size()))
      return PosixFile::async_write(kind, offset, buf, std::move(done));
    // O_DIRECT: the blocks must not be in a read-modify-write (host/io_fd.h).
    const bool hold = fd_->align != 0;
    if (hold && !try_acquire_write(*fd_, offset, buf.size()))
      return PosixFile::async_write(kind, offset, buf, std::move(done));
    if (ring_->submit(Kind::write, fd_, slot_, const_cast<std::byte*>(buf.data()), offset, buf.size(), hold, done))
      return;
    if (hold) release_write(*fd_, offset, buf.size());
    PosixFile::async_write(kind, offset, buf, std::move(done));
  }
  void async_flush(Completion done) override {
    if (fd_->no_flush) return post_done(std::move(done), {});
    count_flush();
    if (!ring_->submit(Kind::flush, fd_, slot_, nullptr, 0, 0, false, done)) PosixFile::async_flush(std::move(done));
  }
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override {
    if (length == 0 || check_span(*fd_, "allocate", offset, length))
      return PosixFile::async_allocate(offset, length, std::move(done));
    if (!ring_->submit(Kind::allocate, fd_, slot_, nullptr, offset, length, false, done))
      PosixFile::async_allocate(offset, length, std::move(done));
  }

 private:
  std::shared_ptr<UringRing> ring_;
  int slot_;  // registered file slot, or -1
};

class UringProvider final : public PosixIoProvider {
 public:
  UringProvider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool, std::shared_ptr<UringRing> ring)
      : PosixIoProvider(ex, pool), ex_(std::move(ex)), ring_(std::move(ring)) {}
  ~UringProvider() override { ring_->close(); }

  Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) override {
    auto fd = open_fd(path, mode);
    if (!fd) return fd.error();
    // A slot only for a file that holds no image locks: the ring's table keeps its own
    // reference to the open file, and OFD locks go only with the last one. Linux 6.1 drops
    // a removed entry's reference from a delayed work item (up to a second after the
    // close), and after a crash (kill -9) the table lives until the kernel's asynchronous
    // teardown of the ring: qemu-img would find the image still locked.
    const int slot = (mode & file_lock) ? -1 : ring_->attach(**fd);
    // The pool does an O_DIRECT file's unaligned requests and discards: its own (io_posix.cpp).
    auto& pool = pool_for((*fd)->align != 0);
    return std::unique_ptr<File>(std::make_unique<UringFile>(std::move(*fd), ex_, pool, ring_, slot));
  }

  UringStats stats() { return ring_->stats(); }

 private:
  boost::asio::any_io_executor ex_;
  std::shared_ptr<UringRing> ring_;
};

}  // namespace

UringSetup UringSetup::from_env() {
  UringSetup s;
  auto number = [](const char* name, unsigned& field) {
    if (const char* v = std::getenv(name); v && *v) field = static_cast<unsigned>(std::strtoul(v, nullptr, 0));
  };
  number("VD_URING_FLAGS", s.flags);
  number("VD_URING_FILES", s.fixed_files);
  number("VD_URING_POLL_US", s.poll_us);
  return s;
}

std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool) {
  return make_uring_provider(std::move(ex), pool, UringSetup::from_env());
}

std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool,
                                                const UringSetup& setup) {
  // A kernel without io_uring (or a seccomp filter refusing it) gives no ring: threads then.
  auto ring = UringRing::create(ex, pool, setup);
  if (!ring) return nullptr;
  return std::make_unique<UringProvider>(std::move(ex), pool, std::move(ring));
}

std::optional<UringStats> uring_stats(IoProvider& p) {
  if (auto* u = dynamic_cast<UringProvider*>(&p)) return u->stats();
  return std::nullopt;
}

}  // namespace vd::detail
