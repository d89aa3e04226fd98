#include "host/vdimg/copier.h"

#include <algorithm>
#include <cstring>
#include <memory>
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

  CopyJob(vd::Disk& s, vd::Disk& d, CopyOptions o)
      : src(s), dst(d), opts(std::move(o)), size(std::min(s.size(), d.size())) {}

  void fail(vd::Error e) {
    if (!first_error) first_error = std::move(e);
  }
  void start();
  void worker_idle() {
    if (--active == 0) {
      auto done = std::move(finished);
      done(first_error);
    }
  }
};

struct Worker : std::enable_shared_from_this<Worker> {
  std::shared_ptr<CopyJob> job;
  std::vector<std::byte> buf, target;
  uint64_t off = 0, len = 0, scanned = 0;
  // Runs of granules still to write: (start within the chunk, length, zeroes instead of data).
  struct Run { uint64_t start, length; bool zero; };
  std::vector<Run> runs;
  size_t run_index = 0;

  explicit Worker(std::shared_ptr<CopyJob> j) : job(std::move(j)) {}

  void claim() {
    if (job->first_error || job->next >= job->size) return job->worker_idle();
    off = job->next;
    len = std::min(job->opts.chunk, job->size - off);
    job->next += len;
    scanned = 0;
    scan();
  }

  // Looks for data in the chunk; a chunk with none is done without reading it.
  void scan() {
    if (scanned >= len) return chunk_done();
    auto self = shared_from_this();
    job->src.block_status(off + scanned, len - scanned, [self](vd::Error e, vd::DiskExtent x) {
      if (e) return self->error(std::move(e));
      if (x.extent.length == 0) return self->error(vd::Error(vd::Errc::internal, "empty extent"));
      if (x.level >= 0 && x.extent.kind == vd::Extent::Kind::data) return self->read_source();
      self->scanned += x.extent.length;
      self->scan();
    });
  }

  void read_source() {
    buf.resize(len);
    auto self = shared_from_this();
    job->src.read(off, std::span(buf.data(), len), [self](vd::Error e) {
      if (e) return self->error(std::move(e));
      if (self->job->opts.target_is_zero) return self->plan();
      self->read_target();
    });
  }

  void read_target() {
    target.resize(len);
    auto self = shared_from_this();
    job->dst.read(off, std::span(target.data(), len), [self](vd::Error e) {
      if (e) return self->error(std::move(e));
      self->plan();
    });
  }

  // Splits the chunk into granules and merges those needing the same action into runs.
  void plan() {
    runs.clear();
    run_index = 0;
    const uint64_t g = job->opts.granule;
    for (uint64_t at = 0; at < len; at += g) {
      uint64_t n = std::min(g, len - at);
      const std::byte* p = buf.data() + at;
      bool skip = job->opts.target_is_zero ? all_zero(p, n)
                                           : std::equal(p, p + n, target.data() + at);
      if (skip) continue;
      bool zero = !job->opts.target_is_zero && all_zero(p, n);
      if (!runs.empty() && runs.back().start + runs.back().length == at && runs.back().zero == zero)
        runs.back().length += n;
      else
        runs.push_back({at, n, zero});
    }
    write_next();
  }

  void write_next() {
    if (run_index >= runs.size()) return chunk_done();
    const Run r = runs[run_index++];
    auto self = shared_from_this();
    auto next = [self](vd::Error e) {
      if (e) return self->error(std::move(e));
      self->write_next();
    };
    if (r.zero) job->dst.write_zeroes(off + r.start, r.length, 0, next);
    else job->dst.write(off + r.start, std::span(buf.data() + r.start, r.length),
                        job->opts.write_flags, next);
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

}  // namespace

vd::Error copy_disk(vd::Runtime& rt, vd::Disk& src, vd::Disk& dst, const CopyOptions& opts) {
  auto job = std::make_shared<CopyJob>(src, dst, opts);
  if (job->opts.workers == 0) job->opts.workers = 1;
  if (job->opts.granule == 0) job->opts.granule = 4096;
  if (job->size == 0) return {};  // nothing to copy, and no completion would be posted
  return rt.wait([job](vd::Completion done) {
    job->finished = std::move(done);
    job->start();
  });
}

}  // namespace vdimg
