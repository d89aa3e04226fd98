// The writer: sends replies in the order they complete, gathering every message queued
// meanwhile into one write (header and data of each, no copy of the data). Once a request's
// last message is on the wire its in-flight slot and buffer are released and the reader,
// if it was held back at the limit, resumes.
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <boost/asio/buffer.hpp>

#include "host/nbd/connection.h"

namespace vd::nbd {

using namespace proto;
namespace asio = boost::asio;

namespace {
constexpr size_t kMaxBatch = 64;
}

void Connection::push(Out out, Request& req) {
  if (out.last) {
    out.cost = req.cost;
    out.buf = std::move(req.buf);
  }
  if (dead_) {
    release(out);
    return;
  }
  outq_.push_back(std::move(out));
  if (outq_.size() == 1) writer_wake_.cancel();
}

void Connection::release(Out& out) {
  if (!out.last) return;
  --in_flight_;
  in_flight_bytes_ -= out.cost;
  if (out.buf.p && out.buf.cap <= (1u << 20) && pool_.size() < 16) pool_.push_back(std::move(out.buf));
  out.buf = {};
  reader_wake_.cancel();
}

awaitable<void> Connection::writer() {
  auto self = shared_from_this();
  std::vector<Out> batch;
  std::vector<asio::const_buffer> bufs;
  while (!dead_) {
    if (outq_.empty()) {
      if (closing_ && in_flight_ == 0) break;
      co_await wait(writer_wake_);
      continue;
    }
    batch.clear();
    bufs.clear();
    while (!outq_.empty() && batch.size() < kMaxBatch) {
      batch.push_back(std::move(outq_.front()));
      outq_.pop_front();
    }
    for (const Out& o : batch) {
      bufs.emplace_back(o.head, o.head_len);
      if (!o.tail.empty()) bufs.emplace_back(o.tail.data(), o.tail.size());
      if (!o.data.empty()) bufs.emplace_back(o.data.data(), o.data.size());
    }
    try {
      co_await stream_->write(bufs);
    } catch (const std::exception&) {
      // The peer is gone: what is queued and what completes later is dropped.
      dead_ = true;
      stream_->close();
    }
    for (Out& o : batch) release(o);
  }
  for (Out& o : outq_) release(o);
  outq_.clear();
  writer_done_ = true;
  reader_wake_.cancel();
}

void Connection::reply_ok(Request& req) {
  if (structured_) return chunk(req, kReplyFlagDone, kReplyNone, {});
  reply_simple_data(req, {});
}

void Connection::reply_simple_data(Request& req, std::span<const std::byte> data) {
  Out o;
  std::byte* p = put32(o.head, kSimpleReplyMagic);
  p = put32(p, 0);
  put64(p, req.handle);
  o.head_len = kSimpleReplySize;
  o.data = data;
  o.last = true;
  push(std::move(o), req);
}

void Connection::reply_error(Request& req, uint32_t nbd_errno, const std::string& message) {
  if (structured_) {
    std::string msg = message.substr(0, 4096);
    Writer w;
    w.u32(nbd_errno).u16(static_cast<uint16_t>(msg.size())).str(msg);
    return chunk(req, kReplyFlagDone, kReplyError, std::move(w.bytes));
  }
  Out o;
  std::byte* p = put32(o.head, kSimpleReplyMagic);
  p = put32(p, nbd_errno);
  put64(p, req.handle);
  o.head_len = kSimpleReplySize;
  o.last = true;
  push(std::move(o), req);
}

void Connection::chunk(Request& req, uint16_t flags, uint16_t type, std::string payload,
                       std::span<const std::byte> data) {
  Out o;
  std::byte* p = put32(o.head, kStructuredReplyMagic);
  p = put16(p, flags);
  p = put16(p, type);
  p = put64(p, req.handle);
  put32(p, static_cast<uint32_t>(payload.size() + data.size()));
  o.head_len = kChunkHeaderSize;
  o.tail = std::move(payload);
  o.data = data;
  o.last = flags & kReplyFlagDone;
  push(std::move(o), req);
}

}  // namespace vd::nbd
