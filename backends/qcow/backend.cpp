// The two QCOW formats as the host sees them: "qcow2" (versions 2 and 3) and "qcow" (version
// 1). They share one image implementation.
#include "backends/builtin.h"
#include "backends/qcow/meta/header.h"
#include "backends/qcow/image.h"

namespace vd::qcow {
namespace {

class QcowBackendBase : public Backend {
 public:
  Result<std::unique_ptr<Image>> open(const std::string& path, const OpenOptions& opts,
                                      IoProvider& io) const override {
    return QcowImage::open(*this, path, opts, io);
  }
  Result<std::unique_ptr<Image>> create(const std::string& path, const CreateOptions& opts,
                                        IoProvider& io) const override {
    return create_image(*this, path, opts, io);
  }
};

class Qcow2Backend final : public QcowBackendBase {
 public:
  std::string_view name() const override { return "qcow2"; }
  unsigned capabilities() const override {
    return cap_create_dynamic | cap_create_fixed | cap_diff | cap_async | cap_discard | cap_resize |
           cap_compression | cap_encryption | cap_snapshots | cap_check;
  }
  std::vector<std::string_view> extensions() const override { return {"qcow2", "qcow"}; }
  std::vector<OptionHelp> create_options() const override {
    return {{"compat", "Compatibility level (v2: 0.10, v3: 1.1)"},
            {"cluster_size", "qcow2 cluster size (512 B to 2 MiB)"},
            {"refcount_bits", "Width of a reference count entry in bits (1 to 64)"},
            {"lazy_refcounts", "Postpone refcount updates (on/off)"},
            {"preallocation", "Preallocation mode (off, metadata, full)"},
            {"compression_type", "Compression method for compressed clusters (zlib, zstd)"},
            {"extended_l2", "Extended L2 tables with subclusters (on/off)"},
            {"backing_file", "File name of a base image"},
            {"backing_fmt", "Image format of the base image"},
            {"data_file", "File name of an external data file"},
            {"data_file_raw", "The external data file must stay valid as a raw image (on/off)"},
            {"encrypt.format", "Encrypt the image: luks, or aes (legacy)"},
            {"encrypt.cipher-alg", "LUKS cipher algorithm (aes-128, aes-192, aes-256)"},
            {"encrypt.cipher-mode", "LUKS cipher mode (xts, cbc, ecb, ctr)"},
            {"encrypt.ivgen-alg", "LUKS IV generator (plain, plain64, essiv)"},
            {"encrypt.ivgen-hash-alg", "LUKS ESSIV hash"},
            {"encrypt.hash-alg", "LUKS PBKDF2 hash (sha256...)"},
            {"encrypt.iter-time", "LUKS PBKDF2 time in milliseconds"}};
  }
  bool probe(File& f) const override { return probe_qcow2(f); }
};

class QcowV1Backend final : public QcowBackendBase {
 public:
  std::string_view name() const override { return "qcow"; }
  unsigned capabilities() const override {
    return cap_create_dynamic | cap_diff | cap_async | cap_compression | cap_encryption;
  }
  std::vector<std::string_view> extensions() const override { return {"qcow"}; }
  std::vector<OptionHelp> create_options() const override {
    return {{"backing_file", "File name of a base image"},
            {"backing_fmt", "Image format of the base image"},
            {"encryption", "Encrypt the image with legacy AES (on/off)"},
            {"encrypt.format", "Encrypt the image: aes"}};
  }
  bool probe(File& f) const override { return probe_qcow1(f); }
};

}  // namespace
}  // namespace vd::qcow

namespace vd::backends {
const Backend& qcow2() {
  static const qcow::Qcow2Backend b;
  return b;
}
const Backend& qcow() {
  static const qcow::QcowV1Backend b;
  return b;
}
}  // namespace vd::backends
