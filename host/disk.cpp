// vd::Disk: a chain of images seen as one virtual disk. Reads go through the chain
// (host/disk_chain.cpp); writes, zeroing, discard and flush go to the top image, which
// fills partial clusters from below through the ParentReader attached here.
#include "vd/disk.h"

#include <algorithm>

#include "host/disk_impl.h"

namespace vd {
namespace {

// Overflow-safe: offset + length may not be computed before the comparison.
Error check_range(const Image& top, const char* op, uint64_t offset, uint64_t length) {
  uint64_t size = top.size();
  if (offset <= size && length <= size - offset) return {};
  return Error(Errc::out_of_range, std::string(op) + " of " + hex(length) + " bytes at " +
                                       hex(offset) + " is beyond the end of '" + top.path() +
                                       "' (virtual size " + hex(size) + ")");
}

Error check_writable(const Image& top, const char* op, uint64_t offset, uint64_t length) {
  if (top.open_flags() & open_read_only) {
    return Error(Errc::read_only, std::string(op) + " at " + hex(offset) + ": '" + top.path() +
                                      "' is opened read-only");
  }
  return check_range(top, op, offset, length);
}

}  // namespace

Disk::Disk(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Disk::~Disk() {
  if (impl_ && !impl_->chain.closed) close();
}

Result<std::unique_ptr<Disk>> Disk::assemble(std::vector<std::unique_ptr<Image>> chain) {
  if (chain.empty()) return Error(Errc::invalid_argument, "a disk needs at least one image");
  for (size_t i = 0; i < chain.size(); ++i) {
    if (!chain[i]) {
      return Error(Errc::invalid_argument, "image " + std::to_string(i) + " of the chain is null");
    }
  }
  auto impl = std::make_unique<Impl>();
  impl->chain.images = std::move(chain);
  // Every image but the base reads what lies below it through the chain.
  for (size_t i = 0; i + 1 < impl->chain.depth(); ++i) {
    impl->chain.images[i]->set_parent_reader(detail::make_parent_reader(impl->chain, i + 1));
  }
  return std::unique_ptr<Disk>(new Disk(std::move(impl)));
}

uint64_t Disk::size() const { return impl_->chain.images.front()->size(); }
size_t Disk::depth() const { return impl_->chain.depth(); }
// Precondition: level < depth().
Image& Disk::image(size_t level) { return *impl_->chain.images[level]; }
const Image& Disk::image(size_t level) const { return *impl_->chain.images[level]; }
bool Disk::read_only() const { return image(0).open_flags() & open_read_only; }

void Disk::read(uint64_t offset, std::span<std::byte> buf, Completion done) {
  detail::ChainState& chain = impl_->chain;
  Error err = check_range(chain.top(), "read", offset, buf.size());
  detail::start_posted(
      chain,
      [&](Completion c) {
        if (err) return c(err);
        detail::read_chain(chain, 0, offset, buf, std::move(c));
      },
      std::move(done));
}

void Disk::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags,
                 Completion done) {
  Image& top = impl_->chain.top();
  Error err = check_writable(top, "write", offset, buf.size());
  if (err || buf.empty()) {
    return impl_->chain.post([done = std::move(done), err] { done(err); });
  }
  top.write(offset, buf, flags, std::move(done));
}

void Disk::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  Image& top = impl_->chain.top();
  Error err = check_writable(top, "write zeroes", offset, length);
  if (err || length == 0) {
    return impl_->chain.post([done = std::move(done), err] { done(err); });
  }
  top.write_zeroes(offset, length, flags, std::move(done));
}

void Disk::discard(uint64_t offset, uint64_t length, Completion done) {
  Image& top = impl_->chain.top();
  Error err = check_writable(top, "discard", offset, length);
  if (err || length == 0) {
    return impl_->chain.post([done = std::move(done), err] { done(err); });
  }
  top.discard(offset, length, std::move(done));
}

void Disk::flush(Completion done) {
  // Parents are read-only: only the top can hold data that is not durable yet.
  impl_->chain.top().flush(std::move(done));
}

void Disk::block_status(uint64_t offset, uint64_t length, DiskExtentHandler done) {
  detail::ChainState& chain = impl_->chain;
  Image& top = chain.top();
  Error err = offset < top.size()
                  ? Error()
                  : Error(Errc::out_of_range, "block status at " + hex(offset) +
                                                  " is beyond the end of '" + top.path() +
                                                  "' (virtual size " + hex(top.size()) + ")");
  // Like qemu, a range running past the end is clipped to it.
  if (!err) length = std::min(length, top.size() - offset);
  detail::start_posted(
      chain,
      [&](DiskExtentHandler h) {
        if (err) return h(err, {});
        if (length == 0) return h({}, DiskExtent{});
        detail::status_chain(chain, 0, offset, length, std::move(h));
      },
      std::move(done));
}

Error Disk::close() {
  detail::ChainState& chain = impl_->chain;
  if (chain.closed) return {};
  chain.closed = true;
  // Image::close flushes first. Top first: it is the only one that may hold dirty data,
  // and it may still read its parents while flushing.
  Error first;
  for (auto& img : chain.images) {
    Error e = img->close(false);
    if (e && !first) first = std::move(e);
  }
  return first;
}

}  // namespace vd
