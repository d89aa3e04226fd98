// qemu-img measure's arithmetic, kept apart from the command line: how large a QCOW2 image
// of a given geometry is once fully allocated (QEMU's qcow2_calc_prealloc_size), and how
// much room the persistent bitmaps of a source image would take in a new image.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "host/vdimg/create_schema.h"
#include "vd/error.h"

namespace vdimg {

using OptionList = std::vector<std::pair<std::string, std::string>>;

// The value of the last `key` in `options` (qemu's qemu_opt_get finds the last), if any.
const std::string* last_option(const OptionList& options, const std::string& key);

// Bytes of refcount table and refcount blocks that cover `clusters` clusters plus
// themselves (QEMU's qcow2_refcount_metadata_size without the generous increase).
uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, unsigned refcount_order);

// Bytes of a QCOW2 image of `virtual_size` with every cluster allocated: header, L2
// tables, L1 table, refcount structures and data (QEMU's qcow2_calc_prealloc_size).
uint64_t qcow2_full_size(uint64_t virtual_size, uint64_t cluster_size, unsigned refcount_order,
                         bool extended_l2);

// Room the persistent dirty bitmaps of the QCOW2 v3 image at `path` (virtual size
// `disk_size`) would take in a new image with `cluster_size` clusters: each bitmap's data
// clusters as if fully allocated, its bitmap table, and the bitmap directory, each rounded
// to whole clusters (QEMU's qcow2_get_persistent_dirty_bitmap_size). 0 without bitmaps.
vd::Result<uint64_t> qcow2_bitmaps_size(const std::string& path, uint64_t disk_size, uint64_t cluster_size);

}  // namespace vdimg
