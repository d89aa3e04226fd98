// Default answers of the optional Image operations: formats without internal snapshots.
#include "vd/backend.h"

namespace vd {

namespace {
Error no_snapshots(const Image& img) {
  return Error(Errc::not_supported, "the " + std::string(img.backend().name()) +
                                        " format does not support internal snapshots")
      .image(img.path());
}
}  // namespace

Error Image::snapshot_create(const std::string&) { return no_snapshots(*this); }
Error Image::snapshot_apply(const std::string&) { return no_snapshots(*this); }
Error Image::snapshot_delete(const std::string&) { return no_snapshots(*this); }

Error Image::make_empty() {
  return Error(Errc::not_supported, "Image format driver does not support the operation").image(path());
}

Error Image::amend(const AmendOptions&) {
  // qemu-img's words, which name the format rather than the image.
  return Error(Errc::not_supported, "Format driver '" + std::string(backend().name()) +
                                        "' does not support option amendment");
}

}  // namespace vd
