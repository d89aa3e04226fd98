// A minimal blocking NBD client for the server tests: raw protocol messages over a socket,
// so a test can send exactly the bytes it wants (malformed ones included) and see exactly
// what the server answers.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "host/nbd/protocol.h"

namespace nbdtest {

namespace p = vd::nbd::proto;

class Client {
 public:
  explicit Client(int fd) : fd_(fd) {}
  ~Client() { if (fd_ >= 0) ::close(fd_); }
  Client(const Client&) = delete;
  int fd() const { return fd_; }

  void send(const std::string& bytes) {
    size_t pos = 0;
    while (pos < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + pos, bytes.size() - pos, MSG_NOSIGNAL);
      if (n <= 0) { broken_ = true; return; }
      pos += static_cast<size_t>(n);
    }
  }
  // Exactly n bytes, or nullopt on EOF/error/timeout (ms).
  std::optional<std::string> recv(size_t n, int timeout_ms = 10000) {
    std::string s(n, '\0');
    size_t pos = 0;
    while (pos < n) {
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, timeout_ms) <= 0) return std::nullopt;
      ssize_t got = ::recv(fd_, s.data() + pos, n - pos, 0);
      if (got <= 0) return std::nullopt;
      pos += static_cast<size_t>(got);
    }
    return s;
  }
  // True when the server closed the connection (EOF) within the timeout.
  bool closed(int timeout_ms = 10000) {
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
    char c;
    return ::recv(fd_, &c, 1, 0) <= 0;
  }

  static uint16_t u16(const std::string& s, size_t at) { return p::get16(b(s) + at); }
  static uint32_t u32(const std::string& s, size_t at) { return p::get32(b(s) + at); }
  static uint64_t u64(const std::string& s, size_t at) { return p::get64(b(s) + at); }

  // Greeting and client flags. Returns the server's handshake flags.
  uint16_t hello(uint32_t client_flags = p::kClientFixedNewstyle | p::kClientNoZeroes) {
    auto g = recv(18);
    if (!g || u64(*g, 0) != p::kInitMagic || u64(*g, 8) != p::kOptMagic) return 0xffff;
    send(p::Writer().u32(client_flags).bytes);
    return u16(*g, 16);
  }
  void option(uint32_t opt, const std::string& payload = {}) {
    send(p::Writer().u64(p::kOptMagic).u32(opt).u32(static_cast<uint32_t>(payload.size())).str(payload).bytes);
  }
  struct OptReply {
    uint32_t opt = 0, type = 0;
    std::string data;
  };
  std::optional<OptReply> reply() {
    auto h = recv(20);
    if (!h || u64(*h, 0) != p::kRepMagic) return std::nullopt;
    OptReply r{u32(*h, 8), u32(*h, 12), {}};
    auto d = recv(u32(*h, 16));
    if (!d) return std::nullopt;
    r.data = *d;
    return r;
  }
  static std::string go_payload(const std::string& name, std::vector<uint16_t> infos = {}) {
    p::Writer w;
    w.u32(static_cast<uint32_t>(name.size())).str(name).u16(static_cast<uint16_t>(infos.size()));
    for (auto i : infos) w.u16(i);
    return w.bytes;
  }
  static std::string meta_payload(const std::string& name, const std::vector<std::string>& queries) {
    p::Writer w;
    w.u32(static_cast<uint32_t>(name.size())).str(name).u32(static_cast<uint32_t>(queries.size()));
    for (const auto& q : queries) w.u32(static_cast<uint32_t>(q.size())).str(q);
    return w.bytes;
  }
  // Negotiates up to transmission. Returns the transmission flags (0 on failure).
  uint16_t go(const std::string& name = "", bool structured = true, std::vector<std::string> contexts = {}) {
    if (hello() == 0xffff) return 0;
    if (structured) {
      option(p::kOptStructuredReply);
      auto r = reply();
      if (!r || r->type != p::kRepAck) return 0;
    }
    if (!contexts.empty()) {
      option(p::kOptSetMetaContext, meta_payload(name, contexts));
      for (;;) {
        auto r = reply();
        if (!r) return 0;
        if (r->type == p::kRepAck) break;
        if (r->type != p::kRepMetaContext) return 0;
        context_ids.push_back(u32(r->data, 0));
      }
    }
    option(p::kOptGo, go_payload(name));
    uint16_t flags = 0;
    for (;;) {
      auto r = reply();
      if (!r || (r->type & p::kRepErrBit)) return 0;
      if (r->type == p::kRepAck) return flags;
      if (r->type == p::kRepInfo && u16(r->data, 0) == p::kInfoExport) {
        size = u64(r->data, 2);
        flags = u16(r->data, 10);
      }
    }
  }

  void request(uint16_t type, uint64_t handle, uint64_t offset, uint32_t len, uint16_t flags = 0,
               const std::string& payload = {}) {
    send(p::Writer().u32(p::kRequestMagic).u16(flags).u16(type).u64(handle).u64(offset).u32(len).str(payload).bytes);
  }
  struct Simple {
    uint32_t error = 0;
    uint64_t handle = 0;
  };
  std::optional<Simple> simple() {
    auto h = recv(16);
    if (!h || u32(*h, 0) != p::kSimpleReplyMagic) return std::nullopt;
    return Simple{u32(*h, 4), u64(*h, 8)};
  }
  struct Chunk {
    uint16_t flags = 0, type = 0;
    uint64_t handle = 0;
    std::string payload;
  };
  std::optional<Chunk> chunk() {
    auto h = recv(20);
    if (!h || u32(*h, 0) != p::kStructuredReplyMagic) return std::nullopt;
    Chunk c{u16(*h, 4), u16(*h, 6), u64(*h, 8), {}};
    auto d = recv(u32(*h, 16));
    if (!d) return std::nullopt;
    c.payload = *d;
    return c;
  }
  // All chunks of one structured reply (until DONE).
  std::vector<Chunk> chunks() {
    std::vector<Chunk> v;
    for (;;) {
      auto c = chunk();
      if (!c) return v;
      v.push_back(*c);
      if (c->flags & p::kReplyFlagDone) return v;
    }
  }
  // Structured error value of a reply that is one ERROR chunk; 0 when it is not.
  static uint32_t error_of(const std::vector<Chunk>& cs) {
    if (cs.empty() || cs.back().type != p::kReplyError) return 0;
    return u32(cs.back().payload, 0);
  }

  uint64_t size = 0;
  std::vector<uint32_t> context_ids;

 private:
  static const std::byte* b(const std::string& s) { return reinterpret_cast<const std::byte*>(s.data()); }
  int fd_;
  bool broken_ = false;
};

}  // namespace nbdtest
