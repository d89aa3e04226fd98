// The "fake" test format (layout in fake_backend.h).
#include "support/fake_backend.h"

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <deque>

namespace vdtest {
namespace {

constexpr char kMagic[8] = {'V', 'D', 'F', 'A', 'K', 'E', '\0', '\1'};
constexpr uint64_t kMapOffset = 4096;
constexpr uint64_t kMaxClusters = 1u << 22;  // bounds the map we allocate from the header
constexpr size_t kMaxName = 2048;
constexpr size_t kMaxFormat = 64;

struct Header {
  uint64_t size = 0;
  uint32_t cluster = 4096;
  std::string parent;
  std::string parent_format;

  uint64_t clusters() const { return (size + cluster - 1) / cluster; }
  uint64_t data_offset() const { return kMapOffset + (clusters() + 4095) / 4096 * 4096; }
};

void put_le(std::byte* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = std::byte(v >> (8 * i));
}
uint64_t get_le(const std::byte* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | std::to_integer<uint64_t>(p[i]);
  return v;
}

std::vector<std::byte> encode(const Header& h) {
  std::vector<std::byte> out(kMapOffset);
  std::memcpy(out.data(), kMagic, sizeof kMagic);
  put_le(&out[8], h.size, 8);
  put_le(&out[16], h.cluster, 4);
  put_le(&out[20], h.parent.size(), 2);
  put_le(&out[22], h.parent_format.size(), 2);
  std::memcpy(&out[24], h.parent.data(), h.parent.size());
  std::memcpy(&out[24 + h.parent.size()], h.parent_format.data(), h.parent_format.size());
  return out;
}

vd::Error bad(const std::string& path, const std::string& what) {
  return vd::Error(vd::Errc::corrupt, "fake image: " + what).image(path);
}

vd::Error validate(const Header& h, const std::string& path) {
  if (h.cluster < 512 || h.cluster > (1u << 20) || (h.cluster & (h.cluster - 1))) {
    return bad(path, "bad cluster size " + std::to_string(h.cluster));
  }
  if (h.size > kMaxClusters * h.cluster) return bad(path, "virtual size too large");
  if (h.parent.size() > kMaxName || h.parent_format.size() > kMaxFormat) {
    return bad(path, "parent name or format too long");
  }
  return {};
}

vd::Result<Header> decode(vd::File& f) {
  std::vector<std::byte> raw(kMapOffset);
  if (vd::Error e = f.read(vd::IoKind::meta, 0, raw)) return e;
  if (std::memcmp(raw.data(), kMagic, sizeof kMagic) != 0) {
    return vd::Error(vd::Errc::wrong_format, "not a fake image").image(f.path());
  }
  Header h;
  h.size = get_le(&raw[8], 8);
  h.cluster = static_cast<uint32_t>(get_le(&raw[16], 4));
  size_t name_len = get_le(&raw[20], 2), fmt_len = get_le(&raw[22], 2);
  if (name_len > kMaxName || fmt_len > kMaxFormat) return bad(f.path(), "name too long");
  h.parent.assign(reinterpret_cast<const char*>(&raw[24]), name_len);
  h.parent_format.assign(reinterpret_cast<const char*>(&raw[24 + name_len]), fmt_len);
  if (vd::Error e = validate(h, f.path())) return e;
  return h;
}

class FakeImage final : public vd::Image {
 public:
  FakeImage(const vd::Backend& b, std::string path, unsigned flags, Header h,
            std::vector<std::byte> map, std::unique_ptr<vd::File> file, vd::IoProvider& io)
      : backend_(b), path_(std::move(path)), flags_(flags), h_(std::move(h)),
        map_(std::move(map)), file_(std::move(file)), io_(io) {}

  const vd::Backend& backend() const override { return backend_; }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return flags_; }
  unsigned version() const override { return 1; }
  uint64_t size() const override { return h_.size; }
  vd::Result<uint64_t> file_size() override { return file_->size(); }
  uint32_t cluster_size() const override { return h_.cluster; }

  void read(uint64_t offset, std::span<std::byte> buf, vd::ReadHandler done) override;
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
             vd::Completion done) override;
  void write_zeroes(uint64_t offset, uint64_t length, unsigned flags,
                    vd::Completion done) override;
  void discard(uint64_t offset, uint64_t length, vd::Completion done) override;
  void flush(vd::Completion done) override { file_->async_flush(std::move(done)); }
  void block_status(uint64_t offset, uint64_t length, vd::ExtentHandler done) override;
  void set_parent_reader(std::shared_ptr<vd::ParentReader> p) override { parent_ = std::move(p); }

  vd::Geometry pchs() const override { return {}; }
  vd::Error set_pchs(const vd::Geometry&) override { return unsupported("geometry"); }
  vd::Geometry lchs() const override { return {}; }
  vd::Error set_lchs(const vd::Geometry&) override { return unsupported("geometry"); }
  std::optional<std::string> parent_filename() const override { return opt(h_.parent); }
  std::optional<std::string> parent_format() const override { return opt(h_.parent_format); }
  vd::Error set_parent(const std::optional<std::string>& filename,
                       const std::optional<std::string>& format) override;
  vd::Error resize(uint64_t, const vd::ResizeOptions&) override { return unsupported("resize"); }
  std::vector<vd::InfoField> format_info() const override { return {}; }
  bool encrypted() const override { return false; }
  std::vector<vd::SnapshotInfo> snapshots() const override { return {}; }
  vd::Result<vd::CheckReport> check(vd::RepairMode) override { return unsupported("check"); }
  vd::Error close(bool remove) override;

  // --- used by FakeWrite ---
  uint64_t data_offset() const { return h_.data_offset(); }
  bool allocated(uint64_t cluster) const { return map_[cluster] != std::byte{0}; }
  vd::File& file() { return *file_; }
  vd::ParentReader* parent() { return parent_.get(); }
  void mark(uint64_t cluster, bool on, vd::Completion done);
  void post(std::function<void()> fn);
  void enqueue(std::function<void()> start);
  void op_finished();

 private:
  static std::optional<std::string> opt(const std::string& s) {
    return s.empty() ? std::nullopt : std::optional<std::string>(s);
  }
  vd::Error unsupported(const char* what) const {
    return vd::Error(vd::Errc::not_supported, std::string("fake has no ") + what).image(path_);
  }
  // Length of the prefix of [offset, offset + length) whose clusters share one state.
  uint64_t run(uint64_t offset, uint64_t length, bool& is_allocated) const;
  vd::Error check_request(uint64_t offset, uint64_t length, bool writing) const;

  const vd::Backend& backend_;
  std::string path_;
  unsigned flags_;
  Header h_;
  std::vector<std::byte> map_;
  std::unique_ptr<vd::File> file_;
  vd::IoProvider& io_;
  std::shared_ptr<vd::ParentReader> parent_;
  std::deque<std::function<void()>> queue_;  // modifying requests run one at a time
  bool busy_ = false;
};

// One write (or zero write) request: cluster by cluster, copying the rest of a partially
// written unallocated cluster from the parent first. finish() is its only exit.
class FakeWrite : public std::enable_shared_from_this<FakeWrite> {
 public:
  FakeWrite(FakeImage& img, uint64_t offset, uint64_t length, const std::byte* src,
            vd::Completion done)
      : img_(img), off_(offset), end_(offset + length), src_(src), done_(std::move(done)) {}

  void step() {
    if (off_ == end_) return finish({});
    uint64_t cs = img_.cluster_size(), c = off_ / cs, cstart = c * cs;
    uint64_t chunk = std::min(end_, cstart + cs) - off_;
    uint64_t base = img_.data_offset();
    if (img_.allocated(c)) return write_at(base + off_, payload(chunk), c, false, chunk);
    if (chunk == cs) return write_at(base + cstart, payload(chunk), c, true, chunk);
    copy_on_write(c, chunk);
  }

 private:
  // The bytes to store for the next chunk: the caller's, or zeros.
  std::span<const std::byte> payload(uint64_t chunk) {
    if (src_) return {src_ + consumed_, chunk};
    buf_.assign(chunk, std::byte{0});
    return buf_;
  }

  void copy_on_write(uint64_t c, uint64_t chunk) {
    uint64_t cs = img_.cluster_size(), cstart = c * cs;
    buf_.assign(cs, std::byte{0});
    uint64_t valid = std::min<uint64_t>(cs, img_.size() - cstart);
    auto overlay = [self = shared_from_this(), c, chunk, cstart](vd::Error e) {
      if (e) return self->finish(std::move(e));
      std::byte* at = self->buf_.data() + (self->off_ - cstart);
      if (self->src_) std::memcpy(at, self->src_ + self->consumed_, chunk);
      else std::memset(at, 0, chunk);
      self->write_at(self->img_.data_offset() + cstart, self->buf_, c, true, chunk);
    };
    if (img_.parent()) img_.parent()->read(cstart, std::span(buf_).first(valid), overlay);
    else img_.post([overlay] { overlay({}); });
  }

  // Data first, then the map entry that points at it.
  void write_at(uint64_t where, std::span<const std::byte> bytes, uint64_t c, bool link,
                uint64_t chunk) {
    img_.file().async_write(vd::IoKind::data, where, bytes,
                            [self = shared_from_this(), c, link, chunk](vd::Error e) {
                              if (e) return self->finish(std::move(e));
                              if (!link) return self->advance(chunk);
                              self->img_.mark(c, true, [self, chunk](vd::Error e2) {
                                if (e2) return self->finish(std::move(e2));
                                self->advance(chunk);
                              });
                            });
  }

  void advance(uint64_t chunk) {
    off_ += chunk;
    consumed_ += chunk;
    step();
  }

  void finish(vd::Error e) {
    vd::Completion done = std::move(done_);
    img_.op_finished();
    done(std::move(e));
  }

  FakeImage& img_;
  uint64_t off_, end_;
  const std::byte* src_;
  uint64_t consumed_ = 0;
  std::vector<std::byte> buf_;
  vd::Completion done_;
};

uint64_t FakeImage::run(uint64_t offset, uint64_t length, bool& is_allocated) const {
  uint64_t cs = h_.cluster, end = offset + length, pos = (offset / cs + 1) * cs;
  is_allocated = allocated(offset / cs);
  while (pos < end && allocated(pos / cs) == is_allocated) pos += cs;
  return std::min(pos, end) - offset;
}

vd::Error FakeImage::check_request(uint64_t offset, uint64_t length, bool writing) const {
  if (!file_) return vd::Error(vd::Errc::invalid_argument, "the image is closed").image(path_);
  if (writing && (flags_ & vd::open_read_only)) {
    return vd::Error(vd::Errc::read_only, "the image is opened read-only").image(path_);
  }
  if (offset > h_.size || length > h_.size - offset) {
    return vd::Error(vd::Errc::out_of_range, "request at " + vd::hex(offset) + " beyond the virtual size")
        .image(path_)
        .at(offset);
  }
  return {};
}

void FakeImage::post(std::function<void()> fn) { io_.post(std::move(fn)); }

void FakeImage::enqueue(std::function<void()> start) {
  queue_.push_back(std::move(start));
  if (!busy_) op_finished();
}

void FakeImage::op_finished() {
  busy_ = !queue_.empty();
  if (!busy_) return;
  auto next = std::move(queue_.front());
  queue_.pop_front();
  next();
}

void FakeImage::mark(uint64_t cluster, bool on, vd::Completion done) {
  map_[cluster] = std::byte{on};
  file_->async_write(vd::IoKind::meta, kMapOffset + cluster, std::span(&map_[cluster], 1),
                     std::move(done));
}

void FakeImage::read(uint64_t offset, std::span<std::byte> buf, vd::ReadHandler done) {
  if (vd::Error e = check_request(offset, buf.size(), false); e || buf.empty()) {
    return post([done = std::move(done), e] { done(e, {0, true}); });
  }
  bool is_allocated = false;
  uint64_t n = run(offset, buf.size(), is_allocated);
  if (!is_allocated) return post([done = std::move(done), n] { done({}, {n, false}); });
  file_->async_read(vd::IoKind::data, data_offset() + offset, buf.first(n),
                    [done = std::move(done), n](vd::Error e) { done(std::move(e), {n, true}); });
}

void FakeImage::write(uint64_t offset, std::span<const std::byte> buf, unsigned,
                      vd::Completion done) {
  if (vd::Error e = check_request(offset, buf.size(), true)) {
    return post([done = std::move(done), e] { done(e); });
  }
  enqueue([this, offset, buf, done = std::move(done)]() mutable {
    std::make_shared<FakeWrite>(*this, offset, buf.size(), buf.data(), std::move(done))->step();
  });
}

void FakeImage::write_zeroes(uint64_t offset, uint64_t length, unsigned, vd::Completion done) {
  if (vd::Error e = check_request(offset, length, true)) {
    return post([done = std::move(done), e] { done(e); });
  }
  enqueue([this, offset, length, done = std::move(done)]() mutable {
    std::make_shared<FakeWrite>(*this, offset, length, nullptr, std::move(done))->step();
  });
}

void FakeImage::discard(uint64_t offset, uint64_t length, vd::Completion done) {
  if (vd::Error e = check_request(offset, length, true)) {
    return post([done = std::move(done), e] { done(e); });
  }
  // Whole clusters inside the range are dropped (the parent shows through again).
  uint64_t cs = h_.cluster, first = (offset + cs - 1) / cs, last = (offset + length) / cs;
  enqueue([this, first, last, done = std::move(done)]() mutable {
    for (uint64_t c = first; c < last; ++c) map_[c] = std::byte{0};
    auto finish = [this, done = std::move(done)](vd::Error e) {
      op_finished();
      done(std::move(e));
    };
    if (first >= last) return post([finish] { finish({}); });
    file_->async_write(vd::IoKind::meta, kMapOffset + first,
                       std::span(map_).subspan(first, last - first), finish);
  });
}

void FakeImage::block_status(uint64_t offset, uint64_t length, vd::ExtentHandler done) {
  vd::Error e = check_request(offset, length, false);
  vd::Extent x;
  if (!e && length > 0) {
    bool is_allocated = false;
    x.length = run(offset, length, is_allocated);
    x.kind = is_allocated ? vd::Extent::Kind::data : vd::Extent::Kind::unallocated;
    if (is_allocated) x.host_offset = data_offset() + offset;
  }
  post([done = std::move(done), e, x] { done(e, x); });
}

vd::Error FakeImage::set_parent(const std::optional<std::string>& filename,
                                const std::optional<std::string>& format) {
  if (flags_ & vd::open_read_only) {
    return vd::Error(vd::Errc::read_only, "the image is opened read-only").image(path_);
  }
  Header h = h_;
  h.parent = filename.value_or("");
  h.parent_format = format.value_or("");
  if (vd::Error e = validate(h, path_)) return e;
  if (vd::Error e = file_->write(vd::IoKind::meta, 0, encode(h))) return e;
  h_ = std::move(h);
  return {};
}

vd::Error FakeImage::close(bool remove) {
  vd::Error e = file_ ? file_->flush() : vd::Error();
  file_.reset();
  if (remove) {
    vd::Error r = io_.remove(path_);
    if (!e) e = r;
  }
  return e;
}

}  // namespace

unsigned FakeBackend::capabilities() const {
  return vd::cap_create_dynamic | vd::cap_diff | vd::cap_async | vd::cap_discard;
}

std::vector<vd::OptionHelp> FakeBackend::create_options() const {
  return {{"cluster_size", "cluster size in bytes (512 to 1M, power of two)"}};
}

bool FakeBackend::probe(vd::File& file) const {
  if (!probe_enabled_) return false;
  std::byte head[8] = {};
  if (file.read(vd::IoKind::meta, 0, head)) return false;
  return std::memcmp(head, kMagic, sizeof kMagic) == 0;
}

vd::Result<std::unique_ptr<vd::Image>> FakeBackend::open(const std::string& path,
                                                         const vd::OpenOptions& opts,
                                                         vd::IoProvider& io) const {
  bool ro = opts.flags & vd::open_read_only;
  auto file = io.open(path, vd::file_read | (ro ? 0u : unsigned(vd::file_write)));
  if (!file) return file.error();
  auto h = decode(**file);
  if (!h) return h.error();
  std::vector<std::byte> map(h->clusters());
  if (vd::Error e = (*file)->read(vd::IoKind::meta, kMapOffset, map)) return e;
  return std::unique_ptr<vd::Image>(
      new FakeImage(*this, path, opts.flags, std::move(*h), std::move(map), std::move(*file), io));
}

vd::Result<std::unique_ptr<vd::Image>> FakeBackend::create(const std::string& path,
                                                           const vd::CreateOptions& opts,
                                                           vd::IoProvider& io) const {
  Header h;
  h.size = opts.size;
  if (auto it = opts.options.find("cluster_size"); it != opts.options.end()) {
    h.cluster = static_cast<uint32_t>(std::strtoul(it->second.c_str(), nullptr, 10));
  }
  h.parent = opts.backing_file.value_or("");
  h.parent_format = opts.backing_format.value_or("");
  if (vd::Error e = validate(h, path)) return e;
  auto file = io.open(path, vd::file_read | vd::file_write | vd::file_create | vd::file_truncate);
  if (!file) return file.error();
  std::vector<std::byte> meta = encode(h);
  meta.resize(h.data_offset());  // header and an empty map
  if (vd::Error e = (*file)->write(vd::IoKind::meta, 0, meta)) return e;
  if (vd::Error e = (*file)->flush()) return e;
  file->reset();
  return open(path, vd::OpenOptions{}, io);
}

const FakeBackend& fake_backend() {
  static const FakeBackend b;
  return b;
}

std::string create_fake(vd::IoProvider& io, const std::string& path, uint64_t size,
                        uint32_t cluster_size, std::optional<std::string> parent,
                        std::optional<std::string> parent_format) {
  vd::CreateOptions o;
  o.size = size;
  o.options["cluster_size"] = std::to_string(cluster_size);
  o.backing_file = std::move(parent);
  o.backing_format = std::move(parent_format);
  auto img = fake_backend().create(path, o, io);
  if (!img) return img.error().message();
  vd::Error e = (*img)->close(false);
  return e ? e.message() : "";
}

}  // namespace vdtest
