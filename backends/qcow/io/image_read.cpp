// The read path. Each call handles one homogeneous run (at most one L2 table's worth);
// the host loops over the partial results. Completions are always posted, never inline.
#include <algorithm>
#include <cstring>

#include "backends/common/recycle.h"
#include "backends/qcow/meta/compress.h"
#include "backends/qcow/image.h"

namespace vd::qcow {
namespace {
constexpr uint64_t kSector = 512;

// A read whose answer is on its way: the data read in flight, or a result posted. The
// handler given to the file or to post holds only a pointer to it (std::function keeps that
// inline), and its memory is recycled: no heap allocation per read.
struct PendingRead final : detail::Recycled<PendingRead> {
  PendingRead(ReadHandler d, uint64_t len, bool alloc, const std::string& p, uint64_t h)
      : done(std::move(d)), n(len), allocated(alloc), path(p), host(h) {}
  ReadHandler done;
  uint64_t n;
  bool allocated;
  const std::string& path;  // the image's, for errors (the image outlives its reads)
  uint64_t host;

  // Frees this, then completes.
  static void complete(PendingRead* op, Error e) {
    ReadHandler done = std::move(op->done);
    const ReadResult r{op->n, op->allocated};
    const std::string& path = op->path;
    const uint64_t host = op->host;
    delete op;
    if (e) return done(e.wrap("reading", "data", host).image(path), {});
    done({}, r);
  }
};

// Posts a successful result of `n` bytes.
void post_result(IoProvider& io, ReadHandler done, uint64_t n, bool allocated, const std::string& path) {
  auto* op = new PendingRead(std::move(done), n, allocated, path, 0);
  io.post([op] { PendingRead::complete(op, {}); });
}
}  // namespace

void QcowImage::read(uint64_t offset, std::span<std::byte> buf, ReadHandler done) {
  if (offset > size_ || buf.size() > size_ - offset) {
    io_.post([done, e = Error(Errc::out_of_range, "read of " + std::to_string(buf.size()) +
                                                      " bytes at " + hex(offset) + " is beyond the end of '" +
                                                      path_ + "' (" + std::to_string(size_) + " bytes)")] {
      done(e, {});
    });
    return;
  }
  if (buf.empty()) {
    io_.post([done] { done({}, ReadResult{0, true}); });
    return;
  }
  // A table at hand is decoded here, without the handler a table load would need (the
  // common case: no allocation for it per request).
  if (auto hit = lookup_cached(offset, buf.size())) {
    if (!*hit) return read_run(offset, buf, hit->error(), {}, std::move(done));
    return read_run(offset, buf, {}, **hit, std::move(done));
  }
  lookup(offset, buf.size(), [this, offset, buf, done = std::move(done)](Error e, Run run) mutable {
    read_run(offset, buf, std::move(e), run, std::move(done));
  });
}

void QcowImage::read_run(uint64_t offset, std::span<std::byte> buf, Error e, const Run& run, ReadHandler done) {
  if (e) return io_.post([done = std::move(done), e] { done(e, {}); });
  auto part = buf.first(run.length);
  switch (run.kind) {
    case Run::Kind::unallocated:
      return post_result(io_, std::move(done), run.length, false, path_);
    case Run::Kind::zero:
      std::memset(part.data(), 0, part.size());
      return post_result(io_, std::move(done), run.length, true, path_);
    case Run::Kind::data:
      return read_data(run, offset, part, std::move(done));
    case Run::Kind::compressed:
      return read_compressed(run, offset, part, std::move(done));
  }
}

void QcowImage::read_data(const Run& run, uint64_t guest, std::span<std::byte> buf, ReadHandler done) {
  const uint64_t n = buf.size();
  if (!cipher_) {
    auto* op = new PendingRead(std::move(done), n, true, path_, run.host_offset);
    data_->async_read(IoKind::data, run.host_offset, buf, [op](Error e) { PendingRead::complete(op, std::move(e)); });
    return;
  }
  // Encrypted: whole 512-byte sectors are read and decrypted into a bounce buffer. Guest and
  // host offsets share their position within a cluster, so they align together.
  const uint64_t head = run.host_offset % kSector;
  const uint64_t host0 = run.host_offset - head, guest0 = guest - head;
  const uint64_t len = (head + n + kSector - 1) / kSector * kSector;
  auto bounce = std::make_shared<std::vector<std::byte>>(len);
  data_->async_read(IoKind::data, host0, *bounce, [=, this](Error e) {
    if (e) return done(e.wrap("reading", "data", host0).image(path_), {});
    if (Error d = decrypt(guest0, host0, *bounce)) return done(d, {});
    std::memcpy(buf.data(), bounce->data() + head, n);
    done({}, ReadResult{n, true});
  });
}

Error QcowImage::decrypt(uint64_t guest, uint64_t host, std::span<std::byte> buf) const {
  // Legacy AES derives the IV from the guest offset; LUKS in QCOW2 from the host offset.
  const uint64_t sector = (hdr_.crypt_method == kCryptLuks ? host : guest) / kSector;
  if (Error e = cipher_->decrypt(sector, buf))
    return e.wrap("decrypting", "data", host).image(path_);
  return {};
}

void QcowImage::read_compressed(const Run& run, uint64_t guest, std::span<std::byte> buf,
                                ReadHandler done) {
  const uint64_t cs = layout_.cluster_size();
  const uint64_t in_cluster = guest - run.cluster_start;
  const uint64_t n = buf.size();
  if (zcache_ && zcache_host_ == run.host_offset) {
    std::memcpy(buf.data(), zcache_->data() + in_cluster, n);
    return io_.post([done, n] { done({}, ReadResult{n, true}); });
  }
  // decode_run bounded compressed_bytes by the descriptor's field width (<= 2 clusters).
  auto packed = std::make_shared<std::vector<std::byte>>(run.compressed_bytes);
  const uint64_t host = run.host_offset;
  data_->async_read(IoKind::data, host, *packed, [=, this](Error e) {
    if (e) return done(e.wrap("reading", "compressed cluster", host).image(path_), {});
    auto cluster = std::make_shared<std::vector<std::byte>>(cs);
    const Codec codec = hdr_.compression_type == kCompressionZstd ? Codec::zstd : Codec::zlib;
    if (Error d = decompress_cluster(codec, *packed, *cluster))
      return done(d.wrap("decompressing", "compressed cluster (guest offset " + hex(run.cluster_start) + ")", host)
                      .image(path_),
                  {});
    std::memcpy(buf.data(), cluster->data() + in_cluster, n);
    zcache_host_ = host;
    zcache_ = std::move(cluster);
    done({}, ReadResult{n, true});
  });
}

void QcowImage::block_status(uint64_t offset, uint64_t length, ExtentHandler done) {
  if (offset > size_ || length > size_ - offset) {
    io_.post([done, e = Error(Errc::out_of_range, "beyond the end of the image").image(path_).op("block status").at(offset)] {
      done(e, {});
    });
    return;
  }
  lookup(offset, length, [this, done](Error e, Run run) {
    Extent x;
    if (e) return io_.post([done, e] { done(e, {}); });
    x.length = run.length;
    x.encrypted = cipher_ != nullptr || hdr_.crypt_method != kCryptNone;
    if (run.host_reserved) x.host_offset = run.host_offset;
    switch (run.kind) {
      case Run::Kind::unallocated: x.kind = Extent::Kind::unallocated; break;
      case Run::Kind::zero: x.kind = Extent::Kind::zero; break;
      case Run::Kind::compressed:
        x.kind = Extent::Kind::data;
        x.compressed = true;
        break;
      case Run::Kind::data:
        x.kind = Extent::Kind::data;
        x.host_offset = run.host_offset;
        // Preallocated clusters never written are holes in the file: they read as zeros
        // (qemu-img map says zero and data). Split the run where that changes.
        if (!cipher_ && hdr_.crypt_method == kCryptNone && prealloc_)
          return data_->async_extent_at(run.host_offset, [this, x, done](Error fe, FileExtent fx) mutable {
            if (!fe && fx.length) {
              x.length = std::min(x.length, fx.length);
              x.zero_data = !fx.data;
            } else if (!fe) {
              x.zero_data = true;  // past the end of the file: reads as zeros
            }
            done({}, x);  // the extent call completed asynchronously: not inline
          });
        break;
    }
    io_.post([done, x] { done({}, x); });
  });
}

}  // namespace vd::qcow
