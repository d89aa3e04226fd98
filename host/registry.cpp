// The backend registry: an explicit, ordered list of formats (raw always last) plus the
// shared objects that plugins were loaded from.
#include "vd/registry.h"

#include <dlfcn.h>

#include <algorithm>
#include <set>

#include "vd/plugin.h"

namespace vd {
namespace {

bool is_raw(const Backend* b) { return b->name() == "raw"; }

// dlerror() text, or a fallback when the loader gave none.
std::string loader_message() {
  const char* msg = dlerror();
  return msg ? msg : "unknown dynamic loader error";
}

Error plugin_error(Errc kind, const std::string& path, const std::string& what) {
  return Error(kind, what).image(path).op("loading backend plugin");
}

// Checks the table a plugin returned before anything from it is registered, so a bad
// plugin leaves the registry as it was.
Error check_plugin_table(const vd_plugin_v1* table, const std::string& path) {
  if (!table) {
    return plugin_error(Errc::invalid_argument, path, VD_PLUGIN_ENTRY_V1 " returned no table");
  }
  if (table->abi_version != VD_PLUGIN_ABI_VERSION) {
    return plugin_error(Errc::not_supported, path,
                        "plugin ABI version " + std::to_string(table->abi_version) +
                            ", this host needs " + std::to_string(VD_PLUGIN_ABI_VERSION));
  }
  if (table->count > 0 && !table->backends) {
    return plugin_error(Errc::invalid_argument, path, "backend list is missing");
  }
  for (uint32_t i = 0; i < table->count; ++i) {
    if (!table->backends[i]) {
      return plugin_error(Errc::invalid_argument, path,
                          "backend " + std::to_string(i) + " is a null pointer");
    }
  }
  return {};
}

}  // namespace

Registry::Registry() = default;
Registry::~Registry() = default;
Registry::Registry(Registry&&) noexcept = default;
Registry& Registry::operator=(Registry&&) noexcept = default;

Error Registry::add(const Backend* backend) {
  if (!backend) return Error(Errc::invalid_argument, "cannot register a null backend");
  if (find(backend->name())) {
    return Error(Errc::exists, "a backend named '" + std::string(backend->name()) +
                                   "' is already registered");
  }
  // raw recognises anything, so it must stay the last one probed.
  auto raw = std::find_if(order_.begin(), order_.end(), is_raw);
  order_.insert(raw, backend);
  return {};
}

Error Registry::load_plugin(const std::string& path) {
  dlerror();  // clear any stale message
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) return plugin_error(Errc::not_found, path, loader_message());
  // Closes the library unless it ends up in libraries_.
  std::shared_ptr<void> library(handle, [](void* h) { dlclose(h); });

  dlerror();
  void* sym = dlsym(handle, VD_PLUGIN_ENTRY_V1);
  if (!sym) {
    return plugin_error(Errc::not_supported, path,
                        std::string("no entry point " VD_PLUGIN_ENTRY_V1 " (") +
                            loader_message() + ")");
  }
  auto entry = reinterpret_cast<vd_plugin_entry_v1_fn>(sym);
  const vd_plugin_v1* table = entry();
  if (Error e = check_plugin_table(table, path)) return e;

  // Refuse the whole plugin if any name clashes, with the registry or within the plugin.
  std::set<std::string_view> names;
  for (uint32_t i = 0; i < table->count; ++i) {
    std::string_view name = table->backends[i]->name();
    if (find(name) || !names.insert(name).second) {
      return plugin_error(Errc::exists, path,
                          "a backend named '" + std::string(name) + "' is already registered");
    }
  }
  for (uint32_t i = 0; i < table->count; ++i) {
    if (Error e = add(table->backends[i])) return e.wrap("loading backend plugin").image(path);
  }
  libraries_.push_back(std::move(library));
  return {};
}

const Backend* Registry::find(std::string_view name) const {
  for (const Backend* b : order_) {
    if (b->name() == name) return b;
  }
  return nullptr;
}

Result<const Backend*> Registry::probe(const std::string& path, IoProvider& io) const {
  auto file = io.open(path, file_read);
  if (!file) return file.error().wrap("probing the format").image(path);
  for (const Backend* b : order_) {
    if (b->probe(**file)) return b;
  }
  return Error(Errc::wrong_format, "Could not determine the format of '" + path +
                                       "': no registered backend recognises it");
}

}  // namespace vd
