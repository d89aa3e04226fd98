// zlib and zstd cluster codecs with per-thread contexts; see compress.h for the format rules.
#include "backends/qcow/meta/compress.h"

#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_d_stableOutBuffer: decode into the caller's cluster
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <string>

namespace vd::qcow {
namespace {

// QEMU's deflate parameters: raw deflate (negative window bits), 4 KiB window, memLevel 9.
constexpr int kZlibWindowBits = -12;
constexpr int kZlibMemLevel = 9;

std::string size_text(uint64_t v) { return std::to_string(v) + " (" + hex(v) + ")"; }

// zlib counts in uInt; a cluster is at most 2 MiB, and no stream can need more input than
// fits in a uInt to fill one, so a longer run is simply cut.
uInt clamp_uint(size_t n) { return static_cast<uInt>(std::min<size_t>(n, UINT_MAX)); }

// ---- zlib ---------------------------------------------------------------------------------

// One inflate and one deflate stream per thread, initialised on first use and reset for each
// cluster: inflateInit2/deflateInit2 allocate, inflateReset/deflateReset do not.
class ZlibInflater {
 public:
  ~ZlibInflater() {
    if (ready_) inflateEnd(&s_);
  }
  // Returns a stream ready for a new cluster, or nullptr when zlib cannot allocate its state.
  z_stream* fresh() {
    if (!ready_) ready_ = inflateInit2(&s_, kZlibWindowBits) == Z_OK;
    else if (inflateReset(&s_) != Z_OK) return nullptr;
    return ready_ ? &s_ : nullptr;
  }

 private:
  z_stream s_{};
  bool ready_ = false;
};

class ZlibDeflater {
 public:
  ~ZlibDeflater() {
    if (ready_) deflateEnd(&s_);
  }
  z_stream* fresh() {
    if (!ready_) {
      ready_ = deflateInit2(&s_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, kZlibWindowBits,
                            kZlibMemLevel, Z_DEFAULT_STRATEGY) == Z_OK;
    } else if (deflateReset(&s_) != Z_OK) {
      return nullptr;
    }
    return ready_ ? &s_ : nullptr;
  }

 private:
  z_stream s_{};
  bool ready_ = false;
};

Error zlib_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
  thread_local ZlibInflater inflater;
  z_stream* s = inflater.fresh();
  if (!s) return Error(Errc::internal, "zlib: cannot initialise inflate (out of memory)");
  s->next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s->avail_in = clamp_uint(in.size());
  s->next_out = reinterpret_cast<Bytef*>(out.data());
  s->avail_out = clamp_uint(out.size());
  // One call into the whole cluster: matches may reach back to its first byte whatever the
  // window bits, exactly as in QEMU. Z_BUF_ERROR with a full cluster means the stream goes
  // on past the cluster (or the run was cut there): accepted, the cluster is complete.
  int rc = inflate(s, Z_FINISH);
  if ((rc == Z_STREAM_END || rc == Z_BUF_ERROR) && s->avail_out == 0) return {};
  size_t produced = out.size() - s->avail_out;
  size_t consumed = in.size() - s->avail_in;
  std::string why = rc == Z_STREAM_END ? "deflate stream ends"
                    : rc == Z_BUF_ERROR ? "compressed data runs out"
                                        : std::string("invalid deflate data (") +
                                              (s->msg ? s->msg : "zlib error") + ")";
  return Error(Errc::corrupt, "zlib: " + why + " after " + size_text(consumed) + " of " +
                                  size_text(in.size()) + " compressed bytes, " +
                                  size_text(produced) + " of " + size_text(out.size()) +
                                  " cluster bytes");
}

Result<std::vector<std::byte>> zlib_compress(std::span<const std::byte> in, size_t capacity) {
  thread_local ZlibDeflater deflater;
  z_stream* s = deflater.fresh();
  if (!s) return Error(Errc::internal, "zlib: cannot initialise deflate (out of memory)");
  // Exactly the room QEMU gives deflate, so that the same clusters end up compressed: a
  // stream that does not end within it is not worth storing compressed.
  std::vector<std::byte> buf(capacity);
  s->next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(in.data()));
  s->avail_in = clamp_uint(in.size());
  s->next_out = reinterpret_cast<Bytef*>(buf.data());
  s->avail_out = clamp_uint(buf.size());
  int rc = deflate(s, Z_FINISH);
  // Output full (zlib says Z_OK even when the stream fits the room exactly): not stored.
  if (rc == Z_OK || rc == Z_BUF_ERROR) return std::vector<std::byte>{};
  if (rc != Z_STREAM_END || s->avail_in != 0) {
    return Error(Errc::internal, "zlib: deflate of a " + size_text(in.size()) +
                                     " byte cluster failed (code " + std::to_string(rc) + ")");
  }
  buf.resize(buf.size() - s->avail_out);
  return buf;
}

// ---- zstd ---------------------------------------------------------------------------------

struct ZstdFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};

ZSTD_DCtx* zstd_dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, ZstdFree> dctx;
  if (!dctx) {
    dctx.reset(ZSTD_createDCtx());
    if (!dctx) return nullptr;
    // Decode straight into the cluster. Without this the context would allocate a window
    // buffer of the size the frame header asks for (up to 128 MiB per thread for a hostile
    // frame) and keep it. Where the library lacks the option, cap the window at the largest
    // cluster instead: every frame QEMU writes declares a window no larger than its cluster.
    if (ZSTD_isError(ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_stableOutBuffer, 1))) {
      ZSTD_DCtx_setParameter(dctx.get(), ZSTD_d_windowLogMax, static_cast<int>(kMaxClusterBits));
    }
  } else {
    ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  }
  return dctx.get();
}

ZSTD_CCtx* zstd_cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdFree> cctx;
  if (!cctx) {
    cctx.reset(ZSTD_createCCtx());  // default parameters, as QEMU's fresh context per cluster
  } else {
    ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_only);
  }
  return cctx.get();
}

Error zstd_error(const std::string& what, size_t code, const ZSTD_inBuffer& in,
                 const ZSTD_outBuffer& out) {
  std::string why = ZSTD_isError(code) ? ZSTD_getErrorName(code) : "no progress";
  return Error(Errc::corrupt, "zstd: " + what + " (" + why + ") after " + size_text(in.pos) +
                                  " of " + size_text(in.size) + " compressed bytes, " +
                                  size_text(out.pos) + " of " + size_text(out.size) +
                                  " cluster bytes");
}

Error zstd_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
  ZSTD_DCtx* dctx = zstd_dctx();
  if (!dctx) return Error(Errc::internal, "zstd: cannot create a decompression context");
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{out.data(), out.size(), 0};
  // The run's true length is unknown (sector precision), so stream frame after frame until
  // the cluster is full; whatever follows is not ours.
  size_t rc = 0;
  while (output.pos < output.size) {
    size_t in_before = input.pos, out_before = output.pos;
    rc = ZSTD_decompressStream(dctx, &output, &input);
    if (ZSTD_isError(rc)) return zstd_error("invalid compressed data", rc, input, output);
    // Input exhausted mid-frame shows as a call that moves nothing: stop rather than spin.
    if (input.pos == in_before && output.pos == out_before) {
      return zstd_error("compressed data runs out", rc, input, output);
    }
  }
  // The cluster is full; the frame must end here too, or it holds more than a cluster.
  if (rc != 0) return zstd_error("frame continues past the cluster", rc, input, output);
  return {};
}

Result<std::vector<std::byte>> zstd_compress(std::span<const std::byte> in, size_t capacity) {
  ZSTD_CCtx* cctx = zstd_cctx();
  if (!cctx) return Error(Errc::internal, "zstd: cannot create a compression context");
  std::vector<std::byte> buf(capacity);
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{buf.data(), buf.size(), 0};
  // One call with e_end writes one whole frame declaring the content size, as QEMU does.
  size_t rc = ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_end);
  if (ZSTD_isError(rc)) {
    if (ZSTD_getErrorCode(rc) == ZSTD_error_dstSize_tooSmall) return std::vector<std::byte>{};
    return Error(Errc::internal, "zstd: compression of a " + size_text(in.size()) +
                                     " byte cluster failed (" + ZSTD_getErrorName(rc) + ")");
  }
  if (rc != 0) return std::vector<std::byte>{};  // frame not finished: does not fit
  buf.resize(output.pos);
  return buf;
}

}  // namespace

Result<Codec> codec_from_header(uint8_t compression_type) {
  switch (compression_type) {
    case kCompressionZlib: return Codec::zlib;
    case kCompressionZstd: return Codec::zstd;
  }
  return Error(Errc::not_supported,
               "compression type " + std::to_string(compression_type) + " is not supported");
}

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::zlib: return "zlib";
    case Codec::zstd: return "zstd";
  }
  return "unknown";
}

Error decompress_cluster(Codec c, std::span<const std::byte> in, std::span<std::byte> out) {
  if (out.empty()) return Error(Errc::invalid_argument, "decompress: empty output cluster");
  switch (c) {
    case Codec::zlib: return zlib_decompress(in, out);
    case Codec::zstd: return zstd_decompress(in, out);
  }
  return Error(Errc::invalid_argument,
               "decompress: unknown codec " + std::to_string(static_cast<unsigned>(c)));
}

Result<std::vector<std::byte>> compress_cluster(Codec c, std::span<const std::byte> in,
                                                size_t capacity) {
  if (capacity == 0 || in.empty()) return std::vector<std::byte>{};
  switch (c) {
    case Codec::zlib: return zlib_compress(in, capacity);
    case Codec::zstd: return zstd_compress(in, capacity);
  }
  return Error(Errc::invalid_argument,
               "compress: unknown codec " + std::to_string(static_cast<unsigned>(c)));
}

// ---- L2 descriptors -----------------------------------------------------------------------

Result<uint64_t> compressed_l2_entry(uint32_t cluster_bits, uint64_t host_offset,
                                     uint64_t length) {
  if (cluster_bits < kMinClusterBits || cluster_bits > kMaxClusterBits) {
    return Error(Errc::invalid_argument, "compressed descriptor: bad cluster_bits " +
                                             std::to_string(cluster_bits));
  }
  const uint32_t shift = 62 - (cluster_bits - 8);
  const uint64_t max_sectors = 1ull << (cluster_bits - 8);  // field holds sectors - 1
  if (length == 0 || length >= (1ull << cluster_bits) || host_offset >= (1ull << shift)) {
    return Error(Errc::invalid_argument, "compressed descriptor: run of " + size_text(length) +
                                             " bytes at " + hex(host_offset) + " does not fit");
  }
  // Sectors touched by [host_offset, host_offset + length), minus one.
  uint64_t extra = ((host_offset + length - 1) >> 9) - (host_offset >> 9);
  if (extra >= max_sectors) {
    return Error(Errc::invalid_argument, "compressed descriptor: run at " + hex(host_offset) +
                                             " spans too many sectors");
  }
  return kOflagCompressed | (extra << shift) | host_offset;
}

Result<uint64_t> compressed_l2_entry_v1(uint32_t cluster_bits, uint64_t host_offset,
                                        uint64_t length) {
  if (cluster_bits < kMinClusterBits || cluster_bits > kV1MaxClusterBits) {
    return Error(Errc::invalid_argument, "compressed descriptor: bad QCOW v1 cluster_bits " +
                                             std::to_string(cluster_bits));
  }
  const uint32_t shift = 63 - cluster_bits;
  if (length == 0 || length >= (1ull << cluster_bits) || host_offset >= (1ull << shift)) {
    return Error(Errc::invalid_argument, "compressed descriptor: run of " + size_text(length) +
                                             " bytes at " + hex(host_offset) + " does not fit");
  }
  return kV1OflagCompressed | (length << shift) | host_offset;
}

}  // namespace vd::qcow
