// MemIoProvider: named files held in memory, for tests and fuzz targets. Same semantics as
// real files (reads past the end fill zeros, writes past the end grow the file, discard
// reads back zeros), with asynchronous requests carried out when their completion runs on
// the executor: a backend that looks at a buffer before its read completed sees stale
// bytes here too.
//
// Files are capped at kMaxFileSize so that a hostile image driving a backend to write at an
// absurd offset fails with no_space instead of exhausting memory. One process-wide mutex
// guards every in-memory file and provider table: these files serve tests, where
// simplicity beats parallel throughput, and sync calls may come from any thread.
#include <algorithm>
#include <cerrno>
#include <boost/asio/post.hpp>
#include <cstring>
#include <mutex>

#include "vd/runtime.h"

namespace vd {
namespace {

constexpr uint64_t kMaxFileSize = uint64_t{1} << 30;

using Bytes = std::vector<std::byte>;
using Node = std::shared_ptr<Bytes>;

std::mutex& mem_mutex() {
  static std::mutex mu;
  return mu;
}

// Grows `bytes` to hold [offset, offset+len); refuses sizes beyond the cap.
Error ensure_size(std::vector<std::byte>& bytes, const std::string& path, const char* what,
                  uint64_t offset, uint64_t len) {
  if (offset > kMaxFileSize || len > kMaxFileSize - offset) {
    return Error(Errc::no_space, hex(len) + " bytes there exceed the in-memory file limit of " +
                                     hex(kMaxFileSize))
        .image(path)
        .op(what)
        .at(offset);
  }
  if (bytes.size() < offset + len) bytes.resize(static_cast<size_t>(offset + len));
  return {};
}

class MemFile final : public File {
 public:
  MemFile(Node node, std::string path, unsigned mode,
          boost::asio::any_io_executor ex)
      : node_(std::move(node)), path_(std::move(path)), mode_(mode), ex_(std::move(ex)) {}

  const std::string& path() const override { return path_; }

  Result<uint64_t> size() override {
    std::lock_guard lock(mem_mutex());
    return static_cast<uint64_t>(node_->size());
  }

  Error set_size(uint64_t size) override {
    if (auto e = writable("resize", size)) return e;
    std::lock_guard lock(mem_mutex());
    if (size <= node_->size()) {
      node_->resize(static_cast<size_t>(size));
      return {};
    }
    return ensure_size(*node_, path_, "resize", 0, size);
  }

  Error read(IoKind, uint64_t offset, std::span<std::byte> buf) override {
    return do_read(node_, path_, mode_, offset, buf);
  }
  Error write(IoKind, uint64_t offset, std::span<const std::byte> buf) override {
    return do_write(node_, path_, mode_, offset, buf);
  }
  Error flush() override { return {}; }

  Error discard(uint64_t offset, uint64_t length) override {
    if (auto e = writable("discard", offset)) return e;
    std::lock_guard lock(mem_mutex());
    auto& b = *node_;
    if (offset >= b.size()) return {};  // like a hole punch, never grows the file
    uint64_t n = std::min<uint64_t>(length, b.size() - offset);
    std::memset(b.data() + offset, 0, static_cast<size_t>(n));
    return {};
  }

  Error allocate(uint64_t offset, uint64_t length) override {
    if (auto e = writable("allocate", offset)) return e;
    std::lock_guard lock(mem_mutex());
    return ensure_size(*node_, path_, "allocate", offset, length);
  }

  // Async requests capture the node, not the File, so the File may go away meanwhile.
  void async_read(IoKind, uint64_t offset, std::span<std::byte> buf, Completion done) override {
    boost::asio::post(ex_, [node = node_, path = path_, mode = mode_, offset, buf,
                            done = std::move(done)]() { done(do_read(node, path, mode, offset, buf)); });
  }
  void async_write(IoKind, uint64_t offset, std::span<const std::byte> buf,
                   Completion done) override {
    boost::asio::post(ex_, [node = node_, path = path_, mode = mode_, offset, buf,
                            done = std::move(done)]() {
      done(do_write(node, path, mode, offset, buf));
    });
  }
  void async_flush(Completion done) override {
    boost::asio::post(ex_, [done = std::move(done)]() { done(Error{}); });
  }
  // Memory never blocks: the change is made now, the completion posted.
  void async_discard(uint64_t offset, uint64_t length, Completion done) override {
    boost::asio::post(ex_, [done = std::move(done), e = discard(offset, length)]() { done(e); });
  }
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override {
    boost::asio::post(ex_, [done = std::move(done), e = allocate(offset, length)]() { done(e); });
  }
  void async_set_size(uint64_t size, Completion done) override {
    boost::asio::post(ex_, [done = std::move(done), e = set_size(size)]() { done(e); });
  }
  void async_extent_at(uint64_t offset, ExtentCompletion done) override {
    auto r = extent_at(offset);
    boost::asio::post(ex_, [done = std::move(done), r = std::move(r)]() { done(r.error(), r ? *r : FileExtent{}); });
  }

 private:
  static Error do_read(const Node& node, const std::string& path,
                       unsigned mode, uint64_t offset, std::span<std::byte> buf) {
    if (!(mode & file_read)) return Error::from_errno(EBADF, "read", path, offset);
    std::lock_guard lock(mem_mutex());
    const auto& b = *node;
    size_t have = offset < b.size() ? static_cast<size_t>(std::min<uint64_t>(
                                          buf.size(), b.size() - offset))
                                    : 0;
    if (have) std::memcpy(buf.data(), b.data() + offset, have);
    std::fill(buf.begin() + static_cast<std::ptrdiff_t>(have), buf.end(), std::byte{0});
    return {};
  }

  static Error do_write(const Node& node, const std::string& path,
                        unsigned mode, uint64_t offset, std::span<const std::byte> buf) {
    if (!(mode & file_write)) return Error::from_errno(EBADF, "write", path, offset);
    if (buf.empty()) return {};
    std::lock_guard lock(mem_mutex());
    if (auto e = ensure_size(*node, path, "write", offset, buf.size())) return e;
    std::memcpy(node->data() + offset, buf.data(), buf.size());
    return {};
  }

  Error writable(const char* what, uint64_t offset) const {
    if (mode_ & file_write) return {};
    return Error::from_errno(EBADF, what, path_, offset);
  }

  Node node_;
  std::string path_;
  unsigned mode_;
  boost::asio::any_io_executor ex_;
};

}  // namespace

MemIoProvider::MemIoProvider(boost::asio::any_io_executor completions)
    : ex_(std::move(completions)) {}

Result<std::unique_ptr<File>> MemIoProvider::open(const std::string& path, unsigned mode) {
  if ((mode & file_create) && !(mode & file_write)) {
    return Error(Errc::invalid_argument, "creating a file needs write mode").image(path).op("open");
  }
  std::lock_guard lock(mem_mutex());
  auto it = files_.find(path);
  if (it == files_.end()) {
    if (!(mode & file_create)) return Error::from_errno(ENOENT, "open", path);
    it = files_.emplace(path, std::make_shared<Bytes>()).first;
  } else if ((mode & file_create) && (mode & file_exclusive)) {
    return Error::from_errno(EEXIST, "open", path);
  }
  Node node = it->second;
  if ((mode & file_create) && (mode & file_truncate)) node->clear();
  return std::unique_ptr<File>(std::make_unique<MemFile>(std::move(node), path, mode, ex_));
}

Error MemIoProvider::remove(const std::string& path) {
  std::lock_guard lock(mem_mutex());
  if (files_.erase(path) == 0) return Error::from_errno(ENOENT, "remove", path);
  return {};
}

void MemIoProvider::post(std::function<void()> fn) { boost::asio::post(ex_, std::move(fn)); }

bool MemIoProvider::exists(const std::string& path) {
  std::lock_guard lock(mem_mutex());
  return files_.count(path) != 0;
}

std::shared_ptr<std::vector<std::byte>> MemIoProvider::contents(const std::string& path) {
  std::lock_guard lock(mem_mutex());
  auto it = files_.find(path);
  if (it == files_.end()) {
    it = files_.emplace(path, std::make_shared<Bytes>()).first;
  }
  return it->second;
}

}  // namespace vd
