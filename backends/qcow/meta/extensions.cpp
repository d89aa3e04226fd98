// QCOW2 header extensions: a list of (type u32, length u32, data padded to 8 bytes)
// after the fixed header, ending at a zero type, at the backing file name or at the end
// of the first cluster. Every length is checked against that end before it is used.
#include <algorithm>

#include "backends/qcow/meta/header.h"
#include "backends/qcow/meta/header_detail.h"

namespace vd::qcow::detail {
namespace {

constexpr uint32_t kCryptoExtSize = 16;

Error too_large(uint32_t type, uint64_t at, uint64_t len, uint64_t room, const std::string& path) {
  return header_error(Errc::corrupt, path,
                      "Header extension too large (type " + hex(type) + " at " + hex(at) +
                          ", length " + hex(len) + ", " + hex(room) + " bytes left before " +
                          "the end of the extension area)");
}

void parse_feature_names(std::span<const std::byte> d, Header& h) {
  h.feature_names.clear();
  for (size_t i = 0; i + kFeatureEntrySize <= d.size(); i += kFeatureEntrySize) {
    FeatureName f;
    f.type = std::to_integer<uint8_t>(d[i]);
    f.bit = std::to_integer<uint8_t>(d[i + 1]);
    f.name = c_string(d.data() + i + 2, kFeatureNameMax);
    h.feature_names.push_back(std::move(f));
  }
}

Error parse_crypto_header(std::span<const std::byte> d, uint64_t at, Header& h,
                          const std::string& path) {
  if (h.crypt_method != kCryptLuks)
    return header_error(Errc::corrupt, path,
                        "CRYPTO header extension only expected with LUKS encryption method "
                        "(extension at " + hex(at) + ", crypt_method " +
                            std::to_string(h.crypt_method) + ")");
  if (d.size() != kCryptoExtSize)
    return header_error(Errc::corrupt, path,
                        "CRYPTO header extension size " + std::to_string(d.size()) +
                            ", but expected size 16 (extension at " + hex(at) + ")");
  h.crypto_header_offset = load_be64(d.data());
  h.crypto_header_length = load_be64(d.data() + 8);
  if (h.crypto_header_offset % h.cluster_size())
    return header_error(Errc::corrupt, path,
                        "Encryption header offset '" + std::to_string(h.crypto_header_offset) +
                            "' is not a multiple of cluster size '" +
                            std::to_string(h.cluster_size()) + "'");
  if (h.crypto_header_length > kMaxCryptHeaderExt)
    return header_error(Errc::too_large, path,
                        "Encryption header too large (" + hex(h.crypto_header_length) +
                            " bytes at " + hex(h.crypto_header_offset) + ")");
  return {};
}

// The extension is validated as QEMU does and kept raw; backends/qcow/bitmap reads the
// directory it points at (find_bitmaps_ext) and keeps the bitmaps. Without the autoclear
// bit its bitmaps are stale, and QEMU drops the extension, so we do too.
Error parse_bitmaps(std::span<const std::byte> d, uint64_t at, Header& h, const std::string& path) {
  auto bad = [&](const std::string& what) {
    return header_error(Errc::corrupt, path, "bitmaps_ext: " + what + " (extension at " + hex(at) + ")");
  };
  if (d.size() != kBitmapsExtSize) return bad("Invalid extension length");
  if (!(h.autoclear_features & kAutoclearBitmaps)) return {};
  uint32_t count = load_be32(d.data());
  uint64_t dir_size = load_be64(d.data() + 8);
  uint64_t dir_offset = load_be64(d.data() + 16);
  if (load_be32(d.data() + 4) != 0) return bad("Reserved field is not zero");
  if (count > kMaxBitmaps)
    return bad("Image has " + std::to_string(count) + " bitmaps, exceeding the QEMU supported maximum of 65535");
  if (count == 0) return bad("found bitmaps extension with zero bitmaps");
  if (dir_offset % h.cluster_size()) return bad("invalid bitmap directory offset " + hex(dir_offset));
  if (dir_size > kMaxBitmapDirectorySize)
    return bad("bitmap directory size (" + std::to_string(dir_size) +
               ") exceeds the maximum supported size (67108864)");
  h.has_bitmaps_extension = true;
  h.unknown_extensions.push_back({kExtBitmaps, {d.begin(), d.end()}});
  return {};
}

Error parse_one(uint32_t type, std::span<const std::byte> d, uint64_t at, Header& h,
                const std::string& path) {
  switch (type) {
    case kExtBackingFormat:
      if (d.size() > kMaxBackingFormatLength)
        return header_error(Errc::corrupt, path,
                            "ERROR: ext_backing_format: len=" + std::to_string(d.size()) +
                                " too large (>=16) (extension at " + hex(at) + ")");
      if (std::string f = c_string(d.data(), d.size()); !f.empty()) h.backing_format = std::move(f);
      return {};
    case kExtFeatureNames:
      parse_feature_names(d, h);
      return {};
    case kExtCryptoHeader:
      return parse_crypto_header(d, at, h, path);
    case kExtBitmaps:
      return parse_bitmaps(d, at, h, path);
    case kExtDataFile:
      if (std::string f = c_string(d.data(), d.size()); !f.empty()) h.data_file = std::move(f);
      return {};
    default:
      h.unknown_extensions.push_back({type, {d.begin(), d.end()}});
      return {};
  }
}

void append_extension(std::vector<std::byte>& out, uint32_t type, std::span<const std::byte> d) {
  size_t at = out.size();
  out.resize(at + 8 + round_up8(d.size()));
  store_be32(out.data() + at, type);
  store_be32(out.data() + at + 4, static_cast<uint32_t>(d.size()));
  std::copy(d.begin(), d.end(), out.begin() + at + 8);
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::vector<std::byte> encode_feature_names(const std::vector<FeatureName>& names) {
  std::vector<std::byte> d(names.size() * kFeatureEntrySize);
  for (size_t i = 0; i < names.size(); ++i) {
    std::byte* e = d.data() + i * kFeatureEntrySize;
    e[0] = std::byte{names[i].type};
    e[1] = std::byte{names[i].bit};
    size_t n = std::min(names[i].name.size(), kFeatureNameMax);
    std::copy_n(bytes_of(names[i].name).begin(), n, e + 2);
  }
  return d;
}

}  // namespace

Error parse_extensions(std::span<const std::byte> c0, uint64_t start, uint64_t end, Header& h,
                       const std::string& path) {
  end = std::min<uint64_t>(end, c0.size());
  uint64_t off = start;
  while (off < end) {
    if (end - off < 8) return too_large(0, off, 8, end - off, path);
    uint32_t type = load_be32(c0.data() + off);
    uint32_t len = load_be32(c0.data() + off + 4);
    uint64_t at = off;
    off += 8;
    if (len > end - off) return too_large(type, at, len, end - off, path);
    if (type == kExtEnd) return {};
    if (Error e = parse_one(type, c0.subspan(off, len), at, h, path)) return e;
    off += round_up8(len);
  }
  return {};
}

Result<std::vector<std::byte>> encode_extensions(const Header& h) {
  std::vector<std::byte> out;
  if (h.backing_format) {
    if (h.backing_format->size() > kMaxBackingFormatLength)
      return Error(Errc::invalid_argument,
                   "backing format name '" + *h.backing_format + "' longer than 15 bytes");
    append_extension(out, kExtBackingFormat, bytes_of(*h.backing_format));
  }
  if ((h.incompatible_features & kIncompatDataFile) && h.data_file) {
    if (h.data_file->size() > h.cluster_size())
      return Error(Errc::invalid_argument, "data file name longer than a cluster");
    append_extension(out, kExtDataFile, bytes_of(*h.data_file));
  }
  if (h.crypto_header_offset) {
    std::byte d[kCryptoExtSize];
    store_be64(d, h.crypto_header_offset);
    store_be64(d + 8, h.crypto_header_length);
    append_extension(out, kExtCryptoHeader, d);
  }
  if (h.version >= 3 && !h.feature_names.empty())
    append_extension(out, kExtFeatureNames, encode_feature_names(h.feature_names));
  for (const RawExtension& x : h.unknown_extensions) {
    if (x.data.size() > h.cluster_size())
      return Error(Errc::invalid_argument, "header extension " + hex(x.type) + " longer than a cluster");
    append_extension(out, x.type, x.data);
  }
  append_extension(out, kExtEnd, {});
  return out;
}

}  // namespace vd::qcow::detail
