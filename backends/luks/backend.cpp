// The luks format: probe ("LUKS\xba\xbe", version 1), open (parse, check the layout against
// the file, unlock with the passphrase), create (header, then the payload area).
#include <algorithm>
#include <climits>
#include <cstring>

#include "backends/builtin.h"
#include "backends/luks/luks.h"
#include "backends/qcow/meta/format.h"

namespace vd::luks {
namespace {

constexpr unsigned char kMagic[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};

Error corrupt(const std::string& path, const std::string& what) {
  return Error(Errc::corrupt, "LUKS volume: " + what).image(path);
}

Result<qcow::LuksInfo> read_header(File& file, uint64_t file_size, const std::string& path) {
  if (file_size < qcow::kLuksHeaderSize)
    return corrupt(path, "the file is " + std::to_string(file_size) +
                             " bytes, shorter than a LUKS header (" +
                             std::to_string(qcow::kLuksHeaderSize) + " bytes at 0x0)");
  std::array<std::byte, qcow::kLuksHeaderSize> raw;
  if (Error e = file.read(IoKind::meta, 0, raw)) return e.wrap("reading", "LUKS header", 0).image(path);
  return qcow::luks_parse(raw, path);
}

// The payload must follow the header and every key slot, and start inside the file: the
// virtual size is what lies after it.
Error check_layout(const qcow::LuksInfo& info, uint64_t file_size, const std::string& path) {
  const uint64_t payload = info.payload_offset;
  const uint64_t header_end = info.material_end();
  if (payload < header_end)
    return corrupt(path, "payload offset " + hex(payload) + " (header field at 0x68) lies inside "
                         "the LUKS header and key material, which end at " + hex(header_end));
  if (payload > file_size)
    return corrupt(path, "payload offset " + hex(payload) + " (header field at 0x68) lies beyond "
                         "the end of the file (" + hex(file_size) + ")");
  return {};
}

Result<std::shared_ptr<const qcow::SectorCipher>> unlock(File& file, const qcow::LuksInfo& info,
                                                         const OpenOptions& opts, const std::string& path,
                                                         qcow::SecretBytes& master_key) {
  if (opts.flags & open_info_only) return std::shared_ptr<const qcow::SectorCipher>();
  if (!opts.passphrase)
    return Error(Errc::wrong_passphrase, "the image is encrypted: a passphrase is needed (--passphrase-file)")
        .image(path);
  // The key material must lie in the LUKS area, i.e. before the payload.
  auto volume = qcow::luks_unlock(file, 0, info.payload_offset, *opts.passphrase, path);
  if (!volume) return volume.error();
  master_key = std::move(volume->master_key);
  return std::shared_ptr<const qcow::SectorCipher>(std::move(volume->cipher));
}

// preallocation=full writes the zeros so thin storage really provisions the space.
Error write_zeros(File& file, uint64_t offset, uint64_t length) {
  std::vector<std::byte> zeros(static_cast<size_t>(std::min<uint64_t>(length, 1u << 20)));
  for (uint64_t done = 0; done < length;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(length - done, zeros.size()));
    if (Error e = file.write(IoKind::data, offset + done, std::span(zeros.data(), n))) return e;
    done += n;
  }
  return file.flush();
}

// The payload area after a new header: QEMU sizes the file payload offset + size, the size
// not rounded (the virtual size is then rounded up to whole sectors).
Error fill_payload(File& file, Prealloc mode, uint64_t payload, uint64_t size) {
  switch (mode) {
    case Prealloc::off: break;
    case Prealloc::falloc:
      if (Error e = file.allocate(payload, size)) return e;
      break;
    case Prealloc::full:
      if (Error e = write_zeros(file, payload, size)) return e;
      break;
  }
  return file.set_size(payload + size);
}

class LuksBackend final : public Backend {
 public:
  std::string_view name() const override { return "luks"; }
  unsigned capabilities() const override {
    return cap_create_dynamic | cap_create_fixed | cap_async | cap_resize | cap_encryption;
  }
  std::vector<std::string_view> extensions() const override { return {"luks"}; }
  std::vector<OptionHelp> create_options() const override { return create_option_help(); }

  bool probe(File& file) const override {
    std::array<std::byte, 8> head{};
    if (file.read(IoKind::meta, 0, head)) return false;
    return std::memcmp(head.data(), kMagic, sizeof kMagic) == 0 && load_be16(&head[6]) == 1;
  }

  Result<std::unique_ptr<Image>> open(const std::string& path, const OpenOptions& opts,
                                      IoProvider& io) const override {
    if (opts.snapshot)
      return Error(Errc::not_supported, "luks images have no internal snapshots").image(path);
    const bool ro = opts.flags & open_read_only;
    auto file = io.open(path, (ro ? file_read : (file_read | file_write)) | image_lock_mode(opts.flags));
    if (!file) return file.error();
    auto size = (*file)->size();
    if (!size) return size.error();
    auto info = read_header(**file, *size, path);
    if (!info) return info.error();
    if (Error e = check_layout(*info, *size, path)) return e;
    qcow::SecretBytes master_key;
    auto cipher = unlock(**file, *info, opts, path, master_key);
    if (!cipher) return cipher.error();
    auto image = std::make_unique<LuksImage>(*this, path, std::move(*file), io, opts.flags, std::move(*info),
                                             std::move(*cipher), *size);
    image->keep_master_key(std::move(master_key));
    return std::unique_ptr<Image>(std::move(image));
  }

  Result<std::unique_ptr<Image>> create(const std::string& path, const CreateOptions& opts,
                                        IoProvider& io) const override {
    auto spec = parse_create_options(opts, path);
    if (!spec) return spec.error();
    auto header = qcow::luks_header_size(spec->luks);
    if (!header) return Error(header.error()).image(path);
    if (opts.size > static_cast<uint64_t>(INT64_MAX) - *header - kSectorSize)
      return Error(Errc::too_large, "size " + hex(opts.size) + " is too large").image(path);
    // Like qemu-img create, an existing file is overwritten.
    auto file = io.open(path, file_read | file_write | file_create | file_truncate | file_lock);
    if (!file) return file.error();
    auto volume = format(**file, *spec, opts, path);
    if (!volume) {
      file->reset();
      io.remove(path);  // qemu-img leaves no half-made image behind either
      return volume.error();
    }
    // The new volume is already unlocked: no second key derivation.
    const uint64_t file_size = volume->info.payload_offset + opts.size;
    std::shared_ptr<const qcow::SectorCipher> cipher(std::move(volume->cipher));
    auto image = std::make_unique<LuksImage>(*this, path, std::move(*file), io, open_format_given,
                                             std::move(volume->info), std::move(cipher), file_size);
    image->keep_master_key(std::move(volume->master_key));
    return std::unique_ptr<Image>(std::move(image));
  }

 private:
  static Result<qcow::LuksVolume> format(File& file, const LuksCreateSpec& spec,
                                         const CreateOptions& opts, const std::string& path) {
    auto volume = qcow::luks_create(file, 0, *opts.passphrase, spec.luks, path);
    if (!volume) return volume.error();
    if (Error e = fill_payload(file, spec.prealloc, volume->info.payload_offset, opts.size))
      return e.wrap("create").image(path);
    if (Error e = file.flush()) return e.wrap("create").image(path);
    return volume;
  }
};

}  // namespace
}  // namespace vd::luks

namespace vd::backends {

const Backend& luks() {
  static const luks::LuksBackend backend;
  return backend;
}

}  // namespace vd::backends
