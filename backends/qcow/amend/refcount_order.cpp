// refcount_bits changes (QEMU's qcow2_change_refcount_order, done here our own way).
#include "backends/qcow/image.h"

namespace vd::qcow {

Error QcowImage::change_refcount_order(uint32_t, AmendProgress&) {
  return Error(Errc::not_supported, "changing refcount_bits is not supported yet").image(path_);
}

}  // namespace vd::qcow
