// The plugin ABI: a shared object adds formats by exporting one versioned C entry point.
//
//   extern "C" const vd_plugin_v1* vd_plugin_entry_v1(void);
//
// The returned table must stay valid until the library is unloaded. The backends in it are
// C++ objects: a plugin must be built with the same compiler and vd headers as the host
// (the ABI version below changes whenever vd/backend.h does).
#pragma once

#include <cstdint>

namespace vd {
class Backend;
}

#define VD_PLUGIN_ABI_VERSION 1u
#define VD_PLUGIN_ENTRY_V1 "vd_plugin_entry_v1"

extern "C" {
struct vd_plugin_v1 {
  uint32_t abi_version;  // VD_PLUGIN_ABI_VERSION
  uint32_t count;        // number of backends
  const vd::Backend* const* backends;
};
typedef const vd_plugin_v1* (*vd_plugin_entry_v1_fn)(void);
}
