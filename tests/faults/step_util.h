// Helpers of the one-test-per-failing-step suites (write_step_test.cpp, flush_step_test.cpp).
#pragma once

#include <functional>

#include "backends/qcow/image.h"
#include "faults/fault_fixture.h"

namespace vdtest::faults {

// The whole disk as the files hold it now (opened in a rig of its own).
Bytes content_of(const Files& files, const OpenSpec& spec = {});

uint64_t be64_at(const Bytes& b, uint64_t offset);

// White-box access to the open QCOW image, for offsets of its structures.
vd::qcow::QcowImage& qcow(Rig& rig);

// One guest write that must fail at one step and leave no trace: the completion fires once
// with the injected error, the image reads the old content, the file did not grow, the
// bytes reopen with the old content and check clean (no leak either: nothing was flushed),
// a flush of the surviving in-memory state also checks clean, and the write then succeeds.
struct WriteStep {
  Files files;
  OpenSpec spec;
  uint64_t offset = 0;
  Bytes data;
  IoMatch fault;
  uint64_t skip = 0;                    // matching calls to let through first
  std::function<void(Rig&)> before;     // after open, before the fault is armed
};
void expect_write_step_fails_cleanly(const WriteStep& s);

// One flush that must fail at one step after a successful write: the flush completion fires
// once with the injected error; the image still reads the new content; the bytes as they are
// reopen with old or new content per cluster and check clean apart from leaks; a second
// flush succeeds and leaves the new content and a clean image.
struct FlushStep {
  Files files;
  OpenSpec spec;
  std::function<vd::Error(Rig&)> change;  // the writes the flush must persist
  // Called after `change`, returns the fault to arm (offsets known only then).
  std::function<IoMatch(Rig&)> fault;
  uint64_t skip = 0;
  uint64_t grain = 512;
};
void expect_flush_step_fails_cleanly(const FlushStep& s);

}  // namespace vdtest::faults
