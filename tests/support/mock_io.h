// A GoogleMock I/O provider for fault tests (mocks that delegate to a fake, as librbd's MockTestMemIoCtxImpl).
//
// MockIoProvider hands out MockFiles. Every MockFile method is a MOCK_METHOD whose default
// action (ON_CALL ... WillByDefault) forwards to a real file of an inner provider: by
// default the provider's own vd::MemIoProvider, so a test loads qemu-img-made bytes with
// `load` and reads them back with `bytes`. On the way the default action
//   - records the call (`calls()`), so a test can find "the L2 write" or count I/Os;
//   - consults the fault plan: any call (sync or async, data or meta, by offset, by path, the
//     Nth one) can fail with any error, and a failed write or flush never reaches the file;
//   - with a data-path request in flight (`begin_data_path`), fails the test on any
//     synchronous call (the data path must never block the executor), unless `allow_sync`;
//   - for asynchronous calls, either posts the completion to the executor (the default) or,
//     with `hold(true)`, parks it: the test fires parked completions later, one by one, in
//     any order. The I/O itself happens when the completion fires, as on a real device
//     where a request is done only when it completes.
// Tests that want to pin or replace one call use EXPECT_CALL on the MockFile (`file(path)`);
// an expectation without an action still runs the default, so faults and holds apply.
#pragma once

#include <gmock/gmock.h>

#include <boost/asio/any_io_executor.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "vd/io.h"
#include "vd/runtime.h"

namespace vdtest {

enum class IoOp : uint8_t { size, set_size, read, write, flush, discard, allocate, extent, allocated_size };
const char* to_string(IoOp op);

// One call the backend made on a MockFile.
struct IoCall {
  IoOp op = IoOp::read;
  bool async = false;
  vd::IoKind kind = vd::IoKind::data;
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t index = 0;  // position among the provider's calls, from 0
  std::string describe() const;
};

// Which calls a fault applies to; unset fields match anything.
struct IoMatch {
  std::optional<IoOp> op = {};
  std::optional<vd::IoKind> kind = {};
  std::optional<bool> async = {};
  std::optional<uint64_t> offset = {};  // the call's offset equals this
  std::optional<std::string> path = {};
  // Counted I/O only (everything but size()): what fault sweeps step through.
  bool counted_only = false;
  bool matches(const IoCall& c) const;
};

class MockIoProvider;

class MockFile : public vd::File {
 public:
  MockFile(MockIoProvider& io, std::shared_ptr<vd::File> inner);
  ~MockFile() override;  // the provider stops handing it out

  const std::string& path() const override { return path_; }
  MOCK_METHOD(vd::Result<uint64_t>, size, (), (override));
  MOCK_METHOD(vd::Error, set_size, (uint64_t size), (override));
  MOCK_METHOD(vd::Error, read, (vd::IoKind kind, uint64_t offset, std::span<std::byte> buf), (override));
  MOCK_METHOD(vd::Error, write, (vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf),
              (override));
  MOCK_METHOD(vd::Error, flush, (), (override));
  MOCK_METHOD(void, async_read,
              (vd::IoKind kind, uint64_t offset, std::span<std::byte> buf, vd::Completion done),
              (override));
  MOCK_METHOD(void, async_write,
              (vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf, vd::Completion done),
              (override));
  MOCK_METHOD(void, async_flush, (vd::Completion done), (override));
  MOCK_METHOD(void, async_discard, (uint64_t offset, uint64_t length, vd::Completion done), (override));
  MOCK_METHOD(void, async_set_size, (uint64_t size, vd::Completion done), (override));
  MOCK_METHOD(void, async_allocate, (uint64_t offset, uint64_t length, vd::Completion done), (override));
  MOCK_METHOD(void, async_extent_at, (uint64_t offset, vd::ExtentCompletion done), (override));
  MOCK_METHOD(vd::Error, discard, (uint64_t offset, uint64_t length), (override));
  MOCK_METHOD(vd::Error, allocate, (uint64_t offset, uint64_t length), (override));
  MOCK_METHOD(vd::Result<uint64_t>, allocated_size, (), (override));
  MOCK_METHOD(vd::Result<vd::FileExtent>, extent_at, (uint64_t offset), (override));

  // The default actions: recorded, fault-checked, forwarded to the inner file.
  vd::Result<uint64_t> real_size();
  vd::Error real_set_size(uint64_t size);
  vd::Error real_read(vd::IoKind kind, uint64_t offset, std::span<std::byte> buf);
  vd::Error real_write(vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf);
  vd::Error real_flush();
  void real_async_read(vd::IoKind kind, uint64_t offset, std::span<std::byte> buf, vd::Completion done);
  void real_async_write(vd::IoKind kind, uint64_t offset, std::span<const std::byte> buf,
                        vd::Completion done);
  void real_async_flush(vd::Completion done);
  void real_async_discard(uint64_t offset, uint64_t length, vd::Completion done);
  void real_async_set_size(uint64_t size, vd::Completion done);
  void real_async_allocate(uint64_t offset, uint64_t length, vd::Completion done);
  void real_async_extent_at(uint64_t offset, vd::ExtentCompletion done);
  vd::Error real_discard(uint64_t offset, uint64_t length);
  vd::Error real_allocate(uint64_t offset, uint64_t length);
  vd::Result<uint64_t> real_allocated_size();
  vd::Result<vd::FileExtent> real_extent_at(uint64_t offset);

 private:
  void install_defaults();

  MockIoProvider& io_;
  std::shared_ptr<vd::File> inner_;  // shared with held completions: the File may go first
  std::string path_;
};

class MockIoProvider : public vd::IoProvider {
 public:
  // Completions are posted to `ex`. Files live in an own MemIoProvider unless `inner` is
  // given (e.g. a crash-simulating provider), which must outlive this one.
  explicit MockIoProvider(boost::asio::any_io_executor ex, vd::IoProvider* inner = nullptr);
  ~MockIoProvider() override;

  vd::Result<std::unique_ptr<vd::File>> open(const std::string& path, unsigned mode) override;
  vd::Error remove(const std::string& path) override;
  bool exists(const std::string& path) override;
  void post(std::function<void()> fn) override;

  // ---- Content (own MemIoProvider only) ----
  void load(const std::string& path, const std::vector<std::byte>& bytes);
  std::vector<std::byte> bytes(const std::string& path);
  vd::MemIoProvider& mem() { return mem_; }

  // ---- The files handed out, for EXPECT_CALL (the last one opened under that path) ----
  MockFile* file(const std::string& path);

  // ---- Faults ----
  // Fails the matching calls: skips `skip` of them, then fails `times` (0: all the rest).
  void fail(const IoMatch& match, vd::Error error, uint64_t skip = 0, uint64_t times = 1);
  // Fails the Nth counted I/O (read, write, flush, set_size, discard, allocate) from now on,
  // N counted from 0: the fault sweeps' knob.
  void fail_nth(uint64_t n, vd::Error error);
  void clear_faults();
  uint64_t faults_injected() const { return injected_; }
  // Counted I/O calls since construction or `reset_counts`.
  uint64_t counted() const { return counted_; }
  void reset_counts();
  const std::vector<IoCall>& calls() const { return calls_; }
  void clear_calls() { calls_.clear(); }

  // ---- Held completions ----
  void hold(bool on) { hold_ = on; }
  size_t held() const { return held_.size(); }
  const IoCall& held_call(size_t i) const { return held_[i].call; }
  // Completes held request i (does its I/O, then runs its completion inline).
  void fire(size_t i);
  // Fires every held request, including ones submitted meanwhile, in a random order.
  void fire_all_shuffled(std::mt19937& rng);
  void fire_all_in_order();

  // ---- Data-path detector ----
  // A data-path request (read, write, write_zeroes, discard, flush, block_status) is in
  // flight between begin_data_path and end_data_path (a counter). While one is, every
  // synchronous call on a MockFile (size, set_size, allocated_size, extent_at, read, write,
  // flush, discard, allocate) is a test failure naming the call: the data path must never
  // block its executor. Asynchronous calls are fine. `allow_sync(true)` turns the check off
  // for tests that make synchronous calls mid-flight on purpose.
  void begin_data_path() { ++data_path_; }
  void end_data_path();
  uint64_t data_path_in_flight() const { return data_path_; }
  void allow_sync(bool on) { allow_sync_ = on; }
  // The synchronous calls seen while a data-path request was in flight (also when allowed).
  const std::vector<IoCall>& sync_on_data_path() const { return sync_on_data_path_; }

  // ---- For MockFile ----
  IoCall record(IoOp op, bool async, vd::IoKind kind, const std::string& path, uint64_t offset,
                uint64_t length);
  vd::Error fault_for(const IoCall& c);
  // Runs `io` and then `done` now (held) or posts both to the executor.
  void complete(const IoCall& c, std::function<vd::Error()> io, vd::Completion done);
  void forget(MockFile* f);

 private:
  struct Rule {
    IoMatch match;
    vd::Error error;
    uint64_t skip, times, seen = 0, failed = 0;
  };
  struct Held {
    IoCall call;
    std::function<vd::Error()> io;
    vd::Completion done;
  };

  boost::asio::any_io_executor ex_;
  vd::MemIoProvider mem_;
  vd::IoProvider& inner_;
  std::map<std::string, MockFile*> files_;
  std::vector<Rule> rules_;
  std::vector<IoCall> calls_;
  std::vector<Held> held_;
  std::vector<IoCall> sync_on_data_path_;
  static constexpr uint64_t kSyncFailuresNamed = 20;
  uint64_t next_index_ = 0, counted_ = 0, injected_ = 0, data_path_ = 0, sync_failures_ = 0;
  bool hold_ = false, allow_sync_ = false;
};

// An injected I/O error whose message names the call, so a test can tell it from others.
vd::Error injected_error(const std::string& tag = "injected fault");

}  // namespace vdtest
