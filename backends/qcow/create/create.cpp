// Creating QCOW images.
//
// QCOW2: a bootstrap layout is written first (header in cluster 0, a one-cluster refcount
// table in cluster 1, the first refcount block in cluster 2 counting clusters 0-2); every
// further structure (L1 table, LUKS header) is placed by the refcount allocator, which
// grows the refcount structures as needed. The header is written last, after everything it
// points at is on disk and flushed. Preallocation then runs through the open image's own
// allocation path, so it obeys the same crash invariants as any write.
//
// QCOW v1: header, backing file name, then the L1 table right after them (as qemu-img).
#include <algorithm>
#include <cstring>

#include "backends/qcow/create/create_options.h"
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"
#include "backends/qcow/meta/refcount.h"

namespace vd::qcow {
namespace {

Header base_header(const QcowCreateSpec& s, uint64_t size) {
  Header h;
  h.version = s.version;
  h.size = size;
  h.cluster_bits = s.cluster_bits;
  h.crypt_method = s.crypt_method;
  h.refcount_order = s.refcount_order;
  h.compression_type = s.compression_type;
  h.backing_file = s.backing_file;
  h.backing_format = s.backing_file ? s.backing_format : std::nullopt;
  if (s.version >= 3) {
    h.header_length = 112;
    if (s.compression_type != kCompressionZlib) h.incompatible_features |= kIncompatCompression;
    if (s.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
    if (s.data_file) {
      h.incompatible_features |= kIncompatDataFile;
      h.data_file = s.data_file;
      if (s.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
    }
    if (s.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
  } else {
    h.header_length = kV2HeaderSize;
  }
  h.l2_bits = h.cluster_bits - (s.extended_l2 ? 4 : 3);
  h.l1_size = static_cast<uint32_t>(l1_entries_for_size(h, size));
  h.feature_names = qemu_feature_names(h.version, h.cluster_bits);
  return h;
}

Error write_bootstrap(File& f, const Header& h, const std::string& path) {
  const uint64_t cs = h.cluster_size();
  std::vector<std::byte> buf(3 * cs);
  store_be64(buf.data() + cs, 2 * cs);  // refcount table[0] -> block in cluster 2
  // Refcounts 1 for clusters 0, 1 and 2, in the block's own entry width.
  for (uint64_t c = 0; c < 3; ++c) {
    const uint32_t bits = 1u << h.refcount_order;
    if (bits < 8) {
      const uint64_t bit = c * bits;
      buf[2 * cs + bit / 8] |= std::byte(static_cast<uint8_t>(1u << (bit % 8)));
    } else {
      buf[2 * cs + (c + 1) * (bits / 8) - 1] = std::byte{1};
    }
  }
  if (Error e = f.write(IoKind::meta, 0, buf)) return e.wrap("writing", "new image").image(path);
  return {};
}

Result<uint64_t> place(Refcounts& refs, uint64_t bytes, uint64_t cs) {
  return refs.allocate((bytes + cs - 1) / cs);
}

Error create_qcow2(const std::string& path, const QcowCreateSpec& s, const CreateOptions& opts, IoProvider& io) {
  Header h = base_header(s, opts.size);
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) return Error(Errc::too_large, "Image is too big").image(path);
  if (s.data_file) {
    // The name is recorded as given and, as qemu-img does, created where it points from the
    // current directory (opening finds it there first: QcowImage::open_data_file). Raw data
    // files hold the whole virtual disk at its own offsets.
    const std::string& dp = *s.data_file;
    auto df = io.open(dp, file_read | file_write | file_create | file_truncate | file_lock);
    if (!df) return df.error().wrap("creating", "data file").image(path);
    if (Error e = (*df)->set_size(s.data_file_raw ? opts.size : 0)) return e;
  }
  auto fr = io.open(path, file_read | file_write | file_create | file_truncate | file_lock);
  if (!fr) return fr.error();
  File& f = **fr;
  const uint64_t cs = h.cluster_size();
  if (Error e = write_bootstrap(f, h, path)) return e;

  Refcounts refs(f, path, {h.cluster_bits, h.refcount_order, cs, 1});
  if (Error e = refs.load(3 * cs)) return e;
  if (h.l1_size) {
    auto at = place(refs, uint64_t{h.l1_size} * 8, cs);
    if (!at) return at.error();
    h.l1_table_offset = *at;
  }
  if (s.crypt_method == kCryptLuks) {
    auto len = luks_header_size(s.luks);
    if (!len) return len.error();
    auto at = place(refs, *len, cs);
    if (!at) return at.error();
    auto vol = luks_create(f, *at, *opts.passphrase, s.luks, path);
    if (!vol) return vol.error();
    h.crypto_header_offset = *at;
    h.crypto_header_length = *len;
  }
  if (Error e = f.set_size(refs.allocated_end())) return e;
  bool moved = false;
  if (Error e = refs.write_blocks()) return e;
  if (Error e = refs.write_table(moved)) return e;
  if (Error e = f.flush()) return e;
  h.refcount_table_offset = refs.table_offset();
  h.refcount_table_clusters = refs.table_clusters();
  auto bytes = encode_header(h);
  if (!bytes) return bytes.error().wrap("encoding", "header").image(path);
  if (Error e = f.write(IoKind::meta, 0, *bytes)) return e;
  if (moved) {  // the bootstrap table was outgrown: its cluster is free once the header moved
    refs.table_committed();
    if (Error e = refs.apply_releases()) return e;
    if (Error e = refs.write_blocks()) return e;
  }
  return f.flush();
}

Error create_qcow1(const std::string& path, const QcowCreateSpec& s, const CreateOptions& opts, IoProvider& io) {
  Header h;
  h.version = 1;
  h.size = opts.size;
  // qemu-img's choice: small clusters under a backing file (less to copy on write).
  h.cluster_bits = s.backing_file ? 9 : 12;
  h.l2_bits = s.backing_file ? 12 : 9;
  h.crypt_method = s.crypt_method;
  h.backing_file = s.backing_file;
  const uint32_t shift = h.cluster_bits + h.l2_bits;
  if (opts.size > (uint64_t{1} << 55)) return Error(Errc::too_large, "Image too large").image(path);
  h.l1_size = static_cast<uint32_t>((opts.size + (1ull << shift) - 1) >> shift);
  auto head = encode_header(h);
  if (!head) return head.error().wrap("encoding", "header").image(path);
  h.l1_table_offset = (head->size() + 7) & ~uint64_t{7};
  head = encode_header(h);
  if (!head) return head.error().wrap("encoding", "header").image(path);
  auto fr = io.open(path, file_read | file_write | file_create | file_truncate | file_lock);
  if (!fr) return fr.error();
  std::vector<std::byte> buf(h.l1_table_offset + (uint64_t{h.l1_size} * 8 + 511) / 512 * 512);
  std::memcpy(buf.data(), head->data(), head->size());
  if (Error e = (*fr)->write(IoKind::meta, 0, buf)) return e;
  return (*fr)->flush();
}

}  // namespace

// Preallocation through the image's own allocation path: every L2 table, then every data
// cluster (metadata); `falloc`/`full` also reserve or write the data clusters' space.
Error QcowImage::preallocate(int mode) {
  const auto pm = static_cast<Prealloc>(mode);
  const uint64_t cs = layout_.cluster_size();
  const uint64_t clusters = (size_ + cs - 1) / cs;
  for (uint64_t first = 0; first < clusters;) {
    const uint64_t guest = first * cs;
    const uint64_t l1i = layout_.l1_index(guest);
    const uint64_t n = std::min(clusters - first, layout_.l2_entries() - layout_.l2_index(guest));
    // A new image: every table is missing (synchronous: refcount blocks load at once).
    uint64_t l2_off = layout_.l2_offset(l1_[l1i]);
    if (!l2_off) {
      auto at = allocate_clusters(l2_table_clusters());
      if (!at) return at.error();
      install_l2(l1i, 0, *at, nullptr);
      l2_off = *at;
    }
    auto host = allocate_clusters(n);
    if (!host) return host.error();
    L2Table& t = l2_for_update(l2_off);
    for (uint64_t k = 0; k < n; ++k) {
      const uint64_t i = layout_.l2_index(guest + k * cs) * layout_.words_per_entry();
      t[i] = (*host + k * cs) | kOflagCopied;
      if (layout_.extended_l2) t[i + 1] = 0xffffffffull;
    }
    if (pm != Prealloc::metadata)
      if (Error e = data_->allocate(*host, n * cs)) return e;
    first += n;
  }
  if (Error e = file_->set_size(std::max<uint64_t>(file_end_, refs_->allocated_end()))) return e;
  return FlushRequest::run_sync(*this);
}

Result<std::unique_ptr<Image>> create_image(const Backend& backend, const std::string& path,
                                            const CreateOptions& given, IoProvider& io) {
  const bool v1 = backend.name() == "qcow";
  CreateOptions opts = given;
  opts.size = round_up_to_sector(given.size);
  auto spec = parse_create_options(opts, v1, path);
  if (!spec) return spec.error();
  if (Error e = v1 ? create_qcow1(path, *spec, opts, io) : create_qcow2(path, *spec, opts, io)) return e;
  OpenOptions oo;
  oo.flags = open_format_given;
  oo.passphrase = opts.passphrase;
  auto img = QcowImage::open(backend, path, oo, io);
  if (!img) return img.error();
  if (!v1 && spec->prealloc != Prealloc::off) {
    if (spec->data_file)
      return Error(Errc::not_supported, "preallocation with an external data file").image(path);
    auto* q = static_cast<QcowImage*>(img->get());
    if (Error e = q->preallocate(static_cast<int>(spec->prealloc))) return e;
  }
  return img;
}

}  // namespace vd::qcow
