// Disk::open: opens the top image and follows parent filenames down to the base.
//
// Rules (qemu's, where it has one): a relative parent name is relative to the folder of
// the image that records it; a recorded parent format is honoured and never second-guessed
// by probing; parents are opened read-only; a loop, a missing parent or a chain deeper
// than max_depth is refused with an error that prints the chain opened so far.
#include <filesystem>
#include <set>

#include "host/disk_impl.h"
#include "vd/runtime.h"
#include "vd/disk.h"

namespace vd {
namespace {

// The identity of a file for loop detection: symlinks and ".." resolved where the file
// exists, the rest normalised lexically (in-memory providers have no real files).
std::string canonical_key(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  if (ec) return fs::path(path).lexically_normal().string();
  fs::path canon = fs::weakly_canonical(abs, ec);
  return ec ? abs.lexically_normal().string() : canon.string();
}

// `name` as recorded in the image at `child`: absolute as it is, otherwise relative to the
// child's folder (kept in the child's spelling, so messages show familiar paths).
std::string resolve_parent(const std::string& child, const std::string& name) {
  if (!name.empty() && name.front() == '/') return name;
  size_t slash = child.rfind('/');
  return slash == std::string::npos ? name : child.substr(0, slash + 1) + name;
}

class ChainOpener {
 public:
  ChainOpener(const DiskOpenOptions& opts, const Registry& registry, IoProvider& io)
      : opts_(opts), registry_(registry), io_(io) {}

  Error open_top(const std::string& path);
  // Opens the parent of the lowest image opened so far; sets `ended` when it has none.
  Error open_parent(bool& ended);
  std::vector<std::unique_ptr<Image>> take() { return std::move(chain_); }

 private:
  Error open_image(const std::string& path, const Backend& backend, unsigned flags,
                   bool is_top);
  Error parent_error(Errc kind, const std::string& name, const std::string& why) const;
  // The same context around an error from opening or probing the parent (keeps its kind).
  Error parent_error(const Error& cause, const std::string& name) const {
    return cause.wrap("Could not open backing file '" + name + "' (chain: " + chain_text() + ")")
        .image(chain_.back()->path());
  }
  std::string chain_text() const;

  const DiskOpenOptions& opts_;
  const Registry& registry_;
  IoProvider& io_;
  std::vector<std::unique_ptr<Image>> chain_;
  std::set<std::string> seen_;  // canonical paths of the images in chain_
};

std::string ChainOpener::chain_text() const {
  std::string text;
  for (const auto& img : chain_) text += (text.empty() ? "" : " -> ") + img->path();
  return text;
}

Error ChainOpener::parent_error(Errc kind, const std::string& name,
                                const std::string& why) const {
  return Error(kind, "Could not open backing file '" + name + "' (chain: " + chain_text() + "): " + why)
      .image(chain_.back()->path());
}

Error ChainOpener::open_image(const std::string& path, const Backend& backend, unsigned flags,
                              bool is_top) {
  OpenOptions o;
  o.flags = flags;
  o.passphrase = opts_.passphrase;
  o.cache_bytes = opts_.cache_bytes;
  if (is_top) o.snapshot = opts_.snapshot;  // snapshots name the top's own history
  auto img = backend.open(path, o, io_);
  if (!img) return img.error();
  seen_.insert(canonical_key(path));
  chain_.push_back(std::move(*img));
  return {};
}

Error ChainOpener::open_top(const std::string& path) {
  const Backend* backend = nullptr;
  unsigned flags = opts_.flags;
  if (opts_.format) {
    backend = registry_.find(*opts_.format);
    if (!backend) {
      return Error(Errc::not_found, "unknown format '" + *opts_.format + "'").image(path);
    }
    flags |= open_format_given;
  } else {
    auto probed = registry_.probe(path, io_);
    if (!probed) return probed.error();
    backend = *probed;
  }
  Error e = open_image(path, *backend, flags, true);
  if (e && e.path().empty()) return Error(e).image(path);  // name the image when its error does not
  return e;
}

Error ChainOpener::open_parent(bool& ended) {
  const Image& child = *chain_.back();
  auto name = child.parent_filename();
  ended = !name || name->empty();
  if (ended) return {};
  if (chain_.size() >= opts_.max_depth) {
    return parent_error(Errc::too_large, *name,
                        "backing chain is deeper than " + std::to_string(opts_.max_depth) +
                            " images");
  }
  std::string path = resolve_parent(child.path(), *name);
  if (seen_.count(canonical_key(path))) {
    return parent_error(Errc::invalid_argument, *name,
                        "the image is already in the chain: the backing chain loops");
  }
  if (!io_.exists(path)) return parent_error(Errc::not_found, *name, "No such file or directory");

  // Parents are never written; they keep only the flags that do not imply writing.
  unsigned flags = open_read_only | (opts_.flags & (open_info_only | open_force_share | open_no_lock));
  const Backend* backend = nullptr;
  auto format = child.parent_format();
  if (format && !format->empty()) {
    backend = registry_.find(*format);
    if (!backend) {
      return parent_error(Errc::not_found, *name, "unknown backing format '" + *format + "'");
    }
    flags |= open_format_given;
  } else {
    auto probed = registry_.probe(path, io_);
    if (!probed) return parent_error(probed.error(), *name);
    backend = *probed;
  }
  Error e = open_image(path, *backend, flags, false);
  return e ? parent_error(e, *name) : Error();
}

}  // namespace

Result<std::unique_ptr<Disk>> Disk::open(const std::string& path, const DiskOpenOptions& opts,
                                         const Registry& registry, IoProvider& io) {
  // The cache mode reaches every file of the chain as open bits (vd/cache.h).
  std::unique_ptr<IoProvider> cache_io;
  if (unsigned bits = cache_file_mode(opts.cache)) cache_io = std::make_unique<CacheIoProvider>(io, bits);
  IoProvider& files = cache_io ? *cache_io : io;
  ChainOpener opener(opts, registry, files);
  if (Error e = opener.open_top(path)) return e;
  for (bool ended = opts.no_backing; !ended;) {
    if (Error e = opener.open_parent(ended)) {
      // Close what was opened so far (top first); nothing was written to it.
      auto chain = opener.take();
      for (auto& img : chain) img->close(false);
      return e;
    }
  }
  auto disk = assemble(opener.take());
  if (disk) {
    (*disk)->impl_->chain.io = &files;  // posts without borrowing an image call
    (*disk)->impl_->chain.cache_io = std::move(cache_io);
    if (auto* src = dynamic_cast<ExecutorSource*>(&io)) (*disk)->impl_->ex = src->completion_executor();
  }
  return disk;
}

}  // namespace vd
