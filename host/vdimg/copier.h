// Copies one disk onto another with several requests in flight, deciding what to write as
// qemu-img convert does: the source's extents (block_status) say data, zeros or, with -B,
// "leave to the new backing file"; data is read and written except the runs of zeros
// qemu-img leaves out inside it (-S); zeros are skipped on a target that reads as zeros and
// written as zeros on any other; -S 0 writes everything as data.
//
// Each worker owns one chunk at a time:
//
//   claim -> scan (source extents) -> [read source] -> plan
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
// -r spreads the writes so that the bytes written stay within the rate since the copy
// started (a timer on the runtime delays a write that would get ahead). --salvage re-reads a
// failed chunk one sector at a time.
//
// Everything runs on the runtime's one thread, so the shared state needs no lock. The first
// error stops new chunks and releases parked ones; the job completes once all workers are
// idle.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "vd/disk.h"
#include "vd/runtime.h"

namespace vdimg {

struct CopyOptions {
  uint64_t chunk = 2ull << 20;   // bytes per request
  unsigned workers = 4;          // chunks in flight (more only add contention on few cores)
  uint64_t granule = 4096;       // zero detection unit (the target's cluster if larger)
  // qemu-img's -S: a run of zero granules inside data is left sparse only when it is at
  // least this long (or starts the chunk, as qemu-img's buffer scan does); 0 turns zero
  // detection off: every byte of the disk is written as data (a fully allocated target).
  uint64_t min_sparse = 4096;
  unsigned write_flags = 0;      // e.g. vd::write_compressed
  bool target_is_zero = true;    // a fresh target without backing reads as zeros
  // qemu-img's -B: the target is an overlay of a new backing file, which is left to show
  // what the source's top image does not hold itself (as qemu-img assumes, the new backing
  // file reads as the source's did), and zeros past its end (`backing_size`).
  bool overlay = false;
  uint64_t backing_size = 0;
  unsigned zero_flags = 0;       // for the zeros written (vd::zero_may_unmap without backing)
  bool in_order = true;          // write chunks in guest order (false: qemu-img's -W)
  // Where the source goes in the target (convert's concatenation of several sources).
  uint64_t dst_offset = 0;
  // qemu-img's -C (copy offloading): what the source holds as data is copied as it is,
  // zeros included (no zero detection inside data).
  bool copy_data_whole = false;
  uint64_t rate_limit = 0;       // bytes per second written to the target (qemu-img's -r); 0: none
  // qemu-img's --salvage: a read that fails is retried sector by sector and the sectors
  // that still fail are copied as zeros, each reported through `warn`.
  bool salvage = false;
  std::function<void(const std::string&)> warn;
  // Called after each chunk with (bytes done, total): progress output.
  std::function<void(uint64_t, uint64_t)> progress;
};

// A failed read or write comes back in qemu-img's words ("error while reading at byte N:
// Input/output error"), ready to print.
vd::Error copy_disk(vd::Runtime& rt, vd::Disk& src, vd::Disk& dst, const CopyOptions& opts);

}  // namespace vdimg
