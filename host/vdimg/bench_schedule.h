// qemu-img bench's request schedule, apart from the I/O: which requests and flushes to send
// when one completes. With --flush-interval N a flush follows every N-th completed write;
// by default the queue is drained first (no new request is sent until the writes in flight
// have completed and the flush after them has too); --no-drain sends the flush at once,
// among the writes still in flight, and keeps the queue full. Header-only so that tests can
// step it without a disk.
#pragma once

#include <cstdint>

namespace vdimg {

class BenchSchedule {
 public:
  BenchSchedule(uint64_t count, uint64_t depth, uint64_t flush_interval, bool drain_on_flush)
      : n_(count), depth_(depth), flush_interval_(flush_interval), drain_(drain_on_flush) {}

  struct Step {
    bool flush = false;  // send a flush now
    uint64_t issue = 0;  // then send this many requests
  };

  // The first requests.
  Step start() { return Step{false, fill()}; }

  // A request completed (qemu-img.c's bench_cb for a request).
  Step request_done() {
    Step s;
    const uint64_t remaining = n_ - in_flight_;  // not yet sent
    --n_;
    --in_flight_;
    if (flush_interval_ && remaining % flush_interval_ == 0) {
      if (in_flight_ == 0 || !drain_) {
        s.flush = true;
        if (drain_) in_drained_flush_ = true;
        else ++undrained_flushes_;
      }
      // Draining: nothing new until the flush after the last write in flight completes.
      if (drain_) return s;
    }
    s.issue = fill();
    return s;
  }

  // A flush completed.
  Step flush_done(bool drained) {
    if (!drained) {
      --undrained_flushes_;
      return {};
    }
    in_drained_flush_ = false;
    return Step{false, fill()};
  }

  // Every request completed and no flush is pending.
  bool finished() const { return n_ == 0 && in_flight_ == 0 && !in_drained_flush_ && undrained_flushes_ == 0; }
  bool in_drained_flush() const { return in_drained_flush_; }
  uint64_t in_flight() const { return in_flight_; }

 private:
  uint64_t fill() {
    uint64_t k = 0;
    while (n_ > in_flight_ && in_flight_ < depth_) {
      ++in_flight_;
      ++k;
    }
    return k;
  }

  uint64_t n_;  // requests not yet completed
  uint64_t depth_, flush_interval_;
  bool drain_;
  uint64_t in_flight_ = 0, undrained_flushes_ = 0;
  bool in_drained_flush_ = false;
};

}  // namespace vdimg
