#include "faults/crash_io.h"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>

namespace vdtest::faults {
namespace {

using Change = CrashIoProvider::Change;
using State = CrashIoProvider::State;

void apply_change(std::vector<std::byte>& bytes, const Change& c) {
  if (c.resize) {
    bytes.resize(static_cast<size_t>(c.offset));
    return;
  }
  if (bytes.size() < c.offset + c.bytes.size()) bytes.resize(static_cast<size_t>(c.offset + c.bytes.size()));
  std::memcpy(bytes.data() + c.offset, c.bytes.data(), c.bytes.size());
}

vd::Error power_off(const std::string& path, const char* what) {
  return vd::Error::from_errno(EIO, std::string(what) + " after the power went off", path);
}

class CrashFile final : public vd::File {
 public:
  CrashFile(CrashIoProvider& io, std::shared_ptr<State> st, std::shared_ptr<vd::File> inner,
            boost::asio::any_io_executor ex)
      : io_(io), st_(std::move(st)), inner_(std::move(inner)), ex_(std::move(ex)) {}

  const std::string& path() const override { return inner_->path(); }
  vd::Result<uint64_t> size() override { return inner_->size(); }

  vd::Error set_size(uint64_t size) override {
    if (!io_.take_budget()) return power_off(path(), "resize");
    if (vd::Error e = inner_->set_size(size)) return e;
    st_->log.push_back(Change{io_.next_seq(), true, size, {}});
    return {};
  }

  vd::Error read(vd::IoKind kind, uint64_t offset, std::span<std::byte> buf) override {
    if (io_.dead()) return power_off(path(), "read");
    return inner_->read(kind, offset, buf);
  }

  vd::Error write(vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf) override {
    if (!io_.take_budget()) return power_off(path(), "write");
    if (vd::Error e = inner_->write(kind, offset, buf)) return e;
    st_->log.push_back(Change{io_.next_seq(), false, offset, {buf.begin(), buf.end()}});
    return {};
  }

  vd::Error flush() override { return make_durable(io_.seq()); }

  void async_read(vd::IoKind kind, uint64_t offset, std::span<std::byte> buf, vd::Completion done) override {
    boost::asio::post(ex_, [this, kind, offset, buf, done = std::move(done), alive = alive_] {
      done(*alive ? read(kind, offset, buf) : power_off("?", "read"));
    });
  }
  void async_write(vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf,
                   vd::Completion done) override {
    boost::asio::post(ex_, [this, kind, offset, buf, done = std::move(done), alive = alive_] {
      done(*alive ? write(kind, offset, buf) : power_off("?", "write"));
    });
  }
  // Covers what was written before it was submitted.
  void async_flush(vd::Completion done) override {
    boost::asio::post(ex_, [this, upto = io_.seq(), done = std::move(done), alive = alive_] {
      done(*alive ? make_durable(upto) : power_off("?", "flush"));
    });
  }

  void async_discard(uint64_t offset, uint64_t length, vd::Completion done) override {
    boost::asio::post(ex_, [this, offset, length, done = std::move(done), alive = alive_] {
      done(*alive ? discard(offset, length) : power_off("?", "discard"));
    });
  }
  void async_allocate(uint64_t offset, uint64_t length, vd::Completion done) override {
    boost::asio::post(ex_, [this, offset, length, done = std::move(done), alive = alive_] {
      done(*alive ? allocate(offset, length) : power_off("?", "allocate"));
    });
  }
  void async_set_size(uint64_t size, vd::Completion done) override {
    boost::asio::post(ex_, [this, size, done = std::move(done), alive = alive_] {
      done(*alive ? set_size(size) : power_off("?", "resize"));
    });
  }
  void async_extent_at(uint64_t offset, vd::ExtentCompletion done) override {
    boost::asio::post(ex_, [this, offset, done = std::move(done), alive = alive_] {
      if (!*alive) return done(power_off("?", "extent"), {});
      auto r = extent_at(offset);
      done(r.error(), r ? *r : vd::FileExtent{});
    });
  }

  vd::Error discard(uint64_t offset, uint64_t length) override {
    auto sz = inner_->size();
    if (!sz) return sz.error();
    if (offset >= *sz) return {};
    return write(vd::IoKind::data, offset, std::vector<std::byte>(static_cast<size_t>(std::min(length, *sz - offset))));
  }

  vd::Error allocate(uint64_t offset, uint64_t length) override {
    auto sz = inner_->size();
    if (!sz) return sz.error();
    return offset + length > *sz ? set_size(offset + length) : vd::Error{};
  }

  ~CrashFile() override { *alive_ = false; }

 private:
  vd::Error make_durable(uint64_t upto) {
    if (io_.dead()) return power_off(path(), "flush");
    auto& log = st_->log;
    auto keep = std::stable_partition(log.begin(), log.end(), [&](const Change& c) { return c.seq >= upto; });
    // stable_partition put the later changes first; apply the earlier ones in order.
    for (auto it = keep; it != log.end(); ++it) apply_change(st_->durable, *it);
    log.erase(keep, log.end());
    return {};
  }

  CrashIoProvider& io_;
  std::shared_ptr<State> st_;
  std::shared_ptr<vd::File> inner_;
  boost::asio::any_io_executor ex_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

CrashIoProvider::CrashIoProvider(boost::asio::any_io_executor ex) : mem_(ex), ex_(ex) {}
CrashIoProvider::~CrashIoProvider() = default;

vd::Result<std::unique_ptr<vd::File>> CrashIoProvider::open(const std::string& path, unsigned mode) {
  auto f = mem_.open(path, mode);
  if (!f) return f.error();
  auto& st = states_[path];
  if (!st) st = std::make_shared<State>();
  if ((mode & vd::file_create) && (mode & vd::file_truncate)) st->log.push_back(Change{next_seq(), true, 0, {}});
  return std::unique_ptr<vd::File>(
      std::make_unique<CrashFile>(*this, st, std::shared_ptr<vd::File>(std::move(*f)), ex_));
}

vd::Error CrashIoProvider::remove(const std::string& path) {
  states_.erase(path);
  return mem_.remove(path);
}

bool CrashIoProvider::exists(const std::string& path) { return mem_.exists(path); }
void CrashIoProvider::post(std::function<void()> fn) { boost::asio::post(ex_, std::move(fn)); }

void CrashIoProvider::load(const std::string& path, const std::vector<std::byte>& bytes) {
  *mem_.contents(path) = bytes;
  auto st = std::make_shared<State>();
  st->durable = bytes;
  states_[path] = st;
}

bool CrashIoProvider::take_budget() {
  if (dead_) return false;
  if (budget_ && *budget_ == 0) {
    dead_ = true;
    return false;
  }
  if (budget_) --*budget_;
  ++changes_;
  return true;
}

std::map<std::string, std::vector<std::byte>> CrashIoProvider::survivors(std::mt19937* rng) {
  dead_ = true;
  std::map<std::string, std::vector<std::byte>> out;
  for (auto& [path, st] : states_) {
    std::vector<std::byte> bytes = st->durable;
    if (rng) {
      std::vector<const Change*> some;
      for (const auto& c : st->log)
        if ((*rng)() & 1) some.push_back(&c);
      std::shuffle(some.begin(), some.end(), *rng);
      for (const Change* c : some) apply_change(bytes, *c);
    }
    out[path] = std::move(bytes);
  }
  return out;
}

}  // namespace vdtest::faults
