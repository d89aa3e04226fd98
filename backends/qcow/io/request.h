// Request: what every multi-step request class of the QCOW data path shares.
//
//   start() --> first step --> ... --> finish(e) --> the caller's completion, exactly once
//
// - One owner: the request lives in a shared_ptr that each pending step's handler holds
//   (shared_from_this); when the last handler has run, it is gone. The object and the
//   shared_ptr's control block are recycled (backends/common/recycle.h): a request costs no
//   heap allocation once warm. A step on the hot path may hold it in a member instead and give
//   its handler only `this` (small enough for std::function's inline buffer).
// - One exit: finish(e) runs the completion once; a second finish is a bug (asserted in
//   debug builds, ignored otherwise).
// - Never inside the initiating call (Asio's rule for composed operations): a request that
//   finishes while start() is still on the stack — an invalid argument, a refused overlap,
//   a failed allocation before any I/O — has its completion posted to the executor, so a
//   caller holding a lock or walking a list when it starts a request is never re-entered.
//   Finishing later (from an I/O completion) runs the completion directly.
#pragma once

#include <cassert>
#include <memory>
#include <utility>

#include "backends/common/recycle.h"
#include "vd/io.h"

namespace vd::qcow {

template <class Derived>
class Request : public std::enable_shared_from_this<Derived>, public detail::Recycled<Derived> {
 public:
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

 protected:
  Request(IoProvider& io, Completion done) : io_(io), done_(std::move(done)) {}
  ~Request() = default;

  // Creates the request and runs `first` on it; the static start() of each class calls this.
  template <class... Args>
  static void launch(void (Derived::*first)(), IoProvider& io, Args&&... args) {
    std::shared_ptr<Derived> r(new Derived(io, std::forward<Args>(args)...), std::default_delete<Derived>(),
                               detail::RecyclingAllocator<Derived>());
    r->starting_ = true;
    ((*r).*first)();
    r->starting_ = false;
  }

  // The only exit.
  void finish(Error e) {
    assert(done_ && "a request finished twice");
    if (!done_) return;
    Completion done = std::move(done_);
    done_ = nullptr;
    if (starting_) return io_.post([done = std::move(done), e = std::move(e)] { done(e); });
    done(e);
  }

  // Passes the completion on to another request that takes over (it then runs it, once).
  Completion hand_over() {
    Completion done = std::move(done_);
    done_ = nullptr;
    return done;
  }

  bool finished() const { return !done_; }
  IoProvider& io() { return io_; }

 private:
  IoProvider& io_;
  Completion done_;
  bool starting_ = false;
};

}  // namespace vd::qcow
