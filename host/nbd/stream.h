// The byte stream a connection talks over: a plain socket (unix, TCP, an adopted fd) or the
// TLS stream that replaces it after NBD_OPT_STARTTLS, behind one small interface so the
// handshake and transmission code is written once. Errors are thrown as
// boost::system::system_error (use_awaitable); the connection catches them at its top.
#pragma once

#include "host/nbd/coro.h"
#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vd/error.h"

namespace vd::nbd {

using boost::asio::awaitable;
using Socket = boost::asio::generic::stream_protocol::socket;

class Stream {
 public:
  virtual ~Stream() = default;
  virtual awaitable<size_t> read_some(boost::asio::mutable_buffer b) = 0;
  // Writes every byte of `bufs` (a gathered write: header and data in one call).
  virtual awaitable<void> write(const std::vector<boost::asio::const_buffer>& bufs) = 0;
  // Makes pending reads and writes end with operation_aborted.
  virtual void cancel() = 0;
  // Ends pending and future reads with EOF, leaving writes alone (a graceful stop).
  virtual void shutdown_read() = 0;
  virtual void close() = 0;
  virtual bool is_tls() const = 0;
  // Plain streams only: the TLS stream that owns this stream's socket from then on (this
  // stream is left empty); its server handshake is `handshake()`.
  virtual std::unique_ptr<Stream> wrap_tls(boost::asio::ssl::context& ctx) = 0;
  // TLS streams only: the server side of the TLS handshake.
  virtual awaitable<void> handshake() = 0;
};

std::unique_ptr<Stream> make_plain_stream(Socket socket);

// The TLS server context from a tls-creds-x509 folder (tls.cpp).
Result<std::shared_ptr<boost::asio::ssl::context>> make_tls_context(const std::string& dir, bool verify_peer);

// Reads ahead into one buffer so that pipelined requests cost one read call for several, and
// a header never needs an allocation. Payloads larger than the buffer go straight to their
// destination.
class InBuffer {
 public:
  static constexpr size_t kCapacity = 64 * 1024;
  InBuffer() : buf_(new std::byte[kCapacity]) {}
  size_t available() const { return end_ - begin_; }
  const std::byte* data() const { return buf_.get() + begin_; }
  void consume(size_t n) { begin_ += n; if (begin_ == end_) begin_ = end_ = 0; }
  // Waits until at least n (<= kCapacity) bytes are buffered.
  awaitable<void> fill(Stream& s, size_t n);
  // Moves the next dst.size() bytes of the stream into dst.
  awaitable<void> read_into(Stream& s, std::span<std::byte> dst);

 private:
  std::unique_ptr<std::byte[]> buf_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace vd::nbd
