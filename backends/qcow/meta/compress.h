// Compressed clusters: the codecs QCOW stores them with, and the L2 descriptor that points at
// a compressed run.
//
// Behaviour follows QEMU 7.2 (block/qcow2-threads.c, block/qcow.c), checked against qemu-img
// in tests/qcow/compress_test.cpp:
//
// * zlib is raw deflate (no zlib header or checksum), level Z_DEFAULT_COMPRESSION, window
//   bits 12, memLevel 9, default strategy. Our output is byte-identical to QEMU's.
//   Decompression runs one inflate(Z_FINISH) into the whole cluster and succeeds when the
//   cluster is full, whether or not the stream has ended there: the stored run is only known
//   to sector precision, so it may end with unrelated bytes, and a stream that would produce
//   more than a cluster is cut at the cluster's end (QEMU accepts both). It fails when the
//   input ends, or the stream ends, before the cluster is full.
// * zstd is a sequence of zstd frames, written as one frame by ZSTD_compressStream2(e_end)
//   at the default level (byte-identical to QEMU's). Decompression streams frames into the
//   cluster until it is full; it then fails unless the frame being decoded ended exactly at
//   the cluster's end (unlike zlib, an over-long frame is corruption). Bytes after that are
//   ignored. Several frames per cluster and skippable frames are accepted, as in QEMU.
//
// Cost: every call reuses per-thread zlib/zstd contexts (reset, not re-created), so the
// functions may be called often and from any number of threads at once; there is no shared
// mutable state. Memory is bounded by the cluster size, never by a field of the stream: zstd
// decodes straight into the caller's cluster (no window buffer sized from the frame header).
//
// Errors carry only what this layer knows (codec, sizes, stream position); the caller wraps
// them with the image path and the host offset of the run (Error::wrap).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "backends/qcow/meta/format.h"
#include "vd/error.h"

namespace vd::qcow {

// QCOW2 header compression_type (byte 104 of a v3 header). QCOW v1 and QCOW2 v2 are zlib.
enum class Codec : uint8_t { zlib = kCompressionZlib, zstd = kCompressionZstd };

// The codec of a header's compression_type; Errc::not_supported for unknown values.
Result<Codec> codec_from_header(uint8_t compression_type);
const char* codec_name(Codec c);

// Decompresses one cluster. `in` is the compressed run as stored: it may be longer than the
// stream (sector rounding, the next run's bytes, zeros the caller filled in past the end of
// the file). `out` is exactly one cluster; success means every byte of it was produced.
// Errc::corrupt when the stream is invalid or too short, Errc::invalid_argument for an empty
// `out` or an unknown codec.
Error decompress_cluster(Codec c, std::span<const std::byte> in, std::span<std::byte> out);

// Compresses one cluster for storage into at most `capacity` bytes: the output room the codec
// gets, as in QEMU. Returns the compressed bytes, or an empty vector when the codec cannot
// finish within that room (the caller then stores the cluster uncompressed). Pass
// compress_capacity(): QEMU gives QCOW2 cluster_size - 1 bytes and QCOW v1 cluster_size.
// zlib reports a stream that exactly fills the room as unfinished, so zlib runs are at most
// capacity - 1 bytes long (QEMU behaves the same; checked against qemu-img and qemu-io).
// Errc::internal if the codec itself fails.
Result<std::vector<std::byte>> compress_cluster(Codec c, std::span<const std::byte> in,
                                                size_t capacity);
constexpr size_t compress_capacity(uint32_t version, uint64_t cluster_size) {
  return static_cast<size_t>(version == 1 ? cluster_size : cluster_size - 1);
}

// L2 descriptors of compressed clusters, for the compressed write path.
//
// QCOW2: bit 62 set; the host byte offset in bits [0, x) with x = 62 - (cluster_bits - 8);
// above it, (number of 512-byte sectors the run touches) - 1. The run may start at any byte;
// it is read as sectors * 512 - (offset % 512) bytes. Bit 63 (COPIED) is never set.
// QCOW v1: bit 63 set; the host offset in bits [0, 63 - cluster_bits); above it, the run's
// exact length in bytes (less than one cluster).
//
// `length` is the compressed length (1 .. cluster size - 1); both return
// Errc::invalid_argument when the offset or length does not fit the descriptor.
Result<uint64_t> compressed_l2_entry(uint32_t cluster_bits, uint64_t host_offset,
                                     uint64_t length);
Result<uint64_t> compressed_l2_entry_v1(uint32_t cluster_bits, uint64_t host_offset,
                                        uint64_t length);

}  // namespace vd::qcow
