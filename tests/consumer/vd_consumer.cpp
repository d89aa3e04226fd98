// A program built against an installed (or add_subdirectory'd) vd, using only the public
// headers: opens the image named on the command line read-only, reads its first 4 KiB and
// prints the virtual size. scripts/test.sh builds it three ways (find_package, pkg-config,
// add_subdirectory) and runs it on a qcow2 made by qemu-img.
#include <cstddef>
#include <cstdio>
#include <vector>

#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
    return 2;
  }
  vd::Runtime rt;
  const vd::Registry registry = vd::Registry::builtin();
  vd::DiskOpenOptions opts;
  opts.flags = vd::open_read_only;
  auto disk = vd::Disk::open(argv[1], opts, registry, rt.files());
  if (!disk) {
    std::fprintf(stderr, "open: %s\n", disk.error().message().c_str());
    return 1;
  }
  std::vector<std::byte> buf(4096);
  if (vd::Error e = rt.wait([&](vd::Completion done) { (*disk)->read(0, buf, std::move(done)); })) {
    std::fprintf(stderr, "read: %s\n", e.message().c_str());
    return 1;
  }
  size_t nonzero = 0;
  for (std::byte b : buf) nonzero += b != std::byte{0};
  std::printf("size %llu, first 4 KiB read (%zu non-zero bytes)\n",
              static_cast<unsigned long long>((*disk)->size()), nonzero);
  if (vd::Error e = (*disk)->close()) {
    std::fprintf(stderr, "close: %s\n", e.message().c_str());
    return 1;
  }
  return 0;
}
