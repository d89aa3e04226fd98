// The Server: exports, listening sockets, the connection limit and the graceful stop.
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>

#include "host/nbd/connection.h"

namespace vd::nbd {

namespace asio = boost::asio;
using Acceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

struct Listener {
  explicit Listener(asio::any_io_executor ex) : acceptor(ex) {}
  Acceptor acceptor;
  std::string unix_path;  // removed by stop()
  bool accepting = false;
  uint16_t tcp_port = 0;
};

namespace {

void set_nodelay(Socket& s) {
  // Replies are written whole: Nagle would only delay them (TCP only; unix sockets refuse).
  int one = 1;
  ::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int socket_family(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return -1;
  return ss.ss_family;
}

}  // namespace

std::shared_ptr<const ExportEntry> Server::Impl::find_export(const std::string& name) const {
  for (const auto& x : exports) {
    if (x->e.name == name) return x;
  }
  return nullptr;
}

void Server::Impl::accept(Listener& l) {
  if (stopping || l.accepting || !l.acceptor.is_open()) return;
  if (opts.max_connections && counted >= opts.max_connections) return;  // resumed on leave
  l.accepting = true;
  auto self = shared_from_this();
  l.acceptor.async_accept([self, &l](boost::system::error_code ec, Socket s) {
    l.accepting = false;
    if (self->stopping) return;
    if (!ec) {
      int fam = socket_family(s.native_handle());
      if (fam == AF_INET || fam == AF_INET6) set_nodelay(s);
      self->add_connection(std::move(s), true);
    } else if (ec == asio::error::operation_aborted) {
      return;
    }
    // On errors (EMFILE...) keep accepting; the failed client is gone either way.
    self->accept(l);
  });
}

void Server::Impl::resume_accepting() {
  for (auto& l : listeners) accept(*l);
}

void Server::Impl::add_connection(Socket s, bool count) {
  if (count) ++counted;
  auto c = std::make_shared<Connection>(shared_from_this(), make_plain_stream(std::move(s)), count);
  conns.push_back(c);
  c->start();
}

void Server::Impl::connection_done(Connection* c, bool was_counted) {
  if (was_counted) --counted;
  for (auto it = conns.begin(); it != conns.end(); ++it) {
    if (it->get() == c) {
      // Keep it alive until this call returns (we are inside its coroutine).
      asio::post(ex, [keep = *it] {});
      conns.erase(it);
      break;
    }
  }
  if (stopping) {
    if (conns.empty()) finish_stop();
    return;
  }
  resume_accepting();
  if (conns.empty() && idle) idle();
}

void Server::Impl::finish_stop() {
  // Every connection has answered what it read: flush each disk once, so that every write
  // acknowledged to any client is durable, and report the first error.
  struct Flushes {
    size_t left;
    Error first;
    std::function<void(Error)> done;
  };
  auto st = std::make_shared<Flushes>(Flushes{exports.size(), {}, std::move(stop_done)});
  stop_done = nullptr;
  auto one_done = [st, ex = ex](Error e) {
    asio::dispatch(ex, [st, e = std::move(e)] {
      if (e && !st->first) st->first = e;
      if (--st->left == 0 && st->done) st->done(st->first);
    });
  };
  if (exports.empty()) {
    asio::post(ex, [st] { if (st->done) st->done({}); });
    return;
  }
  for (const auto& x : exports) {
    if (x->read_only || x->e.disk->closed()) {
      one_done({});
    } else {
      x->e.disk->flush(one_done);
    }
  }
}

Server::Server(asio::any_io_executor ex, ServerOptions options) : impl_(std::make_shared<Impl>()) {
  impl_->ex = std::move(ex);
  impl_->opts = std::move(options);
}

Server::~Server() {
  boost::system::error_code ec;
  for (auto& l : impl_->listeners) {
    l->acceptor.close(ec);
    if (!l->unix_path.empty()) ::unlink(l->unix_path.c_str());
  }
  for (auto& c : impl_->conns) c->stop();
}

Error Server::add_export(Export e) {
  if (!e.disk) return Error(Errc::invalid_argument, "export '" + e.name + "' has no disk");
  if (e.name.size() > proto::kMaxString) return Error(Errc::invalid_argument, "export name too long");
  if (impl_->find_export(e.name)) return Error(Errc::exists, "export '" + e.name + "' already exists");
  auto x = std::make_shared<ExportEntry>();
  x->size = e.disk->size();
  x->read_only = e.read_only || e.disk->read_only();
  x->contexts.push_back(base_allocation_context(e.disk));
  if (e.allocation_depth) x->contexts.push_back(allocation_depth_context(e.disk));
  for (auto& c : e.contexts) x->contexts.push_back(c);
  using namespace proto;
  uint16_t f = kHasFlags | kSendFlush | kSendFua | kSendCache;
  if (e.multi_conn) f |= kCanMultiConn;
  f |= x->read_only ? kReadOnly : (kSendTrim | kSendWriteZeroes | kSendFastZero);
  x->flags = f;
  x->e = std::move(e);
  impl_->exports.push_back(std::move(x));
  return {};
}

Error Server::listen_unix(const std::string& path) {
  auto l = std::make_unique<Listener>(impl_->ex);
  boost::system::error_code ec;
  ::unlink(path.c_str());
  asio::local::stream_protocol::endpoint ep(path);
  asio::generic::stream_protocol::endpoint gep(ep);
  l->acceptor.open(gep.protocol(), ec);
  if (!ec) l->acceptor.bind(gep, ec);
  if (!ec) l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error::from_errno(ec.value(), "Failed to bind socket", path);
  l->unix_path = path;
  impl_->listeners.push_back(std::move(l));
  if (impl_->started) impl_->accept(*impl_->listeners.back());
  return {};
}

Error Server::listen_tcp(const std::string& address, uint16_t port) {
  asio::ip::tcp::resolver resolver(impl_->ex);
  boost::system::error_code ec;
  auto results = resolver.resolve(address, std::to_string(port),
                                  asio::ip::tcp::resolver::passive | asio::ip::tcp::resolver::numeric_service, ec);
  if (ec) return Error(Errc::invalid_argument, "address resolution failed for " + address + ":" + std::to_string(port) + ": " + ec.message());
  size_t bound = 0;
  Error last;
  for (const auto& r : results) {
    auto l = std::make_unique<Listener>(impl_->ex);
    asio::generic::stream_protocol::endpoint gep(r.endpoint());
    l->acceptor.open(gep.protocol(), ec);
    if (!ec) l->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && r.endpoint().address().is_v6()) {
      int one = 1;  // v4 gets its own listener when the name resolves to both
      ::setsockopt(l->acceptor.native_handle(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    if (!ec) l->acceptor.bind(gep, ec);
    if (!ec) l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      last = Error::from_errno(ec.value(), "Failed to bind socket", address + ":" + std::to_string(port));
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(l->acceptor.native_handle(), reinterpret_cast<sockaddr*>(&ss), &len);
    l->tcp_port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                 : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (port == 0) port = l->tcp_port;  // every address on the same port
    impl_->listeners.push_back(std::move(l));
    if (impl_->started) impl_->accept(*impl_->listeners.back());
    ++bound;
  }
  if (!bound) return last ? last : Error(Errc::invalid_argument, "no address for " + address);
  return {};
}

Error Server::adopt_listener(int fd) {
  int fam = socket_family(fd);
  if (fam < 0) return Error::from_errno(errno, "getsockname", "fd " + std::to_string(fd));
  auto l = std::make_unique<Listener>(impl_->ex);
  boost::system::error_code ec;
  l->acceptor.assign(asio::generic::stream_protocol(fam, SOCK_STREAM), fd, ec);
  if (ec) return Error::from_errno(ec.value(), "adopting listening socket", "fd " + std::to_string(fd));
  impl_->listeners.push_back(std::move(l));
  if (impl_->started) impl_->accept(*impl_->listeners.back());
  return {};
}

Error Server::start() {
  if (impl_->opts.tls && !impl_->tls) {
    auto ctx = make_tls_context(impl_->opts.tls->dir, impl_->opts.tls->verify_peer);
    if (!ctx) return ctx.error();
    impl_->tls = *ctx;
  }
  impl_->started = true;
  impl_->resume_accepting();
  return {};
}

void Server::stop(std::function<void(Error)> done) {
  auto& s = *impl_;
  if (s.stopping) {
    asio::post(s.ex, [done] { done(Error(Errc::busy, "server already stopping")); });
    return;
  }
  s.stopping = true;
  s.stop_done = std::move(done);
  boost::system::error_code ec;
  for (auto& l : s.listeners) {
    l->acceptor.close(ec);
    if (!l->unix_path.empty()) ::unlink(l->unix_path.c_str());
  }
  if (s.conns.empty()) return s.finish_stop();
  auto conns = s.conns;  // stop() may complete a connection synchronously later
  for (auto& c : conns) c->stop();
}

void Server::on_idle(std::function<void()> fn) { impl_->idle = std::move(fn); }

size_t Server::connections() const { return impl_->conns.size(); }

std::vector<uint16_t> Server::tcp_ports() const {
  std::vector<uint16_t> v;
  for (auto& l : impl_->listeners) {
    if (l->tcp_port) v.push_back(l->tcp_port);
  }
  return v;
}

Error serve_fd(Server& server, int fd) {
  auto& s = *server.impl_;
  int fam = socket_family(fd);
  if (fam < 0) return Error::from_errno(errno, "getsockname", "fd " + std::to_string(fd));
  Socket sock(s.ex);
  boost::system::error_code ec;
  sock.assign(asio::generic::stream_protocol(fam, SOCK_STREAM), fd, ec);
  if (ec) return Error::from_errno(ec.value(), "adopting socket", "fd " + std::to_string(fd));
  if (!s.started) {
    if (Error e = server.start()) return e;
  }
  s.add_connection(std::move(sock), false);
  return {};
}

}  // namespace vd::nbd
