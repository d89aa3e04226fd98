// The plugin ABI: a shared object adds formats by exporting one C entry point whose name
// carries the ABI version:
//
//   static const vd_plugin_table table = {VD_PLUGIN_TABLE_HEADER, count, backends};
//   VD_PLUGIN_EXPORT const vd_plugin_table* VD_PLUGIN_ENTRY(void) { return &table; }
//
// VD_PLUGIN_ENTRY expands to vd_plugin_entry_v<VD_PLUGIN_ABI_VERSION>, so a plugin built
// for another version exports another name and the host never calls into it. The table's
// header (VD_PLUGIN_TABLE_HEADER) records what the plugin was built against; the host checks
// every field of it before it touches `backends`. The table must stay valid until the
// library is unloaded.
//
// The backends are C++ objects: a plugin sees vd/plugin.h, vd/backend.h and every vd header
// they include (vd/io.h, vd/error.h). Those headers ARE the ABI. Any change to them other
// than to comments and whitespace changes VD_PLUGIN_ABI_FINGERPRINT; the test
// abi.fingerprint fails until the fingerprint is recorded again, and the version must be
// bumped with it (see docs/backend-guide.md, "Plugin ABI version"):
//
//   scripts/abi-fingerprint.sh --write    # prints and records the new fingerprint
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vd/backend.h"
#include "vd/error.h"

// Bump with every change to what a plugin sees (a plain integer: it is pasted into a name).
#define VD_PLUGIN_ABI_VERSION 4
// The hash of the normalised plugin-visible headers (this line and the version's excluded).
#define VD_PLUGIN_ABI_FINGERPRINT "fnv1a64-a5862bb907304096"

#define VD_PLUGIN_CAT_(a, b) a##b
#define VD_PLUGIN_CAT(a, b) VD_PLUGIN_CAT_(a, b)
#define VD_PLUGIN_STR_(x) #x
#define VD_PLUGIN_STR(x) VD_PLUGIN_STR_(x)

// The entry point's name for this ABI version, as an identifier and as a string.
#define VD_PLUGIN_ENTRY VD_PLUGIN_CAT(vd_plugin_entry_v, VD_PLUGIN_ABI_VERSION)
#define VD_PLUGIN_ENTRY_NAME VD_PLUGIN_STR(VD_PLUGIN_ENTRY)
#define VD_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

// The C++ runtime the plugin's objects are laid out for: the standard library and the
// build modes that change its classes' layout.
#if defined(_LIBCPP_VERSION)
#define VD_PLUGIN_STDLIB_ "libc++ abi " VD_PLUGIN_STR(_LIBCPP_ABI_VERSION)
#elif defined(__GLIBCXX__)
#define VD_PLUGIN_STDLIB_ "libstdc++ cxx11-abi " VD_PLUGIN_STR(_GLIBCXX_USE_CXX11_ABI)
#else
#define VD_PLUGIN_STDLIB_ "unknown standard library"
#endif
#if defined(_GLIBCXX_DEBUG) || defined(_LIBCPP_ENABLE_DEBUG_MODE)
#define VD_PLUGIN_DEBUG_ " debug-containers"
#else
#define VD_PLUGIN_DEBUG_ ""
#endif
#define VD_PLUGIN_COMPILER_ABI \
  VD_PLUGIN_STDLIB_ VD_PLUGIN_DEBUG_ ", " VD_PLUGIN_STR(__SIZEOF_POINTER__) "-byte pointers"

// Sizes of the library types the interface passes by value, one byte each: a second guard
// on the C++ runtime beside VD_PLUGIN_COMPILER_ABI.
constexpr uint64_t vd_plugin_layout() {
  return uint64_t{sizeof(std::string)} | uint64_t{sizeof(std::function<void()>)} << 8 |
         uint64_t{sizeof(std::shared_ptr<void>)} << 16 | uint64_t{sizeof(std::vector<int>)} << 24 |
         uint64_t{sizeof(std::optional<std::string>)} << 32 | uint64_t{sizeof(vd::Error)} << 40 |
         uint64_t{alignof(std::max_align_t)} << 48 | uint64_t{sizeof(void*)} << 56;
}

extern "C" {
struct vd_plugin_table {
  // The header, checked field by field before anything else is read.
  uint32_t struct_size;      // sizeof(vd_plugin_table)
  uint32_t abi_version;      // VD_PLUGIN_ABI_VERSION
  const char* fingerprint;   // VD_PLUGIN_ABI_FINGERPRINT
  const char* compiler_abi;  // VD_PLUGIN_COMPILER_ABI
  uint64_t layout;           // vd_plugin_layout()
  // The formats.
  uint32_t count;  // number of backends
  const vd::Backend* const* backends;
};
typedef const vd_plugin_table* (*vd_plugin_entry_fn)(void);
}

// The header fields of a vd_plugin_table, as this build of the headers sees them.
#define VD_PLUGIN_TABLE_HEADER                                                         \
  sizeof(vd_plugin_table), VD_PLUGIN_ABI_VERSION, VD_PLUGIN_ABI_FINGERPRINT,           \
      VD_PLUGIN_COMPILER_ABI, vd_plugin_layout()
