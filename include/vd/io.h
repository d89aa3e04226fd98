// The I/O seam. A backend never touches a file directly: every byte it reads or writes
// goes through a `File` obtained from the `IoProvider` the host hands it. Tests replace
// the provider with an in-memory one or a GoogleMock; a VM monitor may plug in a network
// block device or an object store.
//
// Threading model: an image and its files belong to one executor (one thread, or one
// strand). Asynchronous operations start on that executor and their completions are
// posted back to it, never run inline from the submitting call. Synchronous operations
// run on the calling thread and block it (used for open, create and small metadata).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "vd/error.h"

namespace vd {

// What a request carries; lets a provider treat metadata differently (cache it, order it)
// and lets tests fail exactly "the L2 table write".
enum class IoKind : uint8_t { data, meta };

using Completion = std::function<void(Error)>;

// File open modes for IoProvider::open.
enum FileMode : unsigned {
  file_read = 1u << 0,
  file_write = 1u << 1,
  file_create = 1u << 2,     // create if missing
  file_exclusive = 1u << 3,  // with file_create: fail if it exists
  file_truncate = 1u << 4,   // with file_create: truncate an existing file
  // Image locking as QEMU does it (OFD locks on the bytes of its permissions, see
  // docs/locking.md): the file is opened for consistent reads, and with file_write for writes
  // and resizes too, which it shares with no other process; the open fails (Errc::busy) while
  // another process holds the image in a way that conflicts. The locks last until the file is
  // closed. Providers without locks ignore these bits.
  file_lock = 1u << 5,
  // With file_lock on a read-only open: share every permission (QEMU's force-share, qemu-img
  // -U): the open succeeds while a writer holds the image, and never keeps one out.
  file_share_all = 1u << 6,
  // Cache modes (QEMU's cache=, see CacheMode in vd/cache.h). file_direct bypasses the
  // host page cache (O_DIRECT): the provider keeps every transfer aligned to the file's
  // logical block size, bouncing unaligned buffers and read-modify-writing unaligned
  // ranges, so callers need not care. file_write_through makes each write durable before it
  // completes (O_DSYNC). file_no_flush makes flushes succeed without reaching the storage.
  // Providers without a page cache ignore them.
  file_direct = 1u << 7,
  file_write_through = 1u << 8,
  file_no_flush = 1u << 9,
};

// A run of data or of a hole in a file (where the storage knows holes).
struct FileExtent {
  bool data = true;
  uint64_t length = 0;
};

using ExtentCompletion = std::function<void(Error, FileExtent)>;

// What the data path sees of a file: asynchronous calls only, so a request can never block
// the executor it runs on (a VM monitor runs many disks on one thread). Every completion is
// posted to the file's executor exactly once, also on failure, never run inside the call.
// Buffers must stay valid until the completion runs.
class VD_API AsyncFile {
 public:
  virtual ~AsyncFile() = default;
  virtual const std::string& path() const = 0;

  // Reads past the end of the file fill the buffer with zeros.
  virtual void async_read(IoKind kind, uint64_t offset, std::span<std::byte> buf,
                          Completion done) = 0;
  virtual void async_write(IoKind kind, uint64_t offset, std::span<const std::byte> buf,
                           Completion done) = 0;
  // Completes once everything written before it is durable.
  virtual void async_flush(Completion done) = 0;
  // Deallocates the range so it reads as zeros (punch a hole); writes zeros where the
  // storage cannot punch.
  virtual void async_discard(uint64_t offset, uint64_t length, Completion done) = 0;
  // Reserves space for the range (reads as zeros where it was not written).
  virtual void async_allocate(uint64_t offset, uint64_t length, Completion done) = 0;
  // Sets the file's length.
  virtual void async_set_size(uint64_t size, Completion done) = 0;
  // Whether `offset` starts data or a hole, and how far that goes (see File::extent_at).
  virtual void async_extent_at(uint64_t offset, ExtentCompletion done) = 0;
};

// The whole file: the asynchronous calls plus synchronous ones, which block the calling
// thread. Synchronous calls are for open, create, check, resize, snapshot and close, which
// run before or after the data path, never while a data-path request is in flight.
class VD_API File : public AsyncFile {
 public:
  virtual Result<uint64_t> size() = 0;
  virtual Error set_size(uint64_t size) = 0;
  // Bytes the file really occupies on its storage (holes excluded), for `info`'s disk size.
  virtual Result<uint64_t> allocated_size() { return size(); }
  // Whether `offset` (< size) starts data or a hole, and how far that goes (SEEK_DATA /
  // SEEK_HOLE). Storage that does not know holes answers data up to the end.
  virtual Result<FileExtent> extent_at(uint64_t offset) {
    auto s = size();
    if (!s) return s.error();
    return FileExtent{true, *s > offset ? *s - offset : 0};
  }

  // Synchronous I/O. Reads past the end of the file fill the buffer with zeros.
  virtual Error read(IoKind kind, uint64_t offset, std::span<std::byte> buf) = 0;
  virtual Error write(IoKind kind, uint64_t offset, std::span<const std::byte> buf) = 0;
  // Returns once everything written before it is durable.
  virtual Error flush() = 0;

  // Deallocates the range so it reads as zeros (punch a hole). Providers that cannot
  // write zeros instead.
  virtual Error discard(uint64_t offset, uint64_t length) = 0;
  // Reserves space for the range so later writes cannot fail for lack of space
  // (preallocation=full). The range reads as zeros if it was not written before.
  virtual Error allocate(uint64_t offset, uint64_t length) = 0;
};

class VD_API IoProvider {
 public:
  virtual ~IoProvider() = default;
  virtual Result<std::unique_ptr<File>> open(const std::string& path, unsigned mode) = 0;
  virtual Error remove(const std::string& path) = 0;
  virtual bool exists(const std::string& path) = 0;
  // Runs `fn` later on the executor that receives this provider's completions. Backends use
  // it to complete a request that needed no I/O without running the completion inline.
  // (The default runs inline; every real provider overrides it.)
  virtual void post(std::function<void()> fn) { fn(); }
  // Runs `work`, CPU-heavy and touching only what it owns (compressing a cluster), where it
  // does not hold up the executor, then `then` on the executor. Real providers use their
  // thread pool; the default runs `work` inline and posts `then`.
  virtual void offload(std::function<void()> work, std::function<void()> then) {
    work();
    post(std::move(then));
  }
};

}  // namespace vd
