// The write side's shared machinery: the write gate, clusters in flight, writable L2 tables,
// host allocation and release, and reading a cluster's current content for fills.
#include <algorithm>
#include <cstring>

#include "backends/qcow/bitmap/bitmap_set.h"
#include "backends/qcow/bitmap/mark_in_use.h"
#include "backends/qcow/io/cluster_alloc.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/io/l2_prepare.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"
#include "backends/qcow/io/write_request.h"
#include "backends/qcow/io/zero_discard.h"

namespace vd::qcow {

Error QcowImage::refuse_write(const char* op) const {
  if (flags_ & open_read_only) return Error(Errc::read_only, "the image is open read-only").image(path_).op(op);
  if (closed_) return Error(Errc::invalid_argument, "the image is closed").image(path_).op(op);
  return {};
}

namespace {
Error range_error(const std::string& path, const char* op, uint64_t off, uint64_t len, uint64_t size) {
  return Error(Errc::out_of_range, std::to_string(len) + " bytes go beyond the end of the image (" +
                                       std::to_string(size) + " bytes)")
      .image(path).op(op).at(off);
}
}  // namespace

void QcowImage::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags, Completion done) {
  Error e = refuse_write("write");
  if (!e && (offset > size_ || buf.size() > size_ - offset))
    e = range_error(path_, "write", offset, buf.size(), size_);
  if (e || buf.empty()) return io_.post([done, e] { done(e); });
  note_write(offset, buf.size());
  // The gate open (begin_write would start it at once): started here, without the function
  // the gate would keep, and the request itself ends the write (no wrapper completion):
  // no heap allocation per write.
  if (!flushing_ && !marking_ && !(bitmaps_ && bitmaps_->needs_mark())) {
    ++writes_active_;
    return WriteRequest::start(*this, offset, buf, flags, std::move(done), true);
  }
  begin_write([this, offset, buf, flags, done] {
    if (failed_marking(done)) return;
    WriteRequest::start(*this, offset, buf, flags, done, true);
  });
}

void QcowImage::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  Error e = refuse_write("write zeroes");
  if (!e && (offset > size_ || length > size_ - offset))
    e = range_error(path_, "write zeroes", offset, length, size_);
  if (e || length == 0) return io_.post([done, e] { done(e); });
  note_write(offset, length);
  begin_write([this, offset, length, flags, done] {
    if (failed_marking(done)) return;
    ZeroRequest::start(*this, offset, length, flags, ZeroRequest::Mode::zero, [this, done](Error err) {
      end_write();
      done(err);
    });
  });
}

void QcowImage::discard(uint64_t offset, uint64_t length, Completion done) {
  Error e = refuse_write("discard");
  if (!e && (offset > size_ || length > size_ - offset))
    e = range_error(path_, "discard", offset, length, size_);
  if (e || length == 0 || hdr_.version == 1) return io_.post([done, e] { done(e); });
  note_write(offset, length);
  begin_write([this, offset, length, done] {
    if (failed_marking(done)) return;
    ZeroRequest::start(*this, offset, length, 0, ZeroRequest::Mode::discard, [this, done](Error err) {
      end_write();
      done(err);
    });
  });
}

// Before the request starts, so a flush that waits for it stores the bits with its data.
void QcowImage::note_write(uint64_t offset, uint64_t length) {
  if (bitmaps_) bitmaps_->note_write(offset, length);
}

// ---- The gate ---------------------------------------------------------------------------

void QcowImage::begin_write(std::function<void()> start) {
  if (flushing_ || marking_) {
    gated_.push_back(std::move(start));
    return;
  }
  if (bitmaps_ && bitmaps_->needs_mark()) {
    gated_.push_back(std::move(start));
    marking_ = true;
    MarkInUseRequest::start(*this, [this](Error e) { marking_finished(e); });
    return;
  }
  ++writes_active_;
  start();
}

void QcowImage::marking_finished(Error e) {
  marking_ = false;
  if (flushing_) return FlushRequest::start(*this);  // no write ran: it replays them after
  auto gated = std::move(gated_);
  gated_.clear();
  if (!e) {
    for (auto& g : gated) begin_write(std::move(g));
    return;
  }
  // Not through begin_write: it would try to mark again at once, for ever.
  mark_error_ = e;
  for (auto& g : gated) {
    ++writes_active_;
    g();
  }
  mark_error_ = {};
}

bool QcowImage::failed_marking(const Completion& done) {
  if (!mark_error_) return false;
  Error e = mark_error_;
  end_write();
  io_.post([done, e] { done(e); });
  return true;
}

void QcowImage::end_write() {
  --writes_active_;
  if (writes_active_ == 0 && flushing_) FlushRequest::start(*this);
}

void QcowImage::flush(Completion done) {
  if (flags_ & open_read_only || closed_) return io_.post([done] { done({}); });
  flush_waiters_.push_back(std::move(done));
  if (flushing_) return;  // joins the flush in progress (no write ran since it began)
  flushing_ = true;       // new writes wait from now on
  if (writes_active_ == 0 && !marking_) FlushRequest::start(*this);
}

// Called by FlushRequest when it is done: completes the flushes and lets writes through.
void QcowImage::flush_finished(Error e) {
  auto waiters = std::move(flush_waiters_);
  flush_waiters_.clear();
  flushing_ = false;
  // Released clusters may be free now: never pack compressed data into one of them.
  zbytes_next_ = 0;
  for (auto& w : waiters) io_.post([w, e] { w(e); });
  auto gated = std::move(gated_);
  gated_.clear();
  for (auto& g : gated) begin_write(std::move(g));
}

// ---- Tables -----------------------------------------------------------------------------

L2Table& QcowImage::l2_for_update(uint64_t l2_offset) {
  auto it = dirty_l2_.find(l2_offset);
  if (it != dirty_l2_.end()) return *it->second;
  L2Ptr cached = cache_.find(l2_offset);
  // Callers loaded the table first (get_l2/prepare_l2) on this executor; nothing evicts
  // between that and now except another load, so a miss is a bug, not bad input.
  auto t = cached ? std::make_shared<L2Table>(*cached)
                  : std::make_shared<L2Table>(layout_.l2_table_bytes() / 8, 0);
  dirty_l2_.emplace(l2_offset, t);
  cache_.insert(l2_offset, t);
  return *t;
}

Result<uint64_t> QcowImage::allocate_clusters(uint64_t count) {
  const uint64_t cs = layout_.cluster_size();
  if (hdr_.version == 1) {
    v1_end_ = (v1_end_ + cs - 1) & ~(cs - 1);
    const uint64_t at = v1_end_;
    v1_end_ += count * cs;
    grew_to(v1_end_);
    return at;
  }
  auto at = refs_->allocate(count);
  if (!at) return at.error();
  if (Error e = check_allocation(*at, count * cs)) {
    (void)refs_->unallocate(*at, count);  // never referenced: free again at once
    return e;
  }
  grew_to(*at + count * cs);
  return at;
}

void QcowImage::refcount_step(std::function<Error()> attempt, Completion then) {
  Error e;
  {
    Refcounts::AsyncLoads no_blocking(refs_.get());
    e = attempt();
  }
  if (!refs_ || !Refcounts::is_miss(e)) return then(e);
  auto block = refs_->take_miss();
  if (!block) return then(Error(Errc::internal, "a refcount miss without a block").image(path_));
  refs_->load_block(*block, [this, attempt = std::move(attempt), then = std::move(then)](Error le) mutable {
    if (le) return then(le);
    refcount_step(std::move(attempt), std::move(then));
  });
}

// An allocation as a refcount step: its result travels in a cell the handler owns.
void QcowImage::allocation_step(std::function<Result<uint64_t>()> attempt,
                                std::function<void(Error, uint64_t)> done) {
  auto at = std::make_shared<uint64_t>(0);
  refcount_step(
      [attempt = std::move(attempt), at]() -> Error {
        auto r = attempt();
        if (!r) return r.error();
        *at = *r;
        return {};
      },
      [at, done = std::move(done)](Error e) { done(e, e ? 0 : *at); });
}

void QcowImage::allocate_clusters_async(uint64_t count, std::function<void(Error, uint64_t)> done) {
  allocation_step([this, count] { return allocate_clusters(count); }, std::move(done));
}

// The file is as long as what has been allocated in it, written or not yet.
void QcowImage::grew_to(uint64_t end) {
  file_end_ = std::max(file_end_, end);
}

// Clusters allocated for a request that failed: free again at once (never referenced). The
// file is not trimmed: a truncate would run on the pool after later allocations may have
// been placed (and written) past these clusters, and the next allocation reuses them anyway.
void QcowImage::rollback_clusters(uint64_t host, uint64_t count) {
  const uint64_t cs = layout_.cluster_size();
  if (hdr_.version == 1) {
    if (v1_end_ == host + count * cs) v1_end_ = host;
    return;
  }
  (void)refs_->unallocate(host, count);  // loaded: allocate placed them
}

void QcowImage::release_entry(uint64_t e, uint64_t /*bitmap*/) {
  if (!refs_ || !e) return;
  if (e & kOflagCompressed) {
    const uint32_t x = 62 - (layout_.cluster_bits - 8);
    const uint64_t host = e & ((1ull << x) - 1);
    const uint64_t sectors = ((e >> x) & ((1ull << (layout_.cluster_bits - 8)) - 1)) + 1;
    refs_->release_later(host & ~511ull, sectors * 512);
    return;
  }
  if (data_file_) return;  // clusters of an external data file are not refcounted
  const uint64_t host = e & kL2OffsetMask;
  if (host) refs_->release_later(host, layout_.cluster_size());
}

void QcowImage::prepare_l2(uint64_t l1_index, std::function<void(Error, uint64_t)> done) {
  L2PrepareRequest::start(*this, l1_index, std::move(done));
}

void QcowImage::install_l2(uint64_t l1_index, uint64_t old, uint64_t at, const L2Ptr& from) {
  auto t = from ? std::make_shared<L2Table>(*from) : std::make_shared<L2Table>(layout_.l2_table_bytes() / 8, 0);
  dirty_l2_[at] = t;
  cache_.insert(at, t);
  // Crash safety: the flush writes this table before the L1 entry pointing at it.
  l1_[l1_index] = hdr_.version == 1 ? at : (at | kOflagCopied);
  l2_moved(old, at);
  mark_l1_dirty(l1_index);
  // A table shared with a snapshot loses the reference the active L1 held.
  if (old && refs_) refs_->release_later(old, layout_.cluster_size());
}

void QcowImage::link_entries(uint64_t l2_offset, uint64_t guest, std::span<const uint64_t> entries) {
  L2Table& t = l2_for_update(l2_offset);
  const uint64_t words = layout_.words_per_entry();
  for (uint64_t k = 0; k * words < entries.size(); ++k) {
    const uint64_t i = layout_.l2_index(guest + k * layout_.cluster_size()) * words;
    const uint64_t old = t[i];
    for (uint64_t w = 0; w < words; ++w) t[i + w] = entries[k * words + w];
    // Invariant 2: the old cluster's reference is dropped only after the flush wrote this table.
    if (old) release_entry(old, 0);
  }
}

Result<uint64_t> QcowImage::allocate_bytes(uint64_t length) {
  const uint64_t cs = layout_.cluster_size();
  if (hdr_.version == 1) {  // QCOW v1 appends compressed data at the end of the file
    const uint64_t at = v1_end_;
    v1_end_ += length;
    grew_to(v1_end_);
    return at;
  }
  // Continue after the previous run, as QEMU packs: in the rest of its cluster, and on into
  // the next cluster when that is the one the allocator hands out now. A run holds one
  // reference to every cluster it touches. A cluster at the refcount maximum (refcount_bits=1)
  // or freed since (its runs were all overwritten) is not packed into again.
  if (const uint64_t used = zbytes_next_ & (cs - 1); zbytes_next_ && used) {
    const uint64_t at = zbytes_next_, room = cs - used;
    auto refs = refs_->get(at);
    if (!refs) return refs.error();
    if (*refs && *refs < refs_->max_refcount()) {
      uint64_t fresh = 0;
      if (length > room) {
        auto next = allocate_clusters((length - room + cs - 1) / cs);
        if (!next) return next;
        fresh = *next;
      }
      if (!fresh || fresh == at + room) {
        if (Error e = refs_->update(at, 1, +1)) return e;
        zbytes_next_ = at + length;
        return at;
      }
      if (length <= cs) {  // not contiguous: the run starts in the cluster just allocated
        zbytes_next_ = fresh + length;
        return fresh;
      }
      rollback_clusters(fresh, (length - room + cs - 1) / cs);
    }
  }
  auto at = allocate_clusters((length + cs - 1) / cs);
  if (!at) return at;
  zbytes_next_ = *at + length;
  return at;
}

void QcowImage::allocate_bytes_async(uint64_t length, std::function<void(Error, uint64_t)> done) {
  allocation_step([this, length] { return allocate_bytes(length); }, std::move(done));
}

// ---- Content reads for fills ------------------------------------------------------------

void QcowImage::read_through(uint64_t offset, std::span<std::byte> buf, Completion done) {
  struct State {
    QcowImage* img;
    uint64_t offset;
    std::span<std::byte> buf;
    Completion done;
    void next(std::shared_ptr<State> self) {
      if (buf.empty()) return done({});
      img->read(offset, buf, [self](Error e, ReadResult r) {
        if (e) return self->done(e);
        auto part = self->buf.first(r.length);
        auto advance = [self, n = r.length] {
          self->offset += n;
          self->buf = self->buf.subspan(n);
          self->next(self);
        };
        if (r.allocated) return advance();
        if (!self->img->parent_) {
          std::memset(part.data(), 0, part.size());
          return advance();
        }
        self->img->parent_->read(self->offset, part, [self, advance](Error pe) {
          if (pe) return self->done(pe);
          advance();
        });
      });
    }
  };
  auto st = std::make_shared<State>(State{this, offset, buf, std::move(done)});
  st->next(st);
}

Error QcowImage::encrypt(uint64_t guest, uint64_t host, std::span<std::byte> buf) const {
  const uint64_t sector = (hdr_.crypt_method == kCryptLuks ? host : guest) / 512;
  if (Error e = cipher_->encrypt(sector, buf)) return e.wrap("encrypting", "data", host).image(path_);
  return {};
}

}  // namespace vd::qcow
