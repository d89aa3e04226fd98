// The blocking file operations of the real-file providers, with O_DIRECT alignment (see
// host/io_fd.h) and QEMU's image locking.
#include "host/io_fd.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "vd/runtime.h"

namespace vd {

IoCounters& io_counters() {
  static IoCounters counters;
  return counters;
}

namespace detail {
namespace {

// The largest transfer one pread/pwrite call is asked for (Linux caps at ~2 GiB anyway).
constexpr size_t kMaxChunk = size_t{1} << 30;
// Zeros written per call when a provider must emulate discard/allocate with writes.
constexpr size_t kZeroChunk = size_t{1} << 20;
// The largest bounce buffer an unaligned O_DIRECT transfer uses at once.
constexpr size_t kBounceChunk = size_t{1} << 20;

// A buffer aligned for O_DIRECT.
struct Bounce {
  std::byte* p = nullptr;
  explicit Bounce(size_t n, size_t align) {
    align = std::max<size_t>(align, 4096);
    p = static_cast<std::byte*>(std::aligned_alloc(align, (n + align - 1) / align * align));
  }
  ~Bounce() { std::free(p); }
  Bounce(const Bounce&) = delete;
  Bounce& operator=(const Bounce&) = delete;
};

void check_direct(const Fd& f, uint64_t offset, size_t len, const void* mem) {
  if (!f.aligned(offset, len, mem)) count_unaligned();
}

// pread until done; a read that ends short at end of file leaves zeros. On O_DIRECT files a
// short read ends where the file does (the next read would be unaligned): zeros after it.
Error pread_loop(const Fd& f, uint64_t offset, std::span<std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    size_t want = std::min(buf.size() - done, kMaxChunk);
    check_direct(f, offset + done, want, buf.data() + done);
    ssize_t n = ::pread(f.fd, buf.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "read", f.path, offset + done);
    }
    done += static_cast<size_t>(n);
    if (n == 0 || (f.align && static_cast<size_t>(n) < want)) {
      std::memset(buf.data() + done, 0, buf.size() - done);
      break;
    }
  }
  return {};
}

Error pwrite_loop(const Fd& f, uint64_t offset, std::span<const std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    size_t want = std::min(buf.size() - done, kMaxChunk);
    check_direct(f, offset + done, want, buf.data() + done);
    ssize_t n = ::pwrite(f.fd, buf.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno(errno, "write", f.path, offset + done);
    }
    // A zero-byte write makes no progress; treat it as the storage being full (so is a
    // short O_DIRECT write, which leaves the rest unaligned).
    if (n == 0 || (f.align && static_cast<size_t>(n) < want && (offset + done + n) % f.align))
      return Error::from_errno(ENOSPC, "write", f.path, offset + done);
    done += static_cast<size_t>(n);
  }
  return {};
}

uint64_t round_down(uint64_t v, unsigned a) { return v / a * a; }
uint64_t round_up(uint64_t v, unsigned a) { return (v + a - 1) / a * a; }

bool overlaps(const Fd::Busy& b, uint64_t lo, uint64_t hi) { return b.lo < hi && lo < b.hi; }

// Holds blocks [lo, hi) of an O_DIRECT file for a write, waiting for conflicting ones.
class RangeGuard {
 public:
  RangeGuard(const Fd& f, uint64_t lo, uint64_t hi, bool rmw) : f_(f), lo_(lo), hi_(hi), rmw_(rmw) {
    std::unique_lock lock(f.m);
    f.cv.wait(lock, [&] {
      return std::none_of(f.busy.begin(), f.busy.end(),
                          [&](const Fd::Busy& b) { return overlaps(b, lo, hi) && (b.rmw || rmw); });
    });
    f.busy.push_back({lo, hi, rmw});
  }
  ~RangeGuard() {
    {
      std::lock_guard lock(f_.m);
      auto it = std::find_if(f_.busy.begin(), f_.busy.end(), [&](const Fd::Busy& b) {
        return b.lo == lo_ && b.hi == hi_ && b.rmw == rmw_;
      });
      if (it != f_.busy.end()) f_.busy.erase(it);
    }
    f_.cv.notify_all();
  }
  RangeGuard(const RangeGuard&) = delete;
  RangeGuard& operator=(const RangeGuard&) = delete;

 private:
  const Fd& f_;
  uint64_t lo_, hi_;
  bool rmw_;
};

// An unaligned O_DIRECT read: the aligned cover of the range through a bounce buffer.
Error read_bounced(const Fd& f, uint64_t offset, std::span<std::byte> buf) {
  io_counters().bounced++;
  const uint64_t lo = round_down(offset, f.align), hi = round_up(offset + buf.size(), f.align);
  Bounce b(static_cast<size_t>(std::min<uint64_t>(hi - lo, kBounceChunk)), f.align);
  if (!b.p) return Error::from_errno(ENOMEM, "read", f.path, offset);
  for (uint64_t pos = lo; pos < hi;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(hi - pos, kBounceChunk));
    if (auto e = pread_loop(f, pos, std::span(b.p, n))) return e;
    const uint64_t from = std::max(pos, offset), to = std::min(pos + n, offset + buf.size());
    std::memcpy(buf.data() + (from - offset), b.p + (from - pos), static_cast<size_t>(to - from));
    pos += n;
  }
  return {};
}

// An unaligned O_DIRECT write: each bounce-sized piece of the aligned cover gets its partial
// head and tail blocks read first, the caller's bytes copied over, and is written whole.
// A write that ends inside a block past the end of the file would leave the file longer
// (up to the block's end); the length is put back to where the write ends.
Error write_bounced(const Fd& f, uint64_t offset, std::span<const std::byte> buf) {
  io_counters().bounced++;
  const uint64_t end = offset + buf.size();
  const uint64_t lo = round_down(offset, f.align), hi = round_up(end, f.align);
  const bool rmw = lo != offset || hi != end;
  auto before = size_of(f);
  if (!before) return before.error();
  // Growing the file: hold everything past lo, so no other write changes the length while
  // this one decides it.
  const bool grows = rmw && hi > *before;
  RangeGuard guard(f, lo, grows ? UINT64_MAX : hi, rmw);
  if (grows) {
    before = size_of(f);
    if (!before) return before.error();
  }
  if (rmw) io_counters().rmw++;
  Bounce b(static_cast<size_t>(std::min<uint64_t>(hi - lo, kBounceChunk)), f.align);
  if (!b.p) return Error::from_errno(ENOMEM, "write", f.path, offset);
  for (uint64_t pos = lo; pos < hi;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(hi - pos, kBounceChunk));
    const bool head = pos < offset;  // the first block is partly the caller's
    if (head) {
      if (auto e = pread_loop(f, pos, std::span(b.p, f.align))) return e;
    }
    if (pos + n > end) {  // so is the last one
      const uint64_t tail = pos + n - f.align;
      if (!(head && tail == pos)) {
        if (auto e = pread_loop(f, tail, std::span(b.p + (tail - pos), f.align))) return e;
      }
    }
    const uint64_t from = std::max(pos, offset), to = std::min(pos + n, end);
    std::memcpy(b.p + (from - pos), buf.data() + (from - offset), static_cast<size_t>(to - from));
    if (auto e = pwrite_loop(f, pos, std::span<const std::byte>(b.p, n))) return e;
    pos += n;
  }
  if (grows && hi > std::max(*before, end)) return truncate_fd(f, std::max(*before, end));
  return {};
}

Error write_zeros(const Fd& f, uint64_t offset, uint64_t len) {
  Bounce zeros(static_cast<size_t>(std::min<uint64_t>(len, kZeroChunk)), f.align ? f.align : 4096);
  if (!zeros.p) return Error::from_errno(ENOMEM, "write", f.path, offset);
  const size_t cap = static_cast<size_t>(std::min<uint64_t>(len, kZeroChunk));
  std::memset(zeros.p, 0, cap);
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, cap));
    if (auto e = write_all(f, offset, std::span<const std::byte>(zeros.p, n))) return e;
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
  if (mode & file_direct) flags |= O_DIRECT;
  if (mode & file_write_through) flags |= O_DSYNC;
  return flags;
}

// The O_DIRECT alignment of an open file, as QEMU probes it (block/file-posix.c): a block
// device says (BLKSSZGET); on a file, the smallest of 512, 1024, 2048, 4096 that an aligned
// read accepts. A file too short for the probe to tell gets 4096, which is always enough.
Result<unsigned> probe_alignment(const Fd& f) {
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return Error::from_errno(errno, "stat", f.path);
  if (S_ISBLK(st.st_mode)) {
    int size = 0;
    if (::ioctl(f.fd, BLKSSZGET, &size) == 0 && size > 0) return static_cast<unsigned>(size);
  }
  if (st.st_size < 4096) return 4096u;
  Bounce b(4096, 4096);
  if (!b.p) return Error::from_errno(ENOMEM, "open", f.path);
  for (unsigned a = 512; a <= 4096; a *= 2) {
    if (::pread(f.fd, b.p, a, 0) >= 0 || errno != EINVAL) return a;
  }
  return Error(Errc::invalid_argument, "Could not find working O_DIRECT alignment").image(f.path).op("open");
}

}  // namespace

Result<std::shared_ptr<Fd>> open_fd(const std::string& path, unsigned mode) {
  if ((mode & file_create) && !(mode & file_write)) {
    return Error(Errc::invalid_argument, "creating a file needs write mode").image(path).op("open");
  }
  int fd;
  do {
    fd = ::open(path.c_str(), open_flags(mode), 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EINVAL && (mode & file_direct)) {
      // As qemu: the file system refuses O_DIRECT (tmpfs before Linux 6.6).
      return Error::from_errno(EINVAL, "open with O_DIRECT (cache mode none or directsync; the file "
                                       "system does not support it)", path);
    }
    return Error::from_errno(errno, "open", path);
  }
  auto owned = std::make_shared<Fd>(fd, path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::from_errno(errno, "open", path);
  if (S_ISDIR(st.st_mode)) return Error::from_errno(EISDIR, "open", path);
  if (Error e = lock_image(*owned, mode)) return e;
  if ((mode & file_lock) && (mode & file_create) && (mode & file_truncate)) {
    if (Error e = truncate_fd(*owned, 0)) return e;
  }
  owned->no_flush = mode & file_no_flush;
  struct statfs sfs {};
  owned->in_memory = ::fstatfs(fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
  if (mode & file_direct) {
    auto a = probe_alignment(*owned);
    if (!a) return a.error();
    owned->align = *a;
  }
  return owned;
}

void count_flush() { io_counters().flushes++; }
void count_unaligned() { io_counters().unaligned_direct++; }

Fd::~Fd() {
  if (before_close) before_close(*this);
  if (fd >= 0) ::close(fd);
}

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

Error read_all(const Fd& f, uint64_t offset, std::span<std::byte> buf) {
  if (auto e = check_span(f, "read", offset, buf.size())) return e;
  if (buf.empty()) return {};
  if (!f.aligned(offset, buf.size(), buf.data())) return read_bounced(f, offset, buf);
  return pread_loop(f, offset, buf);
}

Error write_all(const Fd& f, uint64_t offset, std::span<const std::byte> buf) {
  if (auto e = check_span(f, "write", offset, buf.size())) return e;
  if (buf.empty()) return {};
  if (!f.align) return pwrite_loop(f, offset, buf);
  if (!f.aligned(offset, buf.size(), buf.data())) return write_bounced(f, offset, buf);
  RangeGuard guard(f, offset, offset + buf.size(), false);
  return pwrite_loop(f, offset, buf);
}

bool try_acquire_write(const Fd& f, uint64_t offset, uint64_t len) {
  std::lock_guard lock(f.m);
  const uint64_t hi = offset + len;
  for (const auto& b : f.busy)
    if (b.rmw && overlaps(b, offset, hi)) return false;
  f.busy.push_back({offset, hi, false});
  return true;
}

void release_write(const Fd& f, uint64_t offset, uint64_t len) {
  {
    std::lock_guard lock(f.m);
    auto it = std::find_if(f.busy.begin(), f.busy.end(), [&](const Fd::Busy& b) {
      return b.lo == offset && b.hi == offset + len && !b.rmw;
    });
    if (it != f.busy.end()) f.busy.erase(it);
  }
  f.cv.notify_all();
}

Error flush_fd(const Fd& f) {
  if (f.no_flush) return {};  // cache=unsafe
  count_flush();
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

Result<uint64_t> allocated_of(const Fd& f) {
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return Error::from_errno(errno, "stat", f.path);
  return static_cast<uint64_t>(st.st_blocks) * 512;
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

}  // namespace detail
}  // namespace vd
