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

  // Loads backends from a shared object exporting vd_plugin_entry_v1 (vd/plugin.h). The
  // library stays loaded for the registry's lifetime.
  Error load_plugin(const std::string& path);

  const Backend* find(std::string_view name) const;
  const std::vector<const Backend*>& backends() const { return order_; }

  // The first backend in probe order that recognises the file.
  Result<const Backend*> probe(const std::string& path, IoProvider& io) const;

 private:
  std::vector<const Backend*> order_;
  std::vector<std::shared_ptr<void>> libraries_;  // dlopen handles, closed last
};

}  // namespace vd
