// Guest offset -> run. L2 tables come from the LRU cache or are loaded asynchronously;
// concurrent lookups that need the same table join the load in flight instead of issuing
// their own, so one table is read once however many requests wait for it.
#include <algorithm>

#include "backends/qcow/image.h"

namespace vd::qcow {

void QcowImage::lookup(uint64_t guest, uint64_t max_len, RunHandler done) {
  const uint64_t l1i = layout_.l1_index(guest);
  const uint64_t table_end = layout_.l2_table_end(guest);
  const uint64_t l2_off = l1i < l1_.size() ? layout_.l2_offset(l1_[l1i]) : 0;
  if (l2_off == 0) {
    // No L2 table: the whole range it would map is unallocated.
    done({}, Run{Run::Kind::unallocated, std::min(max_len, table_end - guest)});
    return;
  }
  get_l2(l1i, l2_off, [this, guest, max_len, l2_off, done = std::move(done)](Error e, L2Ptr t) {
    if (e) return done(e, {});
    auto run = decode_run(layout_, *t, l2_off, guest, max_len, path_);
    if (!run) return done(run.error(), {});
    done({}, *run);
  });
}

std::optional<Result<Run>> QcowImage::lookup_cached(uint64_t guest, uint64_t max_len) {
  const uint64_t l1i = layout_.l1_index(guest);
  const uint64_t l2_off = l1i < l1_.size() ? layout_.l2_offset(l1_[l1i]) : 0;
  if (l2_off == 0) {
    const uint64_t table_end = layout_.l2_table_end(guest);
    return Result<Run>(Run{Run::Kind::unallocated, std::min(max_len, table_end - guest)});
  }
  L2Ptr t;
  if (auto it = dirty_l2_.find(l2_off); it != dirty_l2_.end()) t = it->second;
  else t = cache_.find(l2_off);
  if (!t) return std::nullopt;
  return decode_run(layout_, *t, l2_off, guest, max_len, path_);
}

void QcowImage::get_l2(uint64_t l1_index, uint64_t l2_off, L2Handler done) {
  if (auto it = dirty_l2_.find(l2_off); it != dirty_l2_.end()) return done({}, it->second);
  if (L2Ptr t = cache_.find(l2_off)) return done({}, std::move(t));
  if (Error e = check_l2_location(l1_index, l2_off)) return done(e, nullptr);

  auto& waiters = l2_loads_[l2_off];
  waiters.push_back(std::move(done));
  if (waiters.size() > 1) return;  // joined the load in flight

  auto raw = std::make_shared<std::vector<std::byte>>(layout_.l2_table_bytes());
  file_->async_read(IoKind::meta, l2_off, *raw, [this, l2_off, raw](Error e) {
    if (e) return finish_l2_load(l2_off, e.wrap("reading", "L2 table", l2_off).image(path_), nullptr);
    L2Ptr table = decode_l2(*raw);
    cache_.insert(l2_off, table);
    finish_l2_load(l2_off, {}, std::move(table));
  });
}

Error QcowImage::check_l2_location(uint64_t l1_index, uint64_t l2_off) const {
  if (layout_.version >= 2 && (l2_off & (layout_.cluster_size() - 1)))
    return Error(Errc::corrupt, "L2 table offset " + hex(l2_off) + " unaligned (L1 index: " + hex(l1_index) + ")")
        .image(path_).structure("L2 table").at(l2_off);
  if (l2_off + layout_.l2_table_bytes() > file_end_ || l2_off < layout_.cluster_size())
    return Error(Errc::corrupt, "L2 table at " + hex(l2_off) + " (L1 index: " + hex(l1_index) +
                                    ") lies outside the image file")
        .image(path_).structure("L2 table").at(l2_off);
  return {};
}

L2Ptr QcowImage::decode_l2(std::span<const std::byte> raw) const {
  auto t = std::make_shared<L2Table>(raw.size() / 8);
  for (size_t i = 0; i < t->size(); ++i) (*t)[i] = load_be64(raw.data() + i * 8);
  return t;
}

void QcowImage::finish_l2_load(uint64_t l2_off, Error e, L2Ptr table) {
  auto node = l2_loads_.extract(l2_off);
  if (node.empty()) return;
  for (auto& w : node.mapped()) w(e, table);
}

}  // namespace vd::qcow
