// The transmission phase's reader: parses requests and starts each at once (commands.cpp),
// so many are in flight while the next ones are read. Backpressure: at max_in_flight
// requests (or max_in_flight_bytes of payload) not yet answered, it stops reading the socket
// until the writer has sent a reply. Validation follows QEMU's nbd_co_receive_request: a
// request whose payload cannot be skipped safely (bad magic, oversized write) ends the
// connection; every other bad request gets an error reply.
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "host/nbd/connection.h"

namespace vd::nbd {

using namespace proto;
namespace asio = boost::asio;

Connection::Connection(std::shared_ptr<Server::Impl> server, std::unique_ptr<Stream> stream, bool counted)
    : server_(std::move(server)),
      stream_(std::move(stream)),
      counted_(counted),
      handshake_timer_(server_->ex),
      reader_wake_(server_->ex),
      writer_wake_(server_->ex) {}

void Connection::start() {
  auto self = shared_from_this();
  if (server_->opts.handshake_timeout.count() > 0) {
    handshake_timer_.expires_after(server_->opts.handshake_timeout);
    handshake_timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec && self->negotiating_) self->stream_->close();
    });
  }
  asio::co_spawn(server_->ex, [self]() -> awaitable<void> { co_await self->run(); }, asio::detached);
}

void Connection::stop() {
  if (negotiating_) {
    stream_->close();
    return;
  }
  if (stopping_) return;
  stopping_ = true;
  // The reader may be parked on the socket: a shutdown of the receive side wakes it with
  // EOF and leaves the send side to the writer. Or parked waiting for a slot: wake it.
  if (!dead_) stream_->shutdown_read();
  reader_wake_.cancel();
}

awaitable<void> Connection::wait(asio::steady_timer& t) {
  boost::system::error_code ec;
  t.expires_at(asio::steady_timer::time_point::max());
  co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

awaitable<void> Connection::run() {
  auto self = shared_from_this();
  bool go = false;
  try {
    go = co_await negotiate();
  } catch (const std::exception&) {
    go = false;
  }
  negotiating_ = false;
  handshake_timer_.cancel();
  if (go && !server_->stopping) {
    writer_done_ = false;
    asio::co_spawn(server_->ex, [self]() -> awaitable<void> { co_await self->writer(); }, asio::detached);
    try {
      co_await transmit();
    } catch (const std::exception&) {
      // EOF, a reset, stop(): answer what was read, then close.
    }
    closing_ = true;
    writer_wake_.cancel();
    while (!writer_done_) co_await wait(reader_wake_);
  }
  stream_->close();
  server_->connection_done(this, counted_);
}

awaitable<void> Connection::transmit() {
  while (!stopping_ && !dead_) {
    while ((in_flight_ >= server_->opts.max_in_flight || in_flight_bytes_ >= server_->opts.max_in_flight_bytes) &&
           !stopping_ && !dead_) {
      co_await wait(reader_wake_);
    }
    if (stopping_ || dead_) break;
    Request req;
    if (!co_await read_request(req)) break;
    if (req.type == kCmdDisc) {
      --in_flight_;  // no reply: the close is the answer
      break;
    }
    dispatch(std::move(req));
  }
}

// Reads one request (and a write's payload). False: the connection must end.
awaitable<bool> Connection::read_request(Request& req) {
  co_await in_.fill(*stream_, kRequestSize);
  const std::byte* p = in_.data();
  uint32_t magic = get32(p);
  req.flags = get16(p + 4);
  req.type = get16(p + 6);
  req.handle = get64(p + 8);
  req.offset = get64(p + 16);
  req.len = get32(p + 24);
  in_.consume(kRequestSize);
  if (magic != kRequestMagic) co_return false;
  if (req.type == kCmdWrite) {
    // The payload follows whatever we think of the request; one we cannot buffer within
    // the limits leaves us unable to find the next request: disconnect (as QEMU does).
    if (req.len > export_->e.limits.max_payload) co_return false;
    req.buf = take_buffer(req.len);
    co_await in_.read_into(*stream_, std::span<std::byte>(req.buf.data(), req.len));
  }
  req.cost = (req.type == kCmdWrite || req.type == kCmdRead) ? req.len : 0;
  ++in_flight_;
  in_flight_bytes_ += req.cost;
  co_return true;
}

Buffer Connection::take_buffer(size_t n) {
  for (size_t i = pool_.size(); i-- > 0;) {
    if (pool_[i].cap >= n) {
      Buffer b = std::move(pool_[i]);
      pool_[i] = std::move(pool_.back());
      pool_.pop_back();
      return b;
    }
  }
  // Round small sizes up so one buffer serves the common request sizes.
  size_t cap = std::max<size_t>(n, 64 * 1024);
  return Buffer{std::unique_ptr<std::byte[]>(new std::byte[cap]), cap};
}

}  // namespace vd::nbd
