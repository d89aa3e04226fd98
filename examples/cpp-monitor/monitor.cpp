// A VM-monitor-style block device on vd, the shape a monitor's storage layer takes:
//
//   - one io_context run by several I/O threads; each disk on a strand of its own, so its
//     state is touched by one thread at a time while disks run in parallel;
//   - a "guest" per disk: a C++20 coroutine issuing writes, reads and flushes with
//     co_await (use_awaitable), checking what it reads;
//   - a 3-deep chain (base <- snapshot <- active overlay), made with vd's own create;
//   - hot-unplug while the guest still has I/O queued: stop issuing, drain, close.
//
// Usage: vd_cpp_monitor DIR      (DIR: an empty folder for the images)
// Exits 0 when every check passed.
#include <utility>  // before Boost 1.74's awaitable.hpp, which uses std::exchange without it

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <vd/disk.h>
#include <vd/registry.h>
#include <vd/runtime.h>

namespace asio = boost::asio;

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// base (1 MiB of 0x11) <- mid (0x22 over its second MiB) <- top (empty): made with vd.
bool make_chain(const vd::Registry& reg, vd::IoProvider& io, vd::Runtime& rt, const std::string& dir) {
  const vd::Backend* qcow2 = reg.find("qcow2");
  const char* names[] = {"base.qcow2", "mid.qcow2", "top.qcow2"};
  for (int i = 0; i < 3; ++i) {
    vd::CreateOptions o;
    o.size = 64u << 20;
    if (i > 0) {
      o.backing_file = names[i - 1];  // relative to the child's folder
      o.backing_format = "qcow2";
    }
    auto img = qcow2->create(dir + "/" + names[i], o, io);
    if (!img) {
      std::fprintf(stderr, "create %s: %s\n", names[i], img.error().message().c_str());
      return false;
    }
    if (i < 2) {  // some data in base and mid, so the chain matters
      std::vector<std::byte> fill(1u << 20, std::byte(0x11 * (i + 1)));
      if (vd::Error e = vd::sync_image_write(rt, **img, i * (1u << 20), fill)) {
        std::fprintf(stderr, "fill %s: %s\n", names[i], e.message().c_str());
        return false;
      }
    }
    (*img)->close(false);
  }
  return true;
}

// The guest of one disk: rounds of write, read-back and, now and then, a flush, until the
// monitor unplugs the disk. Runs on the disk's strand.
asio::awaitable<void> guest(vd::Disk& disk, std::atomic<bool>& unplug, int seed, int& rounds) {
  std::vector<std::byte> out(8192), in(8192);
  for (int i = 0; !unplug.load(); ++i) {
    const uint64_t off = (uint64_t(seed) << 24) + uint64_t(i % 512) * 12345;
    std::memset(out.data(), (seed * 31 + i) & 0xff, out.size());
    co_await disk.async_write(off, out, asio::use_awaitable);
    co_await disk.async_read(off, in, asio::use_awaitable);
    expect(in == out, "a guest reads back what it wrote");
    if (i % 16 == 15) co_await disk.async_flush(asio::use_awaitable);
    ++rounds;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const vd::Registry reg = vd::Registry::builtin();
  {
    vd::Runtime setup(1);  // images are made before the I/O threads start
    if (!make_chain(reg, setup.files(), setup, dir)) return 1;
  }

  // The monitor's I/O: one io_context, two threads running it, a pool for blocking calls.
  asio::io_context ctx;
  asio::thread_pool pool(2);
  auto work = asio::make_work_guard(ctx);
  std::vector<std::thread> io_threads;
  for (int i = 0; i < 2; ++i) io_threads.emplace_back([&] { ctx.run(); });

  // Two disks over the same chain files would write the same top: open the chain once, and a
  // second, independent disk (its own overlay on the same base) beside it.
  {
    vd::CreateOptions o;
    o.size = 64u << 20;
    o.backing_file = "base.qcow2";
    o.backing_format = "qcow2";
    vd::Runtime setup(1);
    auto img = reg.find("qcow2")->create(dir + "/second.qcow2", o, setup.files());
    if (!img) return std::fprintf(stderr, "%s\n", img.error().message().c_str()), 1;
    (*img)->close(false);
  }
  struct Attached {
    vd::PosixIoProvider io;
    std::unique_ptr<vd::Disk> disk;
    std::atomic<bool> unplug{false};
    int rounds = 0;
    std::future<void> done;
    Attached(asio::any_io_executor ex, asio::thread_pool& p) : io(std::move(ex), p) {}
  };
  std::vector<std::unique_ptr<Attached>> disks;
  for (const char* name : {"top.qcow2", "second.qcow2"}) {
    auto a = std::make_unique<Attached>(asio::make_strand(ctx), pool);  // a strand per disk
    auto d = vd::Disk::open(dir + "/" + name, {}, reg, a->io);
    if (!d) return std::fprintf(stderr, "open %s: %s\n", name, d.error().message().c_str()), 1;
    a->disk = std::move(*d);
    std::printf("%s: %zu images deep, %llu MiB\n", name, a->disk->depth(),
                static_cast<unsigned long long>(a->disk->size() >> 20));
    disks.push_back(std::move(a));
  }
  expect(disks[0]->disk->depth() == 3, "the active overlay sees a 3-deep chain");

  // The chain reads through: base's first MiB, mid's second, zeros after.
  std::vector<std::byte> b(4096);
  disks[0]->disk->async_read(0, b, asio::use_future).get();
  expect(b[0] == std::byte(0x11), "base data through the chain");
  disks[0]->disk->async_read(1u << 20, b, asio::use_future).get();
  expect(b[0] == std::byte(0x22), "mid data through the chain");

  // The guests run on their disks' strands, from coroutines.
  for (size_t i = 0; i < disks.size(); ++i) {
    Attached& a = *disks[i];
    a.done = asio::co_spawn(a.disk->get_executor(), guest(*a.disk, a.unplug, int(i) + 1, a.rounds), asio::use_future);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  // Hot-unplug the first disk while its guest has a request in flight: stop the guest, drain
  // what is queued, close (flush + close every image of the chain).
  Attached& gone = *disks[0];
  gone.unplug = true;
  gone.done.get();
  gone.disk->async_drain(asio::use_future).get();
  gone.disk->async_close(asio::use_future).get();
  std::vector<std::byte> after(512);
  bool refused = false;
  try {
    gone.disk->async_read(0, after, asio::use_future).get();
  } catch (const boost::system::system_error& e) {
    refused = e.code().value() == int(vd::Errc::canceled);
  }
  expect(refused, "an unplugged disk refuses requests");
  std::printf("unplugged top.qcow2 after %d guest rounds; second.qcow2 still running\n", gone.rounds);

  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Attached& other = *disks[1];
  other.unplug = true;
  other.done.get();
  other.disk->async_close(asio::use_future).get();
  std::printf("second.qcow2 closed after %d guest rounds\n", other.rounds);
  expect(gone.rounds > 0 && other.rounds > 0, "both guests did I/O");

  disks.clear();
  work.reset();
  for (auto& t : io_threads) t.join();
  pool.join();
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
