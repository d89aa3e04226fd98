// The ring under the io_uring provider: submission, the executor-side completion loop and
// the registered file table (see host/io_uring_ring.h).
#include "host/io_uring_ring.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/defer.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "vd/runtime.h"

namespace vd::detail {
namespace {

constexpr unsigned kEntries = 256;
// Room for a deep queue's completions: past it the kernel keeps them on its overflow list,
// which costs a system call to flush.
constexpr unsigned kCqEntries = 1024;
constexpr unsigned kMaxBatch = 64;
// Where a growing window starts.
constexpr std::chrono::microseconds kFirstWindow{4};

const char* name_of(UringOp::Kind k) {
  switch (k) {
    case UringOp::Kind::read: return "read";
    case UringOp::Kind::write: return "write";
    case UringOp::Kind::flush: return "flush";
    case UringOp::Kind::allocate: return "allocate";
  }
  return "io";
}

void prep(io_uring_sqe* sqe, const UringOp& op) {
  const int fd = op.slot >= 0 ? op.slot : op.fd->fd;
  switch (op.kind) {
    case UringOp::Kind::read:
      io_uring_prep_read(sqe, fd, op.buf + op.done, static_cast<unsigned>(op.len - op.done), op.offset + op.done);
      break;
    case UringOp::Kind::write:
      io_uring_prep_write(sqe, fd, op.buf + op.done, static_cast<unsigned>(op.len - op.done), op.offset + op.done);
      break;
    case UringOp::Kind::flush:
      io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
      break;
    case UringOp::Kind::allocate:
      io_uring_prep_fallocate(sqe, fd, 0, op.offset, op.len);
      break;
  }
  if (op.slot >= 0) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data(sqe, const_cast<UringOp*>(&op));
}

}  // namespace

void UringRing::List::push(UringOp* op) {
  op->next = nullptr;
  if (tail) tail->next = op;
  else head = op;
  tail = op;
}

UringRing::UringRing(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool, std::chrono::microseconds window)
    : ex_(std::move(ex)), pool_(pool), max_window_(window) {}

std::shared_ptr<UringRing> UringRing::create(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool,
                                             const UringSetup& setup) {
  std::shared_ptr<UringRing> r(new UringRing(std::move(ex), pool, std::chrono::microseconds(setup.poll_us)));
  if (!r->init(setup)) return nullptr;
  return r;
}

bool UringRing::init(const UringSetup& setup) {
  auto try_flags = [&](unsigned flags) {
    io_uring_params p{};
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = kCqEntries;
    const int r = io_uring_queue_init_params(kEntries, &ring_, &p);
    if (r == 0) flags_ = flags;
    return r;
  };
  const unsigned want = setup.flags;
  int r = try_flags(want);
  if (r == -EINVAL && want) r = try_flags(0);  // a kernel older than the flags
  if (r < 0) return false;
  ring_ok_ = true;

  // The eventfd the loop sleeps on; the kernel signals it only while the loop sleeps.
  const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return false;
  if (io_uring_register_eventfd(&ring_, efd) < 0) {
    ::close(efd);
    return false;
  }
  try {
    efd_.emplace(ex_, efd);
  } catch (const std::exception&) {  // an executor whose context has no reactor
    ::close(efd);
    return false;
  }
  io_uring_cq_eventfd_toggle(&ring_, false);  // a kernel before 5.8 signals always: slower, same result

  // The registered file table: a request naming a slot spares the kernel looking the
  // descriptor up and taking a reference to the file (atomic: the process has threads).
  const unsigned files = setup.fixed_files;
  if (files) {
    int fr = io_uring_register_files_sparse(&ring_, files);
    if (fr < 0) {  // before Linux 5.19: a table of empty entries
      std::vector<int> empty(files, -1);
      fr = io_uring_register_files(&ring_, empty.data(), files);
    }
    if (fr == 0) {
      table_size_ = files;
      for (unsigned i = table_size_; i-- > 0;) free_slots_.push_back(static_cast<int>(i));
    }
  }
  return true;
}

UringRing::~UringRing() {
  while (free_) {
    UringOp* next = free_->next;
    delete free_;
    free_ = next;
  }
  efd_.reset();
  if (ring_ok_) io_uring_queue_exit(&ring_);
}

bool UringRing::submit(UringOp::Kind kind, const std::shared_ptr<Fd>& fd, int slot, std::byte* buf, uint64_t offset,
                       uint64_t len, bool holds_range, Completion& done) {
  std::lock_guard lock(m_);
  UringOp* op = free_;
  if (op) {
    free_ = op->next;
  } else {
    op = new UringOp;
    ++ops_made_;
  }
  op->kind = kind;
  op->holds_range = holds_range;
  op->slot = slot;
  op->fd = fd;
  op->buf = buf;
  op->offset = offset;
  op->len = len;
  op->done = 0;
  op->cb = std::move(done);
  if (push_locked(op)) return true;
  done = std::move(op->cb);
  op->holds_range = false;
  recycle_locked(op);
  return false;
}

bool UringRing::push_locked(UringOp* op) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return false;
  }
  prep(sqe, *op);
  ++in_flight_;
  io_counters().uring_ops++;
  // At once, as qemu does: batching submissions per loop turn was measured slower
  // (docs/benchmarks.md). A refused submission (EBUSY/EAGAIN) stays queued and the loop
  // submits it again.
  int r;
  do r = io_uring_submit(&ring_);
  while (r == -EINTR);
  start_watch_locked();
  return true;
}

void UringRing::recycle_locked(UringOp* op) {
  op->fd.reset();
  op->cb = nullptr;
  op->err = {};
  op->next = free_;
  free_ = op;
}

void UringRing::start_watch_locked() {
  if (watch_ != Watch::none) return;  // the loop polls, or sleeps until the eventfd
  watch_ = Watch::polling;
  boost::asio::post(ex_, [self = shared_from_this()] { self->poll(true); });
}

void UringRing::finish(UringOp& op) {
  if (op.holds_range) release_write(*op.fd, op.offset, op.len);
  op.holds_range = false;
  op.fd.reset();  // closed once the File is gone too (see PosixFile::submit)
  Completion cb = std::move(op.cb);
  Error e = std::move(op.err);
  op.err = {};
  cb(std::move(e));
}

// One turn of the executor's loop (the only poll handler: see `watch_`).
void UringRing::poll(bool fresh) {
  List done;
  unsigned seen = 0;
  if (cq_m_.try_lock()) {  // else close() reaps
    seen = reap(done);
    cq_m_.unlock();
  }
  if (seen) {
    // Counted out before the callbacks run: one of them may destroy the provider, whose
    // close() waits for the ring to have nothing in flight.
    std::lock_guard lock(m_);
    in_flight_ -= seen;
  }
  for (UringOp* op = done.head; op; op = op->next) finish(*op);
  const auto now = Clock::now();
  if (fresh || seen) last_ = now;

  std::lock_guard lock(m_);
  for (UringOp* op = done.head; op;) {
    UringOp* next = op->next;
    recycle_locked(op);
    op = next;
  }
  if (io_uring_sq_ready(&ring_)) io_uring_submit(&ring_);  // one the kernel refused before
  if (in_flight_ == 0) {
    watch_ = Watch::none;
    if (waiting_ && efd_) efd_->cancel();  // the executor must be able to run out of work
    return;
  }
  if (closing_ || now - last_ < window_) {
    boost::asio::defer(ex_, [self = shared_from_this()] { self->poll(false); });
    return;
  }
  sleep_locked();
}

// Nothing completed for the poll window: wait for the eventfd on the executor's reactor.
void UringRing::sleep_locked() {
  watch_ = Watch::sleeping;
  ++sleeps_;
  slept_at_ = Clock::now();
  if (!waiting_) {
    waiting_ = true;
    efd_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                     [self = shared_from_this()](const boost::system::error_code& ec) { self->woken(ec); });
  }
  io_uring_cq_eventfd_toggle(&ring_, true);
  // A completion posted before the kernel saw the eventfd enabled signals nothing: look
  // once more after enabling it (the fence orders our flag store before the tail load; the
  // kernel's side posts the tail before it reads the flag).
  // Completions the kernel holds back (its overflow list past kCqEntries, task work under
  // COOP_TASKRUN) signal nothing either: peeking posts them, so poll instead of sleeping.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const unsigned held = IO_URING_READ_ONCE(*ring_.sq.kflags) & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN);
  if (io_uring_cq_ready(&ring_) || held) {
    io_uring_cq_eventfd_toggle(&ring_, false);
    watch_ = Watch::polling;
    boost::asio::defer(ex_, [self = shared_from_this()] { self->poll(true); });
  }
}

void UringRing::woken(const boost::system::error_code& ec) {
  {
    std::lock_guard lock(m_);
    waiting_ = false;
    if (ec || !efd_ || watch_ != Watch::sleeping) return;  // cancelled, or the loop polls already
    watch_ = Watch::polling;
    io_uring_cq_eventfd_toggle(&ring_, false);
    uint64_t count;
    [[maybe_unused]] auto n = ::read(efd_->native_handle(), &count, sizeof count);
  }
  // A wake-up soon after the sleep: polling that much longer would have saved it.
  const auto slept = Clock::now() - slept_at_;
  if (slept <= max_window_)
    window_ = std::min<Clock::duration>(max_window_, std::max<Clock::duration>(kFirstWindow, window_ * 2));
  else
    window_ = {};
  poll(true);
}

unsigned UringRing::reap(List& out) {
  io_uring_cqe* cqes[kMaxBatch];
  const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kMaxBatch);
  UringOp* ops[kMaxBatch];
  int res[kMaxBatch];
  unsigned mine = 0;
  for (unsigned i = 0; i < n; ++i) {
    // A kernel before 5.11 has close()'s wait put a timeout of liburing's own on the ring.
    if (cqes[i]->user_data == LIBURING_UDATA_TIMEOUT) continue;
    ops[mine] = static_cast<UringOp*>(io_uring_cqe_get_data(cqes[i]));
    res[mine++] = cqes[i]->res;
  }
  io_uring_cq_advance(&ring_, n);
  for (unsigned i = 0; i < mine; ++i)
    if (progress(*ops[i], res[i])) out.push(ops[i]);
  return mine;
}

// Accounts one completion of `op`; true when it is done, false when it went back on the
// ring (a short transfer, EINTR/EAGAIN) or to the pool.
bool UringRing::progress(UringOp& op, int res) {
  if (res == -EINTR || res == -EAGAIN) return !resubmit(op);
  if (res < 0) {
    if (op.kind == UringOp::Kind::allocate && (res == -EOPNOTSUPP || res == -EINVAL || res == -ENOSYS)) {
      to_pool_allocate(&op);
      return false;
    }
    op.err = Error::from_errno(-res, name_of(op.kind), op.fd->path,
                               op.kind == UringOp::Kind::flush ? std::optional<uint64_t>() : op.offset + op.done);
    return true;
  }
  if (op.kind == UringOp::Kind::read || op.kind == UringOp::Kind::write) {
    op.done += static_cast<uint64_t>(res);
    if (op.done >= op.len) return true;
    const bool unaligned_rest = op.fd->align && (op.offset + op.done) % op.fd->align;
    if (op.kind == UringOp::Kind::read && (res == 0 || unaligned_rest)) {
      std::memset(op.buf + op.done, 0, op.len - op.done);  // end of file: zeros
      return true;
    }
    if (op.kind == UringOp::Kind::write && (res == 0 || unaligned_rest)) {
      op.err = Error::from_errno(ENOSPC, "write", op.fd->path, op.offset + op.done);
      return true;
    }
    return !resubmit(op);
  }
  return true;
}

// Back on the ring; false (with the error set) if that fails.
bool UringRing::resubmit(UringOp& op) {
  std::lock_guard lock(m_);
  if (push_locked(&op)) return true;
  op.err = Error(Errc::io, "the io_uring submission queue stays full").image(op.fd->path);
  return false;
}

// A file system without fallocate through the ring: the pool emulates it. The job keeps
// the executor's work tracked until its completion is posted.
void UringRing::to_pool_allocate(UringOp* op) {
  auto work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
  boost::asio::post(pool_, [self = shared_from_this(), op, work = std::move(work)]() mutable {
    op->err = allocate_fd(*op->fd, op->offset, op->len);
    boost::asio::post(work, [self = std::move(self), op] {
      finish(*op);
      std::lock_guard lock(self->m_);
      self->recycle_locked(op);
    });
  });
}

void UringRing::close() {
  {
    std::lock_guard lock(m_);
    closing_ = true;
  }
  // The executor may not run any more (a Runtime being destroyed): reap here, and post the
  // completions, which run if it does and are destroyed with its context otherwise.
  while (true) {
    List done;
    unsigned seen = 0;
    {
      std::lock_guard cq(cq_m_);
      {
        std::lock_guard lock(m_);
        if (in_flight_ == 0) break;
      }
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 10'000'000};
      io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      seen = reap(done);
    }
    {
      std::lock_guard lock(m_);
      in_flight_ -= seen;
    }
    for (UringOp* op = done.head; op;) {
      UringOp* next = op->next;
      if (op->holds_range) release_write(*op->fd, op->offset, op->len);
      op->holds_range = false;
      op->fd.reset();
      // Owns the record: back to the free list whether the handler runs or is destroyed.
      struct Owned {
        std::shared_ptr<UringRing> ring;
        UringOp* op;
        Owned(std::shared_ptr<UringRing> r, UringOp* o) : ring(std::move(r)), op(o) {}
        Owned(Owned&& o) noexcept : ring(std::move(o.ring)), op(std::exchange(o.op, nullptr)) {}
        ~Owned() {
          if (!op) return;
          std::lock_guard lock(ring->m_);
          ring->recycle_locked(op);
        }
      };
      boost::asio::post(ex_, [owned = Owned(shared_from_this(), op)]() mutable {
        Completion cb = std::move(owned.op->cb);
        Error e = std::move(owned.op->err);
        cb(std::move(e));
      });
      op = next;
    }
  }
  std::lock_guard lock(m_);
  if (watch_ == Watch::sleeping) watch_ = Watch::none;
  efd_.reset();  // cancels a pending wait; its handler only drops its reference
}

int UringRing::attach(Fd& f) {
  std::lock_guard lock(slot_m_);
  if (free_slots_.empty()) return -1;
  const int slot = free_slots_.back();
  int fd = f.fd;
  if (io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &fd, 1) != 1) return -1;
  free_slots_.pop_back();
  f.before_close = [ring = weak_from_this(), slot](const Fd& f) {
    if (auto r = ring.lock()) r->detach(f, slot);
  };
  return slot;
}

void UringRing::detach(const Fd&, int slot) {
  int none = -1;
  std::lock_guard lock(slot_m_);
  if (io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &none, 1) == 1)
    free_slots_.push_back(slot);
}

UringStats UringRing::stats() {
  UringStats s;
  s.flags = flags_;
  {
    std::lock_guard lock(m_);
    s.ops_made = ops_made_;
    s.sleeps = sleeps_;
  }
  std::lock_guard lock(slot_m_);
  s.table_size = table_size_;
  s.slots_used = table_size_ - static_cast<unsigned>(free_slots_.size());
  return s;
}

}  // namespace vd::detail
