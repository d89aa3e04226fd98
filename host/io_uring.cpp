// The io_uring provider: reads, writes, fdatasync and fallocate are submitted to one Linux
// io_uring per provider; a reaper thread takes their completions off the ring and posts them
// to the completion executor, every completion found in one pass as one handler (a batch
// per loop turn). What the ring does not do here falls back to the thread pool path of
// PosixFile: discard, set_size, extents, and O_DIRECT requests that need a bounce buffer or
// a read-modify-write (host/io_fd.h), or an aligned write whose blocks such a
// read-modify-write holds.
//
// Threads: any thread may submit (the submission queue is under a mutex); only the reaper
// reads the completion queue. Lifetime: an operation co-owns its Fd and keeps the executor's
// work tracked until its completion has been posted; the provider's destructor waits for
// the ring to have no operation in flight before stopping the reaper.
#include "host/io_uring.h"

#include <liburing.h>

#include <atomic>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "host/io_fd.h"
#include "host/io_posix_file.h"
#include "vd/runtime.h"

namespace vd::detail {
namespace {

constexpr unsigned kRingEntries = 256;
constexpr size_t kMaxBatch = 64;
using Tracked = decltype(boost::asio::prefer(std::declval<boost::asio::any_io_executor>(),
                                             boost::asio::execution::outstanding_work.tracked));

struct Op {
  enum class Kind : uint8_t { read, write, flush, allocate } kind;
  std::shared_ptr<Fd> fd;
  std::byte* buf = nullptr;
  uint64_t offset = 0;
  uint64_t len = 0;   // bytes to transfer, or the range to allocate
  uint64_t done = 0;  // bytes transferred so far
  bool holds_range = false;
  Error err;
  Completion cb;
  Tracked work;
};

class Ring {
 public:
  explicit Ring(io_uring& r) : ring_(r) {}

  // Puts `op` on the ring; false when the submission queue stays full.
  bool submit(Op* op) {
    std::lock_guard lock(m_);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
      if (!sqe) return false;
    }
    prep(sqe, *op);
    io_uring_sqe_set_data(sqe, op);
    ++in_flight_;
    io_counters().uring_ops++;
    int r;
    do r = io_uring_submit(&ring_);
    while (r == -EINTR);
    return true;
  }

  // Wakes the reaper with an empty operation.
  void wake() {
    std::lock_guard lock(m_);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    if (!sqe) return;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, nullptr);
    io_uring_submit(&ring_);
  }

  void completed() {
    std::lock_guard lock(m_);
    if (--in_flight_ == 0) idle_.notify_all();
  }
  void wait_idle() {
    std::unique_lock lock(m_);
    idle_.wait(lock, [&] { return in_flight_ == 0; });
  }

 private:
  static void prep(io_uring_sqe* sqe, const Op& op) {
    const int fd = op.fd->fd;
    switch (op.kind) {
      case Op::Kind::read:
        io_uring_prep_read(sqe, fd, op.buf + op.done, static_cast<unsigned>(op.len - op.done), op.offset + op.done);
        break;
      case Op::Kind::write:
        io_uring_prep_write(sqe, fd, op.buf + op.done, static_cast<unsigned>(op.len - op.done), op.offset + op.done);
        break;
      case Op::Kind::flush:
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        break;
      case Op::Kind::allocate:
        io_uring_prep_fallocate(sqe, fd, 0, op.offset, op.len);
        break;
    }
  }

  io_uring& ring_;
  std::mutex m_;
  std::condition_variable idle_;
  size_t in_flight_ = 0;
};

class UringProvider;

class UringFile final : public PosixFile {
 public:
  UringFile(std::shared_ptr<Fd> fd, boost::asio::any_io_executor ex, boost::asio::thread_pool& pool, Ring& ring)
      : PosixFile(std::move(fd), std::move(ex), pool), ring_(ring) {}

  void async_read(IoKind kind, uint64_t offset, std::span<std::byte> buf, Completion done) override {
    if (buf.empty() || !fd_->aligned(offset, buf.size(), buf.data()) || buf.size() > (1u << 30) ||
        check_span(*fd_, "read", offset, buf.size()))
      return PosixFile::async_read(kind, offset, buf, std::move(done));
    // On tmpfs a read is a copy: done here it costs less than the ring, which hands
    // tmpfs reads to its worker threads (no RWF_NOWAIT there).
    if (fd_->in_memory && read_nowait(offset, buf)) return post_done(std::move(done), {});
    start(Op::Kind::read, buf.data(), offset, buf.size(), false, std::move(done),
          [&](Completion d) { PosixFile::async_read(kind, offset, buf, std::move(d)); });
  }
  void async_write(IoKind kind, uint64_t offset, std::span<const std::byte> buf, Completion done) override {
    if (buf.empty() || !fd_->aligned(offset, buf.size(), buf.data()) || buf.size() > (1u << 30) ||
        check_span(*fd_, "write", offset, buf.size()))
      return PosixFile::async_write(kind, offset, buf, std::move(done));
    // O_DIRECT: the blocks must not be in a read-modify-write (host/io_fd.h).
    const bool hold = fd_->align != 0;
    if (hold && !try_acquire_write(*fd_, offset, buf.size()))
      return PosixFile::async_write(kind, offset, buf, std::move(done));
    start(Op::Kind::write, const_cast<std::byte*>(buf.data()), offset, buf.size(), hold, std::move(done),
          [&](Completion d) {
            if (hold) release_write(*fd_, offset, buf.size());
            PosixFile::async_write(kind, offset, buf, std::move(d));
          });
  }
  void async_flush(Completion done) override {
    if (fd_->no_flush) return post_done(std::move(done), {});
    count_flush();
    start(Op::Kind::flush, nullptr, 0, 0, false, std::move(done),
          [&](Completion d) { PosixFile::async_flush(std::move(d)); });
  }
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override {
    if (length == 0 || check_span(*fd_, "allocate", offset, length))
      return PosixFile::async_allocate(offset, length, std::move(done));
    start(Op::Kind::allocate, nullptr, offset, length, false, std::move(done),
          [&](Completion d) { PosixFile::async_allocate(offset, length, std::move(d)); });
  }

 private:
  template <class Fallback>
  void start(Op::Kind kind, std::byte* buf, uint64_t offset, uint64_t len, bool hold, Completion done,
             Fallback&& fallback) {
    auto* op = new Op{kind, fd_, buf, offset, len, 0, hold, {}, std::move(done),
                      boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked)};
    if (ring_.submit(op)) return;
    Completion cb = std::move(op->cb);
    op->holds_range = false;
    delete op;
    fallback(std::move(cb));  // the ring is full: the pool does it
  }

  Ring& ring_;
};

class UringProvider final : public PosixIoProvider {
 public:
  // ok() tells whether the kernel gave a ring.
  UringProvider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool)
      : PosixIoProvider(ex, pool), ex_(std::move(ex)), pool_(pool), ring_(raw_) {
    ok_ = io_uring_queue_init(kRingEntries, &raw_, 0) == 0;
    if (ok_) reaper_ = std::thread([this] { reap(); });
  }
  ~UringProvider() override {
    if (!ok_) return;
    ring_.wait_idle();
    stop_ = true;
    ring_.wake();
    reaper_.join();
    io_uring_queue_exit(&raw_);
  }
  bool ok() const { return ok_; }

  Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) override {
    auto fd = open_fd(path, mode);
    if (!fd) return fd.error();
    // The pool does an O_DIRECT file's unaligned requests and discards: its own (io_posix.cpp).
    auto& pool = pool_for((*fd)->align != 0);
    return std::unique_ptr<File>(std::make_unique<UringFile>(std::move(*fd), ex_, pool, ring_));
  }

 private:
  // Takes completions off the ring until stopped; finished operations of one pass are
  // posted as one handler.
  void reap() {
    while (true) {
      io_uring_cqe* first = nullptr;
      int r = io_uring_wait_cqe(&raw_, &first);
      if (r == -EINTR) continue;
      if (r < 0) {
        if (stop_) return;
        continue;
      }
      Batch finished;
      bool woken = false;
      {
        std::lock_guard lock(cq_m_);
        take(finished, woken);
      }
      if (!finished.empty()) deliver(std::move(finished));
      if (woken && stop_) return;
    }
  }

  using Batch = std::vector<std::unique_ptr<Op>>;

  // Takes what the completion queue holds (under cq_m_): finished operations into `out`.
  void take(Batch& out, bool& woken) {
    io_uring_cqe* cqes[kMaxBatch];
    const unsigned n = io_uring_peek_batch_cqe(&raw_, cqes, kMaxBatch);
    for (unsigned i = 0; i < n; ++i) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqes[i]));
      const int res = cqes[i]->res;
      io_uring_cqe_seen(&raw_, cqes[i]);
      if (!op) {
        woken = true;
        continue;
      }
      // Counted done only after a resubmit counted it again: the destructor must never
      // see an idle ring while an operation goes round.
      const bool fin = progress(*op, res);
      ring_.completed();
      if (fin) out.emplace_back(op);
    }
  }

  static void release(Batch& ops) {
    for (auto& op : ops) {
      if (op->holds_range) release_write(*op->fd, op->offset, op->len);
      op->holds_range = false;
      op->fd.reset();  // closed once the File is gone too (see PosixFile::submit)
    }
  }

  static void run(Batch& ops) {
    for (auto& op : ops) {
      Completion cb = std::move(op->cb);
      Error e = std::move(op->err);
      op.reset();
      cb(std::move(e));
    }
  }

  // Posts a batch to the executor. Once it has run, the executor takes whatever else has
  // completed meanwhile itself (a few rounds at most, so other handlers get their turn):
  // under load that saves the reaper's wake-up and a thread hop per completion.
  void deliver(Batch ops) {
    release(ops);
    Tracked work = ops.front()->work;
    boost::asio::post(work, [this, batch = std::move(ops)]() mutable {
      run(batch);
      for (int round = 0; round < 4; ++round) {
        Batch more;
        bool woken = false;
        {
          std::unique_lock lock(cq_m_, std::try_to_lock);
          if (!lock.owns_lock()) return;
          take(more, woken);
        }
        if (woken) ring_.wake();  // the reaper's, not ours: hand it back
        if (more.empty()) return;
        release(more);
        run(more);
      }
    });
  }

  // Accounts one completion of `op`; true when it is done, false when it went back on the
  // ring (a short transfer, EINTR/EAGAIN) or to the pool.
  bool progress(Op& op, int res) {
    const char* what = op.kind == Op::Kind::read ? "read" : op.kind == Op::Kind::write ? "write"
                       : op.kind == Op::Kind::flush ? "flush" : "allocate";
    if (res == -EINTR || res == -EAGAIN) return !resubmit(op);
    if (res < 0) {
      if (op.kind == Op::Kind::allocate && (res == -EOPNOTSUPP || res == -EINVAL || res == -ENOSYS)) {
        to_pool_allocate(op);
        return false;
      }
      op.err = Error::from_errno(-res, what, op.fd->path, op.kind == Op::Kind::flush ? std::optional<uint64_t>()
                                                                                      : op.offset + op.done);
      return true;
    }
    if (op.kind == Op::Kind::read || op.kind == Op::Kind::write) {
      op.done += static_cast<uint64_t>(res);
      if (op.done >= op.len) return true;
      const bool unaligned_rest = op.fd->align && (op.offset + op.done) % op.fd->align;
      if (op.kind == Op::Kind::read && (res == 0 || unaligned_rest)) {
        std::memset(op.buf + op.done, 0, op.len - op.done);  // end of file: zeros
        return true;
      }
      if (op.kind == Op::Kind::write && (res == 0 || unaligned_rest)) {
        op.err = Error::from_errno(ENOSPC, "write", op.fd->path, op.offset + op.done);
        return true;
      }
      return !resubmit(op);
    }
    return true;
  }

  // Back on the ring; false (with the error set) if that fails.
  bool resubmit(Op& op) {
    if (ring_.submit(&op)) return true;
    op.err = Error(Errc::io, "the io_uring submission queue stays full").image(op.fd->path);
    return false;
  }

  void to_pool_allocate(Op& op) {
    boost::asio::post(pool_, [this, op = &op]() {
      op->err = allocate_fd(*op->fd, op->offset, op->len);
      Batch one;
      one.emplace_back(op);
      deliver(std::move(one));
    });
  }

  void deliver(std::vector<Op*>& ops) {
    for (Op* op : ops) {
      if (op->holds_range) release_write(*op->fd, op->offset, op->len);
      op->holds_range = false;
      op->fd.reset();  // closed once the File is gone too (see PosixFile::submit)
    }
    Tracked work = ops.front()->work;
    boost::asio::post(work, [batch = std::move(ops)]() {
      for (Op* op : batch) {
        Completion cb = std::move(op->cb);
        Error e = std::move(op->err);
        delete op;
        cb(std::move(e));
      }
    });
    ops = {};
  }

  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
  io_uring raw_{};
  std::mutex cq_m_;  // one consumer of the completion queue at a time
  Ring ring_;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::thread reaper_;
};

}  // namespace

std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool) {
  // A kernel without io_uring (or a seccomp filter refusing it) gives no ring: threads then.
  auto p = std::make_unique<UringProvider>(std::move(ex), pool);
  if (!p->ok()) return nullptr;
  return p;
}

}  // namespace vd::detail
