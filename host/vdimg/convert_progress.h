// convert -p as qemu-img prints it. qemu-img convert counts its progress in sectors of the
// "allocated" chunks it copies: before copying it walks the source the way its copy loop
// will (convert_iteration_sectors: block status runs cut to the source's cluster alignment,
// data chunks of at most 2 MiB, zeros counted only with -S 0, and nothing left to a -B
// backing file), and after claiming each counted chunk prints done/allocated through
// qemu's progress line (1% steps). The sequence of percentages depends only on the source's
// extents, never on timing, so vdimg computes the same walk up front (plan) and prints its
// steps as its own copier gets past each chunk (advance), then 100% and the newline.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "host/vdimg/progress.h"
#include "vd/disk.h"
#include "vd/runtime.h"

namespace vdimg {

struct ConvertWalk {
  uint64_t min_sparse = 4096;   // -S in bytes; 0: zeros are copied and counted
  uint64_t compress_cluster = 0;  // -c: the target's cluster size (whole clusters are written)
  bool overlay = false;         // -B: what the source's top does not hold is left to the backing file
  uint64_t backing_size = 0;    // -B: the size of the new backing file
};

class ConvertProgress {
 public:
  // Prints 0% when on (qemu-img does so before it opens anything).
  explicit ConvertProgress(bool on) : line_(on, 1.0f), on_(on) { line_.print(0, 100); }

  // Walks `sources` (concatenated) as qemu-img's copy loop will.
  vd::Error plan(vd::Runtime& rt, const std::vector<vd::Disk*>& sources, const ConvertWalk& walk);
  // The copy got past guest byte `pos` (of the concatenated sources): the chunks that start
  // below it are claimed.
  void advance(uint64_t pos);
  // Success: every step, then 100%. The newline comes with the destructor, on every path.
  void finish();

 private:
  QemuProgress line_;
  bool on_;
  std::vector<std::pair<uint64_t, float>> steps_;  // (chunk start, percentage after it)
  size_t next_ = 0;
};

}  // namespace vdimg
