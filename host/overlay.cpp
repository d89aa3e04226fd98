// create_overlay: a differencing image over an existing one, as a VM monitor takes an
// external snapshot (the running disk becomes the backing file of a new, empty top).
#include <filesystem>

#include "vd/disk.h"

namespace vd {

Result<std::unique_ptr<Image>> create_overlay(const Registry& registry, IoProvider& io, const std::string& path,
                                              const std::string& backing, CreateOptions opts,
                                              std::string_view format) {
  const Backend* backend = registry.find(format);
  if (!backend) return Error(Errc::not_found, "Unknown file format '" + std::string(format) + "'").image(path);
  // The backing name is recorded as given; a relative one is relative to the new image's
  // folder, as when the chain is opened.
  std::filesystem::path where = backing;
  if (where.is_relative()) where = std::filesystem::path(path).parent_path() / where;
  DiskOpenOptions o;
  o.flags = open_read_only;
  o.no_backing = true;
  if (opts.backing_format) o.format = opts.backing_format;
  auto below = Disk::open(where.string(), o, registry, io);
  if (!below) return below.error().wrap("creating an overlay over", "backing file").image(path);
  if (opts.size == 0) opts.size = (*below)->size();  // as qemu-img: the backing file's size
  if (!opts.backing_format) opts.backing_format = std::string((*below)->image(0).backend().name());
  (void)(*below)->close();
  opts.backing_file = backing;
  return backend->create(path, opts, io);
}

}  // namespace vd
