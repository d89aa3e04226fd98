// The formats built into vd. An explicit list, not self-registration: a static library
// silently drops objects that only register themselves from static constructors.
#include "backends/builtin.h"
#include "vd/registry.h"

namespace vd {

Registry Registry::builtin() {
  Registry r;
  // Probe order: the formats with a magic number first, raw (which accepts anything) last.
  r.add(&backends::qcow2());
  r.add(&backends::qcow());
  r.add(&backends::luks());
  r.add(&backends::raw());
  return r;
}

}  // namespace vd
