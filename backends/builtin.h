// The built-in backends, for the host's registry (host/builtin.cpp lists them in probe order).
#pragma once

#include "vd/backend.h"

namespace vd::backends {
const Backend& raw();
const Backend& qcow2();
const Backend& qcow();
const Backend& luks();
}  // namespace vd::backends
