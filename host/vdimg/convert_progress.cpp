#include "host/vdimg/convert_progress.h"

#include <algorithm>
#include <string>

#include "host/vdimg/vdimg.h"

namespace vdimg {

namespace {

constexpr uint64_t kSector = 512;
constexpr int64_t kBufSectors = (2 << 20) / kSector;  // qemu-img convert's IO_BUF_SIZE
constexpr int64_t kMaxRequestSectors = 0x7fffffff / kSector;

enum class Status { data, zero, backing };

// The status qemu's bdrv_block_status_above reports at `offset` and the length it covers.
// `cluster`: qemu's qcow (v1) driver answers for one cluster at a time.
vd::Result<std::pair<Status, uint64_t>> status_at(vd::Runtime& rt, vd::Disk& src, uint64_t offset,
                                                  uint64_t length, bool overlay, uint64_t cluster) {
  if (cluster) length = std::min(length, cluster - offset % cluster);
  auto status = block_status_of(rt, src, offset, length);
  if (!status) return status.error();
  const vd::DiskExtent& x = *status;
  const uint64_t len = x.extent.length;
  using Kind = vd::Extent::Kind;
  // With -B only the top image counts (the base of the query is its backing file).
  if (overlay && x.level != 0) return std::make_pair(Status::backing, len);
  if (x.extent.kind == Kind::data && !x.extent.zero_data) return std::make_pair(Status::data, len);
  if (x.extent.kind == Kind::unallocated && overlay) return std::make_pair(Status::backing, len);
  return std::make_pair(Status::zero, len);  // zeros, and what nothing below holds
}

}  // namespace

vd::Error ConvertProgress::plan(vd::Runtime& rt, const std::vector<vd::Disk*>& sources, const ConvertWalk& walk) {
  if (!on_) return {};
  int64_t total = 0;
  for (vd::Disk* s : sources) total += static_cast<int64_t>((s->size() + kSector - 1) / kSector);
  const int64_t backing_sectors = walk.overlay ? static_cast<int64_t>(walk.backing_size / kSector) : -1;
  const int64_t cluster_sectors = static_cast<int64_t>(walk.compress_cluster / kSector);
  // Compressed, qemu-img copies one cluster at a time.
  const int64_t buf_sectors = cluster_sectors ? cluster_sectors : kBufSectors;
  std::vector<std::pair<uint64_t, int64_t>> counted;  // (chunk start, sectors done after it)
  int64_t done = 0, next_status = 0, src_offset = 0;
  Status status = Status::data;
  for (vd::Disk* src : sources) {
    const int64_t src_sectors = static_cast<int64_t>((src->size() + kSector - 1) / kSector);
    // qemu-img aligns status runs to the source's cluster (qcow, qcow2), else to a sector.
    const std::string fmt(src->image(0).backend().name());
    const int64_t align = (fmt == "qcow2" || fmt == "qcow")
                              ? std::max<int64_t>(1, src->image(0).cluster_size() / kSector) : 1;
    const uint64_t per_cluster = fmt == "qcow" ? src->image(0).cluster_size() : 0;
    for (int64_t sector = src_offset; sector < src_offset + src_sectors;) {
      int64_t n = std::min(total - sector, kMaxRequestSectors);
      bool post_backing_zero = false;
      if (backing_sectors >= 0) {
        if (sector >= backing_sectors) post_backing_zero = true;
        else if (sector + n > backing_sectors) n = backing_sectors - sector;
      }
      if (next_status <= sector) {
        const uint64_t offset = static_cast<uint64_t>(sector - src_offset) * kSector;
        const uint64_t count = std::min<uint64_t>(static_cast<uint64_t>(n) * kSector, src->size() - offset);
        auto st = status_at(rt, *src, offset, count, walk.overlay, per_cluster);
        if (!st) return st.error();
        n = static_cast<int64_t>((st->second + kSector - 1) / kSector);
        const int64_t tail = (sector - src_offset + n) % align;
        if (n > tail) n -= tail;
        status = st->first;
        if (status == Status::zero && post_backing_zero) status = Status::backing;
        next_status = sector + n;
      }
      n = std::min(n, next_status - sector);
      if (status == Status::data) n = std::min(n, buf_sectors);
      if (cluster_sectors) {  // compressed: whole clusters, an unallocated short run as data
        if (n < cluster_sectors) {
          n = std::min(cluster_sectors, total - sector);
          status = Status::data;
        } else {
          n -= n % cluster_sectors;
        }
      }
      // The copy loop: zeros copied (-S 0) go by buffers too.
      if (!walk.min_sparse && status == Status::zero) n = std::min(n, buf_sectors);
      if (status == Status::data || (!walk.min_sparse && status == Status::zero)) {
        done += n;
        counted.emplace_back(static_cast<uint64_t>(sector) * kSector, done);
      }
      sector += n;
    }
    src_offset += src_sectors;
  }
  for (const auto& [start, after] : counted)
    steps_.emplace_back(start, static_cast<float>(100.0 * static_cast<double>(after) / static_cast<double>(done)));
  return {};
}

void ConvertProgress::advance(uint64_t pos) {
  while (next_ < steps_.size() && steps_[next_].first < pos) line_.print(steps_[next_++].second, 0);
}

void ConvertProgress::finish() {
  advance(UINT64_MAX);
  line_.print(100, 0);
}

}  // namespace vdimg
