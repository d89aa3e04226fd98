// Growing an image (resize without --shrink): the L1 table grows when it must, and the new
// area is filled as QEMU's qcow2_co_truncate fills it:
//   - preallocation=metadata (and always for data_file_raw images, whose tables must map the
//     whole data file): QEMU's preallocate_co. Each L2 table the new area needs is allocated
//     when the area first reaches it, then the data clusters after it, in guest order; the
//     data is not written, except the copy-on-write parts of a partial first or last cluster
//     (QEMU writes them: they decide what qemu-img map and the file's allocation show). With
//     extended L2 the subcluster bitmaps are left as they were: the clusters have a host
//     offset but their subclusters still read as before (unallocated: zeros or the parent).
//   - zero_new_area (a parent longer than the old size): qcow2_subcluster_zeroize from the
//     first (sub)cluster boundary: zero flags, or zero subcluster bits, over every cluster.
//
// Crash invariant: everything is changed in memory and written by one flush in its usual
// order (data, refcounts, L2 tables, L1 table, then the header with the new size). The
// copy-on-write data is written before that flush. A crash before the header write leaves
// the old size, with the new clusters allocated and mapped past it: consistent refcounts,
// nothing visible (qemu-img check is clean; the next resize finds them in place).
#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

namespace {
constexpr uint64_t kAllZero = 0xffffffffull << 32;  // extended L2: every subcluster reads zeros
}  // namespace

Error QcowImage::grow(uint64_t new_size, const ResizeOptions& opts) {
  const uint64_t old = size_;
  // A larger L1 table is written and committed at once, its old clusters freed (QEMU's
  // qcow2_grow_l1_table): the first new L2 table may take their place.
  const uint64_t l1_before = hdr_.l1_table_offset;
  if (Error e = grow_l1((new_size + layout_.l2_coverage() - 1) / layout_.l2_coverage())) return e;
  if (hdr_.l1_table_offset != l1_before)
    if (Error e = FlushRequest::run_sync(*this)) return e;
  Preallocation mode = opts.preallocation;
  // QEMU: a raw data file is read as the guest sees it, so its tables must map all of it.
  if (data_file_ && (hdr_.autoclear_features & kAutoclearDataFileRaw) && mode == Preallocation::off)
    mode = Preallocation::metadata;
  uint64_t host_end = 0;
  if (mode == Preallocation::metadata && new_size > old)
    if (Error e = preallocate_range(old, new_size, host_end)) return e;
  if (opts.zero_new_area && new_size > old) {
    if (hdr_.version < 3)
      return Error(Errc::not_supported, "Failed to zero out new clusters: Operation not supported").image(path_);
    const uint64_t unit = uint64_t{1} << layout_.sub_bits();
    const uint64_t from = (old + unit - 1) / unit * unit;
    if (from < new_size)
      if (Error e = zero_range(from, new_size)) return e;
  }
  // The file reaches the host offset of the new end (QEMU truncates it there, when longer).
  if (host_end) {
    auto now = data_->size();
    if (!now) return now.error();
    if (*now < host_end)
      if (Error e = data_->set_size(host_end)) return e.wrap("growing", "the image file").image(path_);
    grew_to(host_end);
  }
  hdr_.size = new_size;
  size_ = new_size;
  header_dirty_ = true;
  if (Error e = FlushRequest::run_sync(*this)) return e;
  // Without preallocation an external data file takes exactly the new size, as in QEMU.
  if (data_file_ && mode == Preallocation::off)
    if (Error e = data_file_->set_size(new_size)) return e.wrap("resizing", "external data file").image(path_);
  return {};
}

// QEMU's preallocate_co over [from, to): the clusters of the range that are not already
// plain data of this image (COPIED) get new host clusters, one run per L2 table after the
// table itself. `host_end` becomes the host offset of `to`.
Error QcowImage::preallocate_range(uint64_t from, uint64_t to, uint64_t& host_end) {
  const uint64_t cs = layout_.cluster_size();
  const unsigned w = layout_.words_per_entry();
  const bool external = data_file_ != nullptr;
  auto host_of = [&](uint64_t e) { return e & kL2OffsetMask; };
  auto has_host = [&](uint64_t e) {
    return !(e & kOflagCompressed) && (host_of(e) || (external && (e & kOflagCopied)));
  };
  auto zero_flag = [&](uint64_t e) { return !layout_.extended_l2 && (e & kOflagZero); };
  // Plain data this image owns: kept as it is (QEMU's handle_copied).
  auto kept = [&](uint64_t e) { return has_host(e) && (e & kOflagCopied) && !zero_flag(e); };
  const uint64_t first_cluster = from / cs, last_cluster = (to - 1) / cs;
  for (uint64_t guest = from; guest < to;) {
    const uint64_t l1i = layout_.l1_index(guest);
    auto owned = owned_l2(l1i);
    if (!owned) return owned.error();
    L2Table& t = **owned;
    const uint64_t chunk_end = std::min(to, layout_.l2_table_end(guest));
    const uint64_t c_end = (chunk_end + cs - 1) / cs;
    for (uint64_t c = guest / cs; c < c_end;) {
      auto at = [&](uint64_t k) { return layout_.l2_index(k * cs) * w; };
      if (kept(t[at(c)])) {
        ++c;
        continue;
      }
      // A run of clusters needing host space. A zero cluster that keeps its host space
      // (preallocated, COPIED) is reused in place, one at a time (QEMU's keep_old_clusters).
      const uint64_t e0 = t[at(c)];
      const bool reuse = has_host(e0) && (e0 & kOflagCopied);
      uint64_t n = 1;
      if (!reuse)
        while (c + n < c_end && !kept(t[at(c + n)]) && !(has_host(t[at(c + n)]) && (t[at(c + n)] & kOflagCopied))) ++n;
      uint64_t host;
      if (reuse) {
        host = host_of(e0);
      } else if (external) {
        host = c * cs;  // an external data file maps guest offsets 1:1
      } else {
        auto a = allocate_clusters(n);
        if (!a) return a.error();
        host = *a;
      }
      for (uint64_t k = 0; k < n; ++k) {
        const uint64_t i = at(c + k);
        const uint64_t old = t[i], bitmap = layout_.extended_l2 ? t[i + 1] : 0;
        const uint64_t h = host + k * cs, g = (c + k) * cs;
        // Copy-on-write of the parts of the first and last cluster outside the range.
        if (c + k == first_cluster && from % cs) {
          const uint64_t sc = uint64_t{1} << layout_.sub_bits();
          uint64_t start = g;
          if (layout_.extended_l2) {
            start = from / sc * sc;
            if (has_host(old) && (bitmap & 0xffffffffull))
              start = std::min(start, g + (uint64_t(std::countr_zero(uint32_t(bitmap))) << layout_.sub_bits()));
          }
          if (Error e = write_cow(g, h, start, from, old)) return e;
        }
        if (c + k == last_cluster && to % cs) {
          const uint64_t sc = uint64_t{1} << layout_.sub_bits();
          const uint64_t end = layout_.extended_l2 ? (to + sc - 1) / sc * sc : g + cs;
          if (end > to)
            if (Error e = write_cow(g, h, to, end, 0)) return e;  // past the end: zeros
        }
        t[i] = h | kOflagCopied;  // the bitmap stays (QEMU's prealloc: subclusters untouched)
        if (!reuse && old) release_entry(old, bitmap);
      }
      c += n;
    }
    if (chunk_end == to) {
      const uint64_t e = t[layout_.l2_index(last_cluster * cs) * w];
      host_end = external ? to : host_of(e) + (to - last_cluster * cs);
    }
    guest = chunk_end;
  }
  return {};
}

// Writes what the guest saw in [from, to) of the cluster at `guest` (zeros where it read
// zeros) to its new host cluster `host`, as QEMU's perform_cow. `entry` is the cluster's old
// L2 entry (0 past the old end: zeros). Where the copy would stay invisible (extended L2:
// the subcluster bitmap is kept, so unallocated subclusters still read as before), zeros.
Error QcowImage::write_cow(uint64_t guest, uint64_t host, uint64_t from, uint64_t to, uint64_t entry) {
  // Zeros of an encrypted image are written encrypted: without the key they cannot be.
  if (hdr_.crypt_method != kCryptNone && !cipher_)
    return Error(Errc::not_supported, "preallocating a partial cluster of an encrypted image needs its key")
        .image(path_).at(guest);
  std::vector<std::byte> buf(to - from);
  const bool shared_data = !(entry & kOflagCompressed) && (entry & kL2OffsetMask) &&
                           (layout_.extended_l2 || !(entry & kOflagZero)) && !(entry & kOflagCopied);
  const bool unallocated = !(entry & kL2OffsetMask) && !(entry & kOflagCompressed) &&
                           !(layout_.extended_l2 || (entry & kOflagZero));
  if (!layout_.extended_l2 && (entry & kOflagCompressed))
    return Error(Errc::not_supported, "preallocating over a partial compressed cluster").image(path_).at(guest);
  if (!layout_.extended_l2 && unallocated && has_parent())
    return Error(Errc::not_supported, "preallocating over a partial cluster of the parent").image(path_).at(guest);
  if (shared_data) {
    // A cluster a snapshot shares: its data moves to the new cluster.
    const uint64_t old_host = entry & kL2OffsetMask;
    if (Error e = data_->read(IoKind::data, old_host + (from - guest), buf))
      return e.wrap("reading", "data", old_host).image(path_);
    if (cipher_)
      if (Error e = decrypt(from, old_host + (from - guest), buf)) return e;
  }
  if (cipher_)
    if (Error e = encrypt(from, host + (from - guest), buf)) return e;
  if (Error e = data_->write(IoKind::data, host + (from - guest), buf))
    return e.wrap("writing", "data", host + (from - guest)).image(path_);
  grew_to(host + (to - guest));
  return {};
}

// The L2 table under L1 entry `l1i` as this image's own, loaded and marked for update:
// allocated when there is none, copied when a snapshot shares it (QEMU's get_cluster_table).
Result<L2Table*> QcowImage::owned_l2(uint64_t l1i) {
  const uint64_t l2_off = layout_.l2_offset(l1_[l1i]);
  if (l2_off && (l1_[l1i] & kOflagCopied)) {
    if (auto t = l2_now(l1i, l2_off); !t) return t.error();
    return &l2_for_update(l2_off);
  }
  L2Ptr shared;
  if (l2_off) {
    auto t = l2_now(l1i, l2_off);
    if (!t) return t.error();
    shared = *t;
  }
  auto at = allocate_clusters(l2_table_clusters());
  if (!at) return at.error();
  install_l2(l1i, l2_off, *at, shared);
  return &l2_for_update(*at);
}

// QEMU's qcow2_subcluster_zeroize with no flags over [from, to) (from on a subcluster
// boundary, to the image end): zero subcluster bits in a partial first cluster, then every
// cluster zero, keeping its host space; compressed clusters are dropped. Missing L2 tables
// are allocated, as QEMU's get_cluster_table does.
Error QcowImage::zero_range(uint64_t from, uint64_t to) {
  const uint64_t cs = layout_.cluster_size();
  const unsigned w = layout_.words_per_entry();
  for (uint64_t guest = from; guest < to;) {
    const uint64_t l1i = layout_.l1_index(guest);
    auto owned = owned_l2(l1i);
    if (!owned) return owned.error();
    L2Table& t = **owned;
    const uint64_t chunk_end = std::min(to, layout_.l2_table_end(guest));
    uint64_t g = guest;
    if (g % cs) {  // extended L2: the subclusters from `g` to the cluster's end (or `to`)
      const uint64_t i = layout_.l2_index(g) * w;
      if (t[i] & kOflagCompressed)
        return Error(Errc::not_supported, "Failed to zero out new clusters: Operation not supported").image(path_);
      const uint64_t end = std::min(chunk_end, g / cs * cs + cs);
      const unsigned sc0 = unsigned((g % cs) >> layout_.sub_bits());
      const unsigned sc1 = unsigned(((end - 1) % cs) >> layout_.sub_bits()) + 1;
      const uint64_t bits = ((uint64_t{1} << sc1) - 1) & ~((uint64_t{1} << sc0) - 1);
      t[i + 1] = (t[i + 1] | (bits << 32)) & ~bits;
      g = end;
    }
    for (; g < chunk_end; g += cs) {
      const uint64_t i = layout_.l2_index(g) * w;
      const uint64_t old = t[i];
      const bool unmap = old & kOflagCompressed;
      if (layout_.extended_l2) {
        t[i] = unmap ? 0 : old;
        t[i + 1] = kAllZero;
      } else {
        t[i] = (unmap ? 0 : old) | kOflagZero;
      }
      if (unmap) release_entry(old, 0);
    }
    guest = chunk_end;
  }
  return {};
}

}  // namespace vd::qcow
