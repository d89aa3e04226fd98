// Internals of vd::Disk shared by host/disk.cpp, host/disk_chain.cpp and host/disk_open.cpp.
//
// Ownership: the Disk and every request in flight share the Impl, which owns a ChainState,
// which owns the images (top first). The ParentReaders attached to the images hold a plain
// pointer to that ChainState: an image holding a shared_ptr to the chain that owns it would
// be a cycle; the Impl outlives every request, so the images and the chain do too.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "vd/backend.h"
#include "vd/disk.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>

namespace vd::detail {

struct ChainState {
  // The cache-mode wrapper the images were opened through (DiskOpenOptions::cache), when
  // not writeback; declared first so that it outlives the images, which post through it.
  std::unique_ptr<IoProvider> cache_io;
  std::vector<std::unique_ptr<Image>> images;  // 0 = top
  IoProvider* io = nullptr;  // the provider the images were opened with, when known
  bool closed = false;

  size_t depth() const { return images.size(); }
  Image& top() { return *images.front(); }

  // Runs `fn` later on the images' executor: through the IoProvider when the Disk opened
  // the chain itself, else (assemble) by borrowing an image call, whose completion is
  // posted there (vd/io.h).
  void post(std::function<void()> fn);
};

// Reads [offset, offset + buf.size()) as seen from `level` down: a prefix an image does not
// hold goes to the next level; past a level's size, and below the base, it reads zeros.
// The completion may run inline when no image I/O was needed, unless `posted`: then a
// completion due while read_chain is still on the stack is posted (start_posted's promise,
// kept by the read itself, with no allocation of its own).
void read_chain(ChainState& chain, size_t level, uint64_t offset, std::span<std::byte> buf,
                Completion done, bool posted = false);

// A Disk request's way out, kept by the request itself instead of a wrapper completion
// (Disk::Impl::enter's) allocated per request: `leave` counts the request out of `owner`
// (the Disk's Impl, kept alive until then) around running `done`.
struct Leave {
  std::shared_ptr<void> owner;
  void (*leave)(void* owner, Completion& done, Error e) = nullptr;
};
// read_chain for Disk::read: posted, and counted out through `out`.
void read_chain_counted(ChainState& chain, uint64_t offset, std::span<std::byte> buf, Completion done,
                        Leave out);

// Allocation status of a prefix of [offset, offset + length) as seen from `level` down.
// May complete inline.
void status_chain(ChainState& chain, size_t level, uint64_t offset, uint64_t length,
                  DiskExtentHandler done);

// Calls start(handler) so that `done` is posted if the handler would run before `start`
// returns: callers of the Disk and of a ParentReader never see a completion inline, while
// completions that already arrive posted (from image I/O) are not posted a second time.
// Single-executor model (vd/io.h): the handler runs on the thread that called start.
template <class Handler, class Start>
void start_posted(ChainState& chain, Start&& start, Handler done) {
  struct State {
    Handler done;
    bool starting = true;
    std::function<void()> deferred;  // the inline completion, to post once start returns
  };
  auto st = std::make_shared<State>(State{std::move(done), true, {}});
  start([st](auto... args) {
    if (!st->starting) return st->done(std::move(args)...);
    st->deferred = [st, args...]() mutable { st->done(std::move(args)...); };
  });
  st->starting = false;
  if (st->deferred) chain.post(std::exchange(st->deferred, nullptr));
}

// The reader attached to the image at level - 1: reads the chain from `level` down.
std::shared_ptr<ParentReader> make_parent_reader(ChainState& chain, size_t level);

}  // namespace vd::detail

namespace vd {

struct Disk::Impl : std::enable_shared_from_this<Disk::Impl> {
  enum class State { open, closing, closed };

  detail::ChainState chain;
  boost::asio::any_io_executor ex;  // the images' executor; empty: run inline
  State state = State::open;
  bool close_when_idle = false;  // the Disk was destroyed with requests in flight
  bool close_started = false;
  size_t in_flight = 0;
  std::vector<Completion> drain_waiters;
  std::vector<Completion> close_waiters;

  // Runs `fn` on the executor: at once when called there, else posted (any thread may call).
  // A template, so the request's lambda goes to the executor as it is (Asio recycles its
  // memory) instead of a std::function allocated per request. On an io_context's own thread
  // (the common case: a request issued from a completion) it runs at once, without the
  // operation any_io_executor's dispatch would build around it.
  template <class Fn>
  void run(Fn&& fn) {
    if (!ex) return fn();
    if (auto* io = ex.target<boost::asio::io_context::executor_type>(); io && io->running_in_this_thread())
      return fn();
    boost::asio::dispatch(ex, std::forward<Fn>(fn));
  }
  void post(std::function<void()> fn);
  // On the executor: counts a request in and returns its completion, which counts it out
  // and then runs `done`; after close, completes `done` (posted) with an error and returns
  // an empty function.
  Completion enter(const char* op, Completion done);
  void idle_check();
  void finish_close(Error flushed);
  Error close_images();
};

}  // namespace vd
