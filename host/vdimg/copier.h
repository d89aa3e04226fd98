// Copies one disk onto another with several requests in flight, skipping what needs no
// write: ranges the source reports unallocated or zero (block_status), and granules that
// read as zeros (sparse output), or, when the target is not known to read as zeros (existing
// target, target with a backing file), granules the target already holds.
//
// Each worker owns one chunk at a time:  status -> read source -> [read target] -> writes
// -> next chunk. Everything runs on the runtime's one thread, so the shared cursor needs no
// lock. The first error stops new chunks; the job completes once all workers are idle.
#pragma once

#include <cstdint>
#include <functional>

#include "vd/disk.h"
#include "vd/runtime.h"

namespace vdimg {

struct CopyOptions {
  uint64_t chunk = 2ull << 20;   // bytes per request
  unsigned workers = 8;          // requests in flight
  uint64_t granule = 4096;       // zero detection unit (the target's cluster if larger)
  unsigned write_flags = 0;      // e.g. vd::write_compressed
  bool target_is_zero = true;    // a fresh target without backing reads as zeros
  // Called after each chunk with (bytes done, total): progress output.
  std::function<void(uint64_t, uint64_t)> progress;
};

vd::Error copy_disk(vd::Runtime& rt, vd::Disk& src, vd::Disk& dst, const CopyOptions& opts);

}  // namespace vdimg
