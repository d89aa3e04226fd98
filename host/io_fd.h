// The file layer under the real-file providers (threads in io_posix.cpp, io_uring in
// io_uring.cpp): an open descriptor with its cache mode, and the blocking operations on it.
//
// O_DIRECT (file_direct): every transfer the kernel sees is aligned to the file's logical
// block size, in offset, length and memory. An aligned request goes straight through; an
// unaligned buffer is bounced; an unaligned range is read-modify-written block-wise (the
// partial head and tail blocks are read, patched and written whole). Two writes touching the
// same block must not interleave with such a read-modify-write (the second would write back
// stale bytes of the first), so every write on an O_DIRECT file holds its blocks in the
// file's range lock while it runs: aligned writes share blocks with each other, a
// read-modify-write shares them with nobody.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "vd/error.h"
#include "vd/io.h"

namespace vd::detail {

struct Fd {
  int fd = -1;
  std::string path;
  unsigned align = 0;     // O_DIRECT: the logical block size; 0: buffered
  bool no_flush = false;  // cache=unsafe
  bool in_memory = false;           // on tmpfs: a buffered read never waits for a device
  std::atomic<bool> nowait{true};  // buffered reads may try RWF_NOWAIT (cleared where unsupported)
  // Runs just before the descriptor closes: the io_uring provider frees the file's slot in
  // its registered file table there (host/io_uring_ring.h).
  std::function<void(const Fd&)> before_close;
  Fd(int f, std::string p) : fd(f), path(std::move(p)) {}
  ~Fd();
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  // Blocks [lo, hi) of writes in flight on an O_DIRECT file (see the top of this file).
  struct Busy {
    uint64_t lo, hi;
    bool rmw;
  };
  mutable std::mutex m;
  mutable std::condition_variable cv;
  mutable std::vector<Busy> busy;

  bool aligned(uint64_t offset, size_t len, const void* mem) const {
    return !align || ((offset | len | reinterpret_cast<uintptr_t>(mem)) & (align - 1)) == 0;
  }
};

// Opens with the FileMode bits (locks taken, alignment probed for file_direct).
Result<std::shared_ptr<Fd>> open_fd(const std::string& path, unsigned mode);

Error check_span(const Fd& f, const char* what, uint64_t offset, uint64_t len);
// Reads everything, retrying EINTR and short reads; past end of file fills zeros.
Error read_all(const Fd& f, uint64_t offset, std::span<std::byte> buf);
// Writes everything (read-modify-write where O_DIRECT needs it).
Error write_all(const Fd& f, uint64_t offset, std::span<const std::byte> buf);
Error flush_fd(const Fd& f);
Result<uint64_t> size_of(const Fd& f);
Error discard_fd(const Fd& f, uint64_t offset, uint64_t len);
Error allocate_fd(const Fd& f, uint64_t offset, uint64_t len);
Error truncate_fd(const Fd& f, uint64_t size);
Result<FileExtent> extent_of(const Fd& f, uint64_t offset);
Result<uint64_t> allocated_of(const Fd& f);

// For asynchronous aligned writes on an O_DIRECT file: takes the blocks of [offset, offset +
// len) for an aligned write unless a read-modify-write holds one of them (false: the caller
// does the write the blocking way, write_all, which waits). release_write gives them back.
bool try_acquire_write(const Fd& f, uint64_t offset, uint64_t len);
void release_write(const Fd& f, uint64_t offset, uint64_t len);

// Counts what tests check (vd/runtime.h IoCounters).
void count_flush();
void count_unaligned();

}  // namespace vd::detail
