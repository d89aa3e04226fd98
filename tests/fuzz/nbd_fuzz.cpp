// The NBD server's handshake and request parser over arbitrary client bytes: a Server with
// one in-memory raw export serves a socketpair; the input is what the client sends, then the
// client stops sending and reads whatever comes back. Any crash, hang, leak or runaway
// allocation is a failure. When the first input byte is odd a valid negotiation (structured
// replies, both metadata contexts, GO) is sent first, so that the rest exercises the
// transmission phase without the fuzzer having to find every magic number.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <string>

#include "host/nbd/protocol.h"
#include "vd/disk.h"
#include "vd/nbd.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

namespace p = vd::nbd::proto;

std::string negotiation() {
  p::Writer w;
  w.u32(p::kClientFixedNewstyle | p::kClientNoZeroes);
  w.u64(p::kOptMagic).u32(p::kOptStructuredReply).u32(0);
  p::Writer meta;
  meta.u32(0).u32(2).u32(15).str("base:allocation").u32(21).str("qemu:allocation-depth");
  w.u64(p::kOptMagic).u32(p::kOptSetMetaContext).u32(static_cast<uint32_t>(meta.bytes.size())).str(meta.bytes);
  w.u64(p::kOptMagic).u32(p::kOptGo).u32(6).u32(0).u16(0);
  return w.bytes;
}

void drain(int fd) {
  char buf[65536];
  while (::read(fd, buf, sizeof buf) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  boost::asio::io_context ctx;
  vd::MemIoProvider io(ctx.get_executor());
  io.contents("/img")->assign(1u << 20, std::byte{0x11});
  vd::Registry registry = vd::Registry::builtin();
  vd::DiskOpenOptions o;
  o.format = "raw";
  o.flags = vd::open_format_given;
  auto disk = vd::Disk::open("/img", o, registry, io);
  if (!disk) return 0;
  std::shared_ptr<vd::Disk> shared(std::move(*disk));

  vd::nbd::ServerOptions opts;
  opts.handshake_timeout = std::chrono::milliseconds(0);
  opts.max_in_flight = 4;
  opts.max_in_flight_bytes = 1u << 20;
  vd::nbd::Server server(ctx.get_executor(), opts);
  vd::nbd::Export x;
  x.disk = shared;
  x.allocation_depth = true;
  x.limits.max_payload = 1u << 20;  // bounded memory under fuzzing
  if (server.add_export(std::move(x))) return 0;

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 0;
  ::fcntl(sv[1], F_SETFL, O_NONBLOCK);
  if (vd::nbd::serve_fd(server, sv[0])) return 0;

  std::string input;
  if (size > 0 && (data[0] & 1)) input = negotiation();
  if (size > 0) input.append(reinterpret_cast<const char*>(data) + 1, size - 1);
  size_t sent = 0;
  bool shut = false;
  // Bounded: a run that does not finish in this many handler batches is a hang.
  for (int round = 0; round < 200000; ++round) {
    if (sent < input.size()) {
      ssize_t n = ::send(sv[1], input.data() + sent, input.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0 && errno != EAGAIN) sent = input.size();
    } else if (!shut) {
      ::shutdown(sv[1], SHUT_WR);
      shut = true;
    }
    drain(sv[1]);
    ctx.run_for(std::chrono::milliseconds(1));
    if (ctx.stopped()) ctx.restart();
    if (shut && server.connections() == 0) break;
  }
  bool stopped = false;
  server.stop([&](vd::Error) { stopped = true; });
  for (int round = 0; round < 100000 && !stopped; ++round) {
    drain(sv[1]);
    ctx.run_for(std::chrono::milliseconds(1));
    if (ctx.stopped()) ctx.restart();
  }
  ::close(sv[1]);
  bool closed = false;
  shared->async_close(vd::Completion([&](vd::Error) { closed = true; }));
  for (int round = 0; round < 100000 && !closed; ++round) {
    ctx.run_for(std::chrono::milliseconds(1));
    if (ctx.stopped()) ctx.restart();
  }
  return 0;
}
