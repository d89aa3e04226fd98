// Option negotiation (fixed newstyle): the server greets, the client sends options until one
// of them (NBD_OPT_GO, NBD_OPT_EXPORT_NAME) enters transmission, or it aborts. Behaviour
// follows QEMU's nbd/server.c where proto.md leaves a choice. With TLS required, only
// STARTTLS and ABORT are answered before TLS; the rest get NBD_REP_ERR_TLS_REQD.
#include "host/nbd/coro.h"  // first: before any Boost.Asio header
#include <algorithm>

#include "host/nbd/connection.h"

namespace vd::nbd {

using namespace proto;

namespace {

std::string u16s(uint16_t v) { return Writer().u16(v).bytes; }

// (GCC 12 cannot keep an initializer list alive across co_await: build the vector first.)
awaitable<void> write_all(Stream& s, const std::string& bytes) {
  std::vector<boost::asio::const_buffer> bufs;
  bufs.emplace_back(bytes.data(), bytes.size());
  co_await s.write(bufs);
}

bool matches(const std::string& query, const std::string& name, bool list) {
  if (query == name) return true;
  // LIST takes a namespace ("base:", "qemu:") or a leaf prefix ending in ':'.
  return list && !query.empty() && query.back() == ':' && name.starts_with(query);
}

}  // namespace

uint16_t Connection::transmission_flags() const {
  uint16_t f = export_->flags;
  if (structured_) f |= kSendDf;
  return f;
}

awaitable<void> Connection::send_rep(uint32_t opt, uint32_t type, const std::string& data) {
  Writer w;
  w.u64(kRepMagic).u32(opt).u32(type).u32(static_cast<uint32_t>(data.size())).str(data);
  co_await write_all(*stream_, w.bytes);
}

awaitable<void> Connection::send_err(uint32_t opt, uint32_t type, const std::string& message) {
  co_await send_rep(opt, type, message);
}

awaitable<bool> Connection::negotiate() {
  Writer hello;
  hello.u64(kInitMagic).u64(kOptMagic).u16(kFlagFixedNewstyle | kFlagNoZeroes);
  co_await write_all(*stream_, hello.bytes);
  co_await in_.fill(*stream_, 4);
  uint32_t cflags = get32(in_.data());
  in_.consume(4);
  if (cflags & ~(kClientFixedNewstyle | kClientNoZeroes)) co_return false;  // unknown flags: drop
  no_zeroes_ = cflags & kClientNoZeroes;
  for (;;) {
    co_await in_.fill(*stream_, 16);
    uint64_t magic = get64(in_.data());
    uint32_t opt = get32(in_.data() + 8);
    uint32_t len = get32(in_.data() + 12);
    in_.consume(16);
    if (magic != kOptMagic || len > kMaxOptionLength) co_return false;
    std::vector<std::byte> payload(len);
    co_await in_.read_into(*stream_, payload);
    if (server_->tls && !stream_->is_tls() && opt != kOptStartTls && opt != kOptAbort) {
      if (opt == kOptExportName) co_return false;  // no way to send an error
      co_await send_err(opt, kRepErrTlsReqd, "Option " + std::to_string(opt) + " not permitted before TLS");
      continue;
    }
    if (opt == kOptGo || opt == kOptExportName) {
      bool go = opt == kOptGo ? co_await export_info(opt, payload) : co_await export_name(payload);
      if (go || opt == kOptExportName) co_return go;
      continue;
    }
    if (!co_await option(opt, payload)) co_return false;
  }
}

// Every option but GO and EXPORT_NAME. Returns false to close the connection.
awaitable<bool> Connection::option(uint32_t opt, const std::vector<std::byte>& payload) {
  switch (opt) {
    case kOptAbort:
      co_await send_rep(opt, kRepAck);
      co_return false;
    case kOptList:
      if (!payload.empty()) {
        co_await send_err(opt, kRepErrInvalid, "NBD_OPT_LIST must not have a payload");
        co_return true;
      }
      for (const auto& x : server_->exports) {
        Writer w;
        w.u32(static_cast<uint32_t>(x->e.name.size())).str(x->e.name).str(x->e.description);
        co_await send_rep(opt, kRepServer, w.bytes);
      }
      co_await send_rep(opt, kRepAck);
      co_return true;
    case kOptInfo:
      co_await export_info(opt, payload);
      co_return true;
    case kOptStructuredReply:
      if (!payload.empty()) {
        co_await send_err(opt, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY must not have a payload");
      } else if (structured_) {
        co_await send_err(opt, kRepErrInvalid, "structured reply already negotiated");
      } else {
        structured_ = true;
        co_await send_rep(opt, kRepAck);
      }
      co_return true;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      co_await meta_context(opt, payload);
      co_return true;
    case kOptStartTls:
      co_return co_await start_tls(payload);
    default:
      co_await send_err(opt, kRepErrUnsup, "Unsupported option " + std::to_string(opt));
      co_return true;
  }
}

// NBD_OPT_INFO and NBD_OPT_GO: export name, then the information requests.
awaitable<bool> Connection::export_info(uint32_t opt, const std::vector<std::byte>& payload) {
  Reader r(payload.data(), payload.size());
  uint32_t name_len = 0;
  uint16_t count = 0;
  std::string name;
  std::vector<uint16_t> wanted;
  bool ok = r.u32(name_len) && name_len <= kMaxString && r.str(name_len, name) && r.u16(count);
  for (uint16_t i = 0; ok && i < count; ++i) {
    uint16_t t = 0;
    ok = r.u16(t);
    wanted.push_back(t);
  }
  if (!ok || r.left() != 0) {
    co_await send_err(opt, kRepErrInvalid, "request data length does not match its contents");
    co_return false;
  }
  auto x = server_->find_export(name);
  if (!x) {
    co_await send_err(opt, kRepErrUnknown, "export '" + name + "' not present");
    co_return false;
  }
  auto asked = [&](uint16_t t) { return std::find(wanted.begin(), wanted.end(), t) != wanted.end(); };
  if (asked(kInfoName)) co_await send_rep(opt, kRepInfo, u16s(kInfoName) + name);
  // As qemu-nbd: the description whenever the export has one, asked or not; none otherwise.
  if (!x->e.description.empty()) {
    co_await send_rep(opt, kRepInfo, u16s(kInfoDescription) + x->e.description);
  }
  const ExportLimits& lim = x->e.limits;
  co_await send_rep(opt, kRepInfo,
                    Writer().u16(kInfoBlockSize).u32(lim.min_block).u32(lim.preferred_block).u32(lim.max_payload).bytes);
  auto previous = export_;
  export_ = x;
  co_await send_rep(opt, kRepInfo, Writer().u16(kInfoExport).u64(x->size).u16(transmission_flags()).bytes);
  co_await send_rep(opt, kRepAck);
  if (opt != kOptGo) {
    export_ = previous;
    co_return false;
  }
  if (meta_export_ != name) selected_.clear();  // contexts chosen for another export
  co_return true;
}

awaitable<bool> Connection::export_name(const std::vector<std::byte>& payload) {
  if (payload.size() > kMaxString) co_return false;
  std::string name(reinterpret_cast<const char*>(payload.data()), payload.size());
  auto x = server_->find_export(name);
  if (!x) co_return false;  // NBD_OPT_EXPORT_NAME has no error reply: disconnect
  export_ = x;
  if (meta_export_ != name) selected_.clear();
  Writer w;
  w.u64(x->size).u16(transmission_flags());
  if (!no_zeroes_) w.bytes.append(124, '\0');
  co_await write_all(*stream_, w.bytes);
  co_return true;
}

// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name, then queries. An empty
// query list LISTs every context; SET selects exact names only.
awaitable<void> Connection::meta_context(uint32_t opt, const std::vector<std::byte>& payload) {
  const bool list = opt == kOptListMetaContext;
  if (!structured_) {
    co_await send_err(opt, kRepErrInvalid, "structured replies not yet negotiated");
    co_return;
  }
  Reader r(payload.data(), payload.size());
  uint32_t name_len = 0, count = 0;
  std::string name;
  std::vector<std::string> queries;
  bool ok = r.u32(name_len) && name_len <= kMaxString && r.str(name_len, name) && r.u32(count);
  for (uint32_t i = 0; ok && i < count; ++i) {
    uint32_t qlen = 0;
    std::string q;
    ok = r.u32(qlen) && qlen <= kMaxString && r.str(qlen, q);
    queries.push_back(std::move(q));
  }
  if (!ok || r.left() != 0) {
    co_await send_err(opt, kRepErrInvalid, "request data length does not match its contents");
    co_return;
  }
  auto x = server_->find_export(name);
  if (!x) {
    co_await send_err(opt, kRepErrUnknown, "export '" + name + "' not present");
    co_return;
  }
  if (!list) {
    selected_.clear();
    meta_export_ = name;
  }
  for (size_t i = 0; i < x->contexts.size(); ++i) {
    const std::string& cname = x->contexts[i]->name();
    bool hit = list && queries.empty();
    for (const auto& q : queries) hit = hit || matches(q, cname, list);
    if (!hit) continue;
    uint32_t id = static_cast<uint32_t>(i + 1);
    if (!list) selected_.push_back(id);
    co_await send_rep(opt, kRepMetaContext, Writer().u32(list ? 0 : id).str(cname).bytes);
  }
  co_await send_rep(opt, kRepAck);
}

awaitable<bool> Connection::start_tls(const std::vector<std::byte>& payload) {
  if (!payload.empty()) {
    co_await send_err(kOptStartTls, kRepErrInvalid, "NBD_OPT_STARTTLS must not have a payload");
    co_return true;
  }
  if (!server_->tls) {
    co_await send_err(kOptStartTls, kRepErrPolicy, "TLS not configured");
    co_return true;
  }
  if (stream_->is_tls()) {
    co_await send_err(kOptStartTls, kRepErrInvalid, "TLS already started");
    co_return true;
  }
  co_await send_rep(kOptStartTls, kRepAck);
  // Bytes sent after STARTTLS and before the TLS handshake would be plaintext smuggled into
  // the TLS session (CVE-2011-0411's pattern): drop such a client.
  if (in_.available() != 0) co_return false;
  // The TLS stream replaces the plain one before its handshake, so that the handshake timer
  // (which closes stream_) also ends a client that stalls the TLS handshake.
  stream_ = stream_->wrap_tls(*server_->tls);
  co_await stream_->handshake();
  co_return true;
}

}  // namespace vd::nbd
