// The write side's shared machinery: the write gate, clusters in flight, writable L2 tables,
// host allocation and release, and reading a cluster's current content for fills.
#include <algorithm>
#include <cstring>

#include "backends/qcow/io/cluster_alloc.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"
#include "backends/qcow/io/write_request.h"
#include "backends/qcow/io/zero_discard.h"

namespace vd::qcow {

Error QcowImage::refuse_write(const char* op) const {
  if (flags_ & open_read_only)
    return Error(Errc::read_only, std::string(op) + " refused: '" + path_ + "' is open read-only");
  if (closed_) return Error(Errc::invalid_argument, std::string(op) + " on closed image '" + path_ + "'");
  return {};
}

namespace {
Error range_error(const std::string& path, const char* op, uint64_t off, uint64_t len, uint64_t size) {
  return Error(Errc::out_of_range, std::string(op) + " of " + std::to_string(len) + " bytes at " + hex(off) +
                                       " is beyond the end of '" + path + "' (" + std::to_string(size) +
                                       " bytes)");
}
}  // namespace

void QcowImage::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags, Completion done) {
  Error e = refuse_write("write");
  if (!e && (offset > size_ || buf.size() > size_ - offset))
    e = range_error(path_, "write", offset, buf.size(), size_);
  if (e || buf.empty()) return io_.post([done, e] { done(e); });
  begin_write([this, offset, buf, flags, done] {
    WriteRequest::start(*this, offset, buf, flags, [this, done](Error err) {
      end_write();
      done(err);
    });
  });
}

void QcowImage::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  Error e = refuse_write("write zeroes");
  if (!e && (offset > size_ || length > size_ - offset))
    e = range_error(path_, "write zeroes", offset, length, size_);
  if (e || length == 0) return io_.post([done, e] { done(e); });
  begin_write([this, offset, length, flags, done] {
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
  begin_write([this, offset, length, done] {
    ZeroRequest::start(*this, offset, length, 0, ZeroRequest::Mode::discard, [this, done](Error err) {
      end_write();
      done(err);
    });
  });
}

// ---- The gate ---------------------------------------------------------------------------

void QcowImage::begin_write(std::function<void()> start) {
  if (flushing_) {
    gated_.push_back(std::move(start));
    return;
  }
  ++writes_active_;
  start();
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
  if (writes_active_ == 0) FlushRequest::start(*this);
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

// ---- Clusters in flight -----------------------------------------------------------------

void QcowImage::wait_cluster(uint64_t guest_cluster, std::function<void()> retry) {
  busy_[guest_cluster].push_back(std::move(retry));
}

void QcowImage::mark_busy(uint64_t first, uint64_t count) {
  for (uint64_t c = first; c < first + count; ++c) busy_.try_emplace(c);
}

void QcowImage::clear_busy(uint64_t first, uint64_t count) {
  std::vector<std::function<void()>> wake;
  for (uint64_t c = first; c < first + count; ++c) {
    auto node = busy_.extract(c);
    if (node.empty()) continue;
    for (auto& w : node.mapped()) wake.push_back(std::move(w));
  }
  for (auto& w : wake) io_.post(std::move(w));
}

void QcowImage::begin_in_place(uint64_t first, uint64_t count) {
  for (uint64_t c = first; c < first + count; ++c) ++in_place_[c];
}

void QcowImage::end_in_place(uint64_t first, uint64_t count) {
  std::vector<std::function<void()>> wake;
  for (uint64_t c = first; c < first + count; ++c) {
    auto it = in_place_.find(c);
    if (it == in_place_.end() || --it->second) continue;
    in_place_.erase(it);
    auto node = in_place_waiters_.extract(c);
    if (node.empty()) continue;
    for (auto& w : node.mapped()) wake.push_back(std::move(w));
  }
  for (auto& w : wake) io_.post(std::move(w));
}

void QcowImage::after_in_place(uint64_t first, uint64_t count, std::function<void()> go) {
  for (uint64_t c = first; c < first + count; ++c) {
    if (!in_place_.count(c)) continue;
    // Wait for this one, then look at the rest again (the busy mark keeps new ones out).
    in_place_waiters_[c].push_back([this, first, count, go = std::move(go)]() mutable {
      after_in_place(first, count, std::move(go));
    });
    return;
  }
  go();
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
  if (Error e = check_allocation(*at, count * cs)) return e;
  grew_to(*at + count * cs);
  return at;
}

// The file is as long as what has been allocated in it, written or not yet.
void QcowImage::grew_to(uint64_t end) {
  file_end_ = std::max(file_end_, end);
}

void QcowImage::rollback_clusters(uint64_t host, uint64_t count) {
  const uint64_t cs = layout_.cluster_size();
  if (hdr_.version == 1) {
    if (v1_end_ == host + count * cs) v1_end_ = host;
    return;
  }
  (void)refs_->unallocate(host, count);
  // Give back the space if the file grew for these clusters and nothing came after them.
  auto sz = file_->size();
  if (sz && *sz > host && refs_->allocated_end() <= host) (void)file_->set_size(host);
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
  if (auto it = l1_busy_.find(l1_index); it != l1_busy_.end()) {
    // Another request is copying this table: retry once it is linked.
    it->second.push_back([this, l1_index, done] { prepare_l2(l1_index, done); });
    return;
  }
  const uint64_t entry = l1_[l1_index];
  const uint64_t old = layout_.l2_offset(entry);
  const bool writable = old && (hdr_.version == 1 || (entry & kOflagCopied));
  if (writable)
    return get_l2(l1_index, old, [done, old](Error e, L2Ptr) { done(e, old); });
  auto link = [this, l1_index, old, done](L2Ptr from) {
    const uint64_t cs = layout_.cluster_size();
    const uint64_t clusters = (layout_.l2_table_bytes() + cs - 1) / cs;
    auto at = allocate_clusters(clusters);
    if (!at) return done(at.error(), 0);
    auto t = from ? std::make_shared<L2Table>(*from)
                  : std::make_shared<L2Table>(layout_.l2_table_bytes() / 8, 0);
    dirty_l2_[*at] = t;
    cache_.insert(*at, t);
    // Crash safety: the flush writes this table before the L1 entry pointing at it.
    l1_[l1_index] = hdr_.version == 1 ? *at : (*at | kOflagCopied);
    l2_moved(old, *at);
    mark_l1_dirty(l1_index);
    // A table shared with a snapshot loses the reference the active L1 held.
    if (old && refs_) refs_->release_later(old, cs);
    done({}, *at);
  };
  if (!old) return link(nullptr);  // synchronous: nobody can interleave
  l1_busy_[l1_index];
  get_l2(l1_index, old, [this, l1_index, link, done](Error e, L2Ptr t) {
    auto waiters = std::move(l1_busy_[l1_index]);
    l1_busy_.erase(l1_index);
    if (e) done(e, 0);
    else link(std::move(t));
    for (auto& w : waiters) io_.post(std::move(w));
  });
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
  if (Error e = cipher_->encrypt(sector, buf)) return e.legacy_wrap("'" + path_ + "': encrypting data for " + hex(host));
  return {};
}

// ---- Header -----------------------------------------------------------------------------

Error QcowImage::write_metadata_header() {
  if (refs_) {
    hdr_.refcount_table_offset = refs_->table_offset();
    hdr_.refcount_table_clusters = refs_->table_clusters();
  }
  auto bytes = encode_header(hdr_);
  if (!bytes) return bytes.error().legacy_wrap("'" + path_ + "': encoding the header");
  if (Error e = file_->write(IoKind::meta, 0, *bytes)) return e.legacy_wrap("'" + path_ + "': writing the header");
  header_dirty_ = false;
  return {};
}

}  // namespace vd::qcow
