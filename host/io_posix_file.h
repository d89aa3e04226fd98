// The thread-pool File (host/io_posix.cpp), shared with the io_uring provider, which hands
// it what the ring does not do (discard, set_size, extents, unaligned O_DIRECT writes).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/require.hpp>
#include <cstddef>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "backends/common/recycle.h"
#include "host/io_fd.h"
#include "vd/io.h"

namespace vd {

namespace detail {

// One blocking call's trip to the pool and back, with no heap allocation once warm: the
// object is recycled on the thread that submits and completes it (the executor's), and the
// two Asio operations that carry it to the pool and back (never both alive: Asio frees an
// operation before running its handler) are built in its `slot_`, through the handlers'
// associated allocator. Asio's own recycling cannot do this across threads: the pool thread
// would free what the executor's thread allocated, and the other way round.
//
// The completion goes straight to the io_context when the executor is one (the Runtime's),
// holding its work as that executor type; any other executor is posted to through
// any_io_executor (whose wrapper Asio allocates, recycled per thread).
template <class Job>
class PoolOp final : public Recycled<PoolOp<Job>> {
 public:
  PoolOp(std::shared_ptr<Fd> fd, Job job, Completion done)
      : fd_(std::move(fd)), job_(std::move(job)), done_(std::move(done)) {}

  static void start(PoolOp* op, const boost::asio::any_io_executor& ex, boost::asio::thread_pool& pool) {
    if (auto* io = ex.target<IoExec>()) {
      op->io_work_.emplace(boost::asio::require(*io, boost::asio::execution::outstanding_work.tracked));
    } else {
      // Tracked, so the io_context does not run out of work while the job is on the pool.
      op->any_work_ = boost::asio::prefer(ex, boost::asio::execution::outstanding_work.tracked);
    }
    boost::asio::post(pool, Handler<&PoolOp::run>{op});
  }

 private:
  using IoExec = boost::asio::io_context::executor_type;
  using TrackedIo = std::decay_t<decltype(boost::asio::require(
      std::declval<const IoExec&>(), boost::asio::execution::outstanding_work.tracked))>;

  // Owns the op until it runs it: an operation Asio destroys unrun (its io_context shut
  // down) frees the op, and with it the completion and the file.
  template <void (PoolOp::*Fn)()>
  struct Handler {
    PoolOp* op;
    explicit Handler(PoolOp* o) noexcept : op(o) {}
    Handler(Handler&& o) noexcept : op(std::exchange(o.op, nullptr)) {}
    Handler& operator=(Handler&&) = delete;
    ~Handler() { delete op; }
    using allocator_type = SlotAllocator<void>;
    allocator_type get_allocator() const noexcept { return {op->slot_, sizeof op->slot_}; }
    void operator()() { (std::exchange(op, nullptr)->*Fn)(); }
  };

  // On the pool.
  void run() {
    result_ = job_(*fd_);
    // Let go of the file before its completion runs: a File destroyed once its requests
    // completed is closed then, and its image locks with it (a reopen right after a close
    // must not find them still held by a job the pool has yet to destroy).
    fd_.reset();
    // Nothing of this may be touched once the completion is posted: it may run at once.
    if (io_work_) {
      TrackedIo work = std::move(*io_work_);
      io_work_.reset();
      boost::asio::post(work, Handler<&PoolOp::complete>{this});
    } else {
      boost::asio::any_io_executor work = std::move(any_work_);
      any_work_ = {};
      boost::asio::post(work, Handler<&PoolOp::complete>{this});
    }
  }

  // On the completion executor: frees this, then completes.
  void complete() {
    Completion done = std::move(done_);
    Error e = std::move(result_);
    delete this;
    done(std::move(e));
  }

  std::shared_ptr<Fd> fd_;
  Job job_;
  Completion done_;
  Error result_;
  std::optional<TrackedIo> io_work_;
  boost::asio::any_io_executor any_work_;
  alignas(std::max_align_t) std::byte slot_[128];
};

// Posts `fn` to `ex` with no heap allocation once warm: `fn` waits in a recycled object that
// also holds the Asio operation (see PoolOp). Straight to the io_context when `ex` is one.
template <class Fn>
void post_recycled(const boost::asio::any_io_executor& ex, Fn fn) {
  struct Posted final : Recycled<Posted> {
    explicit Posted(Fn f) : fn(std::move(f)) {}
    Fn fn;
    alignas(std::max_align_t) std::byte slot[128];
  };
  struct Handler {  // owns `p` until it runs (see PoolOp::Handler)
    Posted* p;
    explicit Handler(Posted* o) noexcept : p(o) {}
    Handler(Handler&& o) noexcept : p(std::exchange(o.p, nullptr)) {}
    Handler& operator=(Handler&&) = delete;
    ~Handler() { delete p; }
    using allocator_type = SlotAllocator<void>;
    allocator_type get_allocator() const noexcept { return {p->slot, sizeof p->slot}; }
    void operator()() {
      Fn f = std::move(p->fn);
      delete std::exchange(p, nullptr);
      f();
    }
  };
  auto* p = new Posted(std::move(fn));
  if (auto* io = ex.target<boost::asio::io_context::executor_type>()) return boost::asio::post(*io, Handler{p});
  boost::asio::post(ex, Handler{p});
}

}  // namespace detail

class PosixFile : public File {
 public:
  PosixFile(std::shared_ptr<detail::Fd> fd, boost::asio::any_io_executor ex, boost::asio::thread_pool& pool);

  const std::string& path() const override;
  Result<uint64_t> size() override;
  Error set_size(uint64_t size) override;
  Result<uint64_t> allocated_size() override;
  Result<FileExtent> extent_at(uint64_t offset) override;
  Error read(IoKind, uint64_t offset, std::span<std::byte> buf) override;
  Error write(IoKind, uint64_t offset, std::span<const std::byte> buf) override;
  Error flush() override;
  Error discard(uint64_t offset, uint64_t length) override;
  Error allocate(uint64_t offset, uint64_t length) override;

  void async_read(IoKind, uint64_t offset, std::span<std::byte> buf, Completion done) override;
  void async_write(IoKind, uint64_t offset, std::span<const std::byte> buf, Completion done) override;
  void async_flush(Completion done) override;
  void async_discard(uint64_t offset, uint64_t length, Completion done) override;
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override;
  void async_set_size(uint64_t size, Completion done) override;
  void async_extent_at(uint64_t offset, ExtentCompletion done) override;

 protected:
  // Runs `job` on the pool, then posts `done` with its result to the completion executor.
  template <class Job>
  void submit(Job job, Completion done) {
    detail::PoolOp<Job>::start(new detail::PoolOp<Job>(fd_, std::move(job), std::move(done)), ex_, pool_);
  }
  void post_done(Completion done, Error e);
  bool read_nowait(uint64_t offset, std::span<std::byte> buf);

  std::shared_ptr<detail::Fd> fd_;
  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
};

}  // namespace vd
