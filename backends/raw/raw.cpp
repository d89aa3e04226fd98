// The raw format: probe (always yes; the registry asks raw last), create with qemu-img's
// raw options, open.
#include "backends/raw/raw.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "backends/builtin.h"

namespace vd::raw {
namespace {

enum class Prealloc { off, falloc, full };

Result<Prealloc> parse_options(const std::string& path, const CreateOptions& opts) {
  Prealloc mode = Prealloc::off;
  for (const auto& [key, value] : opts.options) {
    if (key == "size") continue;  // the size itself, resolved by the caller into opts.size
    if (key != "preallocation") {
      return Error(Errc::invalid_argument, "Invalid parameter '" + key + "'").image(path);
    }
    if (value == "off") mode = Prealloc::off;
    else if (value == "falloc") mode = Prealloc::falloc;
    else if (value == "full") mode = Prealloc::full;
    else if (value == "metadata") {  // qemu-img's wording: raw has no metadata to preallocate
      return Error(Errc::invalid_argument, "Unsupported preallocation mode: metadata").image(path);
    } else {
      return Error(Errc::invalid_argument, "invalid parameter value: " + value).image(path);
    }
  }
  return mode;
}

// preallocation=full writes the zeros (as qemu does), so the space is really provisioned
// even on thin storage; falloc only reserves it.
Error write_zeros(File& file, uint64_t size) {
  std::vector<std::byte> zeros(static_cast<size_t>(std::min<uint64_t>(size, 1u << 20)));
  for (uint64_t off = 0; off < size;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(size - off, zeros.size()));
    if (Error e = file.write(IoKind::data, off, std::span(zeros.data(), n))) return e;
    off += n;
  }
  return {};
}

Error fill(File& file, Prealloc mode, uint64_t size) {
  switch (mode) {
    case Prealloc::off: return file.set_size(size);
    case Prealloc::falloc: return file.allocate(0, size);
    case Prealloc::full:
      if (Error e = write_zeros(file, size)) return e;
      return file.flush();
  }
  return {};
}

class RawBackend final : public Backend {
 public:
  std::string_view name() const override { return "raw"; }
  unsigned capabilities() const override {
    return cap_create_dynamic | cap_create_fixed | cap_async | cap_discard | cap_resize;
  }
  std::vector<std::string_view> extensions() const override { return {"img", "raw"}; }
  std::vector<OptionHelp> create_options() const override {
    return {{"preallocation", "Preallocation mode (allowed values: off, falloc, full)"}};
  }

  // Anything is a raw image; the registry probes raw after every other format.
  bool probe(File&) const override { return true; }

  Result<std::unique_ptr<Image>> open(const std::string& path, const OpenOptions& opts,
                                      IoProvider& io) const override {
    if (opts.snapshot) {
      return Error(Errc::not_supported, "raw images have no internal snapshots").image(path);
    }
    const bool ro = opts.flags & open_read_only;
    auto file = io.open(path, (ro ? file_read : (file_read | file_write)) | image_lock_mode(opts.flags));
    if (!file) return file.error();
    auto size = (*file)->size();
    if (!size) return size.error();
    return std::unique_ptr<Image>(
        std::make_unique<RawImage>(*this, path, std::move(*file), io, opts.flags,
                                   round_up_to_sector(*size)));
  }

  Result<std::unique_ptr<Image>> create(const std::string& path, const CreateOptions& opts,
                                        IoProvider& io) const override {
    if (Error e = check_create(path, opts)) return e;
    auto mode = parse_options(path, opts);
    if (!mode) return mode.error();
    // Like qemu-img create, an existing file is overwritten.
    auto file = io.open(path, file_read | file_write | file_create | file_truncate | file_lock);
    if (!file) return file.error();
    if (Error e = fill(**file, *mode, round_up_to_sector(opts.size))) return e.wrap("create").image(path);
    file->reset();
    OpenOptions o;
    o.flags = open_format_given;  // created as raw: no guessing involved
    return open(path, o, io);
  }

 private:
  static Error check_create(const std::string& path, const CreateOptions& opts) {
    if (opts.backing_file || opts.backing_format) {
      return Error(Errc::not_supported,
                   "Backing file not supported for file format 'raw'").image(path);
    }
    if (opts.passphrase) {
      return Error(Errc::not_supported, "raw images cannot be encrypted").image(path);
    }
    if (opts.size > static_cast<uint64_t>(INT64_MAX)) {
      return Error(Errc::too_large, "size " + hex(opts.size) + " is too large").image(path);
    }
    return {};
  }
};

}  // namespace
}  // namespace vd::raw

namespace vd::backends {

const Backend& raw() {
  static const raw::RawBackend backend;
  return backend;
}

}  // namespace vd::backends
