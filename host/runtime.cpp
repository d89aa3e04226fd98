// The I/O runtime: one io_context for images and completions, a thread pool for blocking
// file I/O, and the synchronous helpers vdimg uses to drive one asynchronous call at a time.
#include "vd/runtime.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "host/io_uring.h"

namespace vd {
namespace {

// File I/O blocks in the kernel rather than burning CPU, so more threads than cores keep
// more requests in flight on the storage.
unsigned default_io_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  return std::max(4u, 2 * hw);
}

}  // namespace

std::unique_ptr<IoProvider> make_file_provider(Aio& aio, boost::asio::any_io_executor ex,
                                               boost::asio::thread_pool& pool) {
  if (aio == Aio::automatic) {
    const char* env = std::getenv("VD_AIO");
    auto parsed = env ? parse_aio(env) : Result<Aio>(Aio::threads);
    aio = parsed ? *parsed : Aio::threads;
  }
  if (aio == Aio::io_uring) {
    if (auto ring = detail::make_uring_provider(ex, pool)) return ring;
    aio = Aio::threads;
  }
  return std::make_unique<PosixIoProvider>(std::move(ex), pool);
}

Runtime::Runtime(unsigned io_threads, Aio aio)
    : pool_(io_threads ? io_threads : default_io_threads()), aio_(aio) {
  files_ = make_file_provider(aio_, ctx_.get_executor(), pool_);
}

Runtime::~Runtime() {
  // Let queued jobs finish while the io_context they report to still exists; their
  // completions are then destroyed unrun with the context.
  pool_.join();
  files_.reset();
}

Error Runtime::wait(const std::function<void(Completion)>& start) {
  // Shared with the completion: a buggy operation that completes after we gave up (or
  // twice) must not write into a dead stack frame.
  struct State {
    bool done = false;
    Error error;
  };
  auto state = std::make_shared<State>();
  ctx_.restart();
  start([state](Error e) {
    if (state->done) return;  // a second completion is a backend bug; keep the first
    state->done = true;
    state->error = std::move(e);
  });
  // run_one returns 0 once the context has no work left. That can happen spuriously: a
  // pool job still holding its tracked work after its completion ran (in an earlier wait)
  // may drop it just after our restart(), and reaching zero work stops the context even
  // though our own request is queued by then. So a stop is retried once; two in a row with
  // no handler run in between mean nothing will ever call the completion.
  int idle = 0;
  while (!state->done) {
    if (ctx_.run_one() > 0) {
      idle = 0;
      continue;
    }
    if (state->done) break;
    if (++idle > 1) {
      return Error(Errc::internal,
                   "asynchronous operation ended without running its completion "
                   "(the event loop ran out of work)");
    }
    ctx_.restart();
  }
  return state->error;
}

Error sync_image_read(Runtime& rt, Image& img, uint64_t offset, std::span<std::byte> buf) {
  while (!buf.empty()) {
    auto result = std::make_shared<ReadResult>();  // outlives us if the read completes late
    Error e = rt.wait([&](Completion done) {
      img.read(offset, buf, [result, done](Error err, ReadResult r) {
        *result = r;
        done(std::move(err));
      });
    });
    if (e) return e;
    const ReadResult got = *result;
    // A read must make progress and stay inside the request, or this loop never ends.
    if (got.length == 0 || got.length > buf.size()) {
      return Error(Errc::internal, "returned length " + hex(got.length) + " for " + hex(buf.size()) +
                                       " bytes requested")
          .image(img.path())
          .op("read")
          .at(offset);
    }
    if (!got.allocated) std::memset(buf.data(), 0, static_cast<size_t>(got.length));
    offset += got.length;
    buf = buf.subspan(static_cast<size_t>(got.length));
  }
  return {};
}

Error sync_image_write(Runtime& rt, Image& img, uint64_t offset, std::span<const std::byte> buf,
                       unsigned flags) {
  if (buf.empty()) return {};
  return rt.wait([&](Completion done) { img.write(offset, buf, flags, std::move(done)); });
}

}  // namespace vd
