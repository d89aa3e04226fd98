// NBD wire protocol: constants and big-endian field helpers (NetworkBlockDevice/nbd
// doc/proto.md). Nothing here does I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace vd::nbd::proto {

// ---- Handshake ----
constexpr uint64_t kInitMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
constexpr uint64_t kOptMagic = 0x49484156454F5054ull;   // "IHAVEOPT"
constexpr uint64_t kRepMagic = 0x0003e889045565a9ull;

constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
constexpr uint16_t kFlagNoZeroes = 1 << 1;
constexpr uint32_t kClientFixedNewstyle = 1 << 0;
constexpr uint32_t kClientNoZeroes = 1 << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptPeekExport = 4,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

constexpr uint32_t kRepErrBit = 1u << 31;
enum Reply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrBit | 1,
  kRepErrPolicy = kRepErrBit | 2,
  kRepErrInvalid = kRepErrBit | 3,
  kRepErrPlatform = kRepErrBit | 4,
  kRepErrTlsReqd = kRepErrBit | 5,
  kRepErrUnknown = kRepErrBit | 6,
  kRepErrShutdown = kRepErrBit | 7,
  kRepErrBlockSizeReqd = kRepErrBit | 8,
  kRepErrTooBig = kRepErrBit | 9,
};

enum Info : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags (per export).
enum TransmissionFlag : uint16_t {
  kHasFlags = 1 << 0,
  kReadOnly = 1 << 1,
  kSendFlush = 1 << 2,
  kSendFua = 1 << 3,
  kRotational = 1 << 4,
  kSendTrim = 1 << 5,
  kSendWriteZeroes = 1 << 6,
  kSendDf = 1 << 7,
  kCanMultiConn = 1 << 8,
  kSendResize = 1 << 9,
  kSendCache = 1 << 10,
  kSendFastZero = 1 << 11,
};

// ---- Transmission ----
constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleReplyMagic = 0x67446698;
constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
constexpr size_t kRequestSize = 28;
constexpr size_t kSimpleReplySize = 16;
constexpr size_t kChunkHeaderSize = 20;

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

enum CommandFlag : uint16_t {
  kCmdFlagFua = 1 << 0,
  kCmdFlagNoHole = 1 << 1,
  kCmdFlagDf = 1 << 2,
  kCmdFlagReqOne = 1 << 3,
  kCmdFlagFastZero = 1 << 4,
};

constexpr uint16_t kReplyFlagDone = 1;
enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = (1 << 15) | 1,
  kReplyErrorOffset = (1 << 15) | 2,
};

// Error values on the wire (Linux numbering, whatever the host's).
enum Errno : uint32_t {
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};

// Strings in options (export names, queries) longer than this are refused (proto.md: 4096).
constexpr size_t kMaxString = 4096;
// Option payloads beyond this drop the connection: bounded memory during negotiation.
constexpr uint32_t kMaxOptionLength = 64 * 1024;

// ---- Big-endian fields ----
inline uint16_t get16(const std::byte* p) {
  return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8) | std::to_integer<uint16_t>(p[1]));
}
inline uint32_t get32(const std::byte* p) {
  return (static_cast<uint32_t>(get16(p)) << 16) | get16(p + 2);
}
inline uint64_t get64(const std::byte* p) { return (static_cast<uint64_t>(get32(p)) << 32) | get32(p + 4); }
inline std::byte* put16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v);
  return p + 2;
}
inline std::byte* put32(std::byte* p, uint32_t v) { return put16(put16(p, uint16_t(v >> 16)), uint16_t(v)); }
inline std::byte* put64(std::byte* p, uint64_t v) { return put32(put32(p, uint32_t(v >> 32)), uint32_t(v)); }

// A growing message in wire order (option replies, block-status payloads).
class Writer {
 public:
  Writer& u16(uint16_t v) { std::byte b[2]; put16(b, v); return raw(b, 2); }
  Writer& u32(uint32_t v) { std::byte b[4]; put32(b, v); return raw(b, 4); }
  Writer& u64(uint64_t v) { std::byte b[8]; put64(b, v); return raw(b, 8); }
  Writer& str(const std::string& s) { return raw(reinterpret_cast<const std::byte*>(s.data()), s.size()); }
  Writer& raw(const std::byte* p, size_t n) { bytes.append(reinterpret_cast<const char*>(p), n); return *this; }
  std::string bytes;
};

// Reads fields from an option payload, refusing to run past its end.
class Reader {
 public:
  Reader(const std::byte* p, size_t n) : p_(p), n_(n) {}
  bool u16(uint16_t& v) { return take(2) && (v = get16(p_ + pos_ - 2), true); }
  bool u32(uint32_t& v) { return take(4) && (v = get32(p_ + pos_ - 4), true); }
  bool str(size_t len, std::string& s) {
    if (!take(len)) return false;
    s.assign(reinterpret_cast<const char*>(p_ + pos_ - len), len);
    return true;
  }
  size_t left() const { return n_ - pos_; }

 private:
  bool take(size_t k) {
    if (n_ - pos_ < k) return false;
    pos_ += k;
    return true;
  }
  const std::byte* p_;
  size_t n_;
  size_t pos_ = 0;
};

}  // namespace vd::nbd::proto
