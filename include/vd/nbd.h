// An NBD server (the Network Block Device protocol, NetworkBlockDevice/nbd doc/proto.md)
// that serves Disks: what vd-nbd runs, and what an embedder uses to serve its own Disks to a
// VM monitor or a backup tool in another process.
//
//   vd::nbd::Server server(io.get_executor());
//   vd::nbd::Export e;  e.name = "disk0";  e.disk = my_disk;   // std::shared_ptr<vd::Disk>
//   server.add_export(std::move(e));
//   server.listen_unix("/run/vm/disk0.sock");
//   server.start();  ...  server.stop([](vd::Error) { /* every request answered, flushed */ });
//
// Threads. The server and all its connections run on the executor given to the constructor,
// which must not run handlers concurrently (an io_context run by one thread, or a strand).
// Disk requests complete on the Disk's executor and are dispatched back to the server's: when
// both are the same io_context (vd-nbd) there is no thread hop at all. Call the Server's
// functions from that executor's thread, or before it runs.
//
// What it serves: fixed newstyle handshake (GO, INFO, LIST, EXPORT_NAME, ABORT,
// STRUCTURED_REPLY, LIST/SET_META_CONTEXT, STARTTLS); READ (holes as holes), WRITE (FUA),
// FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), BLOCK_STATUS, CACHE, DISC. See docs/nbd.md.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "vd/disk.h"
#include "vd/error.h"
#include "vd/export.h"

namespace vd::nbd {

// NBD_STATE_* bits of the base:allocation context.
constexpr uint32_t kStateHole = 1;
constexpr uint32_t kStateZero = 2;

// A metadata context (NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS): a name and a function
// describing a prefix of a range with 32 flag bits whose meaning the context defines. An
// export carries a list of them; new kinds (a dirty bitmap) are one more implementation.
class VD_API MetaContext {
 public:
  using StatusHandler = std::function<void(Error, uint64_t length, uint32_t flags)>;
  virtual ~MetaContext();
  virtual const std::string& name() const = 0;
  // Describes a prefix of [offset, offset + length) (length >= 1, within the disk): calls
  // `done` once with its length (1..length) and flags, on the disk's executor or any thread
  // (the server dispatches back to its own).
  virtual void status(uint64_t offset, uint64_t length, StatusHandler done) = 0;
};

// `base:allocation`: NBD_STATE_HOLE where no image of the chain holds the range (or it is a
// zero cluster without data), NBD_STATE_ZERO where it reads as zeros. Every export has it.
VD_API std::shared_ptr<MetaContext> base_allocation_context(std::shared_ptr<Disk> disk);
// `qemu:allocation-depth` (qemu-nbd -A): 0 where no image of the chain holds the range, 1
// where the top holds it, 2 its backing file, and so on.
VD_API std::shared_ptr<MetaContext> allocation_depth_context(std::shared_ptr<Disk> disk);
// `qemu:dirty-bitmap:NAME` (qemu-nbd -B NAME): flag 1 where the top image's persistent
// bitmap NAME marks the range dirty (docs/bitmaps.md). Refused, in qemu-nbd's words, when the
// top has no such bitmap or it is inconsistent (found in use after a crash). Put it in
// Export::contexts.
VD_API Result<std::shared_ptr<MetaContext>> dirty_bitmap_context(std::shared_ptr<Disk> disk,
                                                                 const std::string& bitmap);

struct ExportLimits {
  uint32_t min_block = 1;           // NBD_INFO_BLOCK_SIZE minimum
  uint32_t preferred_block = 4096;  // preferred
  uint32_t max_payload = 32u << 20; // maximum request payload (reads, writes); larger is EINVAL
};

// Writes of buffers that are all zeros (qemu's detect-zeroes): `on` turns them into zero
// writes, `unmap` into zero writes that may free space (needs Export::unmap).
enum class DetectZeroes : uint8_t { off, on, unmap };

struct Export {
  std::string name;         // "" is the default export (qemu-nbd's default too)
  std::string description;  // NBD_INFO_DESCRIPTION and NBD_OPT_LIST
  std::shared_ptr<Disk> disk;  // shared by every connection (see `borrow` for a Disk*)
  bool read_only = false;      // also forced when the disk is read-only
  // NBD_FLAG_CAN_MULTI_CONN: all connections share `disk`, so a flush on one makes the
  // writes completed on all of them durable; qemu-nbd advertises it when more than one
  // connection is allowed (-e N, N != 1), vd-nbd does the same.
  bool multi_conn = true;
  // WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO succeeds only when true (the top image can mark
  // ranges zero without writing data, QCOW2 v3); otherwise it fails with ENOTSUP at once.
  bool fast_zero = false;
  bool allocation_depth = false;  // also serve qemu:allocation-depth
  // qemu's discard mode. true (--discard=unmap): TRIM frees space and WRITE_ZEROES without
  // NO_HOLE may free it. false (qemu-nbd's default, discard=ignore): TRIM succeeds and changes
  // nothing (TRIM is advisory: the data may stay), zeroes keep the space they had.
  bool unmap = true;
  DetectZeroes detect_zeroes = DetectZeroes::off;
  // Contexts beyond base:allocation (and qemu:allocation-depth): e.g. qemu:dirty-bitmap:NAME.
  std::vector<std::shared_ptr<MetaContext>> contexts;
  ExportLimits limits;
};

// A shared_ptr that does not own: serve a Disk whose lifetime the embedder manages (it must
// outlive the server's stop()).
inline std::shared_ptr<Disk> borrow(Disk& disk) { return std::shared_ptr<Disk>(&disk, [](Disk*) {}); }

// x509 credentials as QEMU's tls-creds-x509 object lays them out in `dir`: ca-cert.pem,
// server-cert.pem, server-key.pem. With verify_peer (QEMU's default) the client must present
// a certificate signed by the CA.
struct TlsCredentials {
  std::string dir;
  bool verify_peer = true;
};

struct ServerOptions {
  // Clients served at once (qemu-nbd -e); 0: no limit. At the limit the server stops
  // accepting; the kernel's backlog holds the next client until one leaves.
  unsigned max_connections = 1;
  // Per connection: requests read and not yet answered, and their payload bytes. At either
  // limit the connection stops reading its socket until a reply has gone out.
  unsigned max_in_flight = 64;
  uint64_t max_in_flight_bytes = 64u << 20;
  // A client that has not finished option negotiation by then is dropped (qemu-nbd: 10 s).
  std::chrono::milliseconds handshake_timeout{10000};
  // When set, TLS is required: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD.
  std::optional<TlsCredentials> tls;
};

class VD_API Server {
 public:
  Server(boost::asio::any_io_executor ex, ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Before start(). Refuses a duplicate name, a missing disk, a name over 4096 bytes.
  Error add_export(Export e);
  // Listening sockets (any number, before or after start()). A unix socket path that exists
  // is replaced, as QEMU does, and removed again by stop().
  Error listen_unix(const std::string& path);
  Error listen_tcp(const std::string& address, uint16_t port);
  // A listening socket the caller opened (systemd socket activation: LISTEN_FDS); the server
  // takes ownership.
  Error adopt_listener(int fd);
  // Loads the TLS credentials (when any) and starts accepting.
  Error start();
  // Graceful stop: stop accepting, drop clients still negotiating, let every connection
  // answer the requests it has read (and read no more), close them, flush every export's
  // disk; then `done` runs on the server's executor with the first flush error. Closing the
  // disks is the owner's job (Disk::async_close).
  void stop(std::function<void(Error)> done);
  // Called on the server's executor each time the last connection goes away (vd-nbd without
  // --persistent exits then).
  void on_idle(std::function<void()> fn);

  size_t connections() const;
  // The TCP ports actually bound (listen_tcp with port 0 picks one), in listen order.
  std::vector<uint16_t> tcp_ports() const;

  struct Impl;

 private:
  friend VD_API Error serve_fd(Server& server, int fd);
  std::shared_ptr<Impl> impl_;
};

// Serves one connection already open (a socketpair in tests, an inetd-style fd): the
// handshake, then transmission, as an accepted client. The server takes ownership of `fd`.
// Not counted against max_connections.
VD_API Error serve_fd(Server& server, int fd);

}  // namespace vd::nbd
