// The backend registry: an explicit, ordered list of formats (raw always last) plus the
// shared objects that plugins were loaded from.
#include "vd/registry.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <mutex>
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

// A refused library stays mapped: unloading it would run its destructors, code built for
// another ABI. Nothing else of it is ever called.
void keep_refused(std::shared_ptr<void>& library) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<void>> refused;
  std::lock_guard<std::mutex> lock(mutex);
  refused.push_back(std::move(library));
}

std::string quoted(const char* s) { return s ? "'" + std::string(s) + "'" : "(none)"; }

// The entry point of another ABI version the library exports, if any: 0 for none. Only
// looked up, never called.
unsigned other_abi_version(void* handle) {
  for (unsigned v = 1; v <= VD_PLUGIN_ABI_VERSION + 16; ++v) {
    if (v == VD_PLUGIN_ABI_VERSION) continue;
    std::string name = "vd_plugin_entry_v" + std::to_string(v);
    if (dlsym(handle, name.c_str())) return v;
  }
  return 0;
}

constexpr const char* kRebuild = ": rebuild it against this vd's headers (docs/backend-guide.md)";

// Checks the table a plugin returned, header first and field by field, before anything from
// it is registered, so a bad plugin leaves the registry as it was.
Error check_plugin_table(const vd_plugin_table* table, const std::string& path) {
  if (!table) {
    return plugin_error(Errc::invalid_argument, path, VD_PLUGIN_ENTRY_NAME " returned no table");
  }
  if (table->struct_size != sizeof(vd_plugin_table)) {
    return plugin_error(Errc::not_supported, path,
                        "plugin table is " + std::to_string(table->struct_size) +
                            " bytes, this vd's is " + std::to_string(sizeof(vd_plugin_table)) +
                            kRebuild);
  }
  if (table->abi_version != VD_PLUGIN_ABI_VERSION) {
    return plugin_error(Errc::not_supported, path,
                        "plugin was built for vd plugin ABI " +
                            std::to_string(table->abi_version) + "; this vd needs " +
                            std::to_string(VD_PLUGIN_ABI_VERSION) + kRebuild);
  }
  if (!table->fingerprint || std::strcmp(table->fingerprint, VD_PLUGIN_ABI_FINGERPRINT) != 0) {
    return plugin_error(Errc::not_supported, path,
                        "plugin was built against other vd plugin headers (ABI fingerprint " +
                            quoted(table->fingerprint) + "; this vd has '" +
                            VD_PLUGIN_ABI_FINGERPRINT + "')" + kRebuild);
  }
  if (!table->compiler_abi || std::strcmp(table->compiler_abi, VD_PLUGIN_COMPILER_ABI) != 0 ||
      table->layout != vd_plugin_layout()) {
    return plugin_error(Errc::not_supported, path,
                        "plugin was built for another C++ runtime (" +
                            quoted(table->compiler_abi) + ", layout " + hex(table->layout) +
                            "; this vd: '" VD_PLUGIN_COMPILER_ABI "', layout " +
                            hex(vd_plugin_layout()) +
                            "): build it with the host's compiler and standard library");
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

bool is_plugin_file(const std::filesystem::path& p) {
  std::error_code ec;
  return p.extension() == ".so" && std::filesystem::is_regular_file(p, ec);
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
  // Closes the library if it is not a plugin at all; kept open once it ends up in
  // libraries_, and kept mapped (keep_refused) if it is a plugin that gets refused.
  std::shared_ptr<void> library(handle, [](void* h) { dlclose(h); });

  dlerror();
  void* sym = dlsym(handle, VD_PLUGIN_ENTRY_NAME);
  if (!sym) {
    if (unsigned other = other_abi_version(handle)) {
      keep_refused(library);
      return plugin_error(Errc::not_supported, path,
                          "plugin was built for vd plugin ABI " + std::to_string(other) +
                              "; this vd needs " + std::to_string(VD_PLUGIN_ABI_VERSION) +
                              kRebuild);
    }
    return plugin_error(Errc::not_supported, path,
                        "not a vd plugin for ABI " + std::to_string(VD_PLUGIN_ABI_VERSION) +
                            ": no entry point " VD_PLUGIN_ENTRY_NAME);
  }
  auto entry = reinterpret_cast<vd_plugin_entry_fn>(sym);
  const vd_plugin_table* table = entry();
  if (Error e = check_plugin_table(table, path)) {
    keep_refused(library);
    return e;
  }

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

Error Registry::load_plugins(std::string_view list) {
  size_t start = 0;
  while (start <= list.size()) {
    size_t colon = std::min(list.find(':', start), list.size());
    std::string entry(list.substr(start, colon - start));
    start = colon + 1;
    if (entry.empty()) continue;
    std::error_code ec;
    if (std::filesystem::is_directory(entry, ec)) {
      std::vector<std::string> files;
      std::filesystem::directory_iterator it(entry, ec), end;
      for (; !ec && it != end; it.increment(ec)) {
        if (is_plugin_file(it->path())) files.push_back(it->path().string());
      }
      if (ec) {
        return Error(Errc::io, "cannot list the plugin folder: " + ec.message())
            .image(entry)
            .op("loading backend plugins");
      }
      std::sort(files.begin(), files.end());
      for (const std::string& f : files) {
        if (Error e = load_plugin(f)) return e;
      }
    } else if (Error e = load_plugin(entry)) {
      return e;
    }
  }
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
