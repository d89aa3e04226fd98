// Default CHS geometries for images that store none (VirtualBox's VD layer does the same).
#include <algorithm>
#include <string>

#include "vd/backend.h"

namespace vd {

Geometry derive_pchs(uint64_t size) {
  uint64_t cyl = size / 512 / 16 / 63;
  return Geometry{static_cast<uint32_t>(std::clamp<uint64_t>(cyl, 1, 16383)), 16, 63};
}

Geometry derive_lchs(uint64_t size) {
  // BIOS translation: grow the head count until the cylinders fit in 1024.
  const uint64_t sectors = size / 512;
  uint32_t heads = 16;
  for (uint32_t h : {16u, 32u, 64u, 128u, 255u}) {
    heads = h;
    if (sectors / (uint64_t{h} * 63) <= 1024) break;
  }
  uint64_t cyl = sectors / (uint64_t{heads} * 63);
  return Geometry{static_cast<uint32_t>(std::clamp<uint64_t>(cyl, 1, 1024)), heads, 63};
}

Error check_geometry(const std::string& path, const char* kind, const Geometry& g, uint32_t max_heads) {
  if (g == Geometry{}) return {};  // unset: derive from the size again
  if (g.is_set() && g.heads <= max_heads && g.sectors <= 63) return {};
  return Error(Errc::invalid_argument,
               std::string(kind) + " geometry " + std::to_string(g.cylinders) + "/" +
                   std::to_string(g.heads) + "/" + std::to_string(g.sectors) + " for '" + path +
                   "' is invalid (heads 1.." + std::to_string(max_heads) + ", sectors 1..63)");
}

}  // namespace vd
