// PosixIoProvider: real files. Synchronous calls run on the caller's thread; asynchronous
// calls run the same blocking syscalls as a job on the runtime's thread pool and post their
// completion to the completion executor.
//
// Lifetime: the descriptor lives in a shared `Fd` that every queued job co-owns, so a File
// may be destroyed while its requests are still on the pool; the last job closes the fd.
// Each job also holds a tracked-work executor, so the io_context does not run out of work
// (and `Runtime::wait` keeps blocking in run_one) while a request is on the pool.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "vd/runtime.h"

namespace vd {
namespace {

// The largest transfer one pread/pwrite call is asked for (Linux caps at ~2 GiB anyway).
constexpr size_t kMaxChunk = size_t{1} << 30;
// Zeros written per call when a provider must emulate discard/allocate with writes.
constexpr size_t kZeroChunk = size_t{1} << 20;

struct Fd {
  int fd = -1;
  std::string path;
  Fd(int f, std::string p) : fd(f), path(std::move(p)) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// Offsets must fit off_t together with the length: refuse before the kernel sees them.
Error check_span(const Fd& f, const char* what, uint64_t offset, uint64_t len) {
  constexpr uint64_t max_off = static_cast<uint64_t>(INT64_MAX);
  if (offset > max_off || len > max_off - offset) {
    return Error(Errc::out_of_range, "range of " + hex(len) + " bytes exceeds the largest file offset")
        .image(f.path)
        .op(what)
        .at(offset);
  }
  return {};
}

// Reads everything, retrying EINTR and short reads; past end of file fills zeros.
Error read_all(const Fd& f, uint64_t offset, std::span<std::byte> buf) {
  if (auto e = check_span(f, "read", offset, buf.size())) return e;
  size_t done = 0;
  while (done < buf.size()) {
    size_t want = std::min(buf.size() - done, kMaxChunk);
    ssize_t n = ::pread(f.fd, buf.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "read", f.path, offset + done);
    }
    if (n == 0) {  // end of file: the rest reads as zeros
      std::memset(buf.data() + done, 0, buf.size() - done);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Error write_all(const Fd& f, uint64_t offset, std::span<const std::byte> buf) {
  if (auto e = check_span(f, "write", offset, buf.size())) return e;
  size_t done = 0;
  while (done < buf.size()) {
    size_t want = std::min(buf.size() - done, kMaxChunk);
    ssize_t n = ::pwrite(f.fd, buf.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "write", f.path, offset + done);
    }
    // A zero-byte write makes no progress; treat it as the storage being full.
    if (n == 0) return Error::from_errno(ENOSPC, "write", f.path, offset + done);
    done += static_cast<size_t>(n);
  }
  return {};
}

Error flush_fd(const Fd& f) {
  while (::fdatasync(f.fd) != 0) {
    if (errno == EINTR) continue;
    return Error::from_errno(errno, "flush", f.path);
  }
  return {};
}

Result<uint64_t> size_of(const Fd& f) {
  // lseek works for block devices too, where st_size is 0.
  off_t end = ::lseek(f.fd, 0, SEEK_END);
  if (end < 0) return Error::from_errno(errno, "size", f.path);
  return static_cast<uint64_t>(end);
}

Error write_zeros(const Fd& f, uint64_t offset, uint64_t len) {
  std::vector<std::byte> zeros(static_cast<size_t>(std::min<uint64_t>(len, kZeroChunk)));
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, zeros.size()));
    if (auto e = write_all(f, offset, std::span(zeros.data(), n))) return e;
    offset += n;
    len -= n;
  }
  return {};
}

bool unsupported(int err) { return err == EOPNOTSUPP || err == ENOSYS || err == EINVAL; }

Error fallocate_retry(const Fd& f, int mode, uint64_t offset, uint64_t len, int& err) {
  err = 0;
  while (::fallocate(f.fd, mode, static_cast<off_t>(offset), static_cast<off_t>(len)) != 0) {
    if (errno == EINTR) continue;
    err = errno;
    return Error::from_errno(err, mode ? "discard" : "allocate", f.path, offset);
  }
  return {};
}

// Punches a hole; where the file system cannot, writes zeros over the part inside the file
// (a hole punch never changes the size, and neither does its emulation).
Error discard_fd(const Fd& f, uint64_t offset, uint64_t len) {
  if (len == 0) return {};
  if (auto e = check_span(f, "discard", offset, len)) return e;
  int err = 0;
  Error e = fallocate_retry(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len, err);
  if (!e || !unsupported(err)) return e;
  auto size = size_of(f);
  if (!size) return size.error();
  if (offset >= *size) return {};
  return write_zeros(f, offset, std::min(len, *size - offset));
}

// Reserves blocks; where fallocate is unsupported, extends the file with written zeros
// (existing data inside the file is kept, so the range only reads as zeros where unwritten).
Error allocate_fd(const Fd& f, uint64_t offset, uint64_t len) {
  if (len == 0) return {};
  if (auto e = check_span(f, "allocate", offset, len)) return e;
  int err = 0;
  Error e = fallocate_retry(f, 0, offset, len, err);
  if (!e || !unsupported(err)) return e;
  auto size = size_of(f);
  if (!size) return size.error();
  uint64_t from = std::max(offset, *size);
  if (from >= offset + len) return {};
  return write_zeros(f, from, offset + len - from);
}

Error truncate_fd(const Fd& f, uint64_t size) {
  if (size > static_cast<uint64_t>(INT64_MAX))
    return Error(Errc::too_large, "beyond the largest file size").image(f.path).op("resize to " + hex(size));
  while (::ftruncate(f.fd, static_cast<off_t>(size)) != 0) {
    if (errno == EINTR) continue;
    return Error::from_errno(errno, "resize to " + hex(size), f.path);
  }
  return {};
}

// SEEK_DATA / SEEK_HOLE from `offset`.
Result<FileExtent> extent_of(const Fd& f, uint64_t offset) {
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return Error::from_errno(errno, "stat", f.path);
  const auto size = static_cast<uint64_t>(st.st_size);
  if (offset >= size) return FileExtent{true, 0};
  const off_t data = ::lseek(f.fd, static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) return FileExtent{false, size - offset};  // a hole up to the end
    return FileExtent{true, size - offset};  // no SEEK_DATA here: all data
  }
  if (static_cast<uint64_t>(data) > offset) return FileExtent{false, static_cast<uint64_t>(data) - offset};
  const off_t hole = ::lseek(f.fd, static_cast<off_t>(offset), SEEK_HOLE);
  const uint64_t end = hole < 0 ? size : std::min<uint64_t>(static_cast<uint64_t>(hole), size);
  return FileExtent{true, end - offset};
}

// ---- Image locking: QEMU's scheme (block/file-posix.c), so qemu and vd see each other ----
//
// QEMU names what a user of an image does with permissions, one bit each; byte
// kLockPermBase + bit carries a shared (read) OFD lock of every open file that holds the
// permission, byte kLockSharedBase + bit one of every open file that does not share it with
// others. An open takes its locks first and then tests, with F_OFD_GETLK, the bytes of the
// permissions it needs for locks of others who do not share them, and the bytes of the
// permissions it does not share for locks of others who hold them; taking before testing
// makes two racing opens see each other. OFD locks belong to the open file, so two opens in
// one process conflict like two processes do, and closing the file releases them.
constexpr int kLockPermBase = 100;
constexpr int kLockSharedBase = 200;
// QEMU 7.2's BLK_PERM_* bits (include/block/block-common.h), in their order.
constexpr unsigned kPermConsistentRead = 1u << 0;
constexpr unsigned kPermWrite = 1u << 1;
constexpr unsigned kPermWriteUnchanged = 1u << 2;
constexpr unsigned kPermResize = 1u << 3;
constexpr unsigned kPermAll = (1u << 4) - 1;
constexpr const char* kPermNames[] = {"consistent read", "write", "write unchanged", "resize"};

// Puts a shared lock on one byte: 0 or the errno.
int lock_byte(int fd, int byte) {
  struct flock fl {};
  fl.l_type = F_RDLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  while (::fcntl(fd, F_OFD_SETLK, &fl) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

// Whether another open file holds a lock on one byte: 0 when none does, EAGAIN when one
// does, otherwise the errno.
int test_byte(int fd, int byte) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  while (::fcntl(fd, F_OFD_GETLK, &fl) != 0) {
    if (errno != EINTR) return errno;
  }
  return fl.l_type == F_UNLCK ? 0 : EAGAIN;
}

Error lock_error(const std::string& path, int err, const std::string& what) {
  if (err == EAGAIN) {
    return Error(Errc::busy, what + "\nIs another process using the image [" + path + "]?")
        .image(path)
        .sys_errno(err);
  }
  return Error::from_errno(err, what, path);
}

// Locks the open image as `mode` asks (file_lock, file_share_all; see vd/io.h). A file
// system without OFD locks (EINVAL on the first lock) is used unlocked, as QEMU's
// locking=auto does.
Error lock_image(const Fd& f, unsigned mode) {
  if (!(mode & file_lock)) return {};
  if ((mode & file_write) && (mode & file_share_all)) {
    return Error(Errc::invalid_argument, "force-share=on can only be used with read-only images").image(f.path);
  }
  const unsigned perm = kPermConsistentRead | ((mode & file_write) ? kPermWrite | kPermResize : 0u);
  // What qemu shares on a node it opens without force-share, read-only or not.
  const unsigned shared = (mode & file_share_all) ? kPermAll : kPermConsistentRead | kPermWriteUnchanged;
  bool first = true;
  for (int base : {kLockPermBase, kLockSharedBase}) {
    const unsigned bits = base == kLockPermBase ? perm : kPermAll & ~shared;
    for (int i = 0; i < 4; ++i) {
      if (!(bits & (1u << i))) continue;
      const int err = lock_byte(f.fd, base + i);
      if (err == EINVAL && first) return {};  // no OFD locks here: no locking
      if (err) return lock_error(f.path, err, "Failed to lock byte " + std::to_string(base + i));
      first = false;
    }
  }
  for (int i = 0; i < 4; ++i) {
    if (!(perm & (1u << i))) continue;
    if (int err = test_byte(f.fd, kLockSharedBase + i))
      return lock_error(f.path, err, std::string("Failed to get \"") + kPermNames[i] + "\" lock");
  }
  for (int i = 0; i < 4; ++i) {
    if (shared & (1u << i)) continue;
    if (int err = test_byte(f.fd, kLockPermBase + i))
      return lock_error(f.path, err, std::string("Failed to get shared \"") + kPermNames[i] + "\" lock");
  }
  return {};
}

class PosixFile final : public File {
 public:
  PosixFile(std::shared_ptr<Fd> fd, boost::asio::any_io_executor ex,
            boost::asio::thread_pool& pool)
      : fd_(std::move(fd)), ex_(std::move(ex)), pool_(pool) {}

  const std::string& path() const override { return fd_->path; }
  Result<uint64_t> size() override { return size_of(*fd_); }

  Error set_size(uint64_t size) override { return truncate_fd(*fd_, size); }

  Result<uint64_t> allocated_size() override {
    struct stat st {};
    if (::fstat(fd_->fd, &st) != 0) return Error::from_errno(errno, "stat", fd_->path);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }

  Result<FileExtent> extent_at(uint64_t offset) override { return extent_of(*fd_, offset); }

  Error read(IoKind, uint64_t offset, std::span<std::byte> buf) override {
    return read_all(*fd_, offset, buf);
  }
  Error write(IoKind, uint64_t offset, std::span<const std::byte> buf) override {
    return write_all(*fd_, offset, buf);
  }
  Error flush() override { return flush_fd(*fd_); }
  Error discard(uint64_t offset, uint64_t length) override {
    return discard_fd(*fd_, offset, length);
  }
  Error allocate(uint64_t offset, uint64_t length) override {
    return allocate_fd(*fd_, offset, length);
  }

  void async_read(IoKind, uint64_t offset, std::span<std::byte> buf, Completion done) override {
    if (buf.empty()) return post_done(std::move(done), {});
    submit([offset, buf](const Fd& f) { return read_all(f, offset, buf); }, std::move(done));
  }
  void async_write(IoKind, uint64_t offset, std::span<const std::byte> buf,
                   Completion done) override {
    if (buf.empty()) return post_done(std::move(done), {});
    submit([offset, buf](const Fd& f) { return write_all(f, offset, buf); }, std::move(done));
  }
  void async_flush(Completion done) override {
    submit([](const Fd& f) { return flush_fd(f); }, std::move(done));
  }
  void async_discard(uint64_t offset, uint64_t length, Completion done) override {
    submit([offset, length](const Fd& f) { return discard_fd(f, offset, length); }, std::move(done));
  }
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override {
    submit([offset, length](const Fd& f) { return allocate_fd(f, offset, length); }, std::move(done));
  }
  void async_set_size(uint64_t size, Completion done) override {
    submit([size](const Fd& f) { return truncate_fd(f, size); }, std::move(done));
  }
  void async_extent_at(uint64_t offset, ExtentCompletion done) override {
    auto work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
    boost::asio::post(pool_, [fd = fd_, offset, done = std::move(done), work = std::move(work)]() mutable {
      auto r = extent_of(*fd, offset);
      fd.reset();  // see submit
      boost::asio::post(work, [done = std::move(done), r = std::move(r)]() {
        done(r.error(), r ? *r : FileExtent{});
      });
    });
  }

 private:
  // Runs `job` on the pool, then posts `done` with its result to the completion executor.
  template <class Job>
  void submit(Job job, Completion done) {
    auto work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
    boost::asio::post(pool_, [fd = fd_, job = std::move(job), done = std::move(done),
                              work = std::move(work)]() mutable {
      Error e = job(*fd);
      // Let go of the file before its completion runs: a File destroyed once its requests
      // completed is closed then, and its image locks with it (a reopen right after a close
      // must not find them still held by a job object the pool has yet to destroy).
      fd.reset();
      boost::asio::post(work, [done = std::move(done), e = std::move(e)]() { done(e); });
    });
  }

  void post_done(Completion done, Error e) {
    boost::asio::post(ex_, [done = std::move(done), e = std::move(e)]() { done(e); });
  }

  std::shared_ptr<Fd> fd_;
  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
};

int open_flags(unsigned mode) {
  int flags = O_CLOEXEC;
  bool rd = mode & file_read, wr = mode & file_write;
  flags |= wr ? (rd ? O_RDWR : O_WRONLY) : O_RDONLY;
  if (mode & file_create) {
    flags |= O_CREAT;
    if (mode & file_exclusive) flags |= O_EXCL;
    // A locked open truncates only once it holds its locks (an image in use stays intact).
    if ((mode & file_truncate) && !(mode & file_lock)) flags |= O_TRUNC;
  }
  return flags;
}

}  // namespace

PosixIoProvider::PosixIoProvider(boost::asio::any_io_executor completions,
                                 boost::asio::thread_pool& pool)
    : ex_(std::move(completions)), pool_(pool) {}

Result<std::unique_ptr<File>> PosixIoProvider::open(const std::string& path, unsigned mode) {
  if ((mode & file_create) && !(mode & file_write)) {
    return Error(Errc::invalid_argument, "creating a file needs write mode").image(path).op("open");
  }
  int fd;
  do {
    fd = ::open(path.c_str(), open_flags(mode), 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Error::from_errno(errno, "open", path);
  auto owned = std::make_shared<Fd>(fd, path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, "open", path);
  if (S_ISDIR(st.st_mode)) return Error::from_errno(EISDIR, "open", path);
  if (Error e = lock_image(*owned, mode)) return e;
  if ((mode & file_lock) && (mode & file_create) && (mode & file_truncate)) {
    if (Error e = truncate_fd(*owned, 0)) return e;
  }
  return std::unique_ptr<File>(std::make_unique<PosixFile>(std::move(owned), ex_, pool_));
}

Error PosixIoProvider::remove(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return Error::from_errno(errno, "remove", path);
  return {};
}

void PosixIoProvider::post(std::function<void()> fn) { boost::asio::post(ex_, std::move(fn)); }

void PosixIoProvider::offload(std::function<void()> work, std::function<void()> then) {
  // Tracked, so the executor's run() does not return while the job is on the pool.
  auto track = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
  boost::asio::post(pool_, [work = std::move(work), then = std::move(then), track = std::move(track)]() mutable {
    work();
    boost::asio::post(track, std::move(then));
  });
}

bool PosixIoProvider::exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace vd
