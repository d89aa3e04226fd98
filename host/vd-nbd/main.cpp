// vd-nbd: serves disk chains over NBD with qemu-nbd's command line (docs/nbd.md). One
// thread runs the io_context on which the disks and the server live (no thread hop between
// a request and its Disk call); the Runtime's pool does the blocking file I/O.
//
// Lifecycle: open every image, listen, then (with --fork) let the parent exit 0; serve until
// SIGTERM/SIGINT, or, without --persistent, until the last client has gone. Then stop
// accepting, answer what is in flight, flush and close every disk, exit 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "host/tool_passphrase.h"
#include "host/vd-nbd/options.h"
#include "vd/disk.h"
#include "vd/nbd.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

int fail(const std::string& msg) {
  std::cerr << "vd-nbd: " << msg << std::endl;
  return 1;
}

// systemd socket activation: LISTEN_PID names us and LISTEN_FDS counts fds from 3.
std::vector<int> activation_fds() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* n = std::getenv("LISTEN_FDS");
  if (!pid || !n || std::strtol(pid, nullptr, 10) != getpid()) return {};
  std::vector<int> fds;
  for (long i = 0; i < std::strtol(n, nullptr, 10); ++i) fds.push_back(3 + static_cast<int>(i));
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return fds;
}

// --fork: the parent waits until the child says it listens (one byte on the pipe) and exits
// 0, or exits with the child's status when the child fails first. Done before any thread
// exists. Returns the write end in the child.
int fork_server() {
  int p[2];
  if (pipe(p) != 0) std::exit(fail("pipe failed"));
  pid_t pid = fork();
  if (pid < 0) std::exit(fail("fork failed"));
  if (pid > 0) {
    close(p[1]);
    char c;
    ssize_t n;
    do n = read(p[0], &c, 1); while (n < 0 && errno == EINTR);
    if (n == 1) std::_Exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    std::_Exit(WIFEXITED(status) && WEXITSTATUS(status) ? WEXITSTATUS(status) : 1);
  }
  close(p[0]);
  setsid();
  return p[1];
}

// A new QCOW2 over `image` (recorded by absolute path) in $TMPDIR or /var/tmp.
vd::Result<std::string> make_temp_overlay(const vd::Registry& registry, vd::Runtime& rt, const std::string& image,
                                          const std::optional<std::string>& format) {
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp && *tmp ? tmp : "/var/tmp") + "/vd-nbd.XXXXXX";
  int fd = mkstemp(path.data());
  if (fd < 0) return vd::Error::from_errno(errno, "creating temporary overlay", path);
  close(fd);
  unlink(path.c_str());
  char* abs = realpath(image.c_str(), nullptr);
  if (!abs) return vd::Error::from_errno(errno, "open", image);
  std::string backing = abs;
  free(abs);
  vd::CreateOptions c;
  c.backing_format = format;
  auto top = vd::create_overlay(registry, rt.files(), path, backing, c, "qcow2");
  if (!top) return top.error();
  if (vd::Error e = (*top)->close(false)) return e;
  return path;
}

void detach_stdio() {
  int fd = open("/dev/null", O_RDWR);
  if (fd < 0) return;
  dup2(fd, 0);
  dup2(fd, 1);
  dup2(fd, 2);
  if (fd > 2) close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = vdnbd::parse_options(argc, argv);
  if (!parsed) {
    fail(parsed.error().message());
    if (parsed.error().is(vd::Errc::invalid_argument)) std::cerr << "Try `vd-nbd --help' for more information." << std::endl;
    return 1;
  }
  vdnbd::Options& o = *parsed;
  if (o.help) {
    std::cout << vdnbd::kUsage;
    return 0;
  }
  if (o.version) {
    std::cout << "vd-nbd 0.1.0 (NBD server of vd)\n";
    return 0;
  }
  std::vector<int> activated = activation_fds();
  if (!activated.empty() && (o.socket || o.bind || o.port)) {
    return fail("Cannot use -k, -b or -p with socket activation");
  }
  std::optional<std::string> passphrase;
  if (o.passphrase_file) {
    auto p = vd::tools::read_passphrase_file(*o.passphrase_file);
    if (!p) return fail(p.error().message());
    passphrase = *p;
  }
  signal(SIGPIPE, SIG_IGN);
  int ready_fd = o.fork ? fork_server() : -1;

  vd::Runtime rt(0, o.aio);
  vd::Registry registry = vd::Registry::builtin();
  vd::nbd::ServerOptions sopts;
  sopts.max_connections = o.shared;
  sopts.handshake_timeout = std::chrono::seconds(o.handshake_seconds);
  if (o.tls_dir) sopts.tls = vd::nbd::TlsCredentials{*o.tls_dir, o.tls_verify_peer};
  vd::nbd::Server server(rt.executor(), sopts);

  std::vector<std::shared_ptr<vd::Disk>> disks;
  for (auto img : o.images) {
    std::string temp_overlay;
    if (o.snapshot_overlay) {
      // -s: writes go to a temporary QCOW2 over the image, removed once open (as qemu-nbd).
      auto t = make_temp_overlay(registry, rt, img.path, o.format);
      if (!t) return fail(t.error().message());
      temp_overlay = *t;
      img.path = temp_overlay;
    }
    vd::DiskOpenOptions d;
    d.format = o.format;
    d.flags = (o.read_only ? vd::open_read_only : 0u) | (o.format ? vd::open_format_given : 0u) |
              (o.force_share ? vd::open_force_share : 0u);
    d.passphrase = passphrase;
    d.snapshot = o.snapshot;
    d.cache = o.cache;
    if (!temp_overlay.empty()) d.format = "qcow2";
    auto disk = vd::Disk::open(img.path, d, registry, rt.files());
    if (!temp_overlay.empty()) unlink(temp_overlay.c_str());
    if (!disk) {
      vd::Error e = disk.error();
      if (e.path().empty()) e.image(img.path);
      return fail(e.message());
    }
    std::shared_ptr<vd::Disk> shared(std::move(*disk));
    vd::nbd::Export x;
    x.name = img.name;
    x.description = img.description;
    x.disk = shared;
    x.read_only = o.read_only;
    x.multi_conn = o.shared != 1;  // qemu-nbd's rule
    x.allocation_depth = o.allocation_depth;
    for (const std::string& name : o.bitmaps) {
      auto ctx = vd::nbd::dirty_bitmap_context(shared, name);
      if (!ctx) return fail(ctx.error().message());
      x.contexts.push_back(*ctx);
    }
    x.unmap = o.discard_unmap;
    x.detect_zeroes = o.detect_zeroes;
    const vd::Image& top = shared->image(0);
    x.fast_zero = top.backend().name() == "qcow2" && top.version() >= 3;
    if (vd::Error e = server.add_export(std::move(x))) return fail(e.message());
    disks.push_back(shared);
  }

  vd::Error listen_error;
  if (!activated.empty()) {
    for (int fd : activated) {
      if ((listen_error = server.adopt_listener(fd))) break;
    }
  } else if (o.socket) {
    listen_error = server.listen_unix(*o.socket);
  } else {
    listen_error = server.listen_tcp(o.bind.value_or("0.0.0.0"), o.port.value_or(10809));
  }
  if (listen_error) return fail(listen_error.message());
  if (vd::Error e = server.start()) return fail(e.message());

  if (o.pid_file) {
    std::ofstream pf(*o.pid_file, std::ios::trunc);
    if (!pf) return fail("Failed to write pid file '" + *o.pid_file + "'");
    pf << getpid() << "\n";
  }
  if (ready_fd >= 0) {
    detach_stdio();
    char c = 0;
    if (write(ready_fd, &c, 1) != 1) return 1;
    close(ready_fd);
  }

  int exit_code = 0;
  bool stopping = false;
  boost::asio::signal_set signals(rt.context(), SIGTERM, SIGINT, SIGHUP);
  auto shutdown = [&] {
    if (stopping) return;
    stopping = true;
    signals.cancel();
    server.stop([&](vd::Error e) {
      if (e) {
        std::cerr << "vd-nbd: " << e.message() << std::endl;
        exit_code = 1;
      }
      // Every request is answered; close each disk (flush, then close the images).
      auto left = std::make_shared<size_t>(disks.size());
      if (disks.empty()) return rt.context().stop();
      for (auto& d : disks) {
        d->async_close(vd::Completion([&, left](vd::Error ce) {
          if (ce) {
            std::cerr << "vd-nbd: " << ce.message() << std::endl;
            exit_code = 1;
          }
          if (--*left == 0) rt.context().stop();
        }));
      }
    });
  };
  signals.async_wait([&](boost::system::error_code ec, int) {
    if (!ec) shutdown();
  });
  if (!o.persistent) server.on_idle([&] { shutdown(); });
  rt.context().run();
  if (o.pid_file) unlink(o.pid_file->c_str());
  return exit_code;
}
