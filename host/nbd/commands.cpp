// Starting each transmission request on the export's Disk, and answering it. Disk
// completions arrive on the Disk's executor and are dispatched to the connection's (inline
// when they are the same, as in vd-nbd). A read with structured replies and without
// NBD_CMD_FLAG_DF is sparse: ranges the chain says read as zeros go out as
// NBD_REPLY_TYPE_OFFSET_HOLE, the rest as OFFSET_DATA (QEMU's nbd_co_send_sparse_read).
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <cstring>
#include <boost/asio/dispatch.hpp>

#include "host/nbd/connection.h"

namespace vd::nbd {

using namespace proto;
namespace asio = boost::asio;

namespace {

// Whether a write's payload is all zeros (detect-zeroes): word-wise, the tail byte-wise.
bool all_zeros(std::span<const std::byte> b) {
  size_t i = 0;
  for (; i + 8 <= b.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, b.data() + i, 8);
    if (w) return false;
  }
  for (; i < b.size(); ++i)
    if (b[i] != std::byte{0}) return false;
  return true;
}

// vd's error kinds as NBD error values (proto.md "Error values").
uint32_t to_nbd_errno(const Error& e) {
  switch (e.kind()) {
    case Errc::read_only:
    case Errc::permission:
      return kEperm;
    case Errc::invalid_argument:
    case Errc::out_of_range:
      return kEinval;
    case Errc::no_space:
      return kEnospc;
    case Errc::not_supported:
      return kEnotsup;
    case Errc::too_large:
      return kEoverflow;
    case Errc::canceled:
      return kEshutdown;
    default:
      return e.system_errno() == ENOSPC ? kEnospc : kEio;
  }
}

using ConnPtr = std::shared_ptr<Connection>;

// Runs `fn` on the connection's executor (inline when already there).
template <class Fn>
void on_conn(const ConnPtr& c, Fn&& fn) {
  asio::dispatch(c->executor(), std::forward<Fn>(fn));
}

void finish(Connection& c, Request& r, const Error& e) {
  if (e) return c.reply_error(r, to_nbd_errno(e), e.message());
  c.reply_ok(r);
}

// A Completion that answers `r` (flushing first when `flush_after`, for FUA on commands
// whose Disk call has no FUA flag).
Completion answer(ConnPtr c, std::shared_ptr<Request> r, bool flush_after = false) {
  return [c, r, flush_after](Error e) {
    if (!e && flush_after) return c->exp().e.disk->flush(answer(c, r));
    on_conn(c, [c, r, e = std::move(e)] { finish(*c, *r, e); });
  };
}

// READ: map the range (sparse reads), read what holds data, send the chunks.
//   start --sparse--> map --(repeat until covered)--> read_data --> send
//     \--dense----------------------------------------> read_data --> send
//   any error --> reply_error
class ReadOp : public std::enable_shared_from_this<ReadOp> {
 public:
  ReadOp(ConnPtr c, Request req, bool sparse) : c_(std::move(c)), req_(std::move(req)), sparse_(sparse) {}
  void start() {
    req_.buf = c_->take_buffer(req_.len);
    if (!sparse_) {
      pieces_.push_back({req_.len, false});
      return read_data();
    }
    map();
  }

 private:
  struct Piece {
    uint64_t len;
    bool hole;
  };
  static constexpr size_t kMaxPieces = 64;

  void map() {
    c_->exp().e.disk->block_status(req_.offset + pos_, req_.len - pos_, [self = shared_from_this()](Error e, DiskExtent x) {
      on_conn(self->c_, [self, e = std::move(e), x] { self->mapped(e, x); });
    });
  }
  void mapped(const Error& e, const DiskExtent& x) {
    if (e) return fail(e);
    uint64_t n = std::min<uint64_t>(x.extent.length, req_.len - pos_);
    if (n == 0) return fail(Error(Errc::internal, "block status answered 0 bytes"));
    bool hole = x.extent.kind != Extent::Kind::data || x.extent.zero_data;
    if (!pieces_.empty() && pieces_.back().hole == hole) {
      pieces_.back().len += n;
    } else {
      pieces_.push_back({n, hole});
    }
    pos_ += n;
    if (pos_ < req_.len && pieces_.size() < kMaxPieces) return map();
    if (pos_ < req_.len) pieces_.push_back({req_.len - pos_, false});  // the rest as data
    read_data();
  }
  void read_data() {
    uint64_t first = req_.len, end = 0, at = 0;
    for (const Piece& p : pieces_) {
      if (!p.hole) {
        first = std::min(first, at);
        end = at + p.len;
      }
      at += p.len;
    }
    if (first >= end) return send();
    std::span<std::byte> dst(req_.buf.data() + first, end - first);
    c_->exp().e.disk->read(req_.offset + first, dst, [self = shared_from_this()](Error e) {
      on_conn(self->c_, [self, e = std::move(e)] {
        if (e) return self->fail(e);
        self->send();
      });
    });
  }
  void send() {
    if (!c_->structured()) return c_->reply_simple_data(req_, {req_.buf.data(), req_.len});
    uint64_t at = 0;
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const Piece& p = pieces_[i];
      uint16_t flags = i + 1 == pieces_.size() ? kReplyFlagDone : 0;
      if (p.hole) {
        c_->chunk(req_, flags, kReplyOffsetHole, Writer().u64(req_.offset + at).u32(static_cast<uint32_t>(p.len)).bytes);
      } else {
        c_->chunk(req_, flags, kReplyOffsetData, Writer().u64(req_.offset + at).bytes, {req_.buf.data() + at, p.len});
      }
      at += p.len;
    }
  }
  void fail(const Error& e) { c_->reply_error(req_, to_nbd_errno(e), e.message()); }

  ConnPtr c_;
  Request req_;
  bool sparse_;
  uint64_t pos_ = 0;
  std::vector<Piece> pieces_;
};

// BLOCK_STATUS: for each context the client selected, extents from the offset on (one with
// NBD_CMD_FLAG_REQ_ONE), one chunk each, the last one flagged done.
class BlockStatusOp : public std::enable_shared_from_this<BlockStatusOp> {
 public:
  BlockStatusOp(ConnPtr c, Request req) : c_(std::move(c)), req_(std::move(req)) {}
  void start() { next_context(); }

 private:
  static constexpr size_t kMaxExtents = 16384;

  void next_context() {
    if (index_ == c_->selected_contexts().size()) return send();
    pos_ = 0;
    extents_.clear();
    payload_.emplace_back();
    ask();
  }
  void ask() {
    uint32_t id = c_->selected_contexts()[index_];
    c_->exp().contexts[id - 1]->status(req_.offset + pos_, req_.len - pos_,
                                       [self = shared_from_this()](Error e, uint64_t n, uint32_t flags) {
                                         on_conn(self->c_, [self, e = std::move(e), n, flags] { self->got(e, n, flags); });
                                       });
  }
  void got(const Error& e, uint64_t n, uint32_t flags) {
    if (e) return c_->reply_error(req_, to_nbd_errno(e), e.message());
    if (n == 0 || n > req_.len - pos_) {
      return c_->reply_error(req_, kEio, "metadata context answered a length out of range");
    }
    if (!extents_.empty() && extents_.back().second == flags) {
      extents_.back().first += n;
    } else {
      extents_.emplace_back(n, flags);
    }
    pos_ += n;
    bool one = req_.flags & kCmdFlagReqOne;
    if (pos_ < req_.len && !one && extents_.size() < kMaxExtents) return ask();
    Writer w;
    w.u32(c_->selected_contexts()[index_]);
    for (size_t i = 0; i < extents_.size() && (!one || i == 0); ++i) {
      w.u32(static_cast<uint32_t>(extents_[i].first)).u32(extents_[i].second);
    }
    payload_.back() = std::move(w.bytes);
    ++index_;
    next_context();
  }
  void send() {
    for (size_t i = 0; i < payload_.size(); ++i) {
      c_->chunk(req_, i + 1 == payload_.size() ? kReplyFlagDone : 0, kReplyBlockStatus, std::move(payload_[i]));
    }
  }

  ConnPtr c_;
  Request req_;
  size_t index_ = 0;
  uint64_t pos_ = 0;
  std::vector<std::pair<uint64_t, uint32_t>> extents_;
  std::vector<std::string> payload_;
};

uint16_t allowed_flags(uint16_t type) {
  switch (type) {
    case kCmdRead: return kCmdFlagFua | kCmdFlagDf;
    case kCmdWriteZeroes: return kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero;
    case kCmdBlockStatus: return kCmdFlagFua | kCmdFlagReqOne;
    default: return kCmdFlagFua;
  }
}

}  // namespace

void Connection::dispatch(Request req) {
  const ExportEntry& x = *export_;
  Disk& disk = *x.e.disk;
  const bool writes = req.type == kCmdWrite || req.type == kCmdTrim || req.type == kCmdWriteZeroes;
  if (req.type > kCmdBlockStatus) {
    return reply_error(req, kEinval, "unsupported command " + std::to_string(req.type));
  }
  if (req.flags & ~allowed_flags(req.type)) {
    return reply_error(req, kEinval, "unsupported flags " + hex(req.flags));
  }
  if (req.type == kCmdRead && req.len > x.e.limits.max_payload) {
    return reply_error(req, kEinval, "request length " + std::to_string(req.len) + " over the maximum");
  }
  if (req.type != kCmdFlush && (req.offset > x.size || req.len > x.size - req.offset)) {
    bool enospc = req.type == kCmdWrite || req.type == kCmdWriteZeroes;
    return reply_error(req, enospc ? kEnospc : kEinval, "operation past the end of the export");
  }
  if (writes && x.read_only) return reply_error(req, kEperm, "export is read-only");
  if ((req.flags & kCmdFlagDf) && !structured_) return reply_error(req, kEinval, "DF without structured replies");

  auto self = shared_from_this();
  switch (req.type) {
    case kCmdRead: {
      if (req.len == 0) return reply_ok(req);
      bool sparse = structured_ && !(req.flags & kCmdFlagDf);
      std::make_shared<ReadOp>(self, std::move(req), sparse)->start();
      return;
    }
    case kCmdWrite: {
      if (req.len == 0) return reply_ok(req);
      auto r = std::make_shared<Request>(std::move(req));
      const bool fua = r->flags & kCmdFlagFua;
      if (x.e.detect_zeroes != DetectZeroes::off && all_zeros({r->buf.data(), r->len})) {
        unsigned zflags = (x.e.detect_zeroes == DetectZeroes::unmap && x.e.unmap) ? zero_may_unmap : 0u;
        disk.write_zeroes(r->offset, r->len, zflags, answer(self, r, fua));
        return;
      }
      disk.write(r->offset, {r->buf.data(), r->len}, fua ? write_fua : 0u, answer(self, r));
      return;
    }
    case kCmdFlush: {
      auto r = std::make_shared<Request>(std::move(req));
      disk.flush(answer(self, r));
      return;
    }
    case kCmdTrim: {
      // discard=ignore: a trim is advisory, so succeeding without freeing anything is right.
      if (req.len == 0 || !x.e.unmap) return reply_ok(req);
      auto r = std::make_shared<Request>(std::move(req));
      disk.discard(r->offset, r->len, answer(self, r, r->flags & kCmdFlagFua));
      return;
    }
    case kCmdWriteZeroes: {
      if ((req.flags & kCmdFlagFastZero) && !x.e.fast_zero) {
        return reply_error(req, kEnotsup, "fast zeroing is not supported on this export");
      }
      if (req.len == 0) return reply_ok(req);
      auto r = std::make_shared<Request>(std::move(req));
      unsigned flags = (r->flags & kCmdFlagNoHole) || !x.e.unmap ? 0u : zero_may_unmap;
      disk.write_zeroes(r->offset, r->len, flags, answer(self, r, r->flags & kCmdFlagFua));
      return;
    }
    case kCmdCache:
      // Advisory; the QCOW metadata cache fills itself on the reads that follow.
      return reply_ok(req);
    case kCmdBlockStatus:
      if (!structured_ || selected_.empty()) {
        return reply_error(req, kEinval, "no metadata context negotiated");
      }
      if (req.len == 0) return reply_error(req, kEinval, "block status of 0 bytes");
      std::make_shared<BlockStatusOp>(self, std::move(req))->start();
      return;
    default:
      return reply_error(req, kEinval, "unsupported command " + std::to_string(req.type));
  }
}

}  // namespace vd::nbd
