#include "host/vdimg/copier.h"

#include <cstdlib>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace vdimg {
namespace {

// The first 16 bytes are zero and every byte equals the one 16 before it: all zero. memcmp
// is vectorised; a byte loop is not.
bool all_zero(const std::byte* p, size_t n) {
  const size_t head = std::min<size_t>(n, 16);
  for (size_t i = 0; i < head; ++i)
    if (p[i] != std::byte{0}) return false;
  return n <= 16 || std::memcmp(p, p + 16, n - 16) == 0;
}

struct Worker;

// qemu-img convert's words for a failed read or write: "error while reading at byte N:
// Input/output error" (the system error, EIO when there is none).
vd::Error qemu_error(const char* what, uint64_t at, const vd::Error& e) {
  const int err = e.system_errno() ? e.system_errno() : EIO;
  return vd::Error(e.code(), std::string("error while ") + what + " at byte " + std::to_string(at) + ": " +
                                 std::strerror(err));
}

// A part of a chunk and what to do with it: write its data, its zeros, or leave it (-B).
struct Piece {
  enum Kind { data, zero, leave };
  uint64_t start, end;  // within the chunk
  Kind kind;
};

// The last extent the source reported: [start, end) and what it holds.
struct KnownExtent {
  uint64_t start = 0, end = 0;
  Piece::Kind kind = Piece::zero;
  bool contains(uint64_t at) const { return at >= start && at < end; }
};

// The shared state of one copy. Workers hold a shared_ptr, so it lives until the last ends.
struct CopyJob : std::enable_shared_from_this<CopyJob> {
  vd::Disk& src;
  vd::Disk& dst;
  boost::asio::io_context& io;
  CopyOptions opts;
  // -r: when the copy started and how many bytes of writes were let through since.
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  uint64_t throttled_bytes = 0;
  uint64_t size;
  uint64_t next = 0;      // first byte not yet claimed by a worker
  uint64_t done_bytes = 0;
  unsigned active = 0;
  vd::Error first_error;
  vd::Completion finished;
  KnownExtent known;
  bool status_pending = false;  // a block_status question is out; these workers wait for it
  std::vector<std::shared_ptr<Worker>> status_waiters;
  // In-order writes: every chunk below `committed` is written (or needed no write). Chunks
  // past it that needed no write wait in `skipped` (start -> end); chunks with data wait in
  // `parked` (start -> their worker) until `committed` reaches them.
  uint64_t committed = 0;
  std::map<uint64_t, uint64_t> skipped;
  std::map<uint64_t, std::shared_ptr<Worker>> parked;

  CopyJob(vd::Disk& s, vd::Disk& d, boost::asio::io_context& c, CopyOptions o)
      : src(s), dst(d), io(c), opts(std::move(o)),
        size(std::min(s.size(), d.size() - std::min(d.size(), opts.dst_offset))) {}

  // How long a write of `bytes` must wait to keep within the rate limit.
  std::chrono::steady_clock::duration throttle(uint64_t bytes) {
    if (!opts.rate_limit) return {};
    const auto due = started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                   std::chrono::duration<double>(double(throttled_bytes) / double(opts.rate_limit)));
    throttled_bytes += bytes;
    const auto now = std::chrono::steady_clock::now();
    return due > now ? due - now : std::chrono::steady_clock::duration{};
  }

  void start();
  void fail(vd::Error e);
  void commit(uint64_t end);
  void worker_idle() {
    if (--active == 0) {
      auto done = std::move(finished);
      done(first_error);
    }
  }
};

struct Worker : std::enable_shared_from_this<Worker> {
  std::shared_ptr<CopyJob> job;
  // Allocated once per worker, uninitialised: every byte used is read into first. Page
  // aligned, so that with -t/-T none the transfers need no bounce buffer.
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<std::byte, Free>;
  static Buffer aligned(size_t n) {
    return Buffer(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096)));
  }
  Buffer buf;
  uint64_t off = 0, len = 0, scanned = 0;
  std::vector<Piece> pieces;  // what the source holds in the chunk, extent by extent
  bool have_data = false;      // buf holds the chunk's content
  // Runs of granules still to write: (start within the chunk, length, zeroes instead of data).
  struct Run { uint64_t start, length; bool zero; };
  std::vector<Run> runs;
  size_t run_index = 0;
  size_t pending = 0;      // compressed writes in flight
  vd::Error write_error;   // the first of them that failed

  explicit Worker(std::shared_ptr<CopyJob> j) : job(std::move(j)) {}

  void claim() {
    if (job->first_error || job->next >= job->size) return job->worker_idle();
    off = job->next;
    len = std::min(job->opts.chunk, job->size - off);
    job->next += len;
    scanned = 0;
    pieces.clear();
    have_data = false;
    runs.clear();
    run_index = 0;
    scan();
  }

  // Finds what the source holds in the chunk, extent by extent; a chunk with nothing to
  // write is done without reading it. The source is asked about the rest of the disk, and its
  // answer serves every chunk it covers; while a question is out, the other workers wait
  // for its answer instead of asking again.
  void scan() {
    if (job->first_error) return job->worker_idle();
    if (scanned < len) {
      const uint64_t at = off + scanned;
      if (job->known.contains(at)) return use_extent(job->known);
      if (job->status_pending) return job->status_waiters.push_back(shared_from_this());
      job->status_pending = true;
      auto self = shared_from_this();
      job->src.block_status(at, job->size - at, [self, at](vd::Error e, vd::DiskExtent x) {
        self->status_answered(at, std::move(e), x);
      });
      return;
    }
    bool any_data = false, any_zero = false;
    for (const auto& p : pieces) (p.kind == Piece::data ? any_data : any_zero) |= p.kind != Piece::leave;
    if (any_data || (any_zero && job->opts.min_sparse == 0)) return read_source();
    if (any_zero && !job->opts.target_is_zero) return plan();  // zeros to write, nothing to read
    ready();
  }

  void status_answered(uint64_t at, vd::Error e, const vd::DiskExtent& x) {
    job->status_pending = false;
    auto waiters = std::move(job->status_waiters);
    job->status_waiters.clear();
    if (!e && x.extent.length == 0) e = vd::Error(vd::Errc::internal, "empty extent");
    if (e) {
      error(std::move(e));  // the waiters are still active: the job cannot end here
    } else {
      job->known = KnownExtent{at, at + x.extent.length, kind_of(x)};
      use_extent(job->known);
    }
    for (auto& w : waiters) w->scan();
  }

  // qemu-img's view of an extent: data, zeros, or (-B) what the new backing file is left to
  // show: what the source's top image does not hold itself (when the source has a backing
  // file), and zeros past the end of the new backing file.
  Piece::Kind kind_of(const vd::DiskExtent& x) const {
    const bool data = x.level >= 0 && x.extent.kind == vd::Extent::Kind::data && !x.extent.zero_data;
    if (job->opts.overlay && job->src.depth() > 1 && x.level != 0) return Piece::leave;
    return data ? Piece::data : Piece::zero;
  }

  void use_extent(const KnownExtent& k) {
    uint64_t end = std::min(len, k.end - off);
    Piece::Kind kind = k.kind;
    if (kind == Piece::zero && job->opts.overlay) {
      const uint64_t from = job->opts.dst_offset + off;  // the chunk's place in the target
      const uint64_t past = job->opts.backing_size > from ? job->opts.backing_size - from : 0;
      if (scanned >= past) kind = Piece::leave;
      else end = std::min(end, past);
    }
    pieces.push_back({scanned, end, kind});  // one per extent: qemu-img's buffers
    scanned = end;
    scan();
  }

  void read_source() {
    if (!buf) buf = aligned(job->opts.chunk);
    auto self = shared_from_this();
    job->src.read(off, std::span(buf.get(), len), [self](vd::Error e) {
      if (e && self->job->opts.salvage) return self->salvage(0);
      if (e) return self->locate_read_error(0, std::move(e));
      self->have_data = true;
      self->plan();
    });
  }

  // A read of the chunk failed: qemu-img reads extent by extent and names the start of the
  // one that failed, so find it.
  void locate_read_error(size_t i, vd::Error first) {
    while (i < pieces.size() && pieces[i].kind != Piece::data) ++i;
    if (i >= pieces.size()) return error(qemu_error("reading", job->opts.dst_offset + off, first));
    auto self = shared_from_this();
    const uint64_t a = pieces[i].start, b = pieces[i].end;
    job->src.read(off + a, std::span(buf.get() + a, b - a), [self, i, a, first](vd::Error e) {
      if (e) return self->error(qemu_error("reading", self->job->opts.dst_offset + self->off + a, e));
      self->locate_read_error(i + 1, first);
    });
  }

  // --salvage: the chunk again, one sector at a time; a sector that cannot be read is
  // copied as zeros and reported (qemu-img's warning).
  void salvage(uint64_t at) {
    if (at >= len) {
      have_data = true;
      return plan();
    }
    const uint64_t n = std::min<uint64_t>(512, len - at);
    auto self = shared_from_this();
    job->src.read(off + at, std::span(buf.get() + at, n), [self, at, n](vd::Error e) {
      if (e) {
        std::memset(self->buf.get() + at, 0, n);
        const int err = e.system_errno() ? e.system_errno() : EIO;  // qemu-img's words
        if (self->job->opts.warn)
          self->job->opts.warn("error while reading offset " + std::to_string(self->off + at) + ": " +
                               std::strerror(err));
      }
      self->salvage(at + n);
    });
  }

  // What to write, piece by piece, as qemu-img's convert_co_write decides: data is written,
  // except the zeros inside it that qemu-img leaves out (zero_runs); zeros are left alone
  // on a target that reads as zeros and written as zeros on any other; -S 0 writes zeros
  // as data (a fully allocated target); -C writes data whole. (-B's "leave" pieces are
  // never written.) Sector-precise, as qemu-img writes.
  void plan() {
    if (job->opts.write_flags & vd::write_compressed) return plan_compressed();
    const bool write_zeros = !job->opts.target_is_zero, all = job->opts.min_sparse == 0;
    for (const auto& p : pieces) {
      if (p.kind == Piece::leave) continue;
      if (p.kind == Piece::zero) {
        if (all || write_zeros) add_run(p.start, p.end - p.start, !all);
        continue;
      }
      for (uint64_t at = p.start; at < p.end;) {
        auto [is_data, n] = all || job->opts.copy_data_whole ? std::pair{true, p.end - at} : zero_runs(at, p.end - at);
        if (is_data || write_zeros) add_run(at, n, !is_data);
        at += n;
      }
    }
    ready();
  }

  // Compressed clusters go whole (one granule, the target's cluster, per run: see
  // write_all): a cluster with anything to write is written, compressed, unless it is all
  // zeros (then as the plain path treats zeros).
  void plan_compressed() {
    const uint64_t g = job->opts.granule;
    for (uint64_t at = 0; at < len; at += g) {
      const uint64_t n = std::min(g, len - at);
      bool leave = true;
      for (const auto& p : pieces)
        if (p.kind != Piece::leave && p.start < at + n && p.end > at) leave = false;
      if (leave) continue;
      const bool zero = !have_data || all_zero(buf.get() + at, n);
      if (!zero || job->opts.min_sparse == 0) {
        if (!have_data) std::memset(buf.get() + at, 0, n);
        runs.push_back({at, n, false});
      } else if (!job->opts.target_is_zero) {
        runs.push_back({at, n, true});
      }
    }
    ready();
  }

  void add_run(uint64_t at, uint64_t n, bool zero) {
    if (!runs.empty() && runs.back().start + runs.back().length == at && runs.back().zero == zero)
      runs.back().length += n;
    else
      runs.push_back({at, n, zero});
  }

  // One sector-aligned run of data or zeros of the chunk's [at, at + n), the rule of
  // qemu-img's is_allocated_sectors: a run ends where the zero-ness changes, its end moved
  // to an alignment boundary (data rounds up, zeros round down; a zero run that does not
  // reach the boundary counts as data).
  std::pair<bool, uint64_t> classify(uint64_t at, uint64_t n) const {
    const uint64_t sector = 512, align = job->opts.granule;
    const bool zero = all_zero(buf.get() + at, std::min(sector, n));
    uint64_t i = std::min(sector, n);
    while (i < n && all_zero(buf.get() + at + i, std::min(sector, n - i)) == zero) i += sector;
    if (i >= n) return {!zero, n};
    const uint64_t tail = (job->opts.dst_offset + off + at + i) % align;
    if (tail == 0) return {!zero, i};
    if (!zero || i <= tail) return {true, std::min(i + align - tail, n)};
    return {false, i - tail};
  }

  // qemu-img's is_allocated_sectors_min: a leading zero run is left out; after data, only
  // zero runs of at least min_sparse bytes end it (shorter ones are written with the data).
  std::pair<bool, uint64_t> zero_runs(uint64_t at, uint64_t n) const {
    const uint64_t min = std::min(job->opts.min_sparse, n);
    auto [is_data, used] = classify(at, n);
    if (!is_data) return {false, used};
    for (uint64_t checked = used; checked < n;) {
      auto [d, r] = classify(at + checked, n - checked);
      checked += r;
      if (d) used = checked;
      else if (r >= min) break;
    }
    return {true, used};
  }

  // The chunk knows what it must write: write now, or wait for the chunks before it.
  void ready() {
    if (job->first_error) return job->worker_idle();
    if (!job->opts.in_order || off == job->committed) return write();
    if (runs.empty()) {
      job->skipped.emplace(off, off + len);
      return chunk_done();
    }
    job->parked.emplace(off, shared_from_this());
  }

  // Plain writes go one run after the other, so the target grows in guest order.
  void write_next() {
    if (run_index >= runs.size()) return written();
    auto self = shared_from_this();
    const uint64_t at = job->opts.dst_offset + off + runs[run_index].start;
    issue(runs[run_index++], [self, at](vd::Error e) {
      if (e) return self->error(qemu_error("writing", at, e));
      self->write_next();
    });
  }

  // Compressed writes go one cluster per request, all at once: the backend compresses on
  // the event-loop thread and then waits for the file write, so one request at a time would
  // leave that thread idle during every write.
  void write_all() {
    if (runs.empty()) return written();
    pending = runs.size();
    auto self = shared_from_this();
    for (size_t i = 0; i < runs.size(); ++i)
      issue(runs[i], [self](vd::Error e) { self->run_landed(std::move(e)); });
  }

  void run_landed(vd::Error e) {
    if (e && !write_error) write_error = std::move(e);
    if (--pending > 0) return;
    if (write_error) return error(std::exchange(write_error, vd::Error()));
    written();
  }

  // Waits for the rate limit (-r), then writes.
  void issue(const Run& r, vd::Completion next) {
    const auto wait = job->throttle(r.length);
    if (wait == std::chrono::steady_clock::duration{}) return issue_now(r, std::move(next));
    auto timer = std::make_shared<boost::asio::steady_timer>(job->io, wait);
    auto self = shared_from_this();
    timer->async_wait([self, timer, r, next = std::move(next)](const boost::system::error_code&) mutable {
      self->issue_now(r, std::move(next));
    });
  }

  void issue_now(const Run& r, vd::Completion next) {
    const uint64_t at = job->opts.dst_offset + off + r.start;
    if (r.zero) return job->dst.write_zeroes(at, r.length, job->opts.zero_flags, std::move(next));
    job->dst.write(at, std::span(buf.get() + r.start, r.length),
                   job->opts.write_flags, std::move(next));
  }

  void write() {
    if (job->opts.write_flags & vd::write_compressed) return write_all();
    write_next();
  }

  // Lets the next chunk in line write before this worker claims another one.
  void written() {
    if (job->opts.in_order) job->commit(off + len);
    chunk_done();
  }

  void chunk_done() {
    job->done_bytes += len;
    if (job->opts.progress) job->opts.progress(job->done_bytes, job->size);
    claim();
  }

  void error(vd::Error e) {
    job->fail(std::move(e));
    job->worker_idle();
  }
};

// All workers count as active before the first starts, so the job cannot finish early.
void CopyJob::start() {
  active = opts.workers;
  for (unsigned i = 0; i < opts.workers; ++i)
    std::make_shared<Worker>(shared_from_this())->claim();
}

// Parked workers wait for a turn that will not come now: they end here. The failing worker
// is still active, so this cannot complete the job.
void CopyJob::fail(vd::Error e) {
  if (!first_error) first_error = std::move(e);
  auto waiting = std::move(parked);
  parked.clear();
  for (size_t i = 0; i < waiting.size(); ++i) worker_idle();
}

// Moves the write turn past `end`, over chunks that needed no write, to the next parked one.
void CopyJob::commit(uint64_t end) {
  committed = end;
  for (auto s = skipped.find(committed); s != skipped.end(); s = skipped.find(committed)) {
    committed = s->second;
    skipped.erase(s);
  }
  auto p = parked.find(committed);
  if (p == parked.end()) return;
  auto w = std::move(p->second);
  parked.erase(p);
  w->write();
}

}  // namespace

vd::Error copy_disk(vd::Runtime& rt, vd::Disk& src, vd::Disk& dst, const CopyOptions& opts) {
  auto job = std::make_shared<CopyJob>(src, dst, rt.context(), opts);
  if (job->opts.workers == 0) job->opts.workers = 1;
  if (job->opts.granule == 0) job->opts.granule = 4096;
  if (job->opts.chunk == 0) job->opts.chunk = 2ull << 20;
  if (job->size == 0) return {};  // nothing to copy, and no completion would be posted
  return rt.wait([job](vd::Completion done) {
    job->finished = std::move(done);
    job->start();
  });
}

}  // namespace vdimg
