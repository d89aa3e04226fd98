// qemu-img's progress line (-p): "    (NN.NN/100%)\r", printed when it moved by at least 1%,
// and finished with a newline. For the commands added after convert (commit, amend).
#pragma once

#include <cstdint>
#include <cstdio>

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

}  // namespace vdimg
