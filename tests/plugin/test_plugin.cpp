// A backend built as a loadable module, to test Registry::load_plugin. Format "plugtest":
// a 512-byte header (magic "VDPLUGT1", virtual size as little-endian u64) followed by the
// data, flat. It links no vd library: the few vd functions it calls (make_error_code via
// vd::Error) resolve from the host executable, which exports its symbols.
//
// Built three times (tests/CMakeLists.txt): the good plugin, one that exports only the ABI 1
// entry point (VD_TEST_PLUGIN_OLD_ABI) and one whose table records another header
// fingerprint (VD_TEST_PLUGIN_FINGERPRINT). Environment variables override single fields of
// the good plugin's table (see the entry point), so each check of the host is tested.
#include <cstdlib>
#include <cstring>

#include "vd/backend.h"
#include "vd/plugin.h"

namespace {

constexpr char kMagic[8] = {'V', 'D', 'P', 'L', 'U', 'G', 'T', '1'};
constexpr uint64_t kHeader = 512;

class PlugBackend;

class PlugImage final : public vd::Image {
 public:
  PlugImage(const vd::Backend& b, std::string path, unsigned flags, uint64_t size,
            std::unique_ptr<vd::File> file)
      : backend_(b), path_(std::move(path)), flags_(flags), size_(size), file_(std::move(file)) {}

  const vd::Backend& backend() const override { return backend_; }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return flags_; }
  unsigned version() const override { return 1; }
  uint64_t size() const override { return size_; }
  vd::Result<uint64_t> file_size() override { return file_->size(); }
  uint32_t cluster_size() const override { return 512; }

  void read(uint64_t offset, std::span<std::byte> buf, vd::ReadHandler done) override {
    uint64_t n = buf.size();
    file_->async_read(vd::IoKind::data, kHeader + offset, buf,
                      [done = std::move(done), n](vd::Error e) { done(std::move(e), {n, true}); });
  }
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned,
             vd::Completion done) override {
    if (flags_ & vd::open_read_only) return refuse(std::move(done));
    file_->async_write(vd::IoKind::data, kHeader + offset, buf, std::move(done));
  }
  void write_zeroes(uint64_t offset, uint64_t length, unsigned, vd::Completion done) override {
    if (flags_ & vd::open_read_only) return refuse(std::move(done));
    auto zeros = std::make_shared<std::vector<std::byte>>(length);
    file_->async_write(vd::IoKind::data, kHeader + offset, *zeros,
                       [zeros, done = std::move(done)](vd::Error e) { done(std::move(e)); });
  }
  void discard(uint64_t, uint64_t, vd::Completion done) override { flush(std::move(done)); }
  void flush(vd::Completion done) override { file_->async_flush(std::move(done)); }
  void block_status(uint64_t, uint64_t length, vd::ExtentHandler done) override {
    file_->async_flush([done = std::move(done), length](vd::Error e) {
      vd::Extent x;
      x.length = length;
      x.kind = vd::Extent::Kind::data;
      done(std::move(e), x);
    });
  }
  void set_parent_reader(std::shared_ptr<vd::ParentReader>) override {}

  vd::Geometry pchs() const override { return {}; }
  vd::Error set_pchs(const vd::Geometry&) override { return unsupported("geometry"); }
  vd::Geometry lchs() const override { return {}; }
  vd::Error set_lchs(const vd::Geometry&) override { return unsupported("geometry"); }
  std::optional<std::string> parent_filename() const override { return std::nullopt; }
  std::optional<std::string> parent_format() const override { return std::nullopt; }
  vd::Error set_parent(const std::optional<std::string>&,
                       const std::optional<std::string>&) override {
    return unsupported("backing files");
  }
  vd::Error resize(uint64_t, const vd::ResizeOptions&) override { return unsupported("resize"); }
  std::vector<vd::InfoField> format_info() const override { return {}; }
  bool encrypted() const override { return false; }
  std::vector<vd::SnapshotInfo> snapshots() const override { return {}; }
  vd::Result<vd::CheckReport> check(vd::RepairMode) override { return unsupported("check"); }
  vd::Error close(bool) override {
    vd::Error e = file_ ? file_->flush() : vd::Error();
    file_.reset();
    return e;
  }

 private:
  vd::Error unsupported(const char* what) const {
    return vd::Error(vd::Errc::not_supported, std::string("plugtest has no ") + what).image(path_);
  }
  void refuse(vd::Completion done) {
    // Completions are posted, never inline: borrow the file's executor with a flush.
    vd::Error err = vd::Error(vd::Errc::read_only, "the image is opened read-only").image(path_);
    file_->async_flush([done = std::move(done), err](vd::Error) {
      done(err);
    });
  }

  const vd::Backend& backend_;
  std::string path_;
  unsigned flags_;
  uint64_t size_;
  std::unique_ptr<vd::File> file_;
};

class PlugBackend final : public vd::Backend {
 public:
  std::string_view name() const override { return "plugtest"; }
  unsigned capabilities() const override { return vd::cap_create_dynamic | vd::cap_async; }
  std::vector<std::string_view> extensions() const override { return {"plug"}; }
  std::vector<vd::OptionHelp> create_options() const override { return {}; }

  bool probe(vd::File& file) const override {
    std::byte head[8] = {};
    if (file.read(vd::IoKind::meta, 0, head)) return false;
    return std::memcmp(head, kMagic, sizeof kMagic) == 0;
  }

  vd::Result<std::unique_ptr<vd::Image>> open(const std::string& path, const vd::OpenOptions& o,
                                              vd::IoProvider& io) const override {
    unsigned mode = vd::file_read | ((o.flags & vd::open_read_only) ? 0u : vd::file_write);
    auto file = io.open(path, mode);
    if (!file) return file.error();
    std::byte head[16] = {};
    if (vd::Error e = (*file)->read(vd::IoKind::meta, 0, head)) return e;
    if (std::memcmp(head, kMagic, sizeof kMagic) != 0) {
      return vd::Error(vd::Errc::wrong_format, "not a plugtest image").image(path);
    }
    uint64_t size = 0;
    for (int i = 7; i >= 0; --i) size = size << 8 | std::to_integer<uint64_t>(head[8 + i]);
    return std::unique_ptr<vd::Image>(
        new PlugImage(*this, path, o.flags, size, std::move(*file)));
  }

  vd::Result<std::unique_ptr<vd::Image>> create(const std::string& path,
                                                const vd::CreateOptions& o,
                                                vd::IoProvider& io) const override {
    auto file = io.open(path, vd::file_read | vd::file_write | vd::file_create | vd::file_truncate);
    if (!file) return file.error();
    std::byte head[16] = {};
    std::memcpy(head, kMagic, sizeof kMagic);
    for (int i = 0; i < 8; ++i) head[8 + i] = std::byte(o.size >> (8 * i));
    if (vd::Error e = (*file)->write(vd::IoKind::meta, 0, head)) return e;
    if (vd::Error e = (*file)->set_size(kHeader + o.size)) return e;
    if (vd::Error e = (*file)->flush()) return e;
    file->reset();
    return open(path, vd::OpenOptions{}, io);
  }
};

const PlugBackend kBackend;
[[maybe_unused]] const vd::Backend* const kBackends[] = {&kBackend};

}  // namespace

#if defined(VD_TEST_PLUGIN_OLD_ABI)
// Built as a plugin for ABI 1 would be: it exports only the version-1 entry point. The host
// must refuse it by the symbol's name alone; calling it is a bug, and aborts.
extern "C" __attribute__((visibility("default"))) const void* vd_plugin_entry_v1(void) {
  std::abort();
}
#else
// Compile definitions fake a plugin built against other headers or another C++ runtime.
#ifndef VD_TEST_PLUGIN_FINGERPRINT
#define VD_TEST_PLUGIN_FINGERPRINT VD_PLUGIN_ABI_FINGERPRINT
#endif

VD_PLUGIN_EXPORT const vd_plugin_table* VD_PLUGIN_ENTRY(void) {
  static vd_plugin_table table;
  table = {VD_PLUGIN_TABLE_HEADER, 1, kBackends};  // afresh: the overrides below are per call
  table.fingerprint = VD_TEST_PLUGIN_FINGERPRINT;
  // The environment overrides single header fields, to test that each one is checked.
  if (const char* abi = std::getenv("VD_TEST_PLUGIN_ABI")) {
    table.abi_version = static_cast<uint32_t>(std::strtoul(abi, nullptr, 10));
  }
  if (const char* tag = std::getenv("VD_TEST_PLUGIN_COMPILER_ABI")) table.compiler_abi = tag;
  if (const char* size = std::getenv("VD_TEST_PLUGIN_STRUCT_SIZE")) {
    table.struct_size = static_cast<uint32_t>(std::strtoul(size, nullptr, 10));
  }
  return &table;
}
#endif
