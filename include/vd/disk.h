// A Disk is a chain of images, top (writable) to base, seen as one virtual disk.
//
// Reads go through the chain: a range the top does not hold is read from its parent, and so
// on; past the base, and past the end of a parent shorter than its child, it reads zeros.
// Writes go to the top; the top fills partial clusters from the chain through the
// ParentReader the Disk attaches to each image.
//
// Threads. A Disk and its images live on one executor, `get_executor()`: the executor the
// IoProvider posts its completions to (a Runtime's io_context, or the strand you gave a
// PosixIoProvider). Any thread may start a request (read ... block_status, the async_*
// forms, drain, async_close): the Disk dispatches it onto its executor, so vd's state is
// only touched there and needs no locks; a request started on the executor starts at once.
// Callback completions run on the executor; the async_* forms complete on the handler's
// associated executor. `close()`, `size()`, `depth()` and `image()` are for the thread that
// owns the executor (or while it is not running). A Disk without a known executor (made by
// `assemble` without `set_executor`) runs requests inline: its caller must keep to one thread.
//
// Lifecycle. Every request completes exactly once. `drain` completes once nothing is in
// flight (hot-unplug: stop issuing, drain, close). `async_close` refuses new requests, waits
// for those in flight, then flushes and closes every image. `close()` does the same at once
// when nothing is in flight, and otherwise refuses (busy) and changes nothing. After close,
// every request fails (kind `canceled`). Destroying a Disk with requests in flight is safe:
// the images stay open until the last one completes, then close.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/system/error_code.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "vd/backend.h"
#include "vd/cache.h"
#include "vd/error.h"
#include "vd/io.h"
#include "vd/registry.h"

namespace vd {

struct DiskOpenOptions {
  std::optional<std::string> format;  // format of the top image; probed when empty
  unsigned flags = 0;                 // OpenFlags for the top; parents always read-only
  std::optional<std::string> passphrase;
  std::optional<std::string> snapshot;  // open this internal snapshot of the top (read-only)
  bool no_backing = false;              // open the top alone
  size_t max_depth = 256;               // longest chain accepted
  uint64_t cache_bytes = 32ull << 20;
  // The host cache mode of every file of the chain (vd/cache.h), as qemu's cache=.
  CacheMode cache = CacheMode::writeback;
};

// Where a range of the disk comes from.
struct DiskExtent {
  Extent extent;
  int level = -1;  // index in the chain (0 = top) of the image holding it; -1: none (zeros)
};
using DiskExtentHandler = std::function<void(Error, DiskExtent)>;

// vd's error kinds as a boost::system category, for the async_* forms: Asio treats a non-zero
// boost::system::error_code as an error (co_await with use_awaitable throws
// boost::system::system_error, redirect_error stores it). The value is the vd::Errc; the
// full message of the last failure is lost there, so use the callback forms to get it.
VD_API const boost::system::error_category& asio_category() noexcept;
VD_API boost::system::error_code to_asio(const Error& e) noexcept;

// Creates a differencing image at `path` over `backing` (a VM's external snapshot: the disk
// it ran on becomes read-only below a new, empty top). The size defaults to the backing
// image's (opts.size 0), the backing format to what the backing file is (probed unless
// opts.backing_format says); `backing` is recorded as given, a relative name being relative
// to `path`'s folder. Returns the new image, open read-write (close it, then open the chain
// with Disk::open).
VD_API Result<std::unique_ptr<Image>> create_overlay(const Registry& registry, IoProvider& io,
                                                     const std::string& path, const std::string& backing,
                                                     CreateOptions opts = {}, std::string_view format = "qcow2");

namespace detail {
// A completion that hands the result to an Asio handler on the handler's associated
// executor (default: the disk's), keeping that executor busy until then. The handler may be
// move-only: it lives behind a shared pointer so the Completion stays copyable.
template <class Handler, class... Extra>
auto asio_completion(Handler&& handler, const boost::asio::any_io_executor& ex) {
  using H = std::decay_t<Handler>;
  using Target = boost::asio::associated_executor_t<H, boost::asio::any_io_executor>;
  // One allocation a request: the handler and, when it runs elsewhere than the disk's
  // executor, a guard keeping its executor busy until then (the disk's own is kept busy by
  // the request's I/O).
  struct State {
    H handler;
    Target target;
    std::optional<boost::asio::executor_work_guard<Target>> work;
  };
  Target target = boost::asio::get_associated_executor(handler, ex);
  auto st = std::make_shared<State>(State{std::forward<Handler>(handler), target, std::nullopt});
  bool own = false;
  if constexpr (std::is_same_v<Target, boost::asio::any_io_executor>) own = st->target == ex;
  if (!own) st->work.emplace(st->target);
  return [st](Error e, Extra... extra) {
    boost::asio::dispatch(st->target, [st, ec = to_asio(e), extra...]() mutable {
      std::move(st->handler)(ec, std::move(extra)...);
      st->work.reset();
    });
  };
}
}  // namespace detail

class VD_API Disk {
 public:
  // Opens `path` and follows parent filenames (relative to each child's folder, or
  // absolute), honouring a recorded parent format and otherwise probing. Refuses loops,
  // missing parents and chains deeper than max_depth, with an error that prints the chain.
  static Result<std::unique_ptr<Disk>> open(const std::string& path, const DiskOpenOptions& opts,
                                            const Registry& registry, IoProvider& io);
  // A disk over images already open, top first (tests, embedders with their own policy).
  // `io`, the provider they were opened with, lets the Disk post completions it makes itself
  // (a request refused after close) without asking an image.
  static Result<std::unique_ptr<Disk>> assemble(std::vector<std::unique_ptr<Image>> chain,
                                                IoProvider* io = nullptr);

  ~Disk();

  using executor_type = boost::asio::any_io_executor;
  // The executor the images run on (see the top of this file); empty when unknown.
  executor_type get_executor() const;
  // For a Disk from `assemble`, or over a provider the Disk cannot ask: the executor that
  // receives the images' completions.
  void set_executor(executor_type ex);

  uint64_t size() const;
  size_t depth() const;        // number of images
  Image& image(size_t level);  // 0 = top
  const Image& image(size_t level) const;
  bool read_only() const;

  void read(uint64_t offset, std::span<std::byte> buf, Completion done);
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags, Completion done);
  void write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done);
  void discard(uint64_t offset, uint64_t length, Completion done);
  void flush(Completion done);
  // Allocation status of a prefix of the range, looking down the chain.
  void block_status(uint64_t offset, uint64_t length, DiskExtentHandler done);

  // Completes once no request is in flight (those started meanwhile included).
  void drain(Completion done);
  // Refuses new requests, waits for those in flight, flushes and closes every image (top
  // first); completes with the first error.
  void async_close(Completion done);
  // Flushes and closes every image, top first, and returns the first error; refuses with
  // `busy` (closing nothing) while requests are in flight: drain first, or async_close.
  Error close();
  bool closed() const;
  // Requests started and not yet completed (on the executor's thread).
  size_t in_flight() const;

  // ---- Asio-native forms: any completion token (callbacks, use_future, use_awaitable,
  // ...), move-only handlers, the handler's associated executor honoured. Signatures:
  // void(boost::system::error_code) and, for block_status,
  // void(boost::system::error_code, DiskExtent).
  template <class Token>
  auto async_read(uint64_t offset, std::span<std::byte> buf, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, offset, buf](auto handler) {
          read(offset, buf, detail::asio_completion(std::move(handler), get_executor()));
        },
        token);
  }
  template <class Token>
  auto async_write(uint64_t offset, std::span<const std::byte> buf, Token&& token, unsigned flags = 0) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, offset, buf, flags](auto handler) {
          write(offset, buf, flags, detail::asio_completion(std::move(handler), get_executor()));
        },
        token);
  }
  template <class Token>
  auto async_write_zeroes(uint64_t offset, uint64_t length, Token&& token, unsigned flags = 0) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, offset, length, flags](auto handler) {
          write_zeroes(offset, length, flags, detail::asio_completion(std::move(handler), get_executor()));
        },
        token);
  }
  template <class Token>
  auto async_discard(uint64_t offset, uint64_t length, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this, offset, length](auto handler) {
          discard(offset, length, detail::asio_completion(std::move(handler), get_executor()));
        },
        token);
  }
  template <class Token>
  auto async_flush(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this](auto handler) { flush(detail::asio_completion(std::move(handler), get_executor())); }, token);
  }
  template <class Token>
  auto async_block_status(uint64_t offset, uint64_t length, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code, DiskExtent)>(
        [this, offset, length](auto handler) {
          block_status(offset, length,
                       detail::asio_completion<decltype(handler), DiskExtent>(std::move(handler), get_executor()));
        },
        token);
  }
  template <class Token>
  auto async_drain(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this](auto handler) { drain(detail::asio_completion(std::move(handler), get_executor())); }, token);
  }
  template <class Token>
  auto async_close(Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [this](auto handler) { async_close(Completion(detail::asio_completion(std::move(handler), get_executor()))); },
        token);
  }

 private:
  struct Impl;
  explicit Disk(std::shared_ptr<Impl> impl);
  // Shared with every request in flight: a Disk destroyed meanwhile closes when they are done.
  std::shared_ptr<Impl> impl_;
};

}  // namespace vd
