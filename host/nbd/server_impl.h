// What the connections of a Server share: the exports, the options, the TLS context and the
// registry of live connections (server.cpp).
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "host/nbd/stream.h"
#include "vd/nbd.h"

namespace vd::nbd {

class Connection;

// An export as served: the embedder's Export plus every context it answers (base:allocation
// first, then qemu:allocation-depth when asked, then the embedder's).
struct ExportEntry {
  Export e;
  std::vector<std::shared_ptr<MetaContext>> contexts;
  uint64_t size = 0;
  bool read_only = false;
  // Transmission flags without the per-connection ones (SEND_DF).
  uint16_t flags = 0;
};

struct Listener;

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  boost::asio::any_io_executor ex;
  ServerOptions opts;
  std::vector<std::shared_ptr<ExportEntry>> exports;
  std::shared_ptr<boost::asio::ssl::context> tls;
  std::vector<std::unique_ptr<Listener>> listeners;
  std::list<std::shared_ptr<Connection>> conns;
  size_t counted = 0;  // connections counted against max_connections
  bool started = false, stopping = false;
  std::function<void(Error)> stop_done;
  std::function<void()> idle;

  std::shared_ptr<const ExportEntry> find_export(const std::string& name) const;
  void accept(Listener& l);
  void resume_accepting();
  void add_connection(Socket s, bool counted);
  // A connection has closed its socket and answered all it will (connection.cpp calls it).
  void connection_done(Connection* c, bool was_counted);
  void finish_stop();
};

}  // namespace vd::nbd
