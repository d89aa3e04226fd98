#include "backends/qcow/meta/refcount.h"

#include <algorithm>

#include "backends/qcow/meta/format.h"

namespace vd::qcow {
namespace {
constexpr const char* kMissText = "refcount block not loaded";
}  // namespace

// The second phase of an update or allocation: blocks it did not read count as full.
struct Refcounts::Mutating {
  Refcounts& r;
  bool was;
  explicit Mutating(Refcounts& rc) : r(rc), was(rc.placing_run_) { r.placing_run_ = true; }
  ~Mutating() { r.placing_run_ = was; }
};


Refcounts::Refcounts(File& file, std::string path, Config config)
    : file_(file), path_(std::move(path)), cfg_(config) {}

uint64_t Refcounts::max_refcount() const {
  const uint32_t bits = 1u << cfg_.refcount_order;
  return bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
}

Error Refcounts::load(uint64_t file_end) {
  // The header check bounded the table by kMaxRefcountTableBytes and the file size.
  const uint64_t bytes = uint64_t{cfg_.table_clusters} << cfg_.cluster_bits;
  std::vector<std::byte> raw(bytes);
  if (Error e = file_.read(IoKind::meta, cfg_.table_offset, raw))
    return e.wrap("reading", "the refcount table", cfg_.table_offset).image(path_);
  table_.resize(bytes / 8);
  for (size_t i = 0; i < table_.size(); ++i) table_[i] = load_be64(raw.data() + i * 8);
  file_end_ = file_end;
  alloc_end_ = (file_end + cluster_size() - 1) & ~(cluster_size() - 1);
  return {};
}

uint64_t Refcounts::read_entry(const Block& b, uint64_t i) const {
  const uint32_t bits = 1u << cfg_.refcount_order;
  if (bits < 8) {  // packed, least significant bits first
    const uint64_t bit = i * bits;
    return (std::to_integer<uint64_t>(b[bit / 8]) >> (bit % 8)) & ((1ull << bits) - 1);
  }
  const size_t n = bits / 8;
  uint64_t v = 0;
  for (size_t k = 0; k < n; ++k) v = (v << 8) | std::to_integer<uint64_t>(b[i * n + k]);
  return v;
}

void Refcounts::write_entry(Block& b, uint64_t i, uint64_t v) const {
  const uint32_t bits = 1u << cfg_.refcount_order;
  if (bits < 8) {
    const uint64_t bit = i * bits;
    const uint64_t mask = ((1ull << bits) - 1) << (bit % 8);
    auto byte = std::to_integer<uint64_t>(b[bit / 8]);
    b[bit / 8] = std::byte(static_cast<uint8_t>((byte & ~mask) | ((v << (bit % 8)) & mask)));
    return;
  }
  const size_t n = bits / 8;
  for (size_t k = n; k-- > 0; v >>= 8) b[i * n + k] = std::byte(v & 0xff);
}

// The block holding cluster `cluster`'s refcount. Without `create`, nullptr means "no block:
// every refcount it would hold is 0".
Result<Refcounts::Block*> Refcounts::block_for(uint64_t cluster, bool create) {
  const uint64_t b = cluster / entries_per_block();
  if (auto it = blocks_.find(b); it != blocks_.end()) return it->second.get();
  if (create && b >= table_.size()) {
    if (Error e = grow_table(b + 1)) return e;
    // Growing allocated the new table, which may have created this very block.
    if (auto it = blocks_.find(b); it != blocks_.end()) return it->second.get();
  }
  if (b >= table_.size() || table_[b] == 0) {
    if (!create) return static_cast<Block*>(nullptr);
    // Place the new block in the first free cluster of the range it describes (so it
    // usually counts itself), but never inside the run being allocated and never on a
    // cluster another new block is taking.
    uint64_t at = b * entries_per_block();
    for (;;) {
      if ((at >= avoid_lo_ && at < avoid_hi_) || placing_.count(at)) {
        ++at;
        continue;
      }
      auto f = cluster_free(at);
      if (!f) return f.error();
      if (*f) break;
      ++at;
    }
    auto blk = std::make_unique<Block>(cluster_size());
    Block* raw = blk.get();
    blocks_.emplace(b, std::move(blk));
    table_[b] = at << cfg_.cluster_bits;
    table_dirty_ = true;
    new_blocks_.push_back(at << cfg_.cluster_bits);
    dirty_blocks_.insert(b);
    // Its own refcount: in itself, or in the block of the range it landed in (which may be
    // created here in turn).
    placing_.insert(at);
    Error e = set_cluster(at, 1);
    placing_.erase(at);
    if (e) return e;
    return raw;
  }
  const uint64_t off = table_[b] & kReftableOffsetMask;
  if (Error e = check_block_location(b, off)) return e;
  if (sync_loads_) return read_block_now(b, off);
  miss_ = b;  // the data path loads it asynchronously and tries again
  return Error(Errc::busy, kMissText);
}

Error Refcounts::check_block_location(uint64_t b, uint64_t off) const {
  if (off & (cluster_size() - 1))
    return Error(Errc::corrupt, "Refblock offset " + hex(off) + " unaligned (reftable index: " + hex(b) + ")")
        .image(path_).structure("refcount block").at(off);
  if (off > file_end_ || cluster_size() > file_end_ - off)
    return Error(Errc::corrupt, "Refblock at " + hex(off) + " (reftable index: " + hex(b) +
                                    ") lies beyond the end of the file")
        .image(path_).structure("refcount block").at(off);
  return {};
}

Result<Refcounts::Block*> Refcounts::read_block_now(uint64_t b, uint64_t off) {
  auto blk = std::make_unique<Block>(cluster_size());
  if (Error e = file_.read(IoKind::meta, off, *blk)) return e.wrap("reading", "refcount block", off).image(path_);
  Block* raw = blk.get();
  blocks_.emplace(b, std::move(blk));
  return raw;
}

bool Refcounts::is_miss(const Error& e) { return e.is(Errc::busy) && e.detail() == kMissText; }

void Refcounts::load_block(uint64_t b, Completion done) {
  if (blocks_.count(b) || b >= table_.size() || table_[b] == 0) return done({});
  const uint64_t off = table_[b] & kReftableOffsetMask;
  if (Error e = check_block_location(b, off)) return done(e);
  auto& waiters = loads_[b];
  waiters.push_back(std::move(done));
  if (waiters.size() > 1) return;  // joined the load in flight
  auto blk = std::make_shared<Block>(cluster_size());
  file_.async_read(IoKind::meta, off, *blk, [this, b, off, blk](Error e) {
    if (e) e = e.wrap("reading", "refcount block", off).image(path_);
    else if (!blocks_.count(b)) blocks_.emplace(b, std::make_unique<Block>(std::move(*blk)));
    auto node = loads_.extract(b);
    for (auto& w : node.mapped()) w(e);
  });
}

Result<uint64_t> Refcounts::get_cluster(uint64_t cluster) {
  auto blk = block_for(cluster, false);
  if (!blk) return blk.error();
  if (!*blk) return uint64_t{0};
  return read_entry(**blk, cluster % entries_per_block());
}

Error Refcounts::set_cluster(uint64_t cluster, uint64_t value) {
  auto blk = block_for(cluster, true);
  if (!blk) return blk.error();
  write_entry(**blk, cluster % entries_per_block(), value);
  dirty_blocks_.insert(cluster / entries_per_block());
  if (value) alloc_end_ = std::max(alloc_end_, (cluster + 1) << cfg_.cluster_bits);
  return {};
}

Result<bool> Refcounts::cluster_free(uint64_t cluster) {
  auto v = get_cluster(cluster);
  if (!v && placing_run_ && is_miss(v.error())) {
    miss_.reset();
    return false;  // cannot see that it is free: never hand it out
  }
  if (!v) return v.error();
  return *v == 0;
}

Result<uint64_t> Refcounts::get(uint64_t offset) { return get_cluster(offset >> cfg_.cluster_bits); }

// All or nothing: every refcount is read and checked before any is changed, so a failed
// update (a block that cannot be read, an overflow) can simply be retried.
Error Refcounts::update(uint64_t offset, uint64_t length, int64_t delta) {
  if (!length) return {};
  const uint64_t first = offset >> cfg_.cluster_bits;
  const uint64_t last = (offset + length - 1) >> cfg_.cluster_bits;
  std::vector<uint64_t> values;
  values.reserve(last - first + 1);
  for (uint64_t c = first; c <= last; ++c) {
    auto v = get_cluster(c);
    if (!v) return v.error();
    if (delta < 0 && *v < static_cast<uint64_t>(-delta))
      return Error(Errc::corrupt, "refcount of cluster " + hex(c << cfg_.cluster_bits) + " would drop below zero")
          .image(path_).structure("refcount").at(c << cfg_.cluster_bits);
    if (delta > 0 && max_refcount() - *v < static_cast<uint64_t>(delta))
      return Error(Errc::too_large, "refcount of cluster " + hex(c << cfg_.cluster_bits) + " would overflow")
          .image(path_).structure("refcount").at(c << cfg_.cluster_bits);
    values.push_back(*v + delta);
  }
  Mutating mutating(*this);
  for (uint64_t c = first; c <= last; ++c) {
    if (Error e = set_cluster(c, values[c - first])) return e;
    if (values[c - first] == 0) free_hint_ = std::min(free_hint_, c);
  }
  return {};
}

Result<uint64_t> Refcounts::allocate(uint64_t count) {
  // Nested allocations (a refcount table growing) keep the outer run's reservation.
  struct Avoid {
    Refcounts& r;
    uint64_t lo, hi;
    ~Avoid() { r.avoid_lo_ = lo, r.avoid_hi_ = hi; }
  } restore{*this, avoid_lo_, avoid_hi_};
  // Move the hint past the used clusters once, so each allocation does not rescan them.
  for (;;) {
    auto f = cluster_free(free_hint_);
    if (!f) return f.error();
    if (*f && !placing_.count(free_hint_)) break;
    ++free_hint_;
  }
  uint64_t start = free_hint_;
  for (;;) {
    // Find `count` free clusters in a row.
    uint64_t run = 0;
    for (uint64_t c = start; run < count; ++c) {
      auto f = cluster_free(c);
      if (!f) return f.error();
      if (*f && !placing_.count(c)) {
        ++run;
      } else {
        run = 0;
        start = c + 1;
      }
    }
    // Create the blocks that describe them, outside the run. From here on nothing may miss.
    Mutating mutating(*this);
    avoid_lo_ = start;
    avoid_hi_ = start + count;
    for (uint64_t c = start; c < start + count; c += entries_per_block() - c % entries_per_block()) {
      auto blk = block_for(c, true);
      if (!blk) return blk.error();
    }
    avoid_lo_ = restore.lo;
    avoid_hi_ = restore.hi;
    // A nested allocation (the refcount table growing) may have taken part of the run.
    bool still_free = true;
    for (uint64_t c = start; c < start + count && still_free; ++c) {
      auto f = cluster_free(c);
      if (!f) return f.error();
      still_free = *f;
    }
    if (!still_free) continue;
    for (uint64_t c = start; c < start + count; ++c)
      if (Error e = set_cluster(c, 1)) return e;
    // QEMU scans on from where its search ended: a hole before the run too small for it is
    // passed over for good (until a cluster before it is freed), not tried again.
    free_hint_ = start + count;
    return start << cfg_.cluster_bits;
  }
}

Error Refcounts::unallocate(uint64_t offset, uint64_t count) {
  return update(offset, count << cfg_.cluster_bits, -1);
}

void Refcounts::release_later(uint64_t offset, uint64_t length) { releases_.emplace_back(offset, length); }

Error Refcounts::grow_table(uint64_t needed_entries) {
  const uint64_t epc = cluster_size() / 8;  // table entries per cluster
  // Room for the blocks the new table and the growth after it need.
  uint64_t entries = std::max<uint64_t>(needed_entries + 2, table_.size() * 3 / 2);
  entries = (entries + epc - 1) / epc * epc;
  if (entries * 8 > kMaxRefcountTableBytes)
    return Error(Errc::too_large, "the refcount table would exceed " +
                                      std::to_string(kMaxRefcountTableBytes >> 20) + " MiB")
        .image(path_).structure("refcount table");
  const uint32_t clusters = static_cast<uint32_t>(entries / epc);
  // Enlarge in memory first so allocating the new table's clusters does not grow it again.
  table_.resize(entries, 0);
  auto at = allocate(clusters);
  if (!at) return at.error();
  if (cfg_.table_offset && !old_table_offset_) {
    old_table_offset_ = cfg_.table_offset;
    old_table_clusters_ = cfg_.table_clusters;
  } else if (cfg_.table_offset) {
    // Grown twice before a flush: the intermediate table was never written; free it now.
    if (Error e = update(cfg_.table_offset, uint64_t{cfg_.table_clusters} << cfg_.cluster_bits, -1))
      return e;
  }
  cfg_.table_offset = *at;
  cfg_.table_clusters = clusters;
  table_dirty_ = true;
  ++table_epoch_;
  return {};
}

// The synchronous write-back (create): the same writes the asynchronous flush makes.
Error Refcounts::write_blocks() {
  auto writes = dirty_block_writes();
  if (!writes) return writes.error();
  for (const MetaWrite& w : *writes)
    if (Error e = file_.write(IoKind::meta, w.offset, w.bytes)) return e.wrap("writing", "refcount block", w.offset).image(path_);
  blocks_written();
  return {};
}

Error Refcounts::write_table(bool& table_moved) {
  table_moved = old_table_offset_ != 0;
  if (!table_dirty_) return {};
  auto w = table_write();
  if (!w) return w.error();
  if (Error e = file_.write(IoKind::meta, w->offset, w->bytes))
    return e.wrap("writing", "the refcount table", w->offset).image(path_);
  table_written();
  return {};
}

Result<std::vector<Refcounts::MetaWrite>> Refcounts::dirty_block_writes() {
  std::vector<MetaWrite> out;
  for (uint64_t b : dirty_blocks_) {
    const uint64_t off = table_[b] & kReftableOffsetMask;
    if (guard_)
      if (Error e = guard_(off, cluster_size(), false)) return e;
    out.push_back({off, *blocks_.at(b)});
  }
  return out;
}

Result<Refcounts::MetaWrite> Refcounts::table_write() {
  table_bytes_.assign(uint64_t{cfg_.table_clusters} << cfg_.cluster_bits, std::byte{0});
  for (size_t i = 0; i < table_.size() && i * 8 < table_bytes_.size(); ++i)
    store_be64(table_bytes_.data() + i * 8, table_[i]);
  if (guard_)
    if (Error e = guard_(cfg_.table_offset, table_bytes_.size(), true)) return e;
  return MetaWrite{cfg_.table_offset, table_bytes_};
}

void Refcounts::table_committed() {
  if (!old_table_offset_) return;
  release_later(old_table_offset_, uint64_t{old_table_clusters_} << cfg_.cluster_bits);
  old_table_offset_ = 0;
  old_table_clusters_ = 0;
}

Error Refcounts::apply_releases() {
  // Each release is dropped only once applied: a failure leaves the rest for the next flush.
  while (!releases_.empty()) {
    auto [off, len] = releases_.back();
    if (Error e = update(off, len, -1)) return e;
    releases_.pop_back();
  }
  return {};
}

Result<std::vector<uint64_t>> Refcounts::all_refcounts(uint64_t clusters) {
  std::vector<uint64_t> out(clusters);
  for (uint64_t c = 0; c < clusters; ++c) {
    auto v = get_cluster(c);
    if (!v) return v.error();
    out[c] = *v;
  }
  return out;
}

Error Refcounts::drop_empty_blocks() {
  const uint64_t epb = entries_per_block();
  std::vector<uint64_t> dropped;  // table indexes
  for (uint64_t b = 0; b < table_.size(); ++b) {
    const uint64_t off = table_[b] & kReftableOffsetMask;
    if (!off) continue;
    auto blk = block_for(b * epb, false);
    if (!blk) return blk.error();
    if (!*blk) continue;
    const uint64_t self = off >> cfg_.cluster_bits;  // a block may count itself
    bool empty = true;
    for (uint64_t i = 0; i < epb && empty; ++i)
      empty = (self / epb == b && i == self % epb) || read_entry(**blk, i) == 0;
    if (empty) dropped.push_back(b);
  }
  if (dropped.empty()) return {};
  std::vector<uint64_t> offsets;
  for (uint64_t b : dropped) {
    offsets.push_back(table_[b] & kReftableOffsetMask);
    table_[b] = 0;
    blocks_.erase(b);
    dirty_blocks_.erase(b);
  }
  table_dirty_ = true;
  ++table_epoch_;  // the overlap map forgets the blocks
  bool moved = false;
  if (Error e = write_table(moved)) return e;
  if (Error e = file_.flush()) return e.wrap("flushing", "the refcount table").image(path_);
  for (uint64_t off : offsets) {
    const uint64_t c = off >> cfg_.cluster_bits;
    auto blk = block_for(c, false);
    if (!blk) return blk.error();
    if (*blk)  // else it was counted by a block dropped here too
      if (Error e = set_cluster(c, 0)) return e;
    free_hint_ = std::min(free_hint_, c);
  }
  return {};
}

}  // namespace vd::qcow
