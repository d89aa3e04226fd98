// The backend registry: an explicit list in a fixed probe order (raw last), extended at run
// time by plugins loaded from shared objects. No self-registration from static constructors.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vd/backend.h"
#include "vd/error.h"
#include "vd/io.h"

namespace vd {

class VD_API Registry {
 public:
  Registry();  // empty
  ~Registry();
  Registry(Registry&&) noexcept;
  Registry& operator=(Registry&&) noexcept;

  // The formats built into vd, in probe order: qcow2, qcow, luks, then raw.
  static Registry builtin();

  // Adds a backend. It is probed before raw (raw always stays last). Refuses a name that is
  // already registered.
  Error add(const Backend* backend);

  // Loads backends from a shared object exporting VD_PLUGIN_ENTRY (vd/plugin.h). The library
  // stays loaded for the registry's lifetime. A plugin built for another plugin ABI (another
  // entry point version, fingerprint, C++ runtime) is refused before any of its backends is
  // called, and the registry is left unchanged; the error names the plugin.
  Error load_plugin(const std::string& path);

  // Loads every plugin of a colon-separated list (VD_PLUGIN_PATH's syntax): each entry is a
  // plugin file, or a folder whose *.so files are loaded in name order. Empty entries are
  // skipped. Stops at the first error (plugins loaded before it stay loaded).
  Error load_plugins(std::string_view list);

  const Backend* find(std::string_view name) const;
  const std::vector<const Backend*>& backends() const { return order_; }

  // The first backend in probe order that recognises the file.
  Result<const Backend*> probe(const std::string& path, IoProvider& io) const;

 private:
  std::vector<const Backend*> order_;
  std::vector<std::shared_ptr<void>> libraries_;  // dlopen handles, closed last
};

}  // namespace vd
