// Copies one disk onto another with several requests in flight, skipping what needs no
// write: ranges the source reports unallocated or zero (block_status), and granules that
// read as zeros (sparse output), or, when the target is not known to read as zeros (existing
// target, target with a backing file), granules the target already holds.
//
// Each worker owns one chunk at a time:
//
//   claim -> scan (source extents) -> read source -> [read target] -> plan
//         -> ready --(its turn)--> writes -> commit -> claim the next chunk
//                 \-(not its turn, nothing to write)--> skipped ahead -> claim
//                 \-(not its turn, data to write)--> parked until the chunks before it commit
//
// Reads run in parallel, but by default writes go to the target in guest order, one chunk
// at a time, as qemu-img convert does without -W: the target then grows sequentially
// (contiguous clusters, unfragmented files) and its writers never contend. `in_order =
// false` lets every worker write as soon as it has read (qemu-img's -W).
//
// The source's extent map is asked once per extent, for the whole rest of the disk, and
// remembered until the cursor leaves it (qemu-img does the same): asking per chunk costs a
// SEEK_DATA/SEEK_HOLE pair each time on a raw file, which walks the page cache to the next
// hole.
//
// Everything runs on the runtime's one thread, so the shared state needs no lock. The first
// error stops new chunks and releases parked ones; the job completes once all workers are
// idle.
#pragma once

#include <cstdint>
#include <functional>

#include "vd/disk.h"
#include "vd/runtime.h"

namespace vdimg {

struct CopyOptions {
  uint64_t chunk = 2ull << 20;   // bytes per request
  unsigned workers = 4;          // chunks in flight (more only add contention on few cores)
  uint64_t granule = 4096;       // zero detection unit (the target's cluster if larger)
  unsigned write_flags = 0;      // e.g. vd::write_compressed
  bool target_is_zero = true;    // a fresh target without backing reads as zeros
  bool in_order = true;          // write chunks in guest order (false: qemu-img's -W)
  // Called after each chunk with (bytes done, total): progress output.
  std::function<void(uint64_t, uint64_t)> progress;
};

vd::Error copy_disk(vd::Runtime& rt, vd::Disk& src, vd::Disk& dst, const CopyOptions& opts);

}  // namespace vdimg
