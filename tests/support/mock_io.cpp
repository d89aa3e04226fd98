#include "support/mock_io.h"

#include <boost/asio/post.hpp>
#include <cerrno>
#include <sstream>

namespace vdtest {

using testing::_;
using vd::Error;
using vd::IoKind;

const char* to_string(IoOp op) {
  switch (op) {
    case IoOp::size: return "size";
    case IoOp::set_size: return "set_size";
    case IoOp::read: return "read";
    case IoOp::write: return "write";
    case IoOp::flush: return "flush";
    case IoOp::discard: return "discard";
    case IoOp::allocate: return "allocate";
    case IoOp::extent: return "extent";
    case IoOp::allocated_size: return "allocated_size";
  }
  return "?";
}

std::string IoCall::describe() const {
  std::ostringstream s;
  s << "#" << index << " " << (async ? "async " : "") << to_string(op);
  if (op == IoOp::read || op == IoOp::write) s << (kind == IoKind::meta ? " meta" : " data");
  s << " '" << path << "' at " << vd::hex(offset) << " len " << length;
  return s.str();
}

bool IoMatch::matches(const IoCall& c) const {
  if (counted_only && (c.op == IoOp::size || c.op == IoOp::extent || c.op == IoOp::allocated_size)) return false;
  if (op && *op != c.op) return false;
  if (kind && !(c.op == IoOp::read || c.op == IoOp::write)) return false;
  if (kind && *kind != c.kind) return false;
  if (async && *async != c.async) return false;
  if (offset && *offset != c.offset) return false;
  if (path && *path != c.path) return false;
  return true;
}

Error injected_error(const std::string& tag) { return Error(vd::Errc::io, tag); }

// ---- MockFile ------------------------------------------------------------------------------

MockFile::MockFile(MockIoProvider& io, std::shared_ptr<vd::File> inner)
    : io_(io), inner_(std::move(inner)), path_(inner_->path()) {
  install_defaults();
}

MockFile::~MockFile() { io_.forget(this); }

void MockFile::install_defaults() {
  ON_CALL(*this, size()).WillByDefault([this] { return real_size(); });
  ON_CALL(*this, set_size(_)).WillByDefault([this](uint64_t s) { return real_set_size(s); });
  ON_CALL(*this, read(_, _, _)).WillByDefault([this](IoKind k, uint64_t o, std::span<std::byte> b) {
    return real_read(k, o, b);
  });
  ON_CALL(*this, write(_, _, _))
      .WillByDefault([this](IoKind k, uint64_t o, std::span<const std::byte> b) { return real_write(k, o, b); });
  ON_CALL(*this, flush()).WillByDefault([this] { return real_flush(); });
  ON_CALL(*this, async_read(_, _, _, _))
      .WillByDefault([this](IoKind k, uint64_t o, std::span<std::byte> b, vd::Completion d) {
        real_async_read(k, o, b, std::move(d));
      });
  ON_CALL(*this, async_write(_, _, _, _))
      .WillByDefault([this](IoKind k, uint64_t o, std::span<const std::byte> b, vd::Completion d) {
        real_async_write(k, o, b, std::move(d));
      });
  ON_CALL(*this, async_flush(_)).WillByDefault([this](vd::Completion d) { real_async_flush(std::move(d)); });
  ON_CALL(*this, async_discard(_, _, _)).WillByDefault([this](uint64_t o, uint64_t l, vd::Completion d) {
    real_async_discard(o, l, std::move(d));
  });
  ON_CALL(*this, async_set_size(_, _)).WillByDefault([this](uint64_t s, vd::Completion d) {
    real_async_set_size(s, std::move(d));
  });
  ON_CALL(*this, async_allocate(_, _, _)).WillByDefault([this](uint64_t o, uint64_t l, vd::Completion d) {
    real_async_allocate(o, l, std::move(d));
  });
  ON_CALL(*this, async_extent_at(_, _)).WillByDefault([this](uint64_t o, vd::ExtentCompletion d) {
    real_async_extent_at(o, std::move(d));
  });
  ON_CALL(*this, discard(_, _)).WillByDefault([this](uint64_t o, uint64_t l) { return real_discard(o, l); });
  ON_CALL(*this, allocate(_, _)).WillByDefault([this](uint64_t o, uint64_t l) { return real_allocate(o, l); });
  ON_CALL(*this, allocated_size()).WillByDefault([this] { return real_allocated_size(); });
  ON_CALL(*this, extent_at(_)).WillByDefault([this](uint64_t o) { return real_extent_at(o); });
}

vd::Result<uint64_t> MockFile::real_size() {
  auto c = io_.record(IoOp::size, false, IoKind::meta, path_, 0, 0);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->size();
}

Error MockFile::real_set_size(uint64_t size) {
  auto c = io_.record(IoOp::set_size, false, IoKind::meta, path_, size, 0);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->set_size(size);
}

Error MockFile::real_read(IoKind kind, uint64_t offset, std::span<std::byte> buf) {
  auto c = io_.record(IoOp::read, false, kind, path_, offset, buf.size());
  if (Error e = io_.fault_for(c)) return e;
  return inner_->read(kind, offset, buf);
}

Error MockFile::real_write(IoKind kind, uint64_t offset, std::span<const std::byte> buf) {
  auto c = io_.record(IoOp::write, false, kind, path_, offset, buf.size());
  if (Error e = io_.fault_for(c)) return e;
  return inner_->write(kind, offset, buf);
}

Error MockFile::real_flush() {
  auto c = io_.record(IoOp::flush, false, IoKind::meta, path_, 0, 0);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->flush();
}

// Async requests decide their fault when submitted (the Nth call is the Nth submitted) and do
// their I/O when they complete.
void MockFile::real_async_read(IoKind kind, uint64_t offset, std::span<std::byte> buf, vd::Completion done) {
  auto c = io_.record(IoOp::read, true, kind, path_, offset, buf.size());
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault, kind, offset, buf]() -> Error {
    return fault ? fault : inner->read(kind, offset, buf);
  }, std::move(done));
}

void MockFile::real_async_write(IoKind kind, uint64_t offset, std::span<const std::byte> buf,
                                vd::Completion done) {
  auto c = io_.record(IoOp::write, true, kind, path_, offset, buf.size());
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault, kind, offset, buf]() -> Error {
    return fault ? fault : inner->write(kind, offset, buf);
  }, std::move(done));
}

void MockFile::real_async_flush(vd::Completion done) {
  auto c = io_.record(IoOp::flush, true, IoKind::meta, path_, 0, 0);
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault]() -> Error { return fault ? fault : inner->flush(); }, std::move(done));
}

void MockFile::real_async_discard(uint64_t offset, uint64_t length, vd::Completion done) {
  auto c = io_.record(IoOp::discard, true, IoKind::data, path_, offset, length);
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault, offset, length]() -> Error {
    return fault ? fault : inner->discard(offset, length);
  }, std::move(done));
}

void MockFile::real_async_set_size(uint64_t size, vd::Completion done) {
  auto c = io_.record(IoOp::set_size, true, IoKind::meta, path_, size, 0);
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault, size]() -> Error { return fault ? fault : inner->set_size(size); },
               std::move(done));
}

void MockFile::real_async_allocate(uint64_t offset, uint64_t length, vd::Completion done) {
  auto c = io_.record(IoOp::allocate, true, IoKind::data, path_, offset, length);
  Error fault = io_.fault_for(c);
  io_.complete(c, [inner = inner_, fault, offset, length]() -> Error {
    return fault ? fault : inner->allocate(offset, length);
  }, std::move(done));
}

// Not counted as I/O by the sweeps (like size()), but recorded and holdable.
void MockFile::real_async_extent_at(uint64_t offset, vd::ExtentCompletion done) {
  auto c = io_.record(IoOp::extent, true, IoKind::meta, path_, offset, 0);
  auto result = std::make_shared<vd::FileExtent>();
  io_.complete(c, [inner = inner_, offset, result]() -> Error {
    auto r = inner->extent_at(offset);
    if (r) *result = *r;
    return r.error();
  }, [result, done = std::move(done)](Error e) { done(e, *result); });
}

Error MockFile::real_discard(uint64_t offset, uint64_t length) {
  auto c = io_.record(IoOp::discard, false, IoKind::data, path_, offset, length);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->discard(offset, length);
}

Error MockFile::real_allocate(uint64_t offset, uint64_t length) {
  auto c = io_.record(IoOp::allocate, false, IoKind::data, path_, offset, length);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->allocate(offset, length);
}

vd::Result<uint64_t> MockFile::real_allocated_size() {
  auto c = io_.record(IoOp::allocated_size, false, IoKind::meta, path_, 0, 0);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->allocated_size();
}

vd::Result<vd::FileExtent> MockFile::real_extent_at(uint64_t offset) {
  auto c = io_.record(IoOp::extent, false, IoKind::meta, path_, offset, 0);
  if (Error e = io_.fault_for(c)) return e;
  return inner_->extent_at(offset);
}

// ---- MockIoProvider ------------------------------------------------------------------------


MockIoProvider::MockIoProvider(boost::asio::any_io_executor ex, vd::IoProvider* inner)
    : ex_(ex), mem_(ex), inner_(inner ? *inner : mem_) {}

MockIoProvider::~MockIoProvider() {
  if (sync_failures_ > kSyncFailuresNamed)
    ADD_FAILURE() << "and " << (sync_failures_ - kSyncFailuresNamed)
                  << " more synchronous calls while data-path requests were in flight";
}

vd::Result<std::unique_ptr<vd::File>> MockIoProvider::open(const std::string& path, unsigned mode) {
  auto f = inner_.open(path, mode);
  if (!f) return f.error();
  auto mock = std::make_unique<testing::NiceMock<MockFile>>(*this, std::shared_ptr<vd::File>(std::move(*f)));
  files_[path] = mock.get();
  return std::unique_ptr<vd::File>(std::move(mock));
}

Error MockIoProvider::remove(const std::string& path) { return inner_.remove(path); }
bool MockIoProvider::exists(const std::string& path) { return inner_.exists(path); }
void MockIoProvider::post(std::function<void()> fn) { boost::asio::post(ex_, std::move(fn)); }

void MockIoProvider::load(const std::string& path, const std::vector<std::byte>& bytes) {
  *mem_.contents(path) = bytes;
}

std::vector<std::byte> MockIoProvider::bytes(const std::string& path) { return *mem_.contents(path); }

MockFile* MockIoProvider::file(const std::string& path) {
  auto it = files_.find(path);
  return it == files_.end() ? nullptr : it->second;
}

void MockIoProvider::forget(MockFile* f) {
  for (auto it = files_.begin(); it != files_.end(); ++it) {
    if (it->second == f) {
      files_.erase(it);
      return;
    }
  }
}

void MockIoProvider::end_data_path() {
  if (data_path_ == 0) {
    ADD_FAILURE() << "end_data_path without a data-path request in flight";
    return;
  }
  --data_path_;
}

void MockIoProvider::fail(const IoMatch& match, Error error, uint64_t skip, uint64_t times) {
  rules_.push_back(Rule{match, std::move(error), skip, times});
}

void MockIoProvider::fail_nth(uint64_t n, Error error) {
  IoMatch any;
  any.counted_only = true;
  fail(any, std::move(error), n, 1);
}

void MockIoProvider::clear_faults() { rules_.clear(); }

void MockIoProvider::reset_counts() {
  counted_ = 0;
  injected_ = 0;
}

IoCall MockIoProvider::record(IoOp op, bool async, IoKind kind, const std::string& path, uint64_t offset,
                              uint64_t length) {
  IoCall c{op, async, kind, path, offset, length, next_index_++};
  if (op != IoOp::size && op != IoOp::extent && op != IoOp::allocated_size) ++counted_;
  calls_.push_back(c);
  if (!async && data_path_ > 0) {
    sync_on_data_path_.push_back(c);
    // Every one fails the test; the first few name themselves, the rest are summed up at
    // the end (a read loop can make thousands).
    if (!allow_sync_ && ++sync_failures_ <= kSyncFailuresNamed)
      ADD_FAILURE() << "synchronous " << c.describe() << " while " << data_path_
                    << " data-path request(s) in flight: the data path must not block the executor";
  }
  return c;
}

// Every rule sees every call: a rule counts its own matches, so rules do not interfere.
Error MockIoProvider::fault_for(const IoCall& c) {
  Error out;
  for (auto& r : rules_) {
    if (!r.match.matches(c)) continue;
    const uint64_t nth = r.seen++;
    if (nth < r.skip || (r.times && r.failed >= r.times)) continue;
    ++r.failed;
    if (!out) out = Error(r.error.code(), r.error.message() + " [" + c.describe() + "]");
  }
  if (out) ++injected_;
  return out;
}

void MockIoProvider::complete(const IoCall& c, std::function<Error()> io, vd::Completion done) {
  if (hold_) {
    held_.push_back(Held{c, std::move(io), std::move(done)});
    return;
  }
  boost::asio::post(ex_, [io = std::move(io), done = std::move(done)] { done(io()); });
}

void MockIoProvider::fire(size_t i) {
  Held h = std::move(held_.at(i));
  held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));
  h.done(h.io());
}

void MockIoProvider::fire_all_shuffled(std::mt19937& rng) {
  while (!held_.empty()) fire(std::uniform_int_distribution<size_t>(0, held_.size() - 1)(rng));
}

void MockIoProvider::fire_all_in_order() {
  while (!held_.empty()) fire(0);
}

}  // namespace vdtest
