// The ring under the io_uring provider (host/io_uring.cpp): one Linux io_uring, its
// registered file table, and the executor-side loop that takes completions off it.
//
// Completions are reaped on the completion executor itself, as qemu's event loop does
// (util/aio-posix.c): a poll handler looks at the completion queue (memory shared with the
// kernel, no system call), runs the callbacks of what finished and, while requests are in
// flight, defers itself to look again, letting every other handler of the executor run in
// between. A completion then costs no thread hop and no wake-up. Only when nothing has
// completed for the poll window does the handler stop and wait for the ring's eventfd on
// the executor's reactor; the kernel signals that eventfd only while the loop sleeps
// (IORING_CQ_EVENTFD_DISABLED otherwise), so a busy ring costs the kernel nothing extra.
// The window adapts as qemu's polling does: it grows (up to UringSetup::poll_us) when a
// completion woke the loop soon after it slept, and drops to nothing when the sleep was
// long, so a slow device or a machine whose CPUs are taken is not polled for nothing.
//
// Threads: any thread may submit (the submission queue, the free operation records and the
// loop's state are under m_); exactly one poll handler exists while the loop polls (the
// state `watch_` says who looks at the completion queue next), and the completion queue is
// read under cq_m_ (the destructor reaps there too when no thread runs the executor).
//
// Lifetime: handlers posted to the executor co-own the ring, so they may outlive the
// provider; close() (the provider's destructor) waits for every request on the ring, posts
// the completions of those it reaps itself and drops the eventfd's descriptor while the
// executor's context still exists. An operation co-owns its Fd until it finished.
#pragma once

#include <liburing.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "host/io_fd.h"
#include "host/io_uring.h"
#include "vd/io.h"

namespace vd::detail {

// One request on the ring. Records are reused (a free list in the ring): no allocation per
// request once the ring has seen its deepest queue.
struct UringOp {
  enum class Kind : uint8_t { read, write, flush, allocate };
  Kind kind = Kind::read;
  bool holds_range = false;  // an O_DIRECT write holding its blocks (host/io_fd.h)
  int slot = -1;             // the file's registered slot, or -1: its descriptor
  std::shared_ptr<Fd> fd;
  std::byte* buf = nullptr;
  uint64_t offset = 0;
  uint64_t len = 0;   // bytes to transfer, or the range to allocate
  uint64_t done = 0;  // bytes transferred so far
  Error err;
  Completion cb;
  UringOp* next = nullptr;  // the free list, or a list of finished operations
};

class UringRing : public std::enable_shared_from_this<UringRing> {
 public:
  // nullptr when the kernel gives no ring.
  static std::shared_ptr<UringRing> create(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool,
                                           const UringSetup& setup);
  ~UringRing();
  UringRing(const UringRing&) = delete;
  UringRing& operator=(const UringRing&) = delete;

  // Puts a request on the ring. False when the submission queue stays full: `done` is then
  // untouched and the caller does the request another way.
  bool submit(UringOp::Kind kind, const std::shared_ptr<Fd>& fd, int slot, std::byte* buf, uint64_t offset,
              uint64_t len, bool holds_range, Completion& done);

  // A registered slot for `f` (freed just before it closes), or -1 when none is left. For
  // files without image locks only (see UringProvider::open).
  int attach(Fd& f);

  // Waits for every request on the ring (see the top of this file); nothing is submitted after.
  void close();

  UringStats stats();

 private:
  using Clock = std::chrono::steady_clock;
  enum class Watch : uint8_t { none, polling, sleeping };
  struct List {
    UringOp* head = nullptr;
    UringOp* tail = nullptr;
    void push(UringOp* op);
  };

  UringRing(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool, std::chrono::microseconds window);
  bool init(const UringSetup& setup);

  // Under m_.
  bool push_locked(UringOp* op);
  void start_watch_locked();
  void sleep_locked();
  void recycle_locked(UringOp* op);

  // The executor's loop.
  void poll(bool fresh);
  void woken(const boost::system::error_code& ec);

  // Under cq_m_: takes what the completion queue holds, finished operations onto `out`;
  // returns how many completions of operations it consumed.
  unsigned reap(List& out);
  bool progress(UringOp& op, int res);
  bool resubmit(UringOp& op);
  void to_pool_allocate(UringOp* op);
  // Lets go of the blocks and the file, then runs the callback.
  static void finish(UringOp& op);
  void detach(const Fd& f, int slot);

  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
  const std::chrono::microseconds max_window_;
  io_uring ring_{};
  bool ring_ok_ = false;
  unsigned flags_ = 0;

  std::mutex m_;
  size_t in_flight_ = 0;  // submissions whose completion has not been reaped
  Watch watch_ = Watch::none;
  bool waiting_ = false;  // an async_wait on the eventfd is pending
  bool closing_ = false;
  UringOp* free_ = nullptr;
  uint64_t ops_made_ = 0;
  uint64_t sleeps_ = 0;
  std::optional<boost::asio::posix::stream_descriptor> efd_;

  std::mutex cq_m_;
  // The poll handler's (whoever holds the loop: see `watch_`): when it last saw a
  // completion, how long it polls after that, when it last went to sleep.
  Clock::time_point last_{};
  Clock::duration window_{};
  Clock::time_point slept_at_{};

  std::mutex slot_m_;
  unsigned table_size_ = 0;
  std::vector<int> free_slots_;
};

}  // namespace vd::detail
