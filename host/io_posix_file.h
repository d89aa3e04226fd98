// The thread-pool File (host/io_posix.cpp), shared with the io_uring provider, which hands
// it what the ring does not do (discard, set_size, extents, unaligned O_DIRECT writes).
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>

#include "host/io_fd.h"
#include "vd/io.h"

namespace vd {

class PosixFile : public File {
 public:
  PosixFile(std::shared_ptr<detail::Fd> fd, boost::asio::any_io_executor ex, boost::asio::thread_pool& pool);

  const std::string& path() const override;
  Result<uint64_t> size() override;
  Error set_size(uint64_t size) override;
  Result<uint64_t> allocated_size() override;
  Result<FileExtent> extent_at(uint64_t offset) override;
  Error read(IoKind, uint64_t offset, std::span<std::byte> buf) override;
  Error write(IoKind, uint64_t offset, std::span<const std::byte> buf) override;
  Error flush() override;
  Error discard(uint64_t offset, uint64_t length) override;
  Error allocate(uint64_t offset, uint64_t length) override;

  void async_read(IoKind, uint64_t offset, std::span<std::byte> buf, Completion done) override;
  void async_write(IoKind, uint64_t offset, std::span<const std::byte> buf, Completion done) override;
  void async_flush(Completion done) override;
  void async_discard(uint64_t offset, uint64_t length, Completion done) override;
  void async_allocate(uint64_t offset, uint64_t length, Completion done) override;
  void async_set_size(uint64_t size, Completion done) override;
  void async_extent_at(uint64_t offset, ExtentCompletion done) override;

 protected:
  // Runs `job` on the pool, then posts `done` with its result to the completion executor.
  template <class Job>
  void submit(Job job, Completion done) {
    auto work = boost::asio::prefer(ex_, boost::asio::execution::outstanding_work.tracked);
    boost::asio::post(pool_, [fd = fd_, job = std::move(job), done = std::move(done), work = std::move(work)]() mutable {
      Error e = job(*fd);
      // Let go of the file before its completion runs: a File destroyed once its requests
      // completed is closed then, and its image locks with it (a reopen right after a close
      // must not find them still held by a job object the pool has yet to destroy).
      fd.reset();
      boost::asio::post(work, [done = std::move(done), e = std::move(e)]() { done(e); });
    });
  }
  void post_done(Completion done, Error e);
  bool read_nowait(uint64_t offset, std::span<std::byte> buf);

  std::shared_ptr<detail::Fd> fd_;
  boost::asio::any_io_executor ex_;
  boost::asio::thread_pool& pool_;
};

}  // namespace vd
