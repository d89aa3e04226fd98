// qemu-img amend for QCOW2 (QEMU 7.2's qcow2_amend_options), split by operation:
//   amend.cpp           the options: parsed and checked as qemu-img does, then applied in
//                       QEMU's order (upgrade, encryption key slots, refcount width, data
//                       file, backing file check, lazy refcounts, size, downgrade); the key
//                       slots are backends/crypto's (luks_amend)
//   downgrade.cpp       compat=1.1 -> 0.10: the checks, zero clusters written out
//   refcount_order.cpp  refcount_bits: new refcount structures, then the header switch
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "vd/error.h"

namespace vd::qcow {

// The options of one amend, as given (unset: not given).
struct AmendPlan {
  std::optional<uint64_t> size;
  std::optional<uint32_t> version;  // 2 or 3
  std::optional<std::string> backing_file, backing_format;
  std::optional<std::string> data_file;
  std::optional<bool> data_file_raw;
  std::optional<bool> lazy_refcounts;
  std::optional<uint32_t> refcount_order;
  bool encryption = false;  // encrypt.* key slot options
};

// qemu-img's parsing of amend -o for qcow2: unknown and create-only keys, value types, the
// refcount width and compat level refused with qemu-img's messages.
Result<AmendPlan> parse_amend_options(const std::map<std::string, std::string>& options);


// QEMU's amend progress (qcow2_amend_helper_cb): several operations share one bar; the
// total is projected from the operations seen so far.
class AmendProgress {
 public:
  AmendProgress(std::function<void(uint64_t, uint64_t)> cb, int operations)
      : cb_(std::move(cb)), total_ops_(operations) {}
  // The next operation starts.
  void next() {
    if (started_) {
      offset_done_ += last_size_;
      ++ops_done_;
    }
    started_ = true;
    last_size_ = 0;
  }
  // Within the current operation: `done` of `size` work units.
  void report(uint64_t done, uint64_t size) {
    if (!cb_ || total_ops_ <= 0 || ops_done_ >= total_ops_) return;
    last_size_ = size;
    const uint64_t current = offset_done_ + size;
    const uint64_t projected = current * static_cast<uint64_t>(total_ops_ - ops_done_ - 1) /
                               static_cast<uint64_t>(ops_done_ + 1);
    cb_(offset_done_ + done, current + projected);
  }

 private:
  std::function<void(uint64_t, uint64_t)> cb_;
  int total_ops_;
  int ops_done_ = 0;
  bool started_ = false;
  uint64_t offset_done_ = 0, last_size_ = 0;
};

}  // namespace vd::qcow
