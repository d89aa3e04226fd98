// Metadata changes outside the data path: the backing file reference (rebase).
#include "backends/qcow/io/flush_request.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"

namespace vd::qcow {

// Rewrites the header with the new backing file name and format. Everything written before
// is flushed first, so the header is the only thing that changes; the new header is
// encoded (and checked to fit in the first cluster) before anything is written.
Error QcowImage::set_parent(const std::optional<std::string>& filename,
                            const std::optional<std::string>& format) {
  if (Error e = refuse_write("changing the backing file")) return e;
  if (writes_active_ || flushing_)
    return Error(Errc::busy, "changing the backing file while requests are in flight").image(path_);
  if (filename && filename->size() > kMaxBackingNameLength)
    return Error(Errc::invalid_argument, "Backing file name too long").image(path_);
  Header next = hdr_;
  next.backing_file = filename;
  next.backing_format = filename ? format : std::nullopt;
  if (refs_) {
    next.refcount_table_offset = refs_->table_offset();
    next.refcount_table_clusters = refs_->table_clusters();
  }
  auto bytes = encode_header(next);
  if (!bytes) return bytes.error().wrap("the new backing file name does not fit").image(path_);
  // QCOW v1 keeps its L1 table right after the header and name: the name must not grow into it.
  if (hdr_.version == 1 && bytes->size() > hdr_.l1_table_offset)
    return Error(Errc::not_supported, "the new backing file name does not fit before the L1 table").image(path_);
  if (Error e = FlushRequest::run_sync(*this)) return e;
  hdr_ = std::move(next);
  if (Error e = file_->write(IoKind::meta, 0, *bytes)) return e.wrap("writing", "header").image(path_);
  return file_->flush();
}

// Header fields as the flush writes them. While a grown refcount table is not yet durable
// the header keeps pointing at the old one (a table before the header that points at it).
Result<std::vector<std::byte>> QcowImage::encode_metadata_header(bool commit_reftable) {
  if (refs_ && (commit_reftable || !refs_->move_pending())) {
    hdr_.refcount_table_offset = refs_->table_offset();
    hdr_.refcount_table_clusters = refs_->table_clusters();
  }
  auto bytes = encode_header(hdr_);
  if (!bytes) return bytes.error().wrap("encoding", "the header").image(path_);
  return bytes;
}

// Synchronous (open, snapshots, rebase, check): no request is in flight.
Error QcowImage::write_metadata_header() {
  auto bytes = encode_metadata_header();
  if (!bytes) return bytes.error();
  if (Error e = file_->write(IoKind::meta, 0, *bytes)) return e.wrap("writing", "the header", 0).image(path_);
  header_dirty_ = false;
  corrupt_unwritten_ = false;
  return {};
}

}  // namespace vd::qcow
