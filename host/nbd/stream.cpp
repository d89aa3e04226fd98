// Plain socket streams and the read-ahead buffer (TLS lives in tls.cpp).
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include "host/nbd/stream.h"

#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstring>

namespace vd::nbd {

namespace asio = boost::asio;

std::unique_ptr<Stream> make_tls_stream(Socket socket, asio::ssl::context& ctx);  // tls.cpp

namespace {

class PlainStream final : public Stream {
 public:
  explicit PlainStream(Socket s) : sock_(std::move(s)) {}
  awaitable<size_t> read_some(asio::mutable_buffer b) override {
    co_return co_await sock_.async_read_some(b, asio::use_awaitable);
  }
  awaitable<void> write(const std::vector<asio::const_buffer>& bufs) override {
    co_await asio::async_write(sock_, bufs, asio::use_awaitable);
  }
  void cancel() override {
    boost::system::error_code ec;
    sock_.cancel(ec);
  }
  void shutdown_read() override {
    boost::system::error_code ec;
    sock_.shutdown(Socket::shutdown_receive, ec);
  }
  void close() override {
    boost::system::error_code ec;
    sock_.shutdown(Socket::shutdown_both, ec);
    sock_.close(ec);
  }
  bool is_tls() const override { return false; }
  std::unique_ptr<Stream> wrap_tls(asio::ssl::context& ctx) override { return make_tls_stream(std::move(sock_), ctx); }
  awaitable<void> handshake() override { throw boost::system::system_error(asio::error::operation_not_supported); }

 private:
  Socket sock_;
};

}  // namespace

std::unique_ptr<Stream> make_plain_stream(Socket socket) { return std::make_unique<PlainStream>(std::move(socket)); }

awaitable<void> InBuffer::fill(Stream& s, size_t n) {
  if (available() >= n) co_return;
  if (begin_ + n > kCapacity) {
    std::memmove(buf_.get(), buf_.get() + begin_, available());
    end_ -= begin_;
    begin_ = 0;
  }
  while (available() < n) {
    size_t got = co_await s.read_some(asio::buffer(buf_.get() + end_, kCapacity - end_));
    end_ += got;
  }
}

awaitable<void> InBuffer::read_into(Stream& s, std::span<std::byte> dst) {
  if (dst.empty()) co_return;  // (an empty vector's data() may be null: no memcpy)
  size_t have = std::min(available(), dst.size());
  std::memcpy(dst.data(), data(), have);
  consume(have);
  size_t pos = have;
  // Small remainders go through the buffer (they often arrive with the next request).
  if (dst.size() - pos > 0 && dst.size() - pos <= kCapacity / 4) {
    co_await fill(s, dst.size() - pos);
    std::memcpy(dst.data() + pos, data(), dst.size() - pos);
    consume(dst.size() - pos);
    co_return;
  }
  while (pos < dst.size()) {
    pos += co_await s.read_some(asio::buffer(dst.data() + pos, dst.size() - pos));
  }
}

}  // namespace vd::nbd
