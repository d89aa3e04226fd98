// compat=1.1 -> 0.10 (QEMU 7.2's qcow2_downgrade): refused while the image uses what v2
// cannot express (refcount widths other than 16, a data file, snapshots of another size,
// incompatible features such as extended L2, zstd-compressed clusters); zero clusters,
// which v2 does not know, are written out first.
//
// Crash invariant (zero expansion): a cluster taken for a zero cluster is zeroed and its
// refcount raised, both durable (the flush's data and refcount steps), before the L2 entry
// points at it; the entry loses its zero flag in the same table write. A crash before the
// header switch leaves a v3 image whose zero clusters read as zeros either way.
#include <set>

#include "backends/qcow/amend/amend.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/header.h"

namespace vd::qcow {

namespace {
Error refused(const std::string& message) { return Error(Errc::not_supported, message); }
}  // namespace

// Every zero cluster reachable from `l1` becomes a zeroed data cluster (or, with no backing
// file, unallocated: it reads as zeros anyway). A table shared by several L1 tables is
// changed in place (the guest sees the same zeros through each); a cluster taken for it gets
// the table's refcount, one per L1 table that reaches it.
Error QcowImage::expand_zero_clusters(const std::vector<uint64_t>& l1, std::set<uint64_t>& seen,
                                      const std::function<void(uint64_t)>& step) {
  const uint64_t cs = layout_.cluster_size();
  std::vector<std::byte> zeros(cs);
  for (uint64_t i = 0; i < l1.size(); ++i) {
    step(i);
    const uint64_t l2_off = layout_.l2_offset(l1[i]);
    if (!l2_off || !seen.insert(l2_off).second) continue;
    auto table = l2_now(i, l2_off);
    if (!table) return table.error();
    auto l2_refs = refs_->get(l2_off);
    if (!l2_refs) return l2_refs.error();
    for (uint64_t j = 0; j < (*table)->size(); ++j) {
      const uint64_t e = (**table)[j];
      if ((e & kOflagCompressed) || !(e & kOflagZero)) continue;
      uint64_t host = e & kL2OffsetMask;
      if (!host && !hdr_.backing_file) {
        l2_for_update(l2_off)[j] = 0;
        continue;
      }
      if (!host) {
        auto at = allocate_clusters(1);
        if (!at) return at.error();
        host = *at;
        if (*l2_refs > 1)
          if (Error err = refs_->update(host, cs, static_cast<int64_t>(*l2_refs) - 1)) return err;
      }
      if (Error err = file_->write(IoKind::data, host, zeros))
        return err.wrap("writing", "zeroed cluster", host).image(path_);
      auto rc = refs_->get(host);
      if (!rc) return rc.error();
      l2_for_update(l2_off)[j] = host | (*rc == 1 ? kOflagCopied : 0);
    }
  }
  return {};
}

Error QcowImage::downgrade(AmendProgress& progress) {
  if (hdr_.refcount_order != 4) return refused("compat=0.10 requires refcount_bits=16");
  if (hdr_.data_file) return refused("Cannot downgrade an image with a data file");
  for (const auto& s : snapshots_)
    if (s.vm_state_size > UINT32_MAX || s.disk_size.value_or(hdr_.size) != hdr_.size)
      return refused("Internal snapshots prevent downgrade of image");
  const uint64_t features = hdr_.incompatible_features & ~(kIncompatCompression | kIncompatDirty);
  if (features) {
    char hex[32];
    std::snprintf(hex, sizeof hex, "%#llx", static_cast<unsigned long long>(features));
    return refused(std::string("Cannot downgrade an image with incompatible features ") + hex + " set");
  }
  // Zero clusters: the active table, then each snapshot's.
  std::vector<std::vector<uint64_t>> tables{l1_};
  for (const auto& s : snapshots_) {
    auto l1 = read_snapshot_l1(s, s.l1_size);
    if (!l1) return l1.error();
    tables.push_back(std::move(*l1));
  }
  uint64_t total = 0;
  for (const auto& t : tables) total += t.size();
  uint64_t done = 0;
  std::set<uint64_t> seen;
  for (const auto& t : tables) {
    if (Error e = expand_zero_clusters(t, seen, [&](uint64_t i) { progress.report(done + i, total); })) return e;
    done += t.size();
  }
  progress.report(total, total);
  if (Error e = FlushRequest::run_sync(*this)) return e;
  if (hdr_.incompatible_features & kIncompatCompression) {
    // QEMU looks at the active state only (block status of the whole disk).
    for (uint64_t i = 0; i < l1_.size(); ++i) {
      const uint64_t l2_off = layout_.l2_offset(l1_[i]);
      if (!l2_off) continue;
      auto table = l2_now(i, l2_off);
      if (!table) return table.error();
      for (uint64_t e : **table)
        if (e & kOflagCompressed)
          return refused("Cannot downgrade an image with zstd compression type and existing compressed clusters");
    }
    hdr_.compression_type = kCompressionZlib;
  }
  hdr_.version = 2;
  hdr_.incompatible_features = 0;
  hdr_.compatible_features = 0;
  hdr_.autoclear_features = 0;
  hdr_.header_length = 0;
  hdr_.feature_names = qemu_feature_names(2, hdr_.cluster_bits);
  if (Error e = write_header_now()) return e;
  marked_dirty_ = false;  // a v2 header has no dirty bit to clear on close
  layout_ = Layout::from(hdr_);
  return {};
}

}  // namespace vd::qcow
