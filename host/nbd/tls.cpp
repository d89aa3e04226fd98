// TLS for NBD_OPT_STARTTLS on OpenSSL (boost/asio/ssl), with the x509 credentials laid out as
// QEMU's tls-creds-x509 object reads them: DIR/ca-cert.pem, DIR/server-cert.pem,
// DIR/server-key.pem. verify-peer (QEMU's default: on) asks the client for a certificate
// signed by that CA and refuses the handshake without one.
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <filesystem>

#include "host/nbd/stream.h"

namespace vd::nbd {

namespace asio = boost::asio;

namespace {

class TlsStream final : public Stream {
 public:
  TlsStream(Socket s, asio::ssl::context& ctx) : tls_(std::move(s), ctx) {}
  awaitable<size_t> read_some(asio::mutable_buffer b) override {
    co_return co_await tls_.async_read_some(b, asio::use_awaitable);
  }
  awaitable<void> write(const std::vector<asio::const_buffer>& bufs) override {
    co_await asio::async_write(tls_, bufs, asio::use_awaitable);
  }
  void cancel() override {
    boost::system::error_code ec;
    tls_.next_layer().cancel(ec);
  }
  void shutdown_read() override {
    boost::system::error_code ec;
    tls_.next_layer().shutdown(Socket::shutdown_receive, ec);
  }
  void close() override {
    // No close_notify exchange: a client that stopped reading must not hold up the close.
    boost::system::error_code ec;
    tls_.next_layer().shutdown(Socket::shutdown_both, ec);
    tls_.next_layer().close(ec);
  }
  bool is_tls() const override { return true; }
  std::unique_ptr<Stream> wrap_tls(asio::ssl::context&) override {
    throw boost::system::system_error(asio::error::already_connected);
  }
  awaitable<void> handshake() override {
    co_await tls_.async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
  }

 private:
  asio::ssl::stream<Socket> tls_;
};

}  // namespace

std::unique_ptr<Stream> make_tls_stream(Socket socket, asio::ssl::context& ctx) {
  return std::make_unique<TlsStream>(std::move(socket), ctx);
}

Result<std::shared_ptr<asio::ssl::context>> make_tls_context(const std::string& dir, bool verify_peer) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                   asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
  auto file = [&](const char* name) { return (std::filesystem::path(dir) / name).string(); };
  boost::system::error_code ec;
  auto load_error = [&](const std::string& what) {
    return Error(Errc::invalid_argument, "Unable to load TLS " + what + ": " + ec.message()).image(dir);
  };
  ctx->use_certificate_chain_file(file("server-cert.pem"), ec);
  if (ec) return load_error("server certificate " + file("server-cert.pem"));
  ctx->use_private_key_file(file("server-key.pem"), asio::ssl::context::pem, ec);
  if (ec) return load_error("server key " + file("server-key.pem"));
  std::error_code fec;
  bool have_ca = std::filesystem::exists(file("ca-cert.pem"), fec);
  if (have_ca) {
    ctx->load_verify_file(file("ca-cert.pem"), ec);
    if (ec) return load_error("CA certificate " + file("ca-cert.pem"));
  }
  if (verify_peer) {
    if (!have_ca) {
      return Error(Errc::not_found, "Unable to access credentials " + file("ca-cert.pem") +
                                        ": No such file or directory");
    }
    ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
  } else {
    ctx->set_verify_mode(asio::ssl::verify_none);
  }
  return ctx;
}

}  // namespace vd::nbd
