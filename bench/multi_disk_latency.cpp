// multi_disk_latency: does one busy disk hurt the other disks sharing its executor?
//
// Four QCOW2 disks on ONE vd::Runtime (one io_context run by this thread; its thread pool
// does the file I/O). Three "readers" each keep DEPTH 4 KiB random reads in flight (a new
// read is issued as soon as one completes) and record every read's latency, submit to
// completion, on steady_clock. The fourth disk, the "writer", does 64 KiB sequential
// allocating writes into an empty image (4 in flight) with a Disk::flush every
// --flush-every MiB. Two phases in the same run: readers alone, then readers + writer.
// A read's latency includes the time its completion waits for the executor, which is the
// point: work the writer does on the executor (metadata updates, synchronous flushes)
// shows up as read latency on the other disks. The figure of merit is
// p99(with writer) / p99(without).
//
// Build and run (Release, no sanitizers; needs qemu-img and qemu-io to make the images):
//   cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DVD_BENCH=ON -DVD_TESTS=OFF
//   cmake --build build-bench --target multi_disk_latency
//   build-bench/bench/multi_disk_latency --seconds 5
// Options: --dir DIR (default: a fresh directory under /dev/shm if it has room, else /tmp;
// removed at exit unless --keep), --seconds N per phase (5), --size MiB of each reader
// image (256), --depth N reads in flight per reader (8), --flush-every MiB (64; 0 = never),
// --writer-depth N (4), --writer-size GiB virtual size of the writer image (16), --io-threads
// N (0 = the Runtime's default), --keep. On tmpfs the writer allocates up to ~2 GiB/s of RAM:
// 5 s phases fill ~10 GiB. The load average is printed before and after: wall-clock
// latencies on a shared machine move with it.
#include <sys/statvfs.h>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "vd/disk.h"
#include "vd/error.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;
constexpr uint64_t kMiB = 1ull << 20;
constexpr size_t kReadSize = 4096;
constexpr size_t kWriteSize = 64 * 1024;
constexpr std::byte kReaderPattern{0x5a};

struct Config {
  std::string dir;
  unsigned seconds = 5, depth = 8, writer_depth = 4, io_threads = 0;
  uint64_t size_mib = 256, flush_every_mib = 64, writer_gib = 16;
  bool keep = false;
};

double micros(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string s;
  std::getline(f, s);
  return s;
}

// State shared by every disk of the running phase. Everything runs on the one executor
// thread, so no locking.
struct Phase {
  bool stopping = false;        // the timer fired: issue nothing new, drain
  bool flush_in_flight = false;
  uint64_t flush_epoch = 0;     // bumped at every flush start and end
  unsigned active = 0;          // requests in flight on all disks
  vd::Error error;
  vd::Completion done;          // Runtime::wait's completion, run once drained
  Clock::time_point start, last_completion;

  void fail(const vd::Error& e) {
    if (!error) error = e;
    stopping = true;
  }
  // Called last by every completion (after it re-issued), so `active` only reaches 0 once
  // nothing will be issued any more.
  void finish_one() {
    --active;
    last_completion = Clock::now();
    if (stopping && active == 0 && done) {
      auto d = std::move(done);
      d(error);
    }
  }
};

// Latencies of the reads of one phase (all readers together).
struct ReadStats {
  std::vector<float> us;
  uint64_t overlapped = 0;  // reads during which a flush of the writer was in flight
  double max_overlapped_us = 0, max_other_us = 0;
  uint64_t bad_data = 0;
};

struct Reader {
  vd::Disk& disk;
  Phase* phase = nullptr;
  ReadStats* stats = nullptr;
  std::mt19937_64 rng;
  std::uniform_int_distribution<uint64_t> block;
  std::vector<std::vector<std::byte>> bufs;  // one per slot: a slot's buffer is busy until its read completes

  Reader(vd::Disk& d, unsigned depth, uint64_t seed)
      : disk(d), rng(seed), block(0, d.size() / kReadSize - 1),
        bufs(depth, std::vector<std::byte>(kReadSize)) {}

  void start(Phase& p, ReadStats& s) {
    phase = &p;
    stats = &s;
    for (size_t slot = 0; slot < bufs.size(); ++slot) issue(slot);
  }

  void issue(size_t slot) {
    if (phase->stopping) return;
    uint64_t off = block(rng) * kReadSize;
    auto t0 = Clock::now();
    uint64_t epoch = phase->flush_epoch;
    bool flushing = phase->flush_in_flight;
    ++phase->active;
    disk.read(off, bufs[slot], [this, slot, t0, epoch, flushing](vd::Error e) {
      double us = micros(Clock::now() - t0);
      if (e) phase->fail(e.wrap("read"));
      stats->us.push_back(static_cast<float>(us));
      // A flush started, ended or was running during this read.
      if (flushing || phase->flush_in_flight || phase->flush_epoch != epoch) {
        ++stats->overlapped;
        stats->max_overlapped_us = std::max(stats->max_overlapped_us, us);
      } else {
        stats->max_other_us = std::max(stats->max_other_us, us);
      }
      auto& b = bufs[slot];
      if (b.front() != kReaderPattern || b.back() != kReaderPattern) ++stats->bad_data;
      issue(slot);
      phase->finish_one();
    });
  }
};

struct Writer {
  vd::Disk& disk;
  Phase* phase = nullptr;
  unsigned depth;
  uint64_t flush_every;
  const std::vector<std::byte> buf = std::vector<std::byte>(kWriteSize, std::byte{0xa5});  // the writer's own
  uint64_t pos = 0, since_flush = 0, bytes = 0, flushes = 0;
  unsigned in_flight = 0;
  bool flushing = false, wrapped = false;
  double max_flush_ms = 0, total_flush_ms = 0;

  Writer(vd::Disk& d, unsigned dep, uint64_t every) : disk(d), depth(dep), flush_every(every) {}

  void start(Phase& p) {
    phase = &p;
    fill();
  }

  void fill() {
    while (!phase->stopping && !flushing && in_flight < depth) {
      if (flush_every && since_flush >= flush_every) {
        // Like a guest's flush barrier (and qemu-img bench): let the writes drain, flush,
        // then go on. The last write's completion comes back here with in_flight == 0.
        if (in_flight == 0) start_flush();
        return;
      }
      uint64_t off = pos;
      pos += kWriteSize;
      if (pos + kWriteSize > disk.size()) {
        pos = 0;  // from here on the writes overwrite and no longer allocate: reported
        wrapped = true;
      }
      since_flush += kWriteSize;
      ++in_flight;
      ++phase->active;
      disk.write(off, buf, 0, [this](vd::Error e) {
        --in_flight;
        if (e) phase->fail(e.wrap("write"));
        else bytes += kWriteSize;
        fill();
        phase->finish_one();
      });
    }
  }

  void start_flush() {
    flushing = true;
    phase->flush_in_flight = true;
    ++phase->flush_epoch;
    ++phase->active;
    auto t0 = Clock::now();
    disk.flush([this, t0](vd::Error e) {
      double ms = micros(Clock::now() - t0) / 1000;
      ++flushes;
      total_flush_ms += ms;
      max_flush_ms = std::max(max_flush_ms, ms);
      flushing = false;
      phase->flush_in_flight = false;
      ++phase->flush_epoch;
      since_flush = 0;
      if (e) phase->fail(e.wrap("flush"));
      fill();
      phase->finish_one();
    });
  }
};

struct PhaseResult {
  ReadStats reads;
  double seconds = 0;
  uint64_t writer_bytes = 0, flushes = 0;
  double max_flush_ms = 0, total_flush_ms = 0;
};

// Runs the readers (and the writer if given) for `seconds`, then drains.
vd::Error run_phase(vd::Runtime& rt, std::vector<std::unique_ptr<Reader>>& readers, Writer* writer,
                    unsigned seconds, PhaseResult& out) {
  Phase phase;
  boost::asio::steady_timer timer(rt.executor());
  uint64_t bytes0 = writer ? writer->bytes : 0, flushes0 = writer ? writer->flushes : 0;
  double flush_ms0 = writer ? writer->total_flush_ms : 0;
  if (writer) writer->max_flush_ms = 0;
  vd::Error err = rt.wait([&](vd::Completion done) {
    phase.done = std::move(done);
    phase.start = phase.last_completion = Clock::now();
    for (auto& r : readers) r->start(phase, out.reads);
    if (writer) writer->start(phase);
    timer.expires_after(std::chrono::seconds(seconds));
    timer.async_wait([&](const boost::system::error_code&) {
      phase.stopping = true;
      // Nothing in flight (cannot happen with depth >= 1, but never hang on it).
      if (phase.active == 0 && phase.done) {
        auto d = std::move(phase.done);
        d(phase.error);
      }
    });
  });
  out.seconds = std::chrono::duration<double>(phase.last_completion - phase.start).count();
  if (writer) {
    out.writer_bytes = writer->bytes - bytes0;
    out.flushes = writer->flushes - flushes0;
    out.total_flush_ms = writer->total_flush_ms - flush_ms0;
    out.max_flush_ms = writer->max_flush_ms;
  }
  return err;
}

double percentile(const std::vector<float>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * static_cast<double>(sorted.size())));
  return sorted[i];
}

// Prints one phase; returns its p99.
double report(const char* name, PhaseResult& r, bool with_writer) {
  auto& v = r.reads.us;
  std::sort(v.begin(), v.end());
  double p99 = percentile(v, 0.99);
  std::printf("%-15s %9.0f %8.0f %8.0f %8.0f %9.0f", name, static_cast<double>(v.size()) / r.seconds,
              percentile(v, 0.50), p99, percentile(v, 0.999), v.empty() ? 0.0 : double(v.back()));
  if (with_writer) {
    std::printf(" | %7.1f %7llu %9.2f %9.2f", static_cast<double>(r.writer_bytes) / kMiB / r.seconds,
                static_cast<unsigned long long>(r.flushes), r.max_flush_ms,
                r.flushes ? r.total_flush_ms / static_cast<double>(r.flushes) : 0.0);
  }
  std::printf("\n");
  return p99;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

bool run(const std::string& cmd) {
  if (std::system(cmd.c_str()) == 0) return true;
  std::fprintf(stderr, "multi_disk_latency: failed: %s\n", cmd.c_str());
  return false;
}

// A reader image: every cluster allocated and holding the pattern, so reads hit data.
bool make_reader_image(const std::string& path, uint64_t size_mib) {
  if (!run("qemu-img create -q -f qcow2 " + quote(path) + " " + std::to_string(size_mib) + "M"))
    return false;
  std::string cmd = "qemu-io -f qcow2";
  for (uint64_t at = 0; at < size_mib; at += 256)  // qemu-io caps one request's length
    cmd += " -c 'write -q -P 0x5a " + std::to_string(at) + "M " +
           std::to_string(std::min<uint64_t>(256, size_mib - at)) + "M'";
  return run(cmd + " " + quote(path));
}

uint64_t free_bytes(const std::string& dir) {
  struct statvfs st {};
  if (statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

int usage() {
  std::fprintf(stderr,
               "usage: multi_disk_latency [--dir DIR] [--seconds N] [--size MiB] [--depth N]\n"
               "          [--flush-every MiB] [--writer-depth N] [--writer-size GiB]\n"
               "          [--io-threads N] [--keep]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto num = [&](auto& field) {
      if (i + 1 >= argc) return false;
      char* end = nullptr;
      auto v = std::strtoull(argv[++i], &end, 10);
      field = static_cast<std::remove_reference_t<decltype(field)>>(v);
      return *end == 0;
    };
    bool ok = true;
    if (a == "--dir" && i + 1 < argc) cfg.dir = argv[++i];
    else if (a == "--seconds") ok = num(cfg.seconds) && cfg.seconds > 0;
    else if (a == "--size") ok = num(cfg.size_mib) && cfg.size_mib > 0;
    else if (a == "--depth") ok = num(cfg.depth) && cfg.depth > 0;
    else if (a == "--flush-every") ok = num(cfg.flush_every_mib);
    else if (a == "--writer-depth") ok = num(cfg.writer_depth) && cfg.writer_depth > 0;
    else if (a == "--writer-size") ok = num(cfg.writer_gib) && cfg.writer_gib > 0;
    else if (a == "--io-threads") ok = num(cfg.io_threads);
    else if (a == "--keep") cfg.keep = true;
    else ok = false;
    if (!ok) return usage();
  }

  // Where the images go. tmpfs keeps the storage out of the measurement; it needs room
  // for the readers and whatever the writer allocates (bounded by its virtual size).
  bool made_dir = cfg.dir.empty();
  if (made_dir) {
    uint64_t need = 3 * cfg.size_mib * kMiB + (cfg.writer_gib << 30) + (1ull << 30);
    std::string base = free_bytes("/dev/shm") >= need ? "/dev/shm" : "/tmp";
    std::string tmpl = base + "/vd-multi-disk-XXXXXX";
    if (!mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      return 1;
    }
    cfg.dir = tmpl;
  }
  std::vector<std::string> paths;
  for (int i = 0; i < 3; ++i) paths.push_back(cfg.dir + "/reader" + std::to_string(i) + ".qcow2");
  paths.push_back(cfg.dir + "/writer.qcow2");
  auto cleanup = [&] {
    if (cfg.keep) return;
    std::error_code ec;
    for (auto& p : paths) fs::remove(p, ec);
    if (made_dir) fs::remove(cfg.dir, ec);
  };

  std::printf("images in %s: 3 readers of %llu MiB (depth %u, 4 KiB random reads), writer %llu GiB "
              "(64 KiB sequential writes, depth %u, flush every %llu MiB)\n",
              cfg.dir.c_str(), static_cast<unsigned long long>(cfg.size_mib), cfg.depth,
              static_cast<unsigned long long>(cfg.writer_gib), cfg.writer_depth,
              static_cast<unsigned long long>(cfg.flush_every_mib));
  for (int i = 0; i < 3; ++i)
    if (!make_reader_image(paths[i], cfg.size_mib)) return cleanup(), 1;
  if (!run("qemu-img create -q -f qcow2 " + quote(paths[3]) + " " + std::to_string(cfg.writer_gib) + "G"))
    return cleanup(), 1;

  int rc = 0;
  {
    vd::Runtime rt(cfg.io_threads);  // the one executor all four disks share
    vd::Registry registry = vd::Registry::builtin();
    std::vector<std::unique_ptr<vd::Disk>> disks;
    for (int i = 0; i < 4; ++i) {
      vd::DiskOpenOptions o;
      o.format = "qcow2";
      o.flags = i < 3 ? unsigned(vd::open_read_only) : 0u;
      auto d = vd::Disk::open(paths[i], o, registry, rt.files());
      if (!d) {
        std::fprintf(stderr, "multi_disk_latency: open %s: %s\n", paths[i].c_str(),
                     d.error().message().c_str());
        return cleanup(), 1;
      }
      disks.push_back(std::move(*d));
    }
    std::vector<std::unique_ptr<Reader>> readers;
    for (int i = 0; i < 3; ++i) readers.push_back(std::make_unique<Reader>(*disks[i], cfg.depth, 1234 + i));
    Writer writer(*disks[3], cfg.writer_depth, cfg.flush_every_mib * kMiB);

    std::printf("load average before: %s\n", loadavg().c_str());
    PhaseResult warm, alone, mixed;
    // One unreported second first: page cache, L2 cache and allocator warm-up.
    vd::Error err = run_phase(rt, readers, nullptr, 1, warm);
    if (!err) err = run_phase(rt, readers, nullptr, cfg.seconds, alone);
    if (!err) err = run_phase(rt, readers, &writer, cfg.seconds, mixed);
    std::string load_after = loadavg();
    if (err) {
      std::fprintf(stderr, "multi_disk_latency: %s\n", err.message().c_str());
      rc = 1;
    } else {
      std::printf("%-15s %9s %8s %8s %8s %9s | %7s %7s %9s %9s\n", "phase (readers)", "reads/s",
                  "p50 us", "p99 us", "p99.9 us", "max us", "w MiB/s", "flushes", "maxfl ms",
                  "avgfl ms");
      double p99_alone = report("alone", alone, false);
      double p99_mixed = report("with writer", mixed, true);
      std::printf("p99 ratio (with writer / alone): %.2f\n", p99_alone > 0 ? p99_mixed / p99_alone : 0.0);
      std::printf("with writer: %llu of %zu reads overlapped a flush, longest %.0f us; longest "
                  "other read %.0f us\n",
                  static_cast<unsigned long long>(mixed.reads.overlapped), mixed.reads.us.size(),
                  mixed.reads.max_overlapped_us, mixed.reads.max_other_us);
      if (writer.wrapped)
        std::printf("note: the writer reached the end of its image and wrapped: later writes did "
                    "not allocate (use a larger --writer-size)\n");
      uint64_t bad = warm.reads.bad_data + alone.reads.bad_data + mixed.reads.bad_data;
      if (bad) {
        std::printf("ERROR: %llu reads returned data other than the pattern\n",
                    static_cast<unsigned long long>(bad));
        rc = 1;
      }
    }
    std::printf("load average after: %s\n", load_after.c_str());
    for (auto& d : disks) {
      if (auto e = d->close()) {
        std::fprintf(stderr, "multi_disk_latency: close: %s\n", e.message().c_str());
        rc = 1;
      }
    }
  }
  cleanup();
  return rc;
}
