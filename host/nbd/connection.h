// One client connection: option negotiation (handshake.cpp), then transmission: a reader
// that parses requests and starts them on the Disk without waiting for earlier ones
// (transmission.cpp, commands.cpp), and a writer that sends replies as they complete,
// gathering several into one write (replies.cpp).
//
// Lifetime: owned by the server's list, and by every pending Disk completion and coroutine
// (shared_from_this). All state is touched on the server's executor only.
//
//   run: negotiate --GO/EXPORT_NAME--> transmit (reader) + writer
//            |                            | EOF, DISC, stop(), error
//            v (ABORT, error, timeout)    v
//          close  <--- wait until every request read has its reply written (or the peer is gone)
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "host/nbd/protocol.h"
#include "host/nbd/server_impl.h"
#include "host/nbd/stream.h"

namespace vd::nbd {

// A payload buffer (uninitialised, reused through the connection's pool).
struct Buffer {
  std::unique_ptr<std::byte[]> p;
  size_t cap = 0;
  std::byte* data() const { return p.get(); }
};

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t handle = 0;
  uint64_t offset = 0;
  uint32_t len = 0;
  Buffer buf;         // write payload, or read destination
  uint64_t cost = 0;  // bytes counted against max_in_flight_bytes
};

// One reply message on the wire: a header, an optional owned tail (block-status payloads,
// error messages) and optional data pointing into a request's buffer.
struct Out {
  std::byte head[32];
  uint8_t head_len = 0;
  std::string tail;
  std::span<const std::byte> data;
  // Set on the last message of a request: its slot and buffer are released once written.
  bool last = false;
  uint64_t cost = 0;
  Buffer buf;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(std::shared_ptr<Server::Impl> server, std::unique_ptr<Stream> stream, bool counted);
  void start();
  // Graceful: read no more requests, answer those read, close. Drops a client negotiating.
  void stop();

  // ---- used by the command classes (commands.cpp) ----
  const ExportEntry& exp() const { return *export_; }
  bool structured() const { return structured_; }
  const std::vector<uint32_t>& selected_contexts() const { return selected_; }
  boost::asio::any_io_executor executor() const { return server_->ex; }
  // Replies. `data` must live in req.buf (kept until written). Every request ends with exactly
  // one call that has last = true: reply_ok, reply_error, or a chunk with kReplyFlagDone.
  void reply_ok(Request& req);
  void reply_error(Request& req, uint32_t nbd_errno, const std::string& message);
  void reply_simple_data(Request& req, std::span<const std::byte> data);
  void chunk(Request& req, uint16_t flags, uint16_t type, std::string payload,
             std::span<const std::byte> data = {});
  Buffer take_buffer(size_t n);

 private:
  // handshake.cpp
  awaitable<bool> negotiate();
  awaitable<bool> option(uint32_t opt, const std::vector<std::byte>& payload);
  awaitable<void> send_rep(uint32_t opt, uint32_t type, const std::string& data = {});
  awaitable<void> send_err(uint32_t opt, uint32_t type, const std::string& message);
  awaitable<bool> export_info(uint32_t opt, const std::vector<std::byte>& payload);
  awaitable<void> meta_context(uint32_t opt, const std::vector<std::byte>& payload);
  awaitable<bool> export_name(const std::vector<std::byte>& payload);
  awaitable<bool> start_tls(const std::vector<std::byte>& payload);
  uint16_t transmission_flags() const;
  // transmission.cpp
  awaitable<void> run();
  awaitable<void> transmit();
  awaitable<bool> read_request(Request& req);
  void dispatch(Request req);
  awaitable<void> wait(boost::asio::steady_timer& t);
  // replies.cpp
  void push(Out out, Request& req);
  awaitable<void> writer();
  void release(Out& out);

  std::shared_ptr<Server::Impl> server_;
  std::unique_ptr<Stream> stream_;
  bool counted_;
  InBuffer in_;
  boost::asio::steady_timer handshake_timer_;
  boost::asio::steady_timer reader_wake_;  // a slot freed, the writer finished
  boost::asio::steady_timer writer_wake_;  // a reply queued, closing

  // Negotiated
  bool negotiating_ = true;
  bool no_zeroes_ = false;
  bool structured_ = false;
  std::shared_ptr<const ExportEntry> export_;
  std::string meta_export_;         // the export SET_META_CONTEXT named
  std::vector<uint32_t> selected_;  // context ids (index + 1 in the export's list)

  // Transmission
  bool stopping_ = false;  // read no more
  bool closing_ = false;   // reader done: writer exits once the queue is empty
  bool dead_ = false;      // the socket failed: replies are dropped
  bool writer_done_ = true;
  unsigned in_flight_ = 0;
  uint64_t in_flight_bytes_ = 0;
  std::deque<Out> outq_;
  std::vector<Buffer> pool_;

  friend struct Server::Impl;
};

}  // namespace vd::nbd
