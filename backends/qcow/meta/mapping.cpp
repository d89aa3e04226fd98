#include "backends/qcow/meta/mapping.h"

#include <algorithm>

namespace vd::qcow {

Layout Layout::from(const Header& h) {
  Layout l;
  l.version = h.version;
  l.cluster_bits = h.cluster_bits;
  l.extended_l2 = h.extended_l2();
  l.l2_bits = h.version == 1 ? h.l2_bits : h.cluster_bits - (l.extended_l2 ? 4 : 3);
  l.external_data = h.data_file.has_value();
  return l;
}

namespace {

// The state of one allocation unit (cluster, or subcluster with extended L2).
struct Unit {
  Run::Kind kind;
  uint64_t host;        // data: host offset of the unit; compressed: run start
  uint64_t csize = 0;   // compressed bytes
  bool copied = true;   // data: refcount is exactly 1 (QCOW v1 has no sharing)
  bool reserved = false;  // zero/unallocated: the unit keeps host space at `host`
};

Error corrupt(const std::string& path, const std::string& what, uint64_t l2_offset, uint64_t index) {
  return Error(Errc::corrupt, what + " (L2 offset: " + hex(l2_offset) + ", L2 index: " + hex(index) + ")")
      .image(path)
      .structure("L2 table")
      .at(l2_offset);
}

Result<Unit> decode_v1(const Layout& l, uint64_t e) {
  if (e == 0) return Unit{Run::Kind::unallocated, 0};
  if (e & kV1OflagCompressed) {
    const uint32_t shift = 63 - l.cluster_bits;
    return Unit{Run::Kind::compressed, e & ((1ull << shift) - 1),
                (e >> shift) & ((1ull << l.cluster_bits) - 1)};
  }
  return Unit{Run::Kind::data, e};
}

Unit decode_compressed_v2(const Layout& l, uint64_t e) {
  const uint32_t x = 62 - (l.cluster_bits - 8);
  const uint64_t host = e & ((1ull << x) - 1);
  const uint64_t sectors = ((e >> x) & ((1ull << (l.cluster_bits - 8)) - 1)) + 1;
  return Unit{Run::Kind::compressed, host, sectors * 512 - (host & 511)};
}

// QEMU's rule: with an external data file, offset 0 with COPIED set is a real cluster.
bool has_host_cluster(const Layout& l, uint64_t e) {
  return (e & kL2OffsetMask) || (l.external_data && (e & kOflagCopied));
}

Result<Unit> decode_v2(const Layout& l, const L2Table& t, uint64_t idx, uint32_t sub,
                       uint64_t l2_offset, const std::string& path) {
  const uint64_t e = t[idx * l.words_per_entry()];
  if (e & kOflagCompressed) return decode_compressed_v2(l, e);
  const uint64_t host = e & kL2OffsetMask;
  if (!l.extended_l2) {
    if (e & kOflagZero) {
      // A preallocated zero cluster keeps its host space; an unaligned one is left to the
      // write path to refuse (it reads as zeros either way).
      if (has_host_cluster(l, e) && !(host & (l.cluster_size() - 1)))
        return Unit{Run::Kind::zero, host, 0, true, true};
      return Unit{Run::Kind::zero, 0};
    }
    if (!has_host_cluster(l, e)) return Unit{Run::Kind::unallocated, 0};
    if (host & (l.cluster_size() - 1))
      return corrupt(path, "Cluster allocation offset " + hex(host) + " unaligned", l2_offset, idx);
    return Unit{Run::Kind::data, host, 0, (e & kOflagCopied) != 0};
  }
  const uint64_t bitmap = t[idx * 2 + 1];
  const uint64_t alloc = bitmap & 0xffffffffull, zero = bitmap >> 32;
  if (!has_host_cluster(l, e)) {
    if (alloc) return corrupt(path, "Invalid cluster entry found", l2_offset, idx);
    return Unit{(zero >> sub) & 1 ? Run::Kind::zero : Run::Kind::unallocated, 0};
  }
  if (alloc & zero) return corrupt(path, "Invalid cluster entry found", l2_offset, idx);
  if (host & (l.cluster_size() - 1))
    return corrupt(path, "Cluster allocation offset " + hex(host) + " unaligned", l2_offset, idx);
  if ((zero >> sub) & 1)
    return Unit{Run::Kind::zero, host + (uint64_t{sub} << l.sub_bits()), 0, true, true};
  const uint64_t sub_host = host + (uint64_t{sub} << l.sub_bits());
  if ((alloc >> sub) & 1) return Unit{Run::Kind::data, sub_host, 0, (e & kOflagCopied) != 0};
  return Unit{Run::Kind::unallocated, sub_host, 0, true, true};
}

}  // namespace

Result<Run> decode_run(const Layout& l, const L2Table& t, uint64_t l2_offset, uint64_t guest,
                       uint64_t max_len, const std::string& path) {
  const uint64_t unit_bytes = 1ull << l.sub_bits();
  const uint64_t table_end = l.l2_table_end(guest);
  const uint64_t end = std::min(guest + max_len, table_end);
  Run run;
  uint64_t pos = guest;
  while (pos < end) {
    const uint64_t idx = l.l2_index(pos);
    const uint32_t sub = static_cast<uint32_t>((pos >> l.sub_bits()) & ((1ull << (l.cluster_bits - l.sub_bits())) - 1));
    Result<Unit> u = l.version == 1 ? decode_v1(l, t[idx]) : decode_v2(l, t, idx, sub, l2_offset, path);
    if (!u) {
      if (pos == guest) return u.error();
      break;  // report the good prefix; the bad unit fails on the next call
    }
    const uint64_t unit_start = pos & ~(unit_bytes - 1);
    const uint64_t in_unit = pos - unit_start;
    if (pos == guest) {
      run.kind = u->kind;
      if (u->kind == Run::Kind::compressed) {
        const uint64_t cstart = guest & ~(l.cluster_size() - 1);
        run.host_offset = u->host;
        run.compressed_bytes = u->csize;
        run.cluster_start = cstart;
        run.length = std::min(end, cstart + l.cluster_size()) - guest;
        return run;
      }
      const bool hosted = u->kind == Run::Kind::data || u->reserved;
      run.host_offset = hosted ? u->host + in_unit : 0;
      run.copied = u->copied;
      run.host_reserved = u->reserved;
    } else {
      if (u->kind != run.kind || u->copied != run.copied || u->reserved != run.host_reserved) break;
      const bool hosted = u->kind == Run::Kind::data || u->reserved;
      if (hosted && u->host + in_unit != run.host_offset + (pos - guest)) break;
    }
    const uint64_t step = std::min(end, unit_start + unit_bytes) - pos;
    pos += step;
  }
  run.length = pos - guest;
  return run;
}

}  // namespace vd::qcow
