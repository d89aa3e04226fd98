// qemu-img's progress line (-p): "    (NN.NN/100%)\r", printed when it moved by at least 1%,
// and finished with a newline. For the commands added after convert (commit, amend).
#pragma once

#include <cstdint>
#include <cstdio>
#include <iostream>

namespace vdimg {

class ProgressLine {
 public:
  explicit ProgressLine(bool on) : on_(on) {
    if (on_) print(0.0);
  }
  void operator()(uint64_t done, uint64_t total) {
    if (!on_) return;
    double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
    if (pct > 100.0) pct = 100.0;
    if (pct < 100.0 && pct - last_ < 1.0) return;
    print(pct);
  }
  // The last line: 100% and the newline qemu-img ends it with.
  void finish() {
    if (!on_) return;
    std::printf("    (100.00/100%%)\r\n");
    std::fflush(stdout);
    on_ = false;
  }

 private:
  void print(double pct) {
    last_ = pct;
    std::printf("    (%3.2f/100%%)\r", pct);
    std::fflush(stdout);
  }
  bool on_;
  double last_ = -1;
};

// qemu's util/qemu-progress.c, for the commands that print their progress through it
// (compare, rebase): a percentage kept in float as qemu keeps it (so the same lines come out),
// printed when it moved by more than `min_skip` points or reached 0 or 100, and a newline
// at the end of the command, whatever the outcome (the destructor: every return path).
class QemuProgress {
 public:
  QemuProgress(bool on, float min_skip) : on_(on), min_skip_(min_skip) {}
  QemuProgress(const QemuProgress&) = delete;
  QemuProgress& operator=(const QemuProgress&) = delete;
  ~QemuProgress() { end(); }

  // qemu_progress_print: with max 0, `delta` is the new percentage; otherwise it adds
  // delta * max / 100 points.
  void print(float delta, int max) {
    float current = max == 0 ? delta : current_ + delta / 100 * static_cast<float>(max);
    if (current > 100) current = 100;
    current_ = current;
    if (current > last_print_ + min_skip_ || current < last_print_ - min_skip_ || current == 100 ||
        current == 0) {
      last_print_ = current_;
      if (!on_) return;
      char line[32];
      std::snprintf(line, sizeof line, "    (%3.2f/100%%)\r", static_cast<double>(current_));
      std::cout << line << std::flush;
    }
  }

  void end() {
    if (!on_) return;
    std::cout << "\n" << std::flush;
    on_ = false;
  }

 private:
  bool on_;
  float min_skip_;
  float current_ = 0, last_print_ = 0;
};

}  // namespace vdimg
