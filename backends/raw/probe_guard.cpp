// The raw probe guard (CVE-2008-2004). A raw image whose format was guessed by probing
// must not let its guest write a first sector that the next probe would take for another
// format: the guest could then point a "backing file" at any host file and read it.
//
// We recognise formats by their signatures in the first sector, a little more eagerly than
// qemu's probers (which also check versions): refusing a write that merely looks like a
// foreign header is the safe side. DMG keeps its signature at the end of the file and is
// not considered, as in qemu.
#include <cstring>

#include "backends/raw/raw.h"

namespace vd::raw {
namespace {

bool has(std::span<const std::byte> s, size_t offset, std::string_view magic) {
  return s.size() >= offset + magic.size() &&
         std::memcmp(s.data() + offset, magic.data(), magic.size()) == 0;
}

uint32_t be32(std::span<const std::byte> s, size_t offset) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[offset + i]);
  return v;
}

uint32_t le32(std::span<const std::byte> s, size_t offset) {
  uint32_t v = 0;
  for (size_t i = 4; i-- > 0;) v = (v << 8) | static_cast<uint8_t>(s[offset + i]);
  return v;
}

// A VMDK text descriptor: after comment lines and blank lines, "version=1|2|3" ends a line.
bool vmdk_descriptor(std::span<const std::byte> s) {
  std::string_view t(reinterpret_cast<const char*>(s.data()), s.size());
  if (t.starts_with("# Disk DescriptorFile")) return true;
  size_t p = 0;
  while (p < t.size()) {
    size_t eol = t.find('\n', p);
    std::string_view line = t.substr(p, eol == std::string_view::npos ? t.npos : eol - p);
    if (line.starts_with('#')) {
      if (eol == std::string_view::npos) return false;
      p = eol + 1;
      continue;
    }
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.find_first_not_of(' ') == std::string_view::npos && eol != std::string_view::npos) {
      if (line.empty()) return false;  // only lines of spaces may precede the version
      p = eol + 1;
      continue;
    }
    if (eol == std::string_view::npos) return false;
    return line == "version=1" || line == "version=2" || line == "version=3";
  }
  return false;
}

struct Magic {
  size_t offset;
  std::string_view bytes;
  std::string_view format;
};

constexpr std::string_view kLuks("LUKS\xba\xbe", 6);
constexpr std::string_view kQed("QED\0", 4);

constexpr Magic kMagics[] = {
    {0, kQed, "qed"},
    {0, "KDMV", "vmdk"},
    {0, "COWD", "vmdk"},
    {0, "conectix", "vpc"},
    {0, "vhdxfile", "vhdx"},
    {0, "WithoutFreeSpace", "parallels"},
    {0, "WithouFreSpacExt", "parallels"},
    {0, "Bochs Virtual HD Image", "bochs"},
    {0, "#!/bin/sh\n#V2.0 Format", "cloop"},
    {0, kLuks, "luks"},
};

constexpr uint32_t kQcowMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint32_t kVdiSignature = 0xbeda107f;
constexpr size_t kVdiSignatureOffset = 0x40;

}  // namespace

std::optional<std::string_view> foreign_format(std::span<const std::byte> sector) {
  if (sector.size() >= 8 && be32(sector, 0) == kQcowMagic) {
    return be32(sector, 4) == 1 ? "qcow" : "qcow2";
  }
  if (sector.size() >= 4 && be32(sector, 0) == kQcowMagic) return "qcow2";
  for (const Magic& m : kMagics) {
    if (has(sector, m.offset, m.bytes)) return m.format;
  }
  if (sector.size() >= kVdiSignatureOffset + 4 &&
      le32(sector, kVdiSignatureOffset) == kVdiSignature) {
    return "vdi";
  }
  if (vmdk_descriptor(sector)) return "vmdk";
  return std::nullopt;
}

void Sector0Queue::enter(std::function<void()> op) {
  if (busy_) {
    waiting_.push_back(std::move(op));
    return;
  }
  busy_ = true;
  op();
}

void Sector0Queue::leave() {
  if (waiting_.empty()) {
    busy_ = false;
    return;
  }
  auto next = std::move(waiting_.front());
  waiting_.pop_front();
  next();
}

}  // namespace vd::raw
