#include "host/vdimg/measure.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "backends/common/sizes.h"

namespace vdimg {
namespace {

uint64_t div_round_up(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }
uint64_t round_up(uint64_t a, uint64_t b) { return div_round_up(a, b) * b; }

uint64_t be(const std::byte* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = v << 8 | static_cast<uint8_t>(p[i]);
  return v;
}

vd::Result<std::vector<std::byte>> read_at(std::ifstream& in, const std::string& path, uint64_t at,
                                           uint64_t len) {
  std::vector<std::byte> buf(len);
  in.clear();
  in.seekg(static_cast<std::streamoff>(at));
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(len));
  if (static_cast<uint64_t>(in.gcount()) != len)
    return vd::Error(vd::Errc::corrupt, "short read").image(path).structure("bitmap directory").at(at);
  return buf;
}

}  // namespace

const std::string* last_option(const OptionList& options, const std::string& key) {
  const std::string* found = nullptr;
  for (const auto& [k, v] : options)
    if (k == key) found = &v;
  return found;
}

// Refcount blocks and table clusters grow until they cover the data and themselves.
uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, unsigned refcount_order) {
  const uint64_t blocks_per_table_cluster = cluster_size / 8;
  const uint64_t refcounts_per_block = cluster_size * 8 >> refcount_order;
  uint64_t table = 0, blocks = 0, n = 0, last = 0;
  do {
    last = n;
    blocks = div_round_up(clusters + table + blocks, refcounts_per_block);
    table = div_round_up(blocks, blocks_per_table_cluster);
    n = clusters + blocks + table;
  } while (n != last);
  return (blocks + table) * cluster_size;
}

uint64_t qcow2_full_size(uint64_t virtual_size, uint64_t cluster_size, unsigned refcount_order,
                         bool extended_l2) {
  const uint64_t l2e_size = extended_l2 ? 16 : 8;
  const uint64_t aligned = round_up(virtual_size, cluster_size);
  uint64_t meta = cluster_size;  // the header
  const uint64_t nl2e = round_up(aligned / cluster_size, cluster_size / l2e_size);
  meta += nl2e * l2e_size;
  const uint64_t nl1e = round_up(nl2e * l2e_size / cluster_size, cluster_size / 8);
  meta += nl1e * 8;
  meta += qcow2_refcount_metadata_size((meta + aligned) / cluster_size, cluster_size, refcount_order);
  return meta + aligned;
}

// Reads the header extensions for the bitmaps extension, then the bitmap directory.
vd::Result<uint64_t> qcow2_bitmaps_size(const std::string& path, uint64_t disk_size, uint64_t cluster_size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return vd::Error::from_errno(errno, "open", path);
  auto head = read_at(in, path, 0, 104);
  if (!head) return head.error();
  const std::byte* h = head->data();
  const uint64_t backing_offset = be(h + 8, 8);
  const uint64_t own_cluster = uint64_t{1} << std::min<uint64_t>(be(h + 20, 4), 21);
  const uint64_t autoclear = be(h + 88, 8);
  const uint64_t header_length = be(h + 100, 4);
  if (!(autoclear & 1)) return uint64_t{0};  // bitmaps unknown to the last writer: dropped
  const uint64_t ext_end = backing_offset ? std::min(backing_offset, own_cluster) : own_cluster;
  if (header_length >= ext_end) return uint64_t{0};
  auto exts = read_at(in, path, header_length, ext_end - header_length);
  if (!exts) return exts.error();
  uint64_t count = 0, dir_size = 0, dir_offset = 0;
  for (uint64_t at = 0; at + 8 <= exts->size();) {
    const uint64_t magic = be(exts->data() + at, 4), len = be(exts->data() + at + 4, 4);
    if (magic == 0 || at + 8 + len > exts->size()) break;
    if (magic == 0x23852875 && len >= 24) {
      count = be(exts->data() + at + 8, 4);
      dir_size = be(exts->data() + at + 16, 8);
      dir_offset = be(exts->data() + at + 24, 8);
    }
    at += 8 + round_up(len, 8);
  }
  if (count == 0 || dir_size > (64u << 20)) return uint64_t{0};
  auto dir = read_at(in, path, dir_offset, dir_size);
  if (!dir) return dir.error();
  uint64_t total = 0, dir_bytes = 0;
  for (uint64_t at = 0, i = 0; i < count && at + 24 <= dir->size(); ++i) {
    const std::byte* e = dir->data() + at;
    const uint64_t granularity = uint64_t{1} << std::min<uint64_t>(be(e + 17, 1), 63);
    const uint64_t name_size = be(e + 18, 2), extra = be(e + 20, 4);
    const uint64_t bytes = div_round_up(div_round_up(disk_size, granularity), 8);
    const uint64_t clusters = div_round_up(bytes, cluster_size);
    total += clusters * cluster_size + round_up(clusters * 8, cluster_size);
    const uint64_t entry = round_up(24 + name_size + extra, 8);
    dir_bytes += entry;
    at += entry;
  }
  return total + round_up(dir_bytes, cluster_size);
}

}  // namespace vdimg
