#include "host/vdimg/copier.h"

#include <cstdlib>

#include <algorithm>
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

// The last extent the source reported: [start, end) holds data to copy, or not.
struct KnownExtent {
  uint64_t start = 0, end = 0;
  bool data = false;
  bool contains(uint64_t at) const { return at >= start && at < end; }
};

// The shared state of one copy. Workers hold a shared_ptr, so it lives until the last ends.
struct CopyJob : std::enable_shared_from_this<CopyJob> {
  vd::Disk& src;
  vd::Disk& dst;
  CopyOptions opts;
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

  CopyJob(vd::Disk& s, vd::Disk& d, CopyOptions o)
      : src(s), dst(d), opts(std::move(o)), size(std::min(s.size(), d.size())) {}

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
  Buffer buf, target;
  uint64_t off = 0, len = 0, scanned = 0;
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
    runs.clear();
    run_index = 0;
    scan();
  }

  // Looks for data in the chunk; a chunk with none is done without reading it. The source
  // is asked about the rest of the disk, and its answer serves every chunk it covers; while
  // a question is out, the other workers wait for its answer instead of asking again.
  void scan() {
    if (job->first_error) return job->worker_idle();
    if (scanned >= len) return ready();
    const uint64_t at = off + scanned;
    if (job->known.contains(at)) return use_extent(job->known);
    if (job->status_pending) return job->status_waiters.push_back(shared_from_this());
    job->status_pending = true;
    auto self = shared_from_this();
    job->src.block_status(at, job->size - at, [self, at](vd::Error e, vd::DiskExtent x) {
      self->status_answered(at, std::move(e), x);
    });
  }

  void status_answered(uint64_t at, vd::Error e, const vd::DiskExtent& x) {
    job->status_pending = false;
    auto waiters = std::move(job->status_waiters);
    job->status_waiters.clear();
    if (!e && x.extent.length == 0) e = vd::Error(vd::Errc::internal, "empty extent");
    if (e) {
      error(std::move(e));  // the waiters are still active: the job cannot end here
    } else {
      const bool data = x.level >= 0 && x.extent.kind == vd::Extent::Kind::data;
      job->known = KnownExtent{at, at + x.extent.length, data};
      use_extent(job->known);
    }
    for (auto& w : waiters) w->scan();
  }

  void use_extent(const KnownExtent& k) {
    if (k.data) return read_source();
    scanned = std::min(len, k.end - off);
    scan();
  }

  void read_source() {
    if (!buf) buf = aligned(job->opts.chunk);
    auto self = shared_from_this();
    job->src.read(off, std::span(buf.get(), len), [self](vd::Error e) {
      if (e) return self->error(std::move(e));
      if (self->job->opts.target_is_zero) return self->plan();
      self->read_target();
    });
  }

  void read_target() {
    if (!target) target = aligned(job->opts.chunk);
    auto self = shared_from_this();
    job->dst.read(off, std::span(target.get(), len), [self](vd::Error e) {
      if (e) return self->error(std::move(e));
      self->plan();
    });
  }

  // Splits the chunk into granules and merges those needing the same action into runs
  // (compressed writes keep one granule, the target's cluster, per run: see write_all).
  void plan() {
    const uint64_t g = job->opts.granule;
    for (uint64_t at = 0; at < len; at += g) {
      uint64_t n = std::min(g, len - at);
      const std::byte* p = buf.get() + at;
      bool skip = job->opts.target_is_zero ? all_zero(p, n)
                                           : std::equal(p, p + n, target.get() + at);
      if (skip) continue;
      bool zero = !job->opts.target_is_zero && all_zero(p, n);
      if (!runs.empty() && runs.back().start + runs.back().length == at && runs.back().zero == zero &&
          !(job->opts.write_flags & vd::write_compressed))
        runs.back().length += n;
      else
        runs.push_back({at, n, zero});
    }
    ready();
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
    issue(runs[run_index++], [self](vd::Error e) {
      if (e) return self->error(std::move(e));
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

  void issue(const Run& r, vd::Completion next) {
    if (r.zero) return job->dst.write_zeroes(off + r.start, r.length, 0, std::move(next));
    job->dst.write(off + r.start, std::span(buf.get() + r.start, r.length),
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
  auto job = std::make_shared<CopyJob>(src, dst, opts);
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
